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

from MedAutoencoderLib.slicer import bridge as slicer_bridge  # noqa: E402

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
    from MedAutoencoderLib.data.synthetic import toy_volume

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
    scale = map_display.GetColorNode().GetScalarsToColors()  # dark for low values, bright for high ones
    low_rgb, high_rgb = [0.0] * 3, [0.0] * 3  # (Rainbow, used before: red for low, purple for high)
    scale.GetColor(scale.GetRange()[0], low_rgb)
    scale.GetColor(scale.GetRange()[1], high_rgb)
    assert sum(low_rgb) < 0.1 and sum(high_rgb) > 2.9
    assert map_display.GetApplyThreshold() and map_display.GetLowerThreshold() == pytest.approx(0.4)  # half of 0.8
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_detect_through_worker_process_like_the_module(tmp_path, scene, organ_node, tiny_model_path):
    import sys

    from MedAutoencoderLib.worker import jobs

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


def rotation_about_r(scene, name: str = "registration"):
    """A linear transform turning axial into coronal (90 degrees about R) and shifting 50 mm."""
    matrix = vtk.vtkMatrix4x4()
    for row, col, value in ((1, 1, 0.0), (1, 2, -1.0), (2, 1, 1.0), (2, 2, 0.0), (0, 3, 50.0)):
        matrix.SetElement(row, col, value)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    transform.SetMatrixTransformToParent(matrix)
    return transform


@pytest.mark.slow
def test_a_volume_under_a_transform_is_analysed_where_it_is_shown(scene, tiny_model_path):
    """The same voxels under a (not hardened) transform and hardened give the same result: the model sees the
    volume where the user sees it. Outputs keep the node's own geometry under the same transform."""
    from MedAutoencoderLib import api
    from MedAutoencoderLib.config import DetectOptions
    from MedAutoencoderLib.data.synthetic import toy_volume

    voxels = sitk.GetArrayFromImage(toy_volume(np.random.default_rng(1), shape=(28, 24, 20)))
    geometry = np.diag([1.0, 1.2, 1.5, 1.0])
    under = slicer_util.addVolumeFromArray(voxels, geometry, "under a transform")
    hardened = slicer_util.addVolumeFromArray(voxels, geometry, "hardened")
    for node in (under, hardened):
        node.SetAndObserveTransformNodeID(rotation_about_r(scene).GetID())
    hardened.HardenTransform()

    as_shown, as_hardened = slicer_bridge.volume_node_to_sitk(under), slicer_bridge.volume_node_to_sitk(hardened)
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(as_shown, getter)(), getattr(as_hardened, getter)(), atol=1e-9)

    model = api.load_model(str(tiny_model_path), device="cpu")
    first = slicer_bridge.detect_volume_node(under, model, DetectOptions(device="cpu"))
    second = slicer_bridge.detect_volume_node(hardened, model, DetectOptions(device="cpu"))
    np.testing.assert_array_equal(slicer_util.arrayFromVolume(first.anomaly_map),
                                  slicer_util.arrayFromVolume(second.anomaly_map))
    for node in (first.reconstruction, first.anomaly_map, first.anomaly_mask):
        np.testing.assert_array_equal(node_ijk_to_ras(node), node_ijk_to_ras(under))
        assert node.GetTransformNodeID() == under.GetTransformNodeID()


def test_a_volume_under_a_non_linear_transform_is_refused_with_its_name(scene, input_node):
    warp = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point in ((0, 0, 0), (10, 0, 0), (0, 10, 0), (0, 0, 10)):
        source.InsertNextPoint(point)
        target.InsertNextPoint([c + (2.0 if i == 0 else 0.0) for i, c in enumerate(point)])
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    transform = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    transform.SetAndObserveTransformToParent(warp)
    input_node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(slicer_bridge.InputImageError, match="'patient T1' is under a non-linear transform"):
        slicer_bridge.volume_node_to_sitk(input_node)


