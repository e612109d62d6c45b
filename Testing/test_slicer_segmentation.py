"""Segmentation from the Slicer console on slicer-core's real MRML scene: volume and segmentation nodes become
``segment-train``'s training files (label values by segment name), and a volume node is segmented into a new
segmentation node on its own grid, under its transform (in this process, and through the ``segment`` worker).

The process runner is replaced only where the test checks the command line the module starts; the slow tests run
the real command line.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not available for this Python")
slicer_util = pytest.importorskip("slicer.util")

from test_slicer_bridge import ijk_to_ras_array, node_ijk_to_ras, scene  # noqa: E402,F401
from test_slicer_job import AnsweringRunner, RecordingLoop, value_after  # noqa: E402

from MedAutoencoderLib.errors import ConfigurationError, InputImageError  # noqa: E402
from MedAutoencoderLib.slicer import bridge as slicer_bridge  # noqa: E402
from MedAutoencoderLib.slicer import job as slicer_job  # noqa: E402
from MedAutoencoderLib.slicer import segmentation as slicer_segmentation  # noqa: E402


def organ_voxels(seed: int) -> np.ndarray:
    from MedAutoencoderLib.data.synthetic import toy_volume

    return sitk.GetArrayFromImage(toy_volume(np.random.default_rng(seed), shape=(28, 24, 20)))


def rim_and_core(voxels: np.ndarray) -> np.ndarray:
    """Label 1 the organ's rim, 2 its core (by distance from its surface)."""
    from scipy import ndimage

    organ = voxels > 30
    labels = organ.astype(np.uint8)
    labels[ndimage.binary_erosion(organ, iterations=3)] = 2
    return labels


def volume_with_segmentation(scene, seed: int, names, transform=None):
    """An oblique, anisotropic volume node (under ``transform``) and its segmentation node, made from a labelmap
    on its grid with segments ``names`` for the values 1 and 2."""
    voxels = organ_voxels(seed)
    node = slicer_util.addVolumeFromArray(voxels, ijk_to_ras_array(), f"organ {seed}")
    if transform is not None:
        node.SetAndObserveTransformNodeID(transform.GetID())
    labelmap = sitk.GetImageFromArray(rim_and_core(voxels))
    labelmap.CopyInformation(slicer_bridge.volume_node_to_sitk(node))
    segmentation = slicer_segmentation.labelmap_to_segmentation_node(node, labelmap, list(zip((1, 2), names)),
                                                                     name=f"organ {seed} segmentation")
    return node, segmentation


def test_a_labelmap_becomes_named_segments_on_the_input_grid_under_its_transform(scene):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    node, segmentation = volume_with_segmentation(scene, 0, ("rim", "core"), transform)
    assert segmentation.IsA("vtkMRMLSegmentationNode") and segmentation.GetTransformNodeID() == transform.GetID()
    assert slicer_segmentation.segment_names(segmentation) == ["rim", "core"]
    values = slicer_segmentation.label_values_by_name([segmentation])
    back = slicer_segmentation.labels_on_volume(node, segmentation, values)
    np.testing.assert_array_equal(back, rim_and_core(organ_voxels(0)))  # voxel for voxel on the input's grid


def test_training_files_hold_one_value_per_segment_name_on_each_volume_grid(tmp_path, scene):
    first, first_segmentation = volume_with_segmentation(scene, 0, ("rim", "core"))
    # the other names for the same values: "core" holds the second organ's rim voxels (value 1 in its labelmap)
    second, second_segmentation = volume_with_segmentation(scene, 1, ("core", "rim"))
    seen = {}

    def answer(command):
        for flag in ("--images", "--labels"):
            start = command.index(flag) + 1
            seen[flag] = command[start:start + 2]
        seen["files"] = {path: sitk.ReadImage(path) for flag in ("--images", "--labels") for path in seen[flag]}
        out = value_after(command, "--out")
        Path(out).write_text("model")
        return [json.dumps({"event": "done", "fraction": 1.0, "outputs": {"model": out}})], 0

    launch = AnsweringRunner(answer)
    job = slicer_job.WorkerJobs(str(tmp_path / "temp"), launch=launch, loop=RecordingLoop()).startSegmentationTraining(
        [first, second], [first_segmentation, second_segmentation], str(tmp_path / "seg.pt"), steps=50, device="cpu")
    command = launch.commands[0]
    assert command[1:4] == ["-m", "MedAutoencoderLib", "segment-train"]
    assert (value_after(command, "--init"), value_after(command, "--steps")) == ("default", "50")
    names_at = command.index("--label-names")
    assert command[names_at + 1:names_at + 3] == ["rim", "core"]
    assert Path(value_after(command, "--stop-file")).parent == Path(seen["--images"][0]).parent
    for index, seed in enumerate((0, 1)):
        image, labels = seen["files"][seen["--images"][index]], seen["files"][seen["--labels"][index]]
        assert labels.GetSize() == image.GetSize() and np.allclose(labels.GetDirection(), image.GetDirection())
        assert np.allclose(labels.GetOrigin(), image.GetOrigin()) and np.allclose(labels.GetSpacing(), image.GetSpacing())
        made = rim_and_core(organ_voxels(seed))
        expected = made if seed == 0 else np.where(made > 0, 3 - made, 0)  # "rim" is 1 and "core" 2 in both files
        np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), expected)
    job.wait()
    assert job.result == str(tmp_path / "seg.pt") and not Path(seen["--images"][0]).parent.exists()


