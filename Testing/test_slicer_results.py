"""Findings table, live threshold, result layout and report on slicer-core's real MRML scene.

Inputs are rotated about an oblique axis, anisotropic and under a parent transform, so that a finding's centroid
is only right if voxel indices go through the whole world geometry.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not available for this Python")
vtk = pytest.importorskip("vtk")
slicer_util = pytest.importorskip("slicer.util")

from MedAutoencoderLib.slicer import bridge as slicer_bridge  # noqa: E402
from MedAutoencoderLib.detection import threshold_mask  # noqa: E402
from MedAutoencoderLib.slicer import report, results, views  # noqa: E402
from test_slicer_bridge import (  # noqa: E402,F401
    matrix_to_array,
    node_ijk_to_ras,
    organ_node,
    rotation_matrix,
    scene,
    tiny_model_path,
)

SHAPE_KJI = (18, 22, 26)
SPACING = (0.8, 1.1, 2.2)
ORIGIN_RAS = (-20.0, 14.0, 3.5)
#: Blobs (k, j, i) slices and their anomaly value: a strong one, a weaker one, and one too small to count.
STRONG = ((slice(4, 8), slice(5, 10), slice(6, 12)), 3.0)
WEAK = ((slice(11, 14), slice(12, 17), slice(15, 20)), 1.5)
SPECK = ((slice(15, 16), slice(2, 3), slice(2, 3)), 4.0)


def ijk_to_ras() -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_matrix() @ np.diag(SPACING)
    matrix[:3, 3] = ORIGIN_RAS
    return matrix


@pytest.fixture()
def input_node(scene):  # noqa: F811
    voxels = np.random.default_rng(2).normal(100.0, 10.0, SHAPE_KJI).astype(np.float32)
    node = slicer_util.addVolumeFromArray(voxels, ijk_to_ras(), "patient T1")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    shift = vtk.vtkMatrix4x4()
    for row, value in enumerate((5.0, -7.0, 11.0)):
        shift.SetElement(row, 3, value)
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    return node


def world_matrix(node) -> np.ndarray:
    """IJK to world RAS of ``node``: its own matrix under its parent transform."""
    matrix = vtk.vtkMatrix4x4()
    node.GetParentTransformNode().GetMatrixTransformToWorld(matrix)
    return matrix_to_array(matrix) @ node_ijk_to_ras(node)


def blob_map() -> np.ndarray:
    voxels = np.zeros(SHAPE_KJI, np.float32)
    for where, value in (STRONG, WEAK, SPECK):
        voxels[where] = value
    voxels[STRONG[0]][1, 2, 3] = 3.5  # one peak inside the strong blob
    return voxels


def blob_centre_ras(node, where) -> np.ndarray:
    k, j, i = (np.mean(np.arange(s.start, s.stop)) for s in where)
    return (world_matrix(node) @ np.array([i, j, k, 1.0]))[:3]


@pytest.fixture()
def detected(input_node):
    """A detection result written as the module writes one: map with the three blobs, threshold 1.0."""
    grid = slicer_bridge.volume_node_to_sitk(input_node)

    def like(array):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(grid)
        return image

    anomaly_map = like(blob_map())
    mask = threshold_mask(anomaly_map, 1.0, 0.01)
    result = slicer_bridge.WorkerResult(
        reconstruction=like(sitk.GetArrayFromImage(grid) * 0.9), anomaly_map=anomaly_map, anomaly_mask=mask,
        summary={"threshold": 1.0, "calibrated_threshold": 1.0, "min_component_ml": 0.01, "anomaly_score": 2.7,
                 "model": "tiny.pt", "threshold_source": "calibrated"})
    return slicer_bridge.apply_detection_result(input_node, result)


def table_rows(table_node) -> list:
    table = table_node.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    return [{name: table.GetValueByName(r, name).ToString() for name in names} for r in range(table.GetNumberOfRows())]


def voxel_ml() -> float:
    return float(np.prod(SPACING)) / 1000.0


def test_findings_table_has_one_row_per_component_at_its_place_in_ras(input_node, detected):
    nodes = detected.as_dict()
    table = nodes["findings_table"]
    assert table.IsA("vtkMRMLTableNode") and table.GetName() == "patient T1_findings_table"
    rows = table_rows(table)
    assert len(rows) == 2  # the speck is under the minimum size
    strong, weak = rows
    assert float(strong["Volume"]) == pytest.approx(4 * 5 * 6 * voxel_ml(), rel=1e-3)
    assert float(strong["Peak anomaly"]) == pytest.approx(3.5)
    assert float(strong["Mean anomaly"]) == pytest.approx((3.0 * 119 + 3.5) / 120, rel=1e-4)
    for row, blob in ((strong, STRONG), (weak, WEAK)):
        position = [float(row[axis]) for axis in "RAS"]
        np.testing.assert_allclose(position, blob_centre_ras(input_node, blob[0]), atol=0.01)
    assert detected.summary["anomalous_volume_ml"] == pytest.approx(sum(float(r["Volume"]) for r in rows))
    assert strong["Region"] == ""  # no anatomy in this model's summary: left empty, not guessed
    assert table.GetColumnUnitLabel("Volume") == "mL"


def test_rethresholding_moves_mask_segmentation_table_and_volume_together(scene, input_node, detected):  # noqa: F811
    nodes = detected.as_dict()
    geometry_before = {role: node_ijk_to_ras(nodes[role]) for role in ("anomaly_map", "anomaly_mask")}
    # at 3.2 only the strong blob's one peak voxel is above: under the minimum size, like the speck always
    for threshold, expected_findings in ((2.0, 1), (0.5, 2), (3.2, 0), (1.0, 2)):
        summary = results.apply_threshold(nodes, threshold)
        mask = slicer_util.arrayFromVolume(nodes["anomaly_mask"])
        expected_mask = np.zeros(SHAPE_KJI, bool)
        for where, _ in (STRONG, WEAK):
            above = blob_map()[where] > threshold
            if above.sum() * voxel_ml() >= 0.01:
                expected_mask[where] = above
        np.testing.assert_array_equal(mask > 0, expected_mask)
        exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
            nodes["anomaly_segmentation"], exported, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        assert int((slicer_util.arrayFromVolume(exported) > 0).sum()) == int(expected_mask.sum())
        scene.RemoveNode(exported)
        rows = table_rows(nodes["findings_table"])
        assert len(rows) == summary["n_components"] == expected_findings
        flagged = expected_mask.sum() * voxel_ml()
        assert summary["anomalous_volume_ml"] == pytest.approx(flagged, rel=1e-3)
        assert sum(float(r["Volume"]) for r in rows) == pytest.approx(flagged, rel=1e-3)
        assert summary["threshold"] == threshold and summary["anomaly_score"] == 2.7  # the score stays
        assert results.read_summary(nodes["anomaly_map"]) == summary
        for role in ("anomaly_map", "anomaly_mask", "anomaly_segmentation", "findings_table"):  # what depends on it
            node = nodes[role]
            assert float(node.GetAttribute(results.THRESHOLD_ATTRIBUTE)) == threshold
        for role, matrix in geometry_before.items():
            np.testing.assert_array_equal(node_ijk_to_ras(nodes[role]), matrix)
    assert summary["threshold_source"] == "calibrated"  # 1.0 is the calibrated value
    assert results.apply_threshold(nodes, 1.5)["threshold_source"] == "user"
    assert results.calibrated_threshold(nodes["anomaly_map"]) == 1.0


def test_a_bad_threshold_or_a_lost_input_is_one_clear_error(scene, input_node, detected):  # noqa: F811
    nodes = detected.as_dict()
    with pytest.raises(results.MedAutoencoderError, match="finite number"):
        results.apply_threshold(nodes, float("nan"))
    scene.RemoveNode(input_node)
    with pytest.raises(results.MedAutoencoderError, match="no longer in the scene"):
        results.apply_threshold(nodes, 2.0)


def test_an_earlier_result_is_found_from_its_input(input_node, detected):
    assert results.result_nodes(input_node) == detected.as_dict()


def test_findings_table_exports_csv_and_is_saved_with_the_scene(scene, input_node, detected, tmp_path):  # noqa: F811
    table = detected.findings_table
    path = results.write_findings_csv(table, str(tmp_path / "findings.csv"))
    with open(path, newline="", encoding="utf-8") as file:
        exported = list(csv.DictReader(file))
    assert [row["Finding"] for row in exported] == ["1", "2"]
    assert float(exported[0]["R"]) == pytest.approx(float(table_rows(table)[0]["R"]))

    storage = table.CreateDefaultStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "patient_findings.tsv"))
    table.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.WriteData(table)
    rows_before = table_rows(table)
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    scene.Clear(0)
    scene.SetURL(str(tmp_path / "scene.mrml"))
    scene.Import()
    (loaded,) = [n for n in scene.GetNodesByClass("vtkMRMLTableNode") if n.GetName() == table.GetName()]
    assert [{k: float(v) if k != "Region" else v for k, v in row.items()} for row in table_rows(loaded)] == \
        [{k: float(v) if k != "Region" else v for k, v in row.items()} for row in rows_before]
    assert loaded.GetAttribute(results.THRESHOLD_ATTRIBUTE) == "1.0"


def test_clicking_a_finding_centres_the_slice_views_on_it_and_selects_its_segment(scene, input_node, detected):  # noqa: F811
    slice_nodes = []
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal")):
        node = slicer.vtkMRMLSliceNode()
        node.SetName(name)
        node.SetLayoutName(name)
        node.SetOrientation(orientation)
        scene.AddNode(node)
        slice_nodes.append(node)
    editor = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")  # as the Segment Editor makes it
    position = results.jump_to_finding(scene, detected.findings_table, 1)
    assert editor.GetSegmentationNode() is detected.segmentation
    assert editor.GetSelectedSegmentID() == slicer_bridge.ANOMALY_SEGMENT_ID
    np.testing.assert_allclose(position, blob_centre_ras(input_node, WEAK[0]), atol=0.01)
    for node in slice_nodes:
        np.testing.assert_allclose(matrix_to_array(node.GetSliceToRAS())[:3, 3], position, atol=1e-6)
    with pytest.raises(results.MedAutoencoderError, match="no row 3"):
        results.jump_to_finding(scene, detected.findings_table, 2)


def test_result_layout_links_three_views_and_restores_the_users_layout(scene, input_node, detected):  # noqa: F811
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    layout.SetViewArrangement(layout.SlicerLayoutFourUpView)
    previous = views.show_result_layout(scene)
    assert previous == layout.SlicerLayoutFourUpView and layout.GetViewArrangement() == views.LAYOUT_ID
    assert views.show_result_layout(scene) is None  # shown again: the user's layout stays the one to restore
    assert all(f'singletontag="{name}"' in layout.GetCurrentLayoutDescription() for name in views.VIEW_NAMES)
    with pytest.raises(views.MedAutoencoderError, match="not shown"):  # the views are made by Slicer's layout manager
        views.configure_result_views(scene, input_node, detected.as_dict())
    for name in views.VIEW_NAMES:  # as the layout manager makes them
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        scene.AddNode(composite)
    composites = views.configure_result_views(scene, input_node, detected.as_dict(), opacity=0.3)
    shown = {name: (c.GetBackgroundVolumeID(), c.GetForegroundVolumeID()) for name, c in composites.items()}
    assert shown == {views.INPUT_VIEW: (input_node.GetID(), None),
                     views.RECONSTRUCTION_VIEW: (detected.reconstruction.GetID(), None),
                     views.OVERLAY_VIEW: (input_node.GetID(), detected.anomaly_map.GetID())}
    assert all(c.GetLinkedControl() for c in composites.values())
    assert composites[views.OVERLAY_VIEW].GetForegroundOpacity() == pytest.approx(0.3)
    assert detected.segmentation.GetSegmentation().ContainsRepresentation("Closed surface")
    results.apply_threshold(detected.as_dict(), 2.0)  # a new threshold keeps the 3D surface, of the new mask
    surface = vtk.vtkPolyData()
    assert detected.segmentation.GetClosedSurfaceRepresentation(slicer_bridge.ANOMALY_SEGMENT_ID, surface)
    assert surface.GetNumberOfPoints() > 0
    assert views.set_overlay_opacity(scene, detected.anomaly_map, 0.8) == 1
    assert composites[views.OVERLAY_VIEW].GetForegroundOpacity() == pytest.approx(0.8)
    views.restore_layout(scene, previous)
    assert layout.GetViewArrangement() == layout.SlicerLayoutFourUpView


def test_report_png_pdf_and_json_are_written(input_node, detected, tmp_path):
    path = report.default_report_path(str(tmp_path), input_node.GetName())
    written = results.save_report(detected.as_dict(), path)
    assert [p[-4:] for p in written] == [".png", ".pdf", "json"]
    for file in written:
        assert (tmp_path / file).stat().st_size > 1000
    assert open(written[0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert open(written[1], "rb").read(5) == b"%PDF-"
    saved = json.loads(open(written[2], encoding="utf-8").read())
    assert saved["summary"]["threshold"] == 1.0 and len(saved["findings"]) == 2
    assert "Model: tiny.pt" in saved["facts"][1]


def test_report_without_matplotlib_is_a_montage_of_the_same_slices(input_node, detected, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):  # as in a bare Slicer
        monkeypatch.setitem(sys.modules, name, None)
    written = results.save_report(detected.as_dict(), str(tmp_path / "r.png"))
    assert written == [str(tmp_path / "r.png"), str(tmp_path / "r.json")]
    picture = sitk.ReadImage(written[0])
    assert picture.GetSize() == (3 * SHAPE_KJI[2], 2 * SHAPE_KJI[1])  # three panels wide, a row per finding


@pytest.mark.slow
def test_a_real_detection_rethresholded_at_its_own_threshold_is_unchanged(organ_node, tiny_model_path):
    """The live threshold finds exactly the components detection found (the same code), and the summary names the
    model and its calibrated threshold."""
    from MedAutoencoderLib import api
    from MedAutoencoderLib.config import DetectOptions

    model = api.load_model(str(tiny_model_path), device="cpu")
    detected = slicer_bridge.detect_volume_node(organ_node, model, DetectOptions(device="cpu", threshold=0.05))
    nodes = detected.as_dict()
    assert detected.summary["model"] == tiny_model_path.stem
    assert detected.summary["calibrated_threshold"] == pytest.approx(model.record.threshold)
    assert detected.summary["threshold_source"] == "user"
    mask_before = np.array(slicer_util.arrayFromVolume(nodes["anomaly_mask"]), copy=True)
    rows_before = table_rows(nodes["findings_table"])
    assert mask_before.any() and len(rows_before) == detected.summary["n_components"]
    summary = results.apply_threshold(nodes, 0.05)
    np.testing.assert_array_equal(slicer_util.arrayFromVolume(nodes["anomaly_mask"]), mask_before)
    assert table_rows(nodes["findings_table"]) == rows_before
    assert summary["anomalous_volume_ml"] == pytest.approx(detected.summary["anomalous_volume_ml"])


@pytest.mark.slow
def test_what_the_panel_reads_of_a_result_needs_neither_torch_nor_scipy():
    """The module's panel reads a result's summary whenever it updates, also before the dependencies are installed
    (a fresh Slicer has no torch); only re-thresholding imports detection's component search."""
    code = ("import sys\n"
            "for name in ('torch', 'scipy', 'monai'):\n"
            "    sys.modules[name] = None  # importing it raises ImportError\n"
            "from MedAutoencoderLib.slicer import report, results, views\n"
            "assert results.read_summary(None) == {} and results.calibrated_threshold(None) is None\n"
            "assert results.result_nodes(None) == {} and views.VIEW_NAMES and report.MAX_TABLE_ROWS\n")
    finished = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr


def test_domain_text_says_when_the_input_was_out_of_the_models_domain_and_only_then():
    assert report.domain_text({}) == ""
    assert report.domain_text({"error_level": {"map_divided_by": 1.2, "out_of_domain": False}}) == ""
    text = report.domain_text({"error_level": {"map_divided_by": 2.304, "out_of_domain": True}})
    assert "2.3x worse" in text and "calibrate" in text


def test_contrast_text_names_the_contrast_as_the_summary_states_it():
    assert report.contrast_text({}) == ""
    assert report.contrast_text({"contrast": {"name": "FLAIR", "enhanced": False, "source": "tissue ordering"}}) \
        == "FLAIR"
    assert report.contrast_text({"contrast": {"name": "T1", "enhanced": True, "source": "dicom"}}) \
        == "T1 (contrast-enhanced)"
    assert report.contrast_text({"contrast": {"name": "T2", "enhanced": False, "source": "user"}}) \
        == "T2 (stated by the user)"