def test_bad_voxels_and_labelmaps_are_refused_naming_the_node(scene, input_node, tmp_path):
    voxels = slicer_util.arrayFromVolume(input_node)
    voxels[1, 2, 3] = np.nan
    slicer_util.arrayFromVolumeModified(input_node)
    for convert in (slicer_bridge.volume_node_to_sitk,
                    lambda node: slicer_bridge.write_volume_for_worker(node, str(tmp_path / "input.nrrd"))):
        with pytest.raises(slicer_bridge.InputImageError, match="'patient T1': contains NaN"):
            convert(input_node)
    assert not (tmp_path / "input.nrrd").exists()
    labels = slicer_util.addVolumeFromArray(np.ones(SHAPE_KJI, np.uint8), np.eye(4), "tumour labels",
                                            "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(slicer_bridge.InputImageError, match="'tumour labels' is a labelmap"):
        slicer_bridge.volume_node_to_sitk(labels)


def test_a_result_of_a_volume_moved_while_it_ran_is_refused_as_such(scene, input_node):
    """The user nudged the input's transform during a background detection: the result was refused as "not on
    the grid of the input (origin differs)", which says nothing of what happened."""
    image = slicer_bridge.volume_node_to_sitk(input_node)
    at_start = slicer_bridge.world_geometry(input_node)
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 2.0)  # 2 mm to the right
    input_node.GetParentTransformNode().SetMatrixTransformToParent(matrix)
    with pytest.raises(slicer_bridge.MedAutoencoderError, match="'patient T1' was moved .* while the detection ran"):
        slicer_bridge.apply_detection_result(input_node, result_on_grid(image), at_start)
    assert not [n for n in scene.GetNodesByClass("vtkMRMLScalarVolumeNode") if n.GetAttribute(
        slicer_bridge.ROLE_ATTRIBUTE)]  # nothing written
    matrix.SetElement(0, 3, 0.0)  # moved back: the result stands
    input_node.GetParentTransformNode().SetMatrixTransformToParent(matrix)
    slicer_bridge.apply_detection_result(input_node, result_on_grid(image), at_start)


def test_a_tensor_volume_is_refused_naming_the_node(scene):
    """A DTI volume is a scalar-volume subclass with one (tensor) component: it failed inside SimpleITK."""
    tensors = scene.AddNewNodeByClass("vtkMRMLDiffusionTensorVolumeNode", "brain DTI")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    tensors.SetAndObserveImageData(image)
    with pytest.raises(slicer_bridge.InputImageError, match="'brain DTI' holds tensors"):
        slicer_bridge.volume_node_to_sitk(tensors)


def test_the_preselected_input_is_a_plain_scalar_volume_and_no_output(scene, input_node):
    """The first node of the class could be an RGB photo (a vector volume, which the input selector does not
    list) or an earlier run's anomaly map."""
    scene.RemoveNode(input_node)
    slicer_util.addVolumeFromArray(np.zeros((4, 4, 4, 3), np.uint8), np.eye(4), "photo", "vtkMRMLVectorVolumeNode")
    slicer_util.addVolumeFromArray(np.ones(SHAPE_KJI, np.uint8), np.eye(4), "labels", "vtkMRMLLabelMapVolumeNode")
    assert slicer_bridge.default_input_volume(scene) is None
    scan = slicer_util.addVolumeFromArray(np.random.default_rng(1).normal(100, 20, SHAPE_KJI).astype(np.float32),
                                          ijk_to_ras_array(), "scan")
    nodes = slicer_bridge.apply_detection_result(scan, result_on_grid(slicer_bridge.volume_node_to_sitk(scan)))
    scene.RemoveNode(scan)
    assert nodes.anomaly_map.GetScene() is scene and slicer_bridge.default_input_volume(scene) is None
    later = slicer_util.addVolumeFromArray(np.zeros(SHAPE_KJI, np.float32), np.eye(4), "later scan")
    assert slicer_bridge.default_input_volume(scene) is later


def test_outputs_go_into_the_inputs_study_unless_the_user_moved_them(scene, input_node):
    """New nodes land at the scene's top level, outside a DICOM-loaded scan's study (DICOM export of the
    segmentation then does not find its series)."""
    hierarchy = scene.GetSubjectHierarchyNode()
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "study")
    hierarchy.CreateItem(study, input_node)  # (slicer-core makes no items by itself, as Slicer's plugins do)
    image = slicer_bridge.volume_node_to_sitk(input_node)
    nodes = slicer_bridge.apply_detection_result(input_node, result_on_grid(image))
    outputs = [nodes.reconstruction, nodes.anomaly_map, nodes.anomaly_mask, nodes.segmentation]
    assert [hierarchy.GetItemParent(hierarchy.GetItemByDataNode(n)) for n in outputs] == [study] * 4
    elsewhere = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "my folder")
    hierarchy.SetItemParent(hierarchy.GetItemByDataNode(nodes.anomaly_map), elsewhere)
    slicer_bridge.apply_detection_result(input_node, result_on_grid(image))
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(nodes.anomaly_map)) == elsewhere


