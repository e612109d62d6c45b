"""What a reader of a detection needs in the scene: the findings table and a live threshold.

A *finding* is one connected component of the anomaly mask (components smaller than the model's minimum size are
removed, as in detection: :func:`MedAutoencoderLib.detection.labels_above`). Its row in the findings table
(a ``vtkMRMLTableNode``, saved with the scene, exportable to CSV) gives its volume, the peak and mean anomaly
inside it and its centroid in world RAS (where it is shown, the input's parent transform applied), and the region
where the model's summary names one.

:func:`apply_threshold` thresholds the stored anomaly map again, without the network: labelmap, segmentation,
table and summary follow; the volume's anomaly score does not depend on the threshold and stays.

Runs on the ``slicer-core`` wheel (no Qt); ``slicer`` and ``vtk`` are imported inside the functions, and so is
detection's component search, which brings torch: the module's panel reads a result's summary before the
dependencies are installed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.errors import MedAutoencoderError
from MedAutoencoderLib.slicer import bridge

#: Attribute of the anomaly map node holding the detection's summary (JSON), kept up to date by re-thresholding.
SUMMARY_ATTRIBUTE = "MedAutoencoder.Summary"
#: Attribute of every output node: the threshold its mask, segmentation and findings were made with.
THRESHOLD_ATTRIBUTE = "MedAutoencoder.Threshold"
#: Attribute of the anomaly map node: the model's calibrated threshold (absent when the model had none).
CALIBRATED_THRESHOLD_ATTRIBUTE = "MedAutoencoder.CalibratedThreshold"
#: Minimum component size of the model, used when a summary does not carry it (DetectionConfig's default).
DEFAULT_MIN_COMPONENT_ML = 0.2

#: Findings table columns: (name, unit, description). The three centroid columns are what "jump to" reads.
TABLE_COLUMNS: Tuple[Tuple[str, str, str], ...] = (
    ("Finding", "", "Number of the finding, largest first"),
    ("Volume", "mL", "Volume of the connected component"),
    ("Peak anomaly", "", "Highest anomaly map value inside the finding"),
    ("Mean anomaly", "", "Mean anomaly map value inside the finding"),
    ("R", "mm", "Centroid, right (world RAS)"),
    ("A", "mm", "Centroid, anterior (world RAS)"),
    ("S", "mm", "Centroid, superior (world RAS)"),
    ("Region", "", "Anatomical region, where the model knows the anatomy"),
)
_NUMERIC_COLUMNS = TABLE_COLUMNS[1:7]


@dataclass
class Finding:
    """One row of the findings table."""

    number: int
    volume_ml: float
    peak_anomaly: float
    mean_anomaly: float
    centroid_ras_mm: Tuple[float, float, float]
    region: str = ""

    @classmethod
    def from_component(cls, number: int, component: Mapping[str, Any]) -> "Finding":
        """A finding from one entry of a summary's ``components`` (missing values are NaN)."""
        return cls(number=number, volume_ml=float(component["volume_ml"]),
                   peak_anomaly=float(component.get("peak_anomaly", math.nan)),
                   mean_anomaly=float(component.get("mean_anomaly", math.nan)),
                   centroid_ras_mm=tuple(float(c) for c in component["centroid_ras_mm"]),
                   region=str(component.get("region", "")))


def findings_from_summary(summary: Mapping[str, Any]) -> List[Finding]:
    """The findings of a detection summary, numbered 1.. in its (largest first) order."""
    return [Finding.from_component(i + 1, c) for i, c in enumerate(summary.get("components") or [])]


# --------------------------------------------------------------------------------------------------
# Findings from an anomaly map


def world_grid(volume_node, voxels: Optional[np.ndarray] = None) -> sitk.Image:
    """An image with the node's world geometry (parent transform applied), in LPS like the library; its voxels
    are ``voxels`` (copied) or a single placeholder voxel where only the geometry is needed."""
    image = sitk.GetImageFromArray(voxels if voxels is not None else np.zeros((1, 1, 1), np.uint8))
    spacing, origin, direction = bridge.world_geometry(volume_node)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def anomaly_map_image(map_node) -> sitk.Image:
    """The anomaly map node's voxels on its world geometry."""
    import slicer.util

    return world_grid(map_node, slicer.util.arrayFromVolume(map_node))


