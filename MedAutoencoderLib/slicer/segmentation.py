"""Segmentation nodes and the segmentation models of the library, without Qt (``slicer`` imported lazily).

- :func:`write_labelled_pair_for_worker`: a volume node and its segmentation node as an image and a label map
  file on the volume's grid (label values by segment name, shared by all pairs of a training), the input of
  ``segment-train`` run as a worker process (:meth:`MedAutoencoderLib.slicer.job.WorkerJobs.startSegmentationTraining`).
- :func:`labelmap_to_segmentation_node`: a labelmap on a volume's grid (what ``segment`` writes) as a new
  ``vtkMRMLSegmentationNode`` with one named segment per label, placed on that volume (its parent transform too).
- :func:`segment_volume_node`: a volume node segmented in this process (console use; the module runs ``segment``
  as a worker, :meth:`~MedAutoencoderLib.slicer.job.WorkerJobs.startSegmentation`).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.errors import InputImageError, MedAutoencoderError
from MedAutoencoderLib.slicer.bridge import (
    _array_for_vtk,
    check_on_input_grid,
    place_beside_input,
    volume_node_to_sitk,
    write_volume_for_worker,
)

#: Segment colours, by label index (cycled): CSF blue, grey matter grey-red, white matter cream, deep grey
#: orange, then distinct colours.
SEGMENT_COLORS = ((0.35, 0.55, 0.95), (0.85, 0.45, 0.45), (0.95, 0.92, 0.75), (0.95, 0.65, 0.2),
                  (0.45, 0.8, 0.45), (0.7, 0.45, 0.85), (0.3, 0.8, 0.8), (0.9, 0.9, 0.3))


def segment_names(segmentation_node) -> List[str]:
    """The names of a segmentation node's segments, in its order.

    Raises:
        InputImageError: not a segmentation node, or one without segments (naming the node).
    """
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        name = segmentation_node.GetName() if segmentation_node is not None else "None"
        raise InputImageError(f"'{name}' is not a segmentation node; give the segmentation of each training volume")
    segmentation = segmentation_node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    if not names:
        raise InputImageError(f"'{segmentation_node.GetName()}' has no segments")
    return names


def label_values_by_name(segmentation_nodes: Sequence) -> Dict[str, int]:
    """Label value of each segment name over all training segmentations: 1, 2... in order of first appearance,
    so that a segment named alike in two segmentations is the same label."""
    values: Dict[str, int] = {}
    for node in segmentation_nodes:
        for name in segment_names(node):
            values.setdefault(name, len(values) + 1)
    return values


def labels_on_volume(volume_node, segmentation_node, values: Dict[str, int]) -> np.ndarray:
    """The segments of ``segmentation_node`` as one label array on ``volume_node``'s voxels ((K, J, I)), each
    segment's voxels holding its name's value (a later segment wins where two overlap).

    Raises:
        InputImageError: the two nodes lie under different transforms, or no segment has a voxel on the volume.
    """
    import slicer
    import vtk

    if segmentation_node.GetTransformNodeID() != volume_node.GetTransformNodeID():
        raise InputImageError(f"'{segmentation_node.GetName()}' and '{volume_node.GetName()}' lie under different "
                              "transforms; harden the transforms (Transforms module) or put both under the same one")
    scene = volume_node.GetScene()
    labels = None
    temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MedAutoencoder_export__")
    try:
        segmentation = segmentation_node.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                    segmentation_node, ids, temporary, volume_node):
                raise MedAutoencoderError(f"Could not export segment '{segmentation.GetNthSegment(index).GetName()}'"
                                          f" of '{segmentation_node.GetName()}' onto '{volume_node.GetName()}'.")
            mask = slicer.util.arrayFromVolume(temporary) > 0
            if labels is None:
                labels = np.zeros(mask.shape, np.uint16 if len(values) > 255 else np.uint8)
            labels[mask] = values[segmentation.GetNthSegment(index).GetName()]
    finally:
        display = temporary.GetDisplayNode()
        if display is not None and display.GetColorNode() is not None \
                and display.GetColorNode().GetName().startswith("__MedAutoencoder"):
            scene.RemoveNode(display.GetColorNode())
        scene.RemoveNode(temporary)
    if labels is None or not labels.any():
        raise InputImageError(f"'{segmentation_node.GetName()}' has no segmented voxel on '{volume_node.GetName()}'")
    return labels


def write_labelled_pair_for_worker(volume_node, segmentation_node, values: Dict[str, int], folder: str,
                                   stem: str) -> Tuple[str, str]:
    """Write a training volume and its segmentation as ``<stem>.nrrd`` and ``<stem>_seg.nrrd`` (uncompressed),
    both on the volume's grid where it is shown (its parent transform applied), for ``segment-train``.

    Args:
        volume_node: the image.
        segmentation_node: its segmentation.
        values: label value by segment name (:func:`label_values_by_name`).
        folder: where to write.
        stem: the files' name.

    Returns:
        The image's and the label map's paths.

    Raises:
        InputImageError: either node unusable (named).
    """
    labels = labels_on_volume(volume_node, segmentation_node, values)
    image_path = write_volume_for_worker(volume_node, os.path.join(folder, f"{stem}.nrrd"))
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(volume_node_to_sitk(volume_node))
    label_path = os.path.join(folder, f"{stem}_seg.nrrd")
    sitk.WriteImage(label_image, label_path, useCompression=False)
    return image_path, label_path


def labelmap_to_segmentation_node(input_node, labelmap: sitk.Image, labels: Sequence[Tuple[int, str]],
                                  name: Optional[str] = None):
    """A new segmentation node holding ``labelmap`` (on ``input_node``'s grid, as ``segment`` writes it) with one
    segment per label, named and coloured, under the input's parent transform.

    Args:
        input_node: the segmented volume node.
        labelmap: the labelmap on the input's exact (world) grid.
        labels: (value, name) of each label the model segments; a label without voxels gets an empty segment.
        name: the node's name (default ``<input>_segmentation``).

    Returns:
        The ``vtkMRMLSegmentationNode``.

    Raises:
        MedAutoencoderError: the labelmap is not on the input's grid, or the import failed.
    """
    import slicer
    import vtk

    check_on_input_grid(labelmap, input_node, "segmentation")
    scene = input_node.GetScene()
    voxels = sitk.GetArrayFromImage(labelmap)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"{input_node.GetName()}_segmentation")
    segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(input_node)
    temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MedAutoencoder_import__")
    try:
        temporary.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
        segmentation = segmentation_node.GetSegmentation()
        for index, (value, label_name) in enumerate(labels):
            segment_id = segmentation.AddEmptySegment(f"label_{value}", str(label_name),
                                                      list(SEGMENT_COLORS[index % len(SEGMENT_COLORS)]))
            mask = voxels == value
            if not mask.any():
                continue
            slicer.util.updateVolumeFromArray(temporary, _array_for_vtk(mask.astype(np.uint8)))
            temporary.CopyOrientation(input_node)
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                    temporary, segmentation_node, ids):
                raise MedAutoencoderError(f"Could not import label '{label_name}' into a segmentation.")
    finally:
        scene.RemoveNode(temporary)
    place_beside_input(input_node, (segmentation_node,))
    return segmentation_node


def segment_volume_node(input_node, model_path: str, device: str = "auto"):
    """Segment a volume node in this process with a segmentation model (``segment-train``'s output) into a new
    segmentation node on its grid.

    Args:
        input_node: the scalar volume node.
        model_path: the segmentation model file.
        device: auto, cpu, cuda or cuda:N.

    Returns:
        The new ``vtkMRMLSegmentationNode``.

    Raises:
        MedAutoencoderError: the volume or the model cannot be used (named).
    """
    from MedAutoencoderLib.segmentation.inference import segment_image
    from MedAutoencoderLib.segmentation.model_file import load_segmentation_model

    model = load_segmentation_model(model_path, device=device)
    result = segment_image(volume_node_to_sitk(input_node), model, name=f"'{input_node.GetName()}'")
    labels = list(zip(model.record.labels.values, model.record.labels.names))
    return labelmap_to_segmentation_node(input_node, result.labelmap, labels)
