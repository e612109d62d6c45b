"""Bridge between Slicer's MRML scene and the library's SimpleITK world.

The library works on ``SimpleITK.Image`` objects (LPS physical space); Slicer keeps volumes as MRML nodes
(RAS physical space, geometry in an IJK-to-RAS matrix). Everything that converts between the two, and every
piece of node-level work of the Slicer module that does not need the running application (creating and
updating output nodes, colour tables, segmentations, writing a node for the worker process), lives here so
that it runs, and is tested, on the ``slicer-core`` wheel without a Slicer application.

``slicer`` and ``vtk`` are imported inside the functions only: importing ``MedAutoencoderLib`` must work in a
plain Python without Slicer.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError, MedAutoencoderError

#: Node attribute naming what a node produced by this module is (one of the ``ROLE_*`` values).
ROLE_ATTRIBUTE = "MedAutoencoder.Role"
#: Node attribute holding the ID of the input volume an output node was computed from.
INPUT_ATTRIBUTE = "MedAutoencoder.InputNodeID"

ROLE_RECONSTRUCTION = "reconstruction"
ROLE_ANOMALY_MAP = "anomaly_map"
ROLE_ANOMALY_MASK = "anomaly_mask"
ROLE_ANOMALY_SEGMENTATION = "anomaly_segmentation"
ROLE_MASK_COLORS = "anomaly_mask_colors"

#: Segment ID used for the anomaly segment; fixed so re-running replaces the same segment.
ANOMALY_SEGMENT_ID = "anomaly"
ANOMALY_COLOR = (1.0, 0.2, 0.2)
#: Colour node shown for the anomaly map (one of Slicer's default colour tables).
ANOMALY_MAP_COLOR_NODE_ID = "vtkMRMLColorTableNodeRainbow"
#: Tolerance (mm, and unitless for directions) when checking that a result lies on the input's grid.
GEOMETRY_TOLERANCE = 1e-4

_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class DetectionNodes:
    """The scene nodes holding one detection result, all on the input volume's geometry."""

    reconstruction: Any
    anomaly_map: Any
    anomaly_mask: Any
    segmentation: Any
    summary: Dict[str, Any]

    def as_dict(self) -> Dict[str, Any]:
        """Nodes by role name, the form ``MedAutoencoderLogic.detectAnomalies`` returns."""
        return {
            ROLE_RECONSTRUCTION: self.reconstruction,
            ROLE_ANOMALY_MAP: self.anomaly_map,
            ROLE_ANOMALY_MASK: self.anomaly_mask,
            ROLE_ANOMALY_SEGMENTATION: self.segmentation,
        }


# --------------------------------------------------------------------------------------------------
# Geometry and voxels: volume node <-> SimpleITK.Image


def _direction_matrix_ras(volume_node) -> np.ndarray:
    """3x3 matrix whose columns are the node's I, J, K axis directions in RAS."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(matrix)
    return np.array([[matrix.GetElement(row, col) for col in range(3)] for row in range(3)])


def _require_scalar_volume(volume_node) -> None:
    """Refuse nodes the library cannot use, with a message naming the node."""
    if volume_node is None:
        raise InputImageError("No input volume selected.")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputImageError(f"'{volume_node.GetName()}' is not a scalar volume ({volume_node.GetClassName()}).")
    image_data = volume_node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise InputImageError(f"Volume '{volume_node.GetName()}' has no voxels.")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InputImageError(f"Volume '{volume_node.GetName()}' has several components per voxel; "
                              "only single-component (scalar) volumes can be analysed.")


def _geometry_lps(volume_node):
    """Spacing, origin and row-major direction of a node in ITK's LPS convention.

    MRML keeps geometry in RAS, ITK in LPS: origin and directions flip sign on their first two axes.
    """
    spacing = tuple(float(s) for s in volume_node.GetSpacing())
    origin = tuple(float(x) for x in _RAS_FROM_LPS @ np.array(volume_node.GetOrigin()))
    direction = tuple(float(x) for x in (_RAS_FROM_LPS @ _direction_matrix_ras(volume_node)).ravel())
    return spacing, origin, direction


def volume_node_to_sitk(volume_node) -> sitk.Image:
    """Copy a scalar volume node into a SimpleITK image with the same voxels and physical geometry.

    The node's parent transform is not applied (outputs get the same parent transform instead), so the image
    is in the node's own coordinate system.
    """
    import slicer.util

    _require_scalar_volume(volume_node)
    voxels = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)  # (K, J, I) like SimpleITK
    image = sitk.GetImageFromArray(voxels)
    spacing, origin, direction = _geometry_lps(volume_node)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def ijk_to_ras_from_sitk(image: sitk.Image):
    """The vtkMatrix4x4 IJK-to-RAS matrix that puts a node on the grid of ``image``."""
    import vtk

    directions_ras = _RAS_FROM_LPS @ np.array(image.GetDirection()).reshape(3, 3)
    linear = directions_ras @ np.diag(image.GetSpacing())
    origin_ras = _RAS_FROM_LPS @ np.array(image.GetOrigin())
    matrix = vtk.vtkMatrix4x4()
    for row in range(3):
        for col in range(3):
            matrix.SetElement(row, col, float(linear[row, col]))
        matrix.SetElement(row, 3, float(origin_ras[row]))
    return matrix


def update_volume_node_from_sitk(volume_node, image: sitk.Image) -> None:
    """Replace a node's voxels and geometry with those of ``image`` (the inverse of ``volume_node_to_sitk``)."""
    import slicer.util

    voxels = _array_for_vtk(sitk.GetArrayFromImage(image))
    slicer.util.updateVolumeFromArray(volume_node, voxels)
    volume_node.SetIJKToRASMatrix(ijk_to_ras_from_sitk(image))


