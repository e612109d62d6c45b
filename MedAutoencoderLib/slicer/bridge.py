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

from MedAutoencoderLib.errors import InputImageError, MedAutoencoderError

#: Node attribute naming what a node produced by this module is (one of the ``ROLE_*`` values).
ROLE_ATTRIBUTE = "MedAutoencoder.Role"
#: Node reference role from an output node to the input volume it was computed from (MRML renumbers references
#: when a scene is imported, so an imported scene's outputs never point at another patient's volume).
INPUT_REFERENCE = "MedAutoencoderInput"
#: Node reference role from an output node to itself, set when it is made: a copy of the node (which copies
#: attributes and references) still refers to the original, so it is recognised as the user's and never
#: overwritten; an imported scene's renumbering updates it with the node's ID (an attribute holding the ID, as
#: used before, kept the old ID: a rerun then duplicated the outputs).
SELF_REFERENCE = "MedAutoencoderSelf"
#: The attribute that did this before (scenes saved then are still recognised).
OWN_ID_ATTRIBUTE = "MedAutoencoder.OutputNodeID"

ROLE_RECONSTRUCTION = "reconstruction"
ROLE_ANOMALY_MAP = "anomaly_map"
ROLE_ANOMALY_MASK = "anomaly_mask"
ROLE_ANOMALY_SEGMENTATION = "anomaly_segmentation"
ROLE_MASK_COLORS = "anomaly_mask_colors"
ROLE_FINDINGS_TABLE = "findings_table"

#: Segment ID used for the anomaly segment; fixed so re-running replaces the same segment.
ANOMALY_SEGMENT_ID = "anomaly"
ANOMALY_COLOR = (1.0, 0.2, 0.2)
#: Colour node shown for the anomaly map (one of Slicer's default colour nodes): a heat scale, dark for low values
#: and bright for strong anomalies. (Rainbow, used before, runs from red to purple: the healthy nine tenths of a
#: brain were tinted red, "hot", and the strongest anomalies purple.)
ANOMALY_MAP_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"
#: Map values below this share of the detection threshold are not shown (transparent over the input).
ANOMALY_MAP_SHOWN_FROM = 0.5
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
    findings_table: Any = None  # vtkMRMLTableNode, one row per finding (MedAutoencoderLib.slicer.results)

    def as_dict(self) -> Dict[str, Any]:
        """Nodes by role name, the form ``MedAutoencoderLogic.detectAnomalies`` returns."""
        nodes = {
            ROLE_RECONSTRUCTION: self.reconstruction,
            ROLE_ANOMALY_MAP: self.anomaly_map,
            ROLE_ANOMALY_MASK: self.anomaly_mask,
            ROLE_ANOMALY_SEGMENTATION: self.segmentation,
        }
        if self.findings_table is not None:
            nodes[ROLE_FINDINGS_TABLE] = self.findings_table
        return nodes


# --------------------------------------------------------------------------------------------------
# Geometry and voxels: volume node <-> SimpleITK.Image