def find_components(values: np.ndarray, grid: sitk.Image, threshold: float,
                    min_component_ml: float) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """The anomaly mask and its components (volume, centroid, peak and mean anomaly), exactly as detection makes
    them (:func:`MedAutoencoderLib.detection.component_labels_in_box`), from the map's voxels without a copy.

    Args:
        values: the anomaly map's voxels (k, j, i), e.g. ``slicer.util.arrayFromVolume(map_node)``.
        grid: an image with the map's world geometry (:func:`world_grid`).
        threshold: voxels above it are anomalous.
        min_component_ml: components smaller than this are dropped.

    Returns:
        The mask (uint8, shape of ``values``) and one dict per component, largest first.
    """
    from MedAutoencoderLib.detection import scoring  # imports torch: not when the module's panel opens

    min_voxels = scoring.min_component_voxels(scoring.voxel_volume_ml(grid), min_component_ml)
    box_labels, box = scoring.component_labels_in_box(values, threshold, min_voxels)
    mask = np.zeros(values.shape, np.uint8)
    mask[box] = box_labels > 0
    return mask, scoring.describe_labels_in_box(box_labels, box, grid, values)


# --------------------------------------------------------------------------------------------------
# Summary and threshold kept on the nodes


def read_summary(map_node) -> Dict[str, Any]:
    """The summary stored on an anomaly map node ({} when it has none)."""
    text = map_node.GetAttribute(SUMMARY_ATTRIBUTE) if map_node is not None else None
    try:
        return dict(json.loads(text)) if text else {}
    except ValueError:
        return {}


def _store(nodes: Sequence[Any], map_node, summary: Mapping[str, Any]) -> None:
    map_node.SetAttribute(SUMMARY_ATTRIBUTE, json.dumps(summary))
    if summary.get("calibrated_threshold") is not None:
        map_node.SetAttribute(CALIBRATED_THRESHOLD_ATTRIBUTE, repr(float(summary["calibrated_threshold"])))
    for node in nodes:
        if node is not None and summary.get("threshold") is not None:
            node.SetAttribute(THRESHOLD_ATTRIBUTE, repr(float(summary["threshold"])))


def calibrated_threshold(map_node) -> Optional[float]:
    """The model's calibrated threshold stored with a result, or None."""
    value = map_node.GetAttribute(CALIBRATED_THRESHOLD_ATTRIBUTE) if map_node is not None else None
    return float(value) if value else None


def threshold_range(map_node) -> Tuple[float, float]:
    """The range a threshold slider should cover: 0 to the map's highest value (at least a tiny positive span)."""
    import slicer.util

    high = float(np.max(slicer.util.arrayFromVolume(map_node))) if map_node.GetImageData() is not None else 0.0
    return 0.0, max(high, 1e-6)


# --------------------------------------------------------------------------------------------------
# The findings table node


def update_findings_table(input_node, findings: Sequence[Finding]):
    """Make (or refresh) ``<input>_findings``, one row per finding, columns :data:`TABLE_COLUMNS`."""
    import vtk

    table_node = bridge.get_or_create_output_node(input_node, bridge.ROLE_FINDINGS_TABLE, "vtkMRMLTableNode")
    table = vtk.vtkTable()
    number = vtk.vtkIntArray()
    number.SetName(TABLE_COLUMNS[0][0])
    table.AddColumn(number)
    numeric = []
    for name, _unit, _description in _NUMERIC_COLUMNS:
        column = vtk.vtkDoubleArray()
        column.SetName(name)
        table.AddColumn(column)
        numeric.append(column)
    region = vtk.vtkStringArray()
    region.SetName(TABLE_COLUMNS[-1][0])
    table.AddColumn(region)
    for finding in findings:
        number.InsertNextValue(finding.number)
        for column, value in zip(numeric, (finding.volume_ml, finding.peak_anomaly, finding.mean_anomaly,
                                           *finding.centroid_ras_mm)):
            column.InsertNextValue(float(value))
        region.InsertNextValue(finding.region)
    was_modifying = table_node.StartModify()
    table_node.SetAndObserveTable(table)
    for name, unit, description in TABLE_COLUMNS:
        table_node.SetColumnUnitLabel(name, unit)
        table_node.SetColumnDescription(name, description)
    table_node.SetLocked(True)  # the rows describe the segmentation; edits would only make them disagree
    table_node.EndModify(was_modifying)
    return table_node


