"""The MRML bridge on slicer-core's real MRML scene (no Slicer application needed).

Checks what a Slicer user relies on: exact geometry round trips (rotated, anisotropic volumes, RAS vs LPS),
outputs on the input's grid and under its transform, re-running updating the same nodes, and the input node
left untouched.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not available for this Python")
vtk = pytest.importorskip("vtk")
slicer_util = pytest.importorskip("slicer.util")

from MedAutoencoderLib import slicer_bridge  # noqa: E402

SHAPE_KJI = (6, 7, 8)
SPACING = (0.7, 1.3, 2.5)
ORIGIN_RAS = (12.5, -30.25, 7.0)


@pytest.fixture()
def scene():
    """A fresh MRML scene with the application, colour, volumes and segmentations logics registered."""
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = app.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    app.SetModuleLogic("Colors", colors)

    def register(logic, name):
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name, logic)
        return logic

    volumes = register(slicer.vtkSlicerVolumesLogic(), "Volumes")
    segmentations = register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
    slicer.modules = types.SimpleNamespace(segmentations=types.SimpleNamespace(logic=lambda: segmentations),
                                           volumes=types.SimpleNamespace(logic=lambda: volumes))
    yield scene
    scene.Clear(1)


def rotation_matrix() -> np.ndarray:
    """A proper rotation about an oblique axis, so every direction cosine is non-trivial."""
    axis = np.array([1.0, 2.0, 3.0]) / np.linalg.norm([1.0, 2.0, 3.0])
    angle = 0.4
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def ijk_to_ras_array() -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_matrix() @ np.diag(SPACING)
    matrix[:3, 3] = ORIGIN_RAS
    return matrix


def matrix_to_array(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def node_ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)


@pytest.fixture()
def input_node(scene):
    """A rotated, anisotropic, float input volume under a parent transform."""
    voxels = np.random.default_rng(0).normal(100.0, 20.0, SHAPE_KJI).astype(np.float32)
    node = slicer_util.addVolumeFromArray(voxels, ijk_to_ras_array(), "patient T1")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    node.SetAndObserveTransformNodeID(transform.GetID())
    return node


@pytest.fixture()
def organ_node(scene):
    """A rotated, anisotropic volume with an organ in it (detection needs a foreground), under a transform."""
    from MedAutoencoderLib.synthetic import toy_volume

    voxels = sitk.GetArrayFromImage(toy_volume(np.random.default_rng(1), shape=(28, 24, 20)))
    node = slicer_util.addVolumeFromArray(voxels, ijk_to_ras_array(), "patient T1")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    node.SetAndObserveTransformNodeID(transform.GetID())
    return node


def result_on_grid(image: sitk.Image, threshold: float = 0.5):
    """A detection result with recognisable voxels on the grid of ``image``."""
    voxels = sitk.GetArrayFromImage(image)
    anomaly_map = np.abs(voxels - voxels.mean()).astype(np.float32) / voxels.std()
    mask = (anomaly_map > 1.5).astype(np.uint8)

    def like(array):
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        return out

    return slicer_bridge.WorkerResult(reconstruction=like(voxels * 0.5), anomaly_map=like(anomaly_map),
                                      anomaly_mask=like(mask), summary={"threshold": threshold})


def snapshot(node) -> dict:
    """Everything about the input node a detection must leave as it was."""
    return {"voxels": np.array(slicer_util.arrayFromVolume(node), copy=True), "ijk_to_ras": node_ijk_to_ras(node),
            "name": node.GetName(), "transform": node.GetTransformNodeID(),
            "storage": node.GetStorageNodeID(), "attributes": sorted(node.GetAttributeNames() or [])}


def assert_same_snapshot(before: dict, after: dict) -> None:
    np.testing.assert_array_equal(before["voxels"], after["voxels"])
    np.testing.assert_array_equal(before["ijk_to_ras"], after["ijk_to_ras"])
    assert {k: v for k, v in before.items() if k not in ("voxels", "ijk_to_ras")} == \
        {k: v for k, v in after.items() if k not in ("voxels", "ijk_to_ras")}


def test_node_to_sitk_has_lps_geometry_and_same_voxels(input_node):
    image = slicer_bridge.volume_node_to_sitk(input_node)
    lps_from_ras = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(image.GetSpacing(), SPACING, rtol=0, atol=1e-12)
    np.testing.assert_allclose(image.GetOrigin(), lps_from_ras @ ORIGIN_RAS, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), lps_from_ras @ rotation_matrix(),
                               rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), slicer_util.arrayFromVolume(input_node))


def test_physical_point_of_a_voxel_agrees_between_mrml_and_itk(input_node):
    image = slicer_bridge.volume_node_to_sitk(input_node)
    ijk = (3, 5, 2)
    ras = node_ijk_to_ras(input_node) @ np.array([*ijk, 1.0])
    lps = image.TransformIndexToPhysicalPoint(ijk)
    np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-9)


def test_round_trip_node_sitk_node_is_exact(scene, input_node):
    image = slicer_bridge.volume_node_to_sitk(input_node)
    copy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "copy")
    slicer_bridge.update_volume_node_from_sitk(copy, image)
    np.testing.assert_allclose(node_ijk_to_ras(copy), node_ijk_to_ras(input_node), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(slicer_util.arrayFromVolume(copy), slicer_util.arrayFromVolume(input_node))


def test_round_trip_through_nrrd_file_keeps_geometry(tmp_path, input_node):
    path = slicer_bridge.write_volume_for_worker(input_node, str(tmp_path / "input.nrrd"))
    from_file = sitk.ReadImage(path)
    in_memory = slicer_bridge.volume_node_to_sitk(input_node)
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(from_file, getter)(), getattr(in_memory, getter)(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_file), sitk.GetArrayFromImage(in_memory))
    assert b"gzip" not in open(path, "rb").read(400)


def test_writing_for_worker_leaves_input_node_untouched(tmp_path, input_node):
    before = snapshot(input_node)
    mtime_before = input_node.GetMTime()
    slicer_bridge.write_volume_for_worker(input_node, str(tmp_path / "input.nrrd"))
    assert_same_snapshot(before, snapshot(input_node))
    assert input_node.GetStorageNode() is None
    assert input_node.GetMTime() == mtime_before


def test_outputs_are_named_after_input_and_lie_on_its_geometry(input_node):
    result = result_on_grid(slicer_bridge.volume_node_to_sitk(input_node))
    nodes = slicer_bridge.apply_detection_result(input_node, result)
    name = input_node.GetName()
    assert nodes.reconstruction.GetName() == f"{name}_reconstruction"
    assert nodes.anomaly_map.GetName() == f"{name}_anomaly_map"
    assert nodes.anomaly_mask.GetName() == f"{name}_anomaly_mask"
    assert nodes.segmentation.GetName() == f"{name}_anomaly_segmentation"
    assert nodes.anomaly_mask.IsA("vtkMRMLLabelMapVolumeNode")
    for node in (nodes.reconstruction, nodes.anomaly_map, nodes.anomaly_mask):
        np.testing.assert_array_equal(node_ijk_to_ras(node), node_ijk_to_ras(input_node))
        assert node.GetImageData().GetDimensions() == input_node.GetImageData().GetDimensions()
        assert node.GetTransformNodeID() == input_node.GetTransformNodeID()
    assert nodes.segmentation.GetTransformNodeID() == input_node.GetTransformNodeID()
    np.testing.assert_array_equal(slicer_util.arrayFromVolume(nodes.anomaly_mask),
                                  sitk.GetArrayFromImage(result.anomaly_mask))
    np.testing.assert_allclose(slicer_util.arrayFromVolume(nodes.anomaly_map),
                               sitk.GetArrayFromImage(result.anomaly_map))


def test_segmentation_holds_the_mask_voxels(scene, input_node):
    result = result_on_grid(slicer_bridge.volume_node_to_sitk(input_node))
    assert 0 < sitk.GetArrayFromImage(result.anomaly_mask).sum() < np.prod(SHAPE_KJI)
    nodes = slicer_bridge.apply_detection_result(input_node, result)
    segmentation = nodes.segmentation.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert segmentation.GetSegment(slicer_bridge.ANOMALY_SEGMENT_ID).GetName() == "Anomaly"
    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
        nodes.segmentation, exported, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    np.testing.assert_array_equal(slicer_util.arrayFromVolume(exported) > 0,
                                  sitk.GetArrayFromImage(result.anomaly_mask) > 0)
    display = nodes.segmentation.GetDisplayNode()
    assert display.GetVisibility2DOutline() and not display.GetVisibility2DFill()


def test_display_setup_of_map_and_mask(input_node):
    nodes = slicer_bridge.apply_detection_result(input_node, result_on_grid(
        slicer_bridge.volume_node_to_sitk(input_node), threshold=0.8))
    map_display = nodes.anomaly_map.GetDisplayNode()
    assert map_display.GetColorNodeID() == slicer_bridge.ANOMALY_MAP_COLOR_NODE_ID
    assert not map_display.GetAutoWindowLevel()
    assert map_display.GetWindowLevelMin() == pytest.approx(0.0)
    assert map_display.GetWindowLevelMax() == pytest.approx(1.6)
    colors = nodes.anomaly_mask.GetDisplayNode().GetColorNode()
    assert colors.GetNumberOfColors() == 2 and colors.GetColorName(1) == "anomaly"


def test_rerunning_updates_the_same_nodes(scene, input_node):
    image = slicer_bridge.volume_node_to_sitk(input_node)
    first = slicer_bridge.apply_detection_result(input_node, result_on_grid(image))
    count = scene.GetNumberOfNodes()
    second_result = result_on_grid(image)
    second_result.anomaly_mask = sitk.Cast(second_result.anomaly_map > 0.1, sitk.sitkUInt8)
    second = slicer_bridge.apply_detection_result(input_node, second_result)
    assert scene.GetNumberOfNodes() == count
    assert first.as_dict() == second.as_dict()
    assert second.segmentation.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(slicer_util.arrayFromVolume(second.anomaly_mask),
                                  sitk.GetArrayFromImage(second_result.anomaly_mask))


def test_two_inputs_get_separate_outputs(scene, input_node):
    voxels = np.random.default_rng(1).uniform(0, 1, SHAPE_KJI).astype(np.float32)
    other = slicer_util.addVolumeFromArray(voxels, np.eye(4), "other")
    first = slicer_bridge.apply_detection_result(input_node, result_on_grid(
        slicer_bridge.volume_node_to_sitk(input_node)))
    second = slicer_bridge.apply_detection_result(other, result_on_grid(slicer_bridge.volume_node_to_sitk(other)))
    assert not set(first.as_dict().values()) & set(second.as_dict().values())
    assert second.anomaly_map.GetName() == "other_anomaly_map"


def test_detection_leaves_input_node_untouched(input_node):
    before = snapshot(input_node)
    slicer_bridge.apply_detection_result(input_node, result_on_grid(slicer_bridge.volume_node_to_sitk(input_node)))
    slicer_bridge.apply_detection_result(input_node, result_on_grid(slicer_bridge.volume_node_to_sitk(input_node)))
    assert_same_snapshot(before, snapshot(input_node))


def test_result_off_the_input_grid_is_refused(input_node):
    image = slicer_bridge.volume_node_to_sitk(input_node)
    shifted = result_on_grid(image)
    shifted.anomaly_map.SetOrigin([x + 1.0 for x in image.GetOrigin()])
    with pytest.raises(slicer_bridge.MedAutoencoderError, match="grid"):
        slicer_bridge.apply_detection_result(input_node, shifted)


def test_non_scalar_input_is_refused_with_its_name(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty volume")
    with pytest.raises(slicer_bridge.InputImageError, match="empty volume"):
        slicer_bridge.volume_node_to_sitk(node)


# ---- the module logic's node-level work with a real model (what MedAutoencoderLogic does in Slicer)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from worker_helpers import tiny_model

    return tiny_model(tmp_path_factory)


def test_detect_in_process_puts_outputs_on_input_geometry(organ_node, tiny_model_path):
    from MedAutoencoderLib import api
    from MedAutoencoderLib.config import DetectOptions

    before = snapshot(organ_node)
    model = api.load_model(str(tiny_model_path), device="cpu")
    nodes = slicer_bridge.detect_volume_node(organ_node, model, DetectOptions(device="cpu"))
    for node in (nodes.reconstruction, nodes.anomaly_map, nodes.anomaly_mask):
        np.testing.assert_array_equal(node_ijk_to_ras(node), node_ijk_to_ras(organ_node))
        assert node.GetImageData().GetDimensions() == organ_node.GetImageData().GetDimensions()
    assert set(np.unique(slicer_util.arrayFromVolume(nodes.anomaly_mask))) <= {0, 1}
    assert nodes.summary["threshold"] > 0
    assert_same_snapshot(before, snapshot(organ_node))


def test_detect_through_worker_process_like_the_module(tmp_path, scene, organ_node, tiny_model_path):
    import sys

    from MedAutoencoderLib import jobs

    input_path = slicer_bridge.write_volume_for_worker(organ_node, str(tmp_path / "input.nrrd"))
    command = jobs.detect_command(sys.executable, [input_path], str(tmp_path / "outputs"),
                                  model_path=str(tiny_model_path), device="cpu")
    job = jobs.start_worker(command, jobs.worker_environment("cpu"), launch=slicer_util.launchConsoleProcess)
    assert job.wait() == 0, job.recent_output()
    result = slicer_bridge.read_worker_outputs(next(iter(job.outputs.values())))
    nodes = slicer_bridge.apply_detection_result(organ_node, result)
    count = scene.GetNumberOfNodes()
    for node in (nodes.reconstruction, nodes.anomaly_map, nodes.anomaly_mask):
        np.testing.assert_array_equal(node_ijk_to_ras(node), node_ijk_to_ras(organ_node))
    in_process = slicer_bridge.apply_detection_result(organ_node, result)
    assert in_process.as_dict() == nodes.as_dict() and scene.GetNumberOfNodes() == count