def _matrix_to_array(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def _ijk_to_world(volume_node) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix in world coordinates: its own, under its parent transform if it has one.

    Why: the model works on what the user sees. A volume registered by a (not hardened) parent transform must
    give the same result as the same volume hardened; outputs then take the node's own IJK-to-RAS and the same
    parent transform, so they land where the input is shown either way.
    """
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = _matrix_to_array(matrix)
    parent = volume_node.GetParentTransformNode()
    if parent is None:
        return ijk_to_ras
    if not parent.IsTransformToWorldLinear():
        raise InputImageError(f"'{volume_node.GetName()}' is under a non-linear transform "
                              f"('{parent.GetName()}'); harden it (Transforms module) or remove it first.")
    parent.GetMatrixTransformToWorld(matrix)
    return _matrix_to_array(matrix) @ ijk_to_ras


def _require_scalar_volume(volume_node) -> None:
    """Refuse nodes the library cannot use, with a message naming the node."""
    if volume_node is None:
        raise InputImageError("No input volume selected.")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputImageError(f"'{volume_node.GetName()}' is not a scalar volume ({volume_node.GetClassName()}).")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputImageError(f"'{volume_node.GetName()}' is a labelmap (segment labels), not an image.")
    if volume_node.IsA("vtkMRMLTensorVolumeNode"):  # DTI: a scalar-volume subclass whose voxels are tensors
        raise InputImageError(f"'{volume_node.GetName()}' holds tensors ({volume_node.GetClassName()}), not an "
                              "image; choose a scalar volume (e.g. a scalar map computed from it)")
    image_data = volume_node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise InputImageError(f"Volume '{volume_node.GetName()}' has no voxels.")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InputImageError(f"Volume '{volume_node.GetName()}' has several components per voxel; "
                              "only single-component (scalar) volumes can be analysed.")


def world_geometry(volume_node) -> tuple:
    """Spacing, origin and row-major direction of a node in world coordinates (:func:`_ijk_to_world`), in
    ITK's LPS convention.

    MRML keeps geometry in RAS, ITK in LPS: origin and directions flip sign on their first two axes. Spacing
    and directions are the matrix's column lengths and unit columns, as MRML splits an IJK-to-RAS matrix.
    """
    ijk_to_world = _ijk_to_world(volume_node)
    spacing = np.linalg.norm(ijk_to_world[:3, :3], axis=0)
    origin = tuple(float(x) for x in _RAS_FROM_LPS @ ijk_to_world[:3, 3])
    direction = tuple(float(x) for x in (_RAS_FROM_LPS @ (ijk_to_world[:3, :3] / spacing)).ravel())
    return tuple(float(s) for s in spacing), origin, direction


def volume_node_to_sitk(volume_node) -> sitk.Image:
    """Copy a scalar volume node into a SimpleITK image with the same voxels, where the node is shown (its
    parent transform applied, see :func:`_ijk_to_world`), checked like a file (NaN, constant, too thin) with
    errors naming the node."""
    import slicer.util

    from MedAutoencoderLib.io.volumes import check_volume

    _require_scalar_volume(volume_node)
    voxels = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)  # (K, J, I) like SimpleITK
    image = sitk.GetImageFromArray(voxels)
    spacing, origin, direction = world_geometry(volume_node)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return check_volume(image, f"'{volume_node.GetName()}'")


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
    """Replace a node's voxels and geometry with those of ``image`` (the inverse of ``volume_node_to_sitk`` for a
    node without a parent transform)."""
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
    expected = dict(zip(("spacing", "origin", "direction"), world_geometry(input_node)))
    actual = {"spacing": image.GetSpacing(), "origin": image.GetOrigin(), "direction": image.GetDirection()}
    for name, value in expected.items():
        if not np.allclose(actual[name], value, atol=GEOMETRY_TOLERANCE):
            raise MedAutoencoderError(f"The {what} is not on the grid of the input '{input_node.GetName()}' "
                                      f"({name} differs).")


# --------------------------------------------------------------------------------------------------
# Output nodes: create once, update on every run


def default_input_volume(scene):
    """The volume the module preselects as input: the first plain scalar volume that is not one of this module's
    outputs (the first node of the class included labelmaps, vector and tensor volumes, which the input selector
    does not list, and earlier anomaly maps), or None."""
    for node in scene.GetNodesByClass("vtkMRMLScalarVolumeNode"):
        if node.GetClassName() == "vtkMRMLScalarVolumeNode" and node.GetAttribute(ROLE_ATTRIBUTE) is None:
            return node
    return None


def output_node_name(input_node, role: str) -> str:
    """Outputs are named after the input so the user sees at once what belongs to what."""
    return f"{input_node.GetName()}_{role}"


def find_output_node(input_node, role: str, class_name: str):
    """The node an earlier run made for this input and role, as it made it, or None.

    A node the user renamed, or a copy of one (it has another ID than it was made with), is the user's now: a
    new run adds a new output instead of overwriting it.
    """
    name = output_node_name(input_node, role)
    for node in input_node.GetScene().GetNodesByClass(class_name):
        if (node.GetAttribute(ROLE_ATTRIBUTE) == role and node.GetNodeReferenceID(INPUT_REFERENCE) == input_node.GetID()
                and _made_as_itself(node) and node.GetName() == name):
            return node
    return None


def _made_as_itself(node) -> bool:
    """Whether ``node`` is the output node made by this module, not a copy of one (see :data:`SELF_REFERENCE`)."""
    own = node.GetNodeReferenceID(SELF_REFERENCE) or node.GetAttribute(OWN_ID_ATTRIBUTE)
    return own == node.GetID()


def get_or_create_output_node(input_node, role: str, class_name: str):
    """Reuse the output node of an earlier run (see :func:`find_output_node`) or add a new one.

    The output also gets the input's parent transform, so it moves with the input like the input does.
    """
    node = find_output_node(input_node, role, class_name)
    if node is None:
        node = input_node.GetScene().AddNewNodeByClass(class_name, output_node_name(input_node, role))
        node.SetAttribute(ROLE_ATTRIBUTE, role)
        node.SetNodeReferenceID(SELF_REFERENCE, node.GetID())
        node.SetNodeReferenceID(INPUT_REFERENCE, input_node.GetID())
    if node.IsA("vtkMRMLTransformableNode"):  # a table is not placed in space
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
    """Colour the anomaly map with a fixed range so that the threshold sits in the middle of the scale, and leave
    values under :data:`ANOMALY_MAP_SHOWN_FROM` of the threshold transparent, so that the input shows through
    wherever nothing is anomalous."""
    display = map_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(ANOMALY_MAP_COLOR_NODE_ID)
    display.AutoWindowLevelOff()
    high = 2.0 * threshold if threshold and threshold > 0 else float(np.max(_voxels(map_node))) or 1.0
    display.SetWindowLevelMinMax(0.0, high)
    display.AutoThresholdOff()
    display.SetThreshold(ANOMALY_MAP_SHOWN_FROM * high / 2.0, float(np.finfo(np.float32).max))
    display.ApplyThresholdOn()


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


def require_unmoved(input_node, geometry_at_start: tuple, task: str) -> None:
    """Refuse the result of a worker ``task`` on ``input_node`` when the node was moved (its transform edited)
    since :func:`world_geometry` gave ``geometry_at_start``: the result would no longer lie where the volume is.

    Raises:
        MedAutoencoderError: the node was moved, named in the message.
    """
    if not all(np.allclose(now, then, atol=GEOMETRY_TOLERANCE)
               for now, then in zip(world_geometry(input_node), geometry_at_start)):
        raise MedAutoencoderError(f"The input '{input_node.GetName()}' was moved (its transform changed) while the "
                                  f"{task} ran, so its result no longer lies where the volume is; run the {task} "
                                  "again.")


def apply_detection_result(input_node, result, geometry_at_start: Optional[tuple] = None) -> DetectionNodes:
    """Write a detection result (``api.DetectionResult`` or anything with the same fields) into the scene.

    Creates or updates ``<input>_reconstruction``, ``<input>_anomaly_map``, ``<input>_anomaly_mask`` (a
    labelmap with its own colour table) and ``<input>_anomaly_segmentation``. The input node is not modified.
    ``geometry_at_start`` (:func:`world_geometry` when the detection was started in a worker): a result of a
    volume that has been moved since (its transform edited meanwhile) is refused as such, not as a result off the
    input's grid.
    """
    if geometry_at_start is not None:
        require_unmoved(input_node, geometry_at_start, "detection")
    reconstruction = write_output_volume(input_node, ROLE_RECONSTRUCTION, result.reconstruction)
    anomaly_map = write_output_volume(input_node, ROLE_ANOMALY_MAP, sitk.Cast(result.anomaly_map, sitk.sitkFloat32))
    summary = dict(result.summary or {})
    show_anomaly_map_colors(anomaly_map, summary.get("threshold"))
    mask = write_output_volume(input_node, ROLE_ANOMALY_MASK, sitk.Cast(result.anomaly_mask, sitk.sitkUInt8),
                               "vtkMRMLLabelMapVolumeNode")
    mask.GetDisplayNode().SetAndObserveColorNodeID(anomaly_mask_color_node(input_node.GetScene()).GetID())
    segmentation = update_anomaly_segmentation(input_node, mask)
    from MedAutoencoderLib.slicer.results import publish_findings

    table = publish_findings(input_node, anomaly_map, mask, segmentation, summary)
    place_beside_input(input_node, (reconstruction, anomaly_map, mask, segmentation, table))
    return DetectionNodes(reconstruction, anomaly_map, mask, segmentation, summary, table)


def place_beside_input(input_node, nodes) -> None:
    """Put outputs where the input is in the Data module's tree (a DICOM-loaded scan's study), as MONAIAuto3DSeg
    does with its segmentation: Slicer puts new nodes at the scene's top level, outside the study, where DICOM
    export of the segmentation does not find its series. An output the user has moved into a folder stays there
    (one moved to the top level is taken for a new one and moved into the study again)."""
    hierarchy = input_node.GetScene().GetSubjectHierarchyNode()
    input_item = hierarchy.GetItemByDataNode(input_node) if hierarchy else 0
    if not input_item:
        return
    parent = hierarchy.GetItemParent(input_item)
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node)
        if not item:
            hierarchy.CreateItem(parent, node)
        elif hierarchy.GetItemParent(item) == hierarchy.GetSceneItemID():
            hierarchy.SetItemParent(item, parent)


# --------------------------------------------------------------------------------------------------
# Detection in this process, and data exchange with the worker process


def detect_volume_node(input_node, model, options=None) -> DetectionNodes:
    """Run detection on a volume node in this process and put the outputs into the scene.

    For small volumes, or console use where a separate process is not wanted; ``model`` is an
    ``api.LoadedModel`` and ``options`` an ``api.DetectOptions``.
    """
    from MedAutoencoderLib import api

    result = api.detect_image(volume_node_to_sitk(input_node), model, options, name=f"'{input_node.GetName()}'")
    return apply_detection_result(input_node, result)


def write_volume_for_worker(volume_node, path: str) -> str:
    """Save a volume node as uncompressed NRRD for the worker process, where it is shown (parent transform
    applied, as in :func:`volume_node_to_sitk`), without touching the node; its voxels are checked first, so
    that a bad volume is named before any worker starts."""
    image = volume_node_to_sitk(volume_node)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        sitk.WriteImage(image, path, useCompression=False)
    except RuntimeError:
        raise MedAutoencoderError(f"Could not write volume '{volume_node.GetName()}' to {path}.") from None
    return path


def read_worker_outputs(outputs: Dict[str, str]):
    """Read the files a ``detect`` worker wrote (``done`` event ``outputs`` entry of one input) into a result.

    Returns an object with the fields of ``api.DetectionResult`` that ``apply_detection_result`` uses.
    """
    import json

    from MedAutoencoderLib.io.volumes import read_mask

    try:
        with open(outputs["summary"], encoding="utf-8") as summary_file:
            summary = json.load(summary_file)
        images = {kind: read_mask(outputs[kind]) for kind in ("reconstruction", "anomaly_map", "anomaly_mask")}
    except (KeyError, OSError, ValueError, InputImageError) as exc:  # a worker killed mid-write, a full disk
        raise MedAutoencoderError(f"The detection's results could not be read back ({exc}).") from None
    return WorkerResult(
        reconstruction=images["reconstruction"],
        anomaly_map=sitk.Cast(images["anomaly_map"], sitk.sitkFloat32),
        anomaly_mask=sitk.Cast(images["anomaly_mask"], sitk.sitkUInt8),
        summary=summary,
    )


@dataclass
class WorkerResult:
    """A detection result read back from the worker's files (same fields as ``api.DetectionResult``)."""

    reconstruction: sitk.Image
    anomaly_map: sitk.Image
    anomaly_mask: sitk.Image
    summary: Dict[str, Any]