def test_bad_segmentation_inputs_are_refused_naming_the_node(tmp_path, scene):
    node, segmentation = volume_with_segmentation(scene, 0, ("rim", "core"))
    starter = slicer_job.WorkerJobs(str(tmp_path), launch=AnsweringRunner(lambda c: ([], 0)))
    with pytest.raises(ConfigurationError, match="one segmentation per training volume"):
        starter.startSegmentationTraining([node, node], [segmentation], str(tmp_path / "seg.pt"))
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty one")
    with pytest.raises(InputImageError, match="'empty one' has no segments"):
        starter.startSegmentationTraining([node], [empty], str(tmp_path / "seg.pt"))
    with pytest.raises(InputImageError, match="'organ 0' is not a segmentation node"):
        starter.startSegmentationTraining([node], [node], str(tmp_path / "seg.pt"))
    moved = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    segmentation.SetAndObserveTransformNodeID(moved.GetID())
    with pytest.raises(InputImageError, match="lie under different transforms"):
        starter.startSegmentationTraining([node], [segmentation], str(tmp_path / "seg.pt"))
    assert not list((tmp_path / "MedAutoencoder").iterdir()), "no copy of a volume stays behind"


@pytest.fixture(scope="module")
def organ_model(tmp_path_factory):
    """A segmentation model trained briefly, from scratch, on one toy organ's rim and core (otsu foreground)."""
    from MedAutoencoderLib.api import segment_train
    from MedAutoencoderLib.config import SegmentTrainConfig
    from MedAutoencoderLib.data.synthetic import toy_volume

    folder = tmp_path_factory.mktemp("organ_segmentation")
    image = toy_volume(np.random.default_rng(0), shape=(28, 24, 20))
    labels = sitk.GetImageFromArray(rim_and_core(sitk.GetArrayFromImage(image)))
    labels.CopyInformation(image)
    sitk.WriteImage(image, str(folder / "organ.nrrd"))
    sitk.WriteImage(labels, str(folder / "organ_seg.nrrd"))
    return segment_train(SegmentTrainConfig(
        images=[str(folder / "organ.nrrd")], labels=[str(folder / "organ_seg.nrrd")], out=str(folder / "seg.pt"),
        label_names=["rim", "core"], steps=40, batch_size=4, spacing=(1.5, 1.5, 1.5), size=(32, 32, 32),
        foreground="otsu", device="cpu"))


def _check_segmentation_of(node, segmentation) -> None:
    assert segmentation.IsA("vtkMRMLSegmentationNode")
    assert slicer_segmentation.segment_names(segmentation) == ["rim", "core"]
    assert segmentation.GetTransformNodeID() == node.GetTransformNodeID()
    values = slicer_segmentation.label_values_by_name([segmentation])
    found = slicer_segmentation.labels_on_volume(node, segmentation, values)
    organ = organ_voxels(5) > 30
    assert ((found > 0) == organ).mean() > 0.9, "the organ is segmented where it is on the input's grid"


@pytest.mark.slow
def test_a_volume_node_is_segmented_in_this_process_into_a_new_segmentation_node(scene, organ_model):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    node = slicer_util.addVolumeFromArray(organ_voxels(5), ijk_to_ras_array(), "patient")
    node.SetAndObserveTransformNodeID(transform.GetID())
    before = node_ijk_to_ras(node)
    segmentation = slicer_segmentation.segment_volume_node(node, str(organ_model), device="cpu")
    _check_segmentation_of(node, segmentation)
    np.testing.assert_array_equal(node_ijk_to_ras(node), before)


@pytest.mark.slow
def test_segmentation_through_the_segment_worker_lands_on_the_input_grid(tmp_path, scene, organ_model):
    node = slicer_util.addVolumeFromArray(organ_voxels(5), ijk_to_ras_array(), "patient")
    job = slicer_job.WorkerJobs(str(tmp_path)).startSegmentation(node, str(organ_model), device="cpu")
    job.wait()
    assert job.error is None, job.recentOutput
    _check_segmentation_of(node, job.result)
    assert not list((tmp_path / "MedAutoencoder").iterdir()), "the job's files are removed"