def finding_position(table_node, row: int) -> Tuple[float, float, float]:
    """World RAS centroid (mm) of the finding in ``row`` (0-based) of a findings table."""
    table = table_node.GetTable()
    if not 0 <= row < table.GetNumberOfRows():
        raise MedAutoencoderError(f"'{table_node.GetName()}' has no row {row + 1}.")
    return tuple(float(table.GetValueByName(row, name).ToDouble()) for name in ("R", "A", "S"))


def write_findings_csv(table_node, path: str) -> str:
    """Write the findings table as CSV (what Slicer's "Export to file" of a table node writes)."""
    import slicer

    storage = slicer.vtkMRMLTableStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(table_node):
        raise MedAutoencoderError(f"Could not write the findings table '{table_node.GetName()}' to {path}.")
    return str(path)


# --------------------------------------------------------------------------------------------------
# Publishing a result and re-thresholding it


def publish_findings(input_node, map_node, mask_node, segmentation_node, summary: Dict[str, Any]):
    """After a detection result is written into the scene: the findings table from the summary's components,
    the summary and threshold stored on the output nodes. Returns the table node.

    A summary without components (a result made elsewhere) gets them from the mask and the map.
    """
    if "components" not in summary:
        from MedAutoencoderLib.detection import scoring  # imports torch: only for a result made elsewhere

        labels = scoring.labels_above(sitk.Cast(anomaly_map_image(mask_node), sitk.sitkFloat32), 0.5, 0.0)
        summary["components"] = scoring.describe_labels(labels, anomaly_map_image(map_node))
        summary["n_components"] = len(summary["components"])
        summary["anomalous_volume_ml"] = round(sum(c["volume_ml"] for c in summary["components"]), 4)
    table_node = update_findings_table(input_node, findings_from_summary(summary))
    _store((map_node, mask_node, segmentation_node, table_node), map_node, summary)
    return table_node


def result_nodes(input_node) -> Dict[str, Any]:
    """The output nodes of the last detection of ``input_node`` by role (empty when it has none)."""
    classes = {
        bridge.ROLE_RECONSTRUCTION: "vtkMRMLScalarVolumeNode",
        bridge.ROLE_ANOMALY_MAP: "vtkMRMLScalarVolumeNode",
        bridge.ROLE_ANOMALY_MASK: "vtkMRMLLabelMapVolumeNode",
        bridge.ROLE_ANOMALY_SEGMENTATION: "vtkMRMLSegmentationNode",
        bridge.ROLE_FINDINGS_TABLE: "vtkMRMLTableNode",
    }
    if input_node is None:
        return {}
    nodes = {role: bridge.find_output_node(input_node, role, name) for role, name in classes.items()}
    if nodes[bridge.ROLE_ANOMALY_MAP] is None:
        return {}
    return {role: node for role, node in nodes.items() if node is not None}


def apply_threshold(nodes: Mapping[str, Any], threshold: float,
                    min_component_ml: Optional[float] = None) -> Dict[str, Any]:
    """Threshold a result's anomaly map again, in place, without the network.

    The labelmap, the segmentation, the findings table and the stored summary follow (flagged volume, number and
    list of components); the anomaly score stays. Geometry is untouched: only voxel values change.

    Args:
        nodes: the result's nodes by role, as ``detectAnomalies`` returns them (``anomaly_map`` and
            ``anomaly_mask`` needed; the segmentation and table are made when missing).
        threshold: the new threshold (finite, >= 0).
        min_component_ml: minimum finding size; None: the one the detection used (from its summary).

    Returns:
        The updated summary.

    Raises:
        MedAutoencoderError: a bad threshold, missing nodes, or an input volume no longer in the scene.
    """
    import slicer
    import slicer.util

    threshold = float(threshold)
    if not (math.isfinite(threshold) and threshold >= 0):
        raise MedAutoencoderError(f"The threshold must be a finite number >= 0, not {threshold!r}.")
    map_node, mask_node = nodes.get(bridge.ROLE_ANOMALY_MAP), nodes.get(bridge.ROLE_ANOMALY_MASK)
    if map_node is None or mask_node is None:
        raise MedAutoencoderError("Re-thresholding needs the result's anomaly map and anomaly mask nodes.")
    input_node = map_node.GetNodeReference(bridge.INPUT_REFERENCE)
    if input_node is None:
        raise MedAutoencoderError(f"The input volume of '{map_node.GetName()}' is no longer in the scene.")
    summary = read_summary(map_node)
    if min_component_ml is None:
        min_component_ml = float(summary.get("min_component_ml", DEFAULT_MIN_COMPONENT_ML))
    old_segmentation = nodes.get(bridge.ROLE_ANOMALY_SEGMENTATION)
    shown_in_3d = old_segmentation is not None and old_segmentation.GetSegmentation().ContainsRepresentation(
        slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName())
    mask, components = find_components(slicer.util.arrayFromVolume(map_node), world_grid(map_node), threshold,
                                       min_component_ml)
    slicer.util.updateVolumeFromArray(mask_node, mask)  # voxels only: the node keeps its IJK-to-RAS
    segmentation_node = bridge.update_anomaly_segmentation(input_node, mask_node)
    if shown_in_3d:  # importing the new labelmap replaces the segment, its 3D surface with it
        segmentation_node.CreateClosedSurfaceRepresentation()
    table_node = update_findings_table(input_node, [Finding.from_component(i + 1, c) for i, c in enumerate(components)])
    summary.update(threshold=threshold, min_component_ml=min_component_ml, components=components,
                   n_components=len(components),
                   anomalous_volume_ml=round(sum(c["volume_ml"] for c in components), 4),
                   threshold_source=("calibrated" if summary.get("calibrated_threshold") is not None
                                     and math.isclose(threshold, float(summary["calibrated_threshold"]))
                                     else "user"))
    bridge.show_anomaly_map_colors(map_node, threshold)
    _store((map_node, mask_node, segmentation_node, table_node), map_node, summary)
    return summary


