"""Segmentation from autoencoder pre-training (``segment-train``, ``segment``): the autoencoder's weights really
start the network, label values are kept, outputs lie on the input's exact grid, bad input gets one line.

Toy volumes (the synthetic organ, ``otsu`` foreground) check the mechanics in seconds; real IXI heads from
``../shared/data`` (skipped where absent) check that a short training on one labelled head segments another head
better than chance, also on an oblique, anisotropic grid.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import oblique_direction, toy
from MedAutoencoderLib import __version__
from MedAutoencoderLib.cli.commands import main
from MedAutoencoderLib.config import ModelConfig, PreprocessConfig, DetectionConfig, SegmentTrainConfig
from MedAutoencoderLib.errors import ConfigurationError, InputImageError
from MedAutoencoderLib.io.checkpoint import ModelRecord, read_model_file, save_model
from MedAutoencoderLib.io.loaded_model import DEFAULT_MODEL
from MedAutoencoderLib.networks.autoencoders import build_network
from MedAutoencoderLib.segmentation.data import pair_images_with_labels
from MedAutoencoderLib.segmentation.labels import LabelSet, label_set, label_values
from MedAutoencoderLib.segmentation.model_file import load_segmentation_model
from MedAutoencoderLib.segmentation.networks import build_segmentation_network, load_pretrained
from MedAutoencoderLib.segmentation.trainer import starting_point

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IXI = SHARED_DATA / "ixi_t1_2mm"
SPLIT = json.loads((Path(__file__).resolve().parents[1] / "scripts" / "ixi_split.json").read_text())
needs_ixi = pytest.mark.skipif(not IXI.is_dir(), reason="../shared/data is not beside this checkout")
TOY_GRID = ("--spacing", "2", "2", "2", "--size", "32", "32", "32", "--foreground", "otsu")


def run_cli(capsys, *args: str):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def toy_labels(image: sitk.Image) -> sitk.Image:
    """Two labels (values 3 and 7) by intensity inside the toy organ: a rim and a core."""
    values = sitk.GetArrayFromImage(image)
    labels = np.zeros(values.shape, np.uint8)
    labels[values > 30] = 3
    labels[sitk.GetArrayFromImage(sitk.BinaryErode(sitk.Cast(image > 30, sitk.sitkUInt8), [3] * 3)) > 0] = 7
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    return out


@pytest.fixture()
def toy_pair(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    image = toy(0)
    sitk.WriteImage(image, str(folder / "case.nii.gz"))
    sitk.WriteImage(toy_labels(image), str(folder / "case_seg.nii.gz"))
    return folder / "case.nii.gz", folder / "case_seg.nii.gz"


def small_autoencoder(tmp_path: Path, name: str = "ae", spatial_dims: int = 2) -> Path:
    config = ModelConfig(name=name, channels=(8, 16), latent_channels=4, spatial_dims=spatial_dims,
                         patch_size=(16, 16, 16))
    torch.manual_seed(5)
    path = tmp_path / f"{name}{spatial_dims}d.pt"
    save_model(path, build_network(config), ModelRecord(config, PreprocessConfig(size=(32, 32, 32)), DetectionConfig()))
    return path


# ---- the autoencoder's weights start the network


def test_the_bundled_dae_gives_its_whole_unet_but_the_last_layer():
    start = starting_point(SegmentTrainConfig(images=["x"], labels=["y"], init="default"))
    assert start.preprocess.foreground == "brain"  # the bundled model's template registration is not used
    assert (start.preprocess.spacing, start.preprocess.size) == ((1.5, 1.5, 1.5), (128, 128, 112))
    autoencoder = read_model_file(DEFAULT_MODEL)["state_dict"]
    network = build_segmentation_network(start.model, 5)
    loaded = load_pretrained(network, start.state_dict, start.model, "default")
    state = network.state_dict()
    assert len(loaded) == len(state) - 2 and not any(name.startswith("unet.final_conv") for name in loaded)
    for name in loaded:
        assert torch.equal(state[name], autoencoder[name]), name
    assert state["unet.final_conv.weight"].shape[0] == 5
    fresh = build_segmentation_network(start.model, 5).state_dict()
    assert not torch.equal(fresh["unet.conv_0.conv_0.conv.weight"], autoencoder["unet.conv_0.conv_0.conv.weight"])


def test_an_unshuffled_dae_gives_its_unet_and_segments_at_full_resolution(tmp_path):
    config = ModelConfig(name="dae", channels=(8, 16), unshuffle=2)
    torch.manual_seed(5)
    path = tmp_path / "dae_u2.pt"
    save_model(path, build_network(config), ModelRecord(config, PreprocessConfig(size=(32, 32, 32)), DetectionConfig()))
    start = starting_point(SegmentTrainConfig(images=["x"], labels=["y"], init=str(path)))
    network = build_segmentation_network(start.model, 3)
    loaded = load_pretrained(network, start.state_dict, start.model, str(path))
    assert len(loaded) == len(network.state_dict()) - 2
    assert network.unet.final_conv.weight.shape[0] == 3 * 4  # each class's 2x2 block, unfolded after the U-Net
    assert network(torch.zeros(2, 1, 32, 32)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("name", ["ae", "vae", "aae"])
def test_other_autoencoders_give_their_encoder(tmp_path, name):
    path = small_autoencoder(tmp_path, name)
    start = starting_point(SegmentTrainConfig(images=["x"], labels=["y"], init=str(path)))
    assert start.preprocess.foreground == "otsu" and start.preprocess.size == (32, 32, 32)
    network = build_segmentation_network(start.model, 3)
    loaded = load_pretrained(network, start.state_dict, start.model, str(path))
    prefix = "autoencoder." if name == "aae" else ""
    encoder = {k[len(prefix):]: v for k, v in read_model_file(path)["state_dict"].items()
               if k.startswith(prefix + "encoder.")}
    assert sorted(loaded) == sorted(encoder)
    for key, value in encoder.items():
        assert torch.equal(network.state_dict()[key], value)
    assert network(torch.zeros(2, 1, 32, 32)).shape == (2, 3, 32, 32)


def test_a_3d_autoencoder_is_refused_in_one_line(tmp_path):
    path = small_autoencoder(tmp_path, "ae", spatial_dims=3)
    with pytest.raises(ConfigurationError, match="3D autoencoder; segmentation is made from 2D"):
        starting_point(SegmentTrainConfig(images=["x"], labels=["y"], init=str(path)))


# ---- labels and pairing


def test_label_values_are_kept_and_mapped_back():
    labels = label_set([[3, 7], [7, 12]], ["rim", "core", "other"])
    assert (labels.values, labels.n_classes) == ([3, 7, 12], 4)
    classes = labels.to_classes(np.array([0, 3, 7, 12, 7]), "x")
    assert classes.tolist() == [0, 1, 2, 3, 2]
    assert labels.to_values(classes).tolist() == [0, 3, 7, 12, 7]
    assert LabelSet.from_plain(labels.to_plain()) == labels
    with pytest.raises(ConfigurationError, match="2 label name"):
        label_set([[3, 7, 9]], ["a", "b"])


@pytest.mark.parametrize("values, message", [
    (np.array([0.0, 1.5]), "not a label map"), (np.array([0, -2]), "negative"), (np.zeros(3), "holds no label")])
def test_label_maps_that_are_not_label_maps_are_refused(values, message):
    with pytest.raises(InputImageError, match=message):
        label_values(values, "labels.nii.gz")


def test_images_and_label_maps_pair_by_name(tmp_path):
    for name in ("IXI1_T1.nii.gz", "IXI1_T1_DLMUSE.nii.gz", "IXI2_T1.nii.gz", "IXI2_T1_seg.nrrd"):
        sitk.WriteImage(toy(0), str(tmp_path / name))
    images = [str(tmp_path / "IXI1_T1.nii.gz"), str(tmp_path / "IXI2_T1.nii.gz")]
    pairs = pair_images_with_labels(images, [str(tmp_path / "IXI1_T1_DLMUSE.nii.gz"), str(tmp_path / "IXI2_T1_seg.nrrd")])
    assert [(i.name, l.name) for i, l in pairs] == [("IXI1_T1.nii.gz", "IXI1_T1_DLMUSE.nii.gz"),
                                                    ("IXI2_T1.nii.gz", "IXI2_T1_seg.nrrd")]
    with pytest.raises(InputImageError, match="IXI2_T1.nii.gz: no label map named IXI2_T1"):
        pair_images_with_labels(images, [str(tmp_path / "IXI1_T1_DLMUSE.nii.gz")])


# ---- refusals on the command line: one line, exit code 1, nothing written


def test_an_autoencoder_given_to_segment_is_refused_saying_what_to_do(capsys, tmp_path, toy_pair):
    code, _, err = run_cli(capsys, "segment", "--model", str(DEFAULT_MODEL), "--images", str(toy_pair[0]),
                           "--out", str(tmp_path / "out"))
    assert code == 1 and err.count("\n") == 1
    assert "is an autoencoder model (written by train), not a segmentation model; make one from it with " \
           "segment-train --init" in err
    assert not (tmp_path / "out").exists()


def test_a_label_map_that_lies_off_its_image_is_refused(capsys, tmp_path, toy_pair):
    labels = sitk.ReadImage(str(toy_pair[1]))
    labels.SetOrigin((500.0, 0.0, 0.0))
    sitk.WriteImage(labels, str(toy_pair[1]))
    code, _, err = run_cli(capsys, "segment-train", "--images", str(toy_pair[0]), "--labels", str(toy_pair[1]),
                           "--out", str(tmp_path / "seg.pt"), "--steps", "1", *TOY_GRID, "--progress", "none")
    assert code == 1 and err.count("\n") == 1 and "none of its labelled voxels lies on the model grid" in err
    assert not (tmp_path / "seg.pt").exists()


def test_an_existing_model_and_a_wrong_name_count_are_refused_before_training(capsys, tmp_path, toy_pair):
    existing = tmp_path / "seg.pt"
    existing.write_text("mine")
    code, _, err = run_cli(capsys, "segment-train", "--images", str(toy_pair[0]), "--labels", str(toy_pair[1]),
                           "--out", str(existing), *TOY_GRID)
    assert code == 1 and "already exists; pass --overwrite" in err and existing.read_text() == "mine"
    code, _, err = run_cli(capsys, "segment-train", "--images", str(toy_pair[0]), "--labels", str(toy_pair[1]),
                           "--out", str(tmp_path / "new.pt"), "--label-names", "only", *TOY_GRID)
    assert code == 1 and "1 label name(s) given (--label-names) for 2 label value(s) (3, 7)" in err


# ---- a tiny training on the toy organ: label values, model card, outputs on the input's grid


@pytest.mark.slow
def test_segment_train_then_segment_keeps_label_values_and_the_input_grid(capsys, tmp_path, toy_pair):
    model = tmp_path / "seg.pt"
    code, _, err = run_cli(capsys, "segment-train", "--images", str(toy_pair[0]), "--labels", str(toy_pair[1]),
                           "--out", str(model), "--init", "none", "--label-names", "rim", "core", "--steps", "40",
                           "--batch-size", "4", *TOY_GRID, "--progress", "none")
    assert code == 0, err
    loaded = load_segmentation_model(model)
    assert (loaded.record.labels.values, loaded.record.labels.names) == ([3, 7], ["rim", "core"])
    assert loaded.record.training["init"] is None and loaded.record.training["steps_done"] == 40
    assert loaded.record.preprocess.foreground == "otsu" and loaded.record.library_version == __version__
    code, out, _ = run_cli(capsys, "info", str(model))
    assert code == 0 and "labels: 3 rim, 7 core" in out and "started from scratch" in out

    oblique = toy(4, direction=oblique_direction(), spacing=(0.9, 1.3, 2.1))
    sitk.WriteImage(oblique, str(tmp_path / "oblique.nrrd"))
    code, _, err = run_cli(capsys, "segment", "--model", str(model), "--images", str(tmp_path / "oblique.nrrd"),
                           "--out", str(tmp_path / "out"), "--progress", "none")
    assert code == 0, err
    labelmap = sitk.ReadImage(str(tmp_path / "out" / "oblique_segmentation.nrrd"))
    assert labelmap.GetSize() == oblique.GetSize()
    assert np.allclose(labelmap.GetSpacing(), oblique.GetSpacing()) and np.allclose(labelmap.GetOrigin(), oblique.GetOrigin())
    assert np.allclose(labelmap.GetDirection(), oblique.GetDirection())
    found = sitk.GetArrayFromImage(labelmap)
    assert set(np.unique(found)) <= {0, 3, 7}
    truth = sitk.GetArrayFromImage(toy_labels(oblique))
    organ = truth > 0
    assert ((found > 0) == organ).mean() > 0.95  # the organ is labelled, its surroundings not
    summary = json.loads((tmp_path / "out" / "oblique_segmentation.json").read_text())
    assert [entry["name"] for entry in summary["labels"]] == ["rim", "core"]

    code, _, err = run_cli(capsys, "segment", "--model", str(model), "--images", str(tmp_path / "oblique.nrrd"),
                           "--out", str(tmp_path / "out"), "--progress", "none")
    assert code == 1 and "already exists; pass --overwrite" in err
    code, _, err = run_cli(capsys, "detect", str(tmp_path / "oblique.nrrd"), "--model", str(model),
                           "--output-dir", str(tmp_path / "detected"))
    assert code == 1 and "is a segmentation model (written by segment-train)" in err


# ---- real heads: one labelled IXI head, a short training, another head segmented


def ixi_tissue_labels(subject: str, folder: Path) -> Path:
    from MedAutoencoderLib.synthesis.sources import muse_tissue_labels

    muse = sitk.ReadImage(str(IXI / "dlmuse_seg" / f"{subject}_T1_DLMUSE.nii.gz"))
    tissue = sitk.GetImageFromArray(muse_tissue_labels(sitk.GetArrayFromImage(muse)))
    tissue.CopyInformation(muse)
    path = folder / f"{subject}_T1_tissue.nii.gz"
    sitk.WriteImage(tissue, str(path))
    return path


def dice(found: np.ndarray, truth: np.ndarray, value: int) -> float:
    a, b = found == value, truth == value
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def ixi_model(tmp_path_factory):
    """A segmentation model from the bundled autoencoder, trained briefly on one IXI head's four tissue classes."""
    if not IXI.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    folder = tmp_path_factory.mktemp("ixi_segmentation")
    subject = SPLIT["train"][0]
    labels = ixi_tissue_labels(subject, folder)
    out = folder / "seg.pt"
    assert main(["segment-train", "--images", str(IXI / "t1" / f"{subject}_T1.nii.gz"), "--labels", str(labels),
                 "--init", "default", "--out", str(out), "--steps", "400", "--spacing", "3", "3", "3", "--size",
                 "64", "64", "56", "--label-names", "csf", "cortical_grey", "white_matter", "deep_grey",
                 "--progress", "none"]) == 0
    return out, folder