def test_outputs_the_user_renamed_or_copied_are_never_overwritten(scene, input_node):
    first = slicer_bridge.apply_detection_result(input_node, result_on_grid(slicer_bridge.volume_node_to_sitk(input_node)))
    first.anomaly_mask.SetName("mask I keep")
    kept_mask = np.array(slicer_util.arrayFromVolume(first.anomaly_mask), copy=True)
    copy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    copy.Copy(first.anomaly_map)  # a copy carries the attributes and references of the original
    copy.SetAndObserveImageData(vtk.vtkImageData())
    copy.GetImageData().DeepCopy(first.anomaly_map.GetImageData())
    kept_map = np.array(slicer_util.arrayFromVolume(copy), copy=True)
    scene.RemoveNode(first.anomaly_map)

    second = slicer_bridge.apply_detection_result(input_node, result_on_grid(slicer_bridge.volume_node_to_sitk(input_node), 2.0))
    assert second.anomaly_mask is not first.anomaly_mask and first.anomaly_mask.GetName() == "mask I keep"
    assert second.anomaly_map is not copy
    np.testing.assert_array_equal(slicer_util.arrayFromVolume(first.anomaly_mask), kept_mask)
    np.testing.assert_array_equal(slicer_util.arrayFromVolume(copy), kept_map)
    assert second.reconstruction is first.reconstruction  # left as it was made: updated in place


def test_an_imported_scenes_outputs_stay_with_their_own_input(scene, input_node, tmp_path):
    """Imported nodes are renumbered; an output must follow its input's new ID, not take another volume's."""
    first = slicer_bridge.apply_detection_result(input_node, result_on_grid(slicer_bridge.volume_node_to_sitk(input_node)))
    first_map_id = first.anomaly_map.GetID()
    voxels = np.array(slicer_util.arrayFromVolume(input_node), copy=True)
    scene.SetURL(str(tmp_path / "a.mrml"))
    assert scene.Commit()
    scene.Clear(0)
    volumes = [slicer_util.addVolumeFromArray(np.random.default_rng(3).normal(50, 5, SHAPE_KJI).astype(np.float32),
                                              ijk_to_ras_array(), name) for name in ("patient B", "C", "D", "E")]
    other = volumes[0]  # the four take the IDs of the saved input and its three output volumes
    scene.SetURL(str(tmp_path / "a.mrml"))
    scene.Import()
    imported_map = next(n for n in scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
                        if n.GetName() == first.anomaly_map.GetName())
    imported_input = next(n for n in scene.GetNodesByClass("vtkMRMLScalarVolumeNode") if n.GetName() == "patient T1")
    assert imported_map.GetID() != first_map_id  # renumbered
    assert imported_map.GetNodeReferenceID(slicer_bridge.INPUT_REFERENCE) == imported_input.GetID()
    result = slicer_bridge.apply_detection_result(other, result_on_grid(slicer_bridge.volume_node_to_sitk(other)))
    assert result.anomaly_map is not imported_map and result.anomaly_map.GetName() == "patient B_anomaly_map"
    # run again on the imported input: its renumbered outputs are reused (they were duplicated under equal names)
    slicer_util.updateVolumeFromArray(imported_input, voxels)  # (the scene was saved without its voxel files)
    count = scene.GetNumberOfNodes()
    again = slicer_bridge.apply_detection_result(imported_input, result_on_grid(
        slicer_bridge.volume_node_to_sitk(imported_input)))
    assert again.anomaly_map is imported_map and scene.GetNumberOfNodes() == count


def test_unreadable_worker_outputs_are_a_clear_error(tmp_path):
    with pytest.raises(slicer_bridge.MedAutoencoderError, match="could not be read back"):
        slicer_bridge.read_worker_outputs({"summary": str(tmp_path / "missing.json")})