def jump_to_finding(scene, table_node, row: int) -> Tuple[float, float, float]:
    """Centre every slice view on the finding in ``row`` (0-based) of a findings table, and select the result's
    anomaly segment in the Segment Editor (where one has been opened), ready to edit it there; returns the
    finding's position."""
    import slicer

    position = finding_position(table_node, row)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *position, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    input_node = table_node.GetNodeReference(bridge.INPUT_REFERENCE)
    segmentation = bridge.find_output_node(input_node, bridge.ROLE_ANOMALY_SEGMENTATION,
                                           "vtkMRMLSegmentationNode") if input_node is not None else None
    if segmentation is not None:
        for editor in scene.GetNodesByClass("vtkMRMLSegmentEditorNode"):
            editor.SetAndObserveSegmentationNode(segmentation)
            editor.SetSelectedSegmentID(bridge.ANOMALY_SEGMENT_ID)
    return position


def save_report(nodes: Mapping[str, Any], path: str) -> List[str]:
    """Write the report of a result (:func:`MedAutoencoderLib.slicer.report.write_report`) from its nodes: slices
    through the largest findings, the findings table, model, threshold and date, plus the summary JSON.

    Args:
        nodes: the result's nodes by role (``reconstruction``, ``anomaly_map``, ``anomaly_mask``).
        path: the report's file name (``.png``; ``.pdf`` and ``.json`` are written beside it).

    Returns:
        The paths written.
    """
    import slicer.util

    from MedAutoencoderLib.slicer.report import ReportData, write_report

    map_node = nodes.get(bridge.ROLE_ANOMALY_MAP)
    input_node = map_node.GetNodeReference(bridge.INPUT_REFERENCE) if map_node is not None else None
    if input_node is None or nodes.get(bridge.ROLE_RECONSTRUCTION) is None or \
            nodes.get(bridge.ROLE_ANOMALY_MASK) is None:
        raise MedAutoencoderError("A report needs the input volume and the result's reconstruction, anomaly map "
                                  "and anomaly mask in the scene.")
    summary = read_summary(map_node)
    findings = findings_from_summary(summary)
    world_to_ijk = np.linalg.inv(bridge._ijk_to_world(map_node))
    slices = [int(round((world_to_ijk @ np.array([*f.centroid_ras_mm, 1.0]))[2])) for f in findings]
    data = ReportData(
        input_name=input_node.GetName(),
        image=slicer.util.arrayFromVolume(input_node),
        reconstruction=slicer.util.arrayFromVolume(nodes[bridge.ROLE_RECONSTRUCTION]),
        anomaly_map=slicer.util.arrayFromVolume(map_node),
        mask=slicer.util.arrayFromVolume(nodes[bridge.ROLE_ANOMALY_MASK]),
        spacing_ijk=tuple(float(s) for s in map_node.GetSpacing()),
        findings=findings, finding_slices=slices, summary=summary)
    return write_report(data, path)