@needs_ixi
@pytest.mark.slow
def test_a_short_training_on_one_head_segments_another_better_than_chance(ixi_model):
    model, folder = ixi_model
    record = load_segmentation_model(model).record
    assert record.training["init"]["weights_loaded"] == 80 and record.contrasts == ["T1"]
    subject = SPLIT["test"][0]
    image = sitk.ReadImage(str(IXI / "t1" / f"{subject}_T1.nii.gz"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(ixi_tissue_labels(subject, folder))))
    from MedAutoencoderLib.segmentation.inference import segment_image

    found = sitk.GetArrayFromImage(segment_image(image, load_segmentation_model(model)).labelmap)
    scores = [dice(found, truth, v) for v in (1, 2, 3, 4)]
    brain = truth > 0
    chance = [float((truth[brain] == v).mean()) for v in (1, 2, 3, 4)]  # a random labelling with the true shares
    assert np.mean(scores) > np.mean(chance) + 0.2, (scores, chance)  # chance: 0.25 (the shares sum to 1)
    assert scores[1] > 0.55 and scores[2] > 0.7, scores  # cortex and white matter, the large classes


@needs_ixi
@pytest.mark.slow
def test_an_oblique_anisotropic_head_gets_its_labels_on_its_own_grid(ixi_model):
    from MedAutoencoderLib.segmentation.inference import segment_image

    model = load_segmentation_model(ixi_model[0])
    upright = sitk.ReadImage(str(IXI / "t1" / f"{SPLIT['test'][1]}_T1.nii.gz"), sitk.sitkFloat32)
    direction = np.array(oblique_direction()).reshape(3, 3) @ np.array(upright.GetDirection()).reshape(3, 3)
    spacing = (1.7, 2.3, 3.1)
    centre = upright.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in upright.GetSize()])
    size = [int(260 / s) for s in spacing]
    origin = np.array(centre) - direction @ (np.array(spacing) * (np.array(size) - 1) / 2)
    oblique = sitk.Resample(upright, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), spacing,
                            direction.ravel().tolist(), 0.0, sitk.sitkFloat32)
    result = segment_image(oblique, model).labelmap
    assert result.GetSize() == oblique.GetSize() and np.allclose(result.GetSpacing(), spacing)
    assert np.allclose(result.GetOrigin(), oblique.GetOrigin()) and np.allclose(result.GetDirection(), direction.ravel())
    # the same head upright, its labels carried onto the oblique grid, agrees with the oblique result
    on_oblique = sitk.Resample(segment_image(upright, model).labelmap, oblique, sitk.Transform(),
                               sitk.sitkNearestNeighbor, 0)
    a, b = sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(on_oblique)
    assert dice(a, b, 3) > 0.75 and dice(a, b, 2) > 0.65