def _array_for_vtk(voxels: np.ndarray) -> np.ndarray:
    """VTK rejects 64-bit integers from numpy; narrow them (our masks and maps never need 64 bits)."""
    if voxels.dtype == np.int64:
        return voxels.astype(np.int32)
    if voxels.dtype == np.uint64:
        return voxels.astype(np.uint32)
    return voxels


def check_on_input_grid(image: sitk.Image, input_node, what: str) -> None:
    """Raise unless ``image`` has the input node's voxel grid (size, spacing, origin, direction)."""
    size = tuple(int(d) for d in input_node.GetImageData().GetDimensions())
    if tuple(image.GetSize()) != size:
        raise MedAutoencoderError(f"The {what} has size {image.GetSize()} but the input "
                                  f"'{input_node.GetName()}' has size {size}.")
    expected = dict(zip(("spacing", "origin", "direction"), _geometry_lps(input_node)))
    actual = {"spacing": image.GetSpacing(), "origin": image.GetOrigin(), "direction": image.GetDirection()}
    for name, value in expected.items():
        if not np.allclose(actual[name], value, atol=GEOMETRY_TOLERANCE):
            raise MedAutoencoderError(f"The {what} is not on the grid of the input '{input_node.GetName()}' "
                                      f"({name} differs).")


# --------------------------------------------------------------------------------------------------
# Output nodes: create once, update on every run


def output_node_name(input_node, role: str) -> str:
    """Outputs are named after the input so the user sees at once what belongs to what."""
    return f"{input_node.GetName()}_{role}"


def find_output_node(input_node, role: str, class_name: str):
    """The node an earlier run made for this input and role, or None."""
    scene = input_node.GetScene()
    for node in scene.GetNodesByClass(class_name):
        if node.GetAttribute(ROLE_ATTRIBUTE) == role and node.GetAttribute(INPUT_ATTRIBUTE) == input_node.GetID():
            return node
    return None


def get_or_create_output_node(input_node, role: str, class_name: str):
    """Reuse the output node of an earlier run or add a new one; renamed after the input either way.

    The output also gets the input's parent transform, so it moves with the input like the input does.
    """
    node = find_output_node(input_node, role, class_name)
    if node is None:
        node = input_node.GetScene().AddNewNodeByClass(class_name, output_node_name(input_node, role))
        node.SetAttribute(ROLE_ATTRIBUTE, role)
        node.SetAttribute(INPUT_ATTRIBUTE, input_node.GetID())
    node.SetName(output_node_name(input_node, role))
    node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    return node


def write_output_volume(input_node, role: str, image: sitk.Image, class_name: str = "vtkMRMLScalarVolumeNode"):
    """Put ``image`` into this role's output node, on exactly the input's geometry (copied, not recomputed)."""
    import slicer.util

    check_on_input_grid(image, input_node, role.replace("_", " "))
    node = get_or_create_output_node(input_node, role, class_name)
    slicer.util.updateVolumeFromArray(node, _array_for_vtk(sitk.GetArrayFromImage(image)))
    node.CopyOrientation(input_node)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def anomaly_mask_color_node(scene):
    """The shared two-entry colour table of anomaly labelmaps (0 transparent background, 1 red anomaly)."""
    for node in scene.GetNodesByClass("vtkMRMLColorTableNode"):
        if node.GetAttribute(ROLE_ATTRIBUTE) == ROLE_MASK_COLORS:
            return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "MedAutoencoder anomaly colors")
    node.SetAttribute(ROLE_ATTRIBUTE, ROLE_MASK_COLORS)
    node.SetTypeToUser()
    node.SetNumberOfColors(2)
    node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    node.SetColor(1, "anomaly", *ANOMALY_COLOR, 1.0)
    return node


def show_anomaly_map_colors(map_node, threshold: Optional[float]) -> None:
    """Colour the anomaly map with a fixed range so that the threshold sits in the middle of the scale."""
    display = map_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(ANOMALY_MAP_COLOR_NODE_ID)
    display.AutoWindowLevelOff()
    high = 2.0 * threshold if threshold and threshold > 0 else float(np.max(_voxels(map_node))) or 1.0
    display.SetWindowLevelMinMax(0.0, high)


def _voxels(volume_node) -> np.ndarray:
    import slicer.util

    return slicer.util.arrayFromVolume(volume_node)


def update_anomaly_segmentation(input_node, mask_node):
    """Make (or refresh) the editable anomaly segmentation from the labelmap, shown as outline in slices."""
    import slicer
    import vtk

    segmentation_node = get_or_create_output_node(input_node, ROLE_ANOMALY_SEGMENTATION, "vtkMRMLSegmentationNode")
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(input_node)
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(ANOMALY_SEGMENT_ID) is None:
        segmentation.AddEmptySegment(ANOMALY_SEGMENT_ID, "Anomaly", list(ANOMALY_COLOR))
    segment_ids = vtk.vtkStringArray()
    segment_ids.InsertNextValue(ANOMALY_SEGMENT_ID)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(mask_node, segmentation_node,
                                                                                     segment_ids):
        raise MedAutoencoderError(f"Could not convert '{mask_node.GetName()}' into a segmentation.")
    display = segmentation_node.GetDisplayNode()
    display.SetVisibility2DFill(False)
    display.SetVisibility2DOutline(True)
    return segmentation_node


def apply_detection_result(input_node, result) -> DetectionNodes:
    """Write a detection result (``api.DetectionResult`` or anything with the same fields) into the scene.

    Creates or updates ``<input>_reconstruction``, ``<input>_anomaly_map``, ``<input>_anomaly_mask`` (a
    labelmap with its own colour table) and ``<input>_anomaly_segmentation``. The input node is not modified.
    """
    reconstruction = write_output_volume(input_node, ROLE_RECONSTRUCTION, result.reconstruction)
    anomaly_map = write_output_volume(input_node, ROLE_ANOMALY_MAP, sitk.Cast(result.anomaly_map, sitk.sitkFloat32))
    summary = dict(result.summary or {})
    show_anomaly_map_colors(anomaly_map, summary.get("threshold"))
    mask = write_output_volume(input_node, ROLE_ANOMALY_MASK, sitk.Cast(result.anomaly_mask, sitk.sitkUInt8),
                               "vtkMRMLLabelMapVolumeNode")
    mask.GetDisplayNode().SetAndObserveColorNodeID(anomaly_mask_color_node(input_node.GetScene()).GetID())
    segmentation = update_anomaly_segmentation(input_node, mask)
    return DetectionNodes(reconstruction, anomaly_map, mask, segmentation, summary)


# --------------------------------------------------------------------------------------------------
# Detection in this process, and data exchange with the worker process


def detect_volume_node(input_node, model, options=None) -> DetectionNodes:
    """Run detection on a volume node in this process and put the outputs into the scene.

    For small volumes, or console use where a separate process is not wanted; ``model`` is an
    ``api.LoadedModel`` and ``options`` an ``api.DetectOptions``.
    """
    from . import api

    result = api.detect_image(volume_node_to_sitk(input_node), model, options)
    return apply_detection_result(input_node, result)


def write_volume_for_worker(volume_node, path: str) -> str:
    """Save a volume node as uncompressed NRRD for the worker process, without touching the node.

    A standalone storage node is used (not added to the scene, not set on the volume), so the node's own
    storage node, file name and modified state stay as the user left them.
    """
    import slicer

    _require_scalar_volume(volume_node)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    storage.SetUseCompression(0)
    if not storage.WriteData(volume_node):
        raise MedAutoencoderError(f"Could not write volume '{volume_node.GetName()}' to {path}.")
    return path


def read_worker_outputs(outputs: Dict[str, str]):
    """Read the files a ``detect`` worker wrote (``done`` event ``outputs`` entry of one input) into a result.

    Returns an object with the fields of ``api.DetectionResult`` that ``apply_detection_result`` uses.
    """
    import json

    with open(outputs["summary"], encoding="utf-8") as summary_file:
        summary = json.load(summary_file)
    return WorkerResult(
        reconstruction=sitk.ReadImage(outputs["reconstruction"]),
        anomaly_map=sitk.ReadImage(outputs["anomaly_map"], sitk.sitkFloat32),
        anomaly_mask=sitk.ReadImage(outputs["anomaly_mask"], sitk.sitkUInt8),
        summary=summary,
    )


@dataclass
class WorkerResult:
    """A detection result read back from the worker's files (same fields as ``api.DetectionResult``)."""

    reconstruction: sitk.Image
    anomaly_map: sitk.Image
    anomaly_mask: sitk.Image
    summary: Dict[str, Any]
