"""Segmenting volumes with a segmentation model: class probabilities on the model grid, brought onto the input's
exact grid by a linear resampling of each class's probability (smoother borders than resampling the labels
themselves), and the most probable class's label value in every input voxel.

The network labels the foreground only (the brain, for a model with the ``brain`` foreground): voxels outside it,
and input voxels beyond the model grid, are background (0).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from MedAutoencoderLib.errors import InputImageError
from MedAutoencoderLib.io.volumes import (
    check_volume_header,
    find_volumes,
    output_path,
    read_image,
    refuse_overwrite,
    volume_stem,
    write_image,
    write_text,
)
from MedAutoencoderLib.preprocessing.prepare import PreparedVolume, prepare_volume
from MedAutoencoderLib.runtime.device import explain_out_of_memory
from MedAutoencoderLib.runtime.progress import ProgressCallback, ProgressTracker
from MedAutoencoderLib.segmentation.labels import LabelSet
from MedAutoencoderLib.segmentation.model_file import LoadedSegmentationModel

#: The ``kind`` of a segmentation output: ``<stem>_segmentation.<ext>`` and ``<stem>_segmentation.json``.
OUTPUT_KIND = "segmentation"
_SLICES_PER_BATCH = 8


def predict_probabilities(network: nn.Module, prepared: PreparedVolume, n_classes: int,
                          device: torch.device) -> np.ndarray:
    """Softmax class probabilities ``(C, z, y, x)`` on the model grid; outside the foreground the background's
    probability is 1.

    Args:
        network: the segmentation network (2D, slice-wise).
        prepared: the volume on the model grid.
        n_classes: the network's outputs.
        device: the network's device.

    Returns:
        float32 probabilities.
    """
    probabilities = np.zeros((n_classes, *prepared.image.shape), np.float32)
    probabilities[0] = 1.0
    slices = np.flatnonzero(prepared.foreground.reshape(prepared.foreground.shape[0], -1).any(axis=1))
    network.eval()
    with torch.inference_mode(), explain_out_of_memory("segmentation", _SLICES_PER_BATCH):
        for start in range(0, len(slices), _SLICES_PER_BATCH):
            chosen = slices[start:start + _SLICES_PER_BATCH]
            batch = torch.from_numpy(prepared.image[chosen][:, None]).to(device)
            probabilities[:, chosen] = torch.softmax(network(batch).float(), dim=1).cpu().numpy().transpose(1, 0, 2, 3)
    outside = ~prepared.foreground
    probabilities[:, outside] = 0.0
    probabilities[0, outside] = 1.0
    return probabilities


def classes_on_input_grid(probabilities: np.ndarray, prepared: PreparedVolume) -> np.ndarray:
    """The most probable class of every input voxel ((z, y, x) of the input), each class's probability resampled
    linearly onto the input's grid (voxels beyond the model grid: background)."""
    best = None
    classes = None
    for index in range(probabilities.shape[0]):
        on_input = sitk.GetArrayFromImage(prepared.to_input_grid(probabilities[index], outside=float(index == 0)))
        if best is None:
            best, classes = on_input, np.zeros(on_input.shape, np.uint8)
        else:
            better = on_input > best
            best[better] = on_input[better]
            classes[better] = index
    return classes


@dataclass
class SegmentationResult:
    """One volume's labelmap on its own grid, and a summary (volume of each label)."""

    labelmap: sitk.Image
    summary: Dict[str, Any]


def _voxel_ml(image: sitk.Image) -> float:
    """One voxel's volume in mL (a sheared grid's too: the determinant of its direction times spacing)."""
    matrix = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    return abs(float(np.linalg.det(matrix))) / 1000.0


def segment_image(image: sitk.Image, model: LoadedSegmentationModel, name: str = "input") -> SegmentationResult:
    """Segment one volume.

    Args:
        image: the volume (any grid and orientation).
        model: the segmentation model.
        name: how messages name the volume.

    Returns:
        The labelmap (the model's label values, on ``image``'s exact grid) and its summary.

    Raises:
        InputImageError: the volume fails the model's checks (no brain found, no foreground...), named.
    """
    record = model.record
    prepared = prepare_volume(image, record.preprocess, name=name)
    _require_model_contrast(prepared, model, name)
    probabilities = predict_probabilities(model.network, prepared, record.labels.n_classes, model.device)
    classes = classes_on_input_grid(probabilities, prepared)
    labelmap = sitk.GetImageFromArray(record.labels.to_values(classes))
    labelmap.CopyInformation(image)
    return SegmentationResult(labelmap, _summary(classes, record.labels, image, model))


def _summary(classes: np.ndarray, labels: LabelSet, image: sitk.Image, model: LoadedSegmentationModel
             ) -> Dict[str, Any]:
    counts = np.bincount(classes.ravel(), minlength=labels.n_classes)
    voxel_ml = _voxel_ml(image)
    return {"model": model.path.stem if model.path else "in memory",
            "labels": [{"value": v, "name": n, "voxels": int(counts[i + 1]),
                        "volume_ml": round(float(counts[i + 1]) * voxel_ml, 3)}
                       for i, (v, n) in enumerate(zip(labels.values, labels.names))]}


def _require_model_contrast(prepared: PreparedVolume, model: LoadedSegmentationModel, name: str) -> None:
    """A model made from a brain autoencoder records the contrasts it is made for: a scan of another is refused
    (as ``detect`` refuses it); a model from scratch records none and checks none."""
    contrasts = model.record.contrasts
    if not contrasts or model.record.preprocess.foreground != "brain":
        return
    from MedAutoencoderLib.brain.contrast import dicom_tags_of, identify_contrast, require_model_contrast

    values = np.where(prepared.foreground, prepared.denormalise(prepared.image), prepared.background)
    estimate = identify_contrast(prepared.on_grid(values.astype(np.float32)),
                                 prepared.on_grid(prepared.foreground.astype(np.uint8)),
                                 tags=dicom_tags_of(prepared.source))
    require_model_contrast(estimate, contrasts, name, model.path.stem if model.path else "in memory")


def segmentation_targets(input_path: Union[str, Path], output_dir: Union[str, Path],
                         output_format: Optional[str] = None) -> Dict[str, Path]:
    """The files :func:`segment_files` writes for one input: the labelmap and its summary."""
    return {"labelmap": output_path(input_path, output_dir, OUTPUT_KIND, output_format),
            "summary": Path(output_dir) / f"{volume_stem(input_path)}_{OUTPUT_KIND}.json"}


def segment_files(inputs: Sequence[Union[str, Path]], output_dir: Union[str, Path],
                  model: LoadedSegmentationModel, output_format: Optional[str] = None, overwrite: bool = False,
                  progress: Optional[ProgressCallback] = None) -> Dict[str, Dict[str, str]]:
    """Segment each file into ``<output_dir>/<stem>_segmentation.<ext>`` (the input's format unless
    ``output_format``) and ``<stem>_segmentation.json``.

    Every header is read and every target checked before the first volume is segmented: existing outputs are
    refused unless ``overwrite``, and an input never is replaced.

    Args:
        inputs: files, folders or glob patterns.
        output_dir: where the outputs go (made when missing).
        model: the segmentation model.
        output_format: nii.gz, nii, nrrd or mha (default: the input's).
        overwrite: replace earlier outputs.
        progress: progress events (``done`` carries the outputs per input).

    Returns:
        Input path -> its output files.

    Raises:
        InputImageError: an unusable input (named); the volumes before it keep their outputs.
        OutputExistsError: an output exists (without ``overwrite``), would replace an input, or two inputs share
            a name.
    """
    paths = find_volumes(inputs)
    targets = {p: segmentation_targets(p, output_dir, output_format) for p in paths}
    seen: Dict[str, Path] = {}
    for source, group in targets.items():
        key = str(group["summary"]).lower()
        if key in seen:
            raise InputImageError(f"{seen[key]} and {source} would write the same outputs ({group['summary'].name}); "
                                  "segment them into different output folders")
        seen[key] = source
    refuse_overwrite([t for group in targets.values() for t in group.values()], protected=paths, overwrite=overwrite)
    for path in paths:
        check_volume_header(path)
    tracker = ProgressTracker(progress, total=len(paths))
    tracker.emit("start", 0, f"segmenting {len(paths)} volume(s)")
    written: Dict[str, Dict[str, str]] = {}
    for index, path in enumerate(paths):
        result = segment_image(read_image(path), model, name=str(path))
        group = targets[path]
        write_image(result.labelmap, group["labelmap"])
        write_text(group["summary"], json.dumps({"input": str(path), **result.summary}, indent=2),
                   overwrite=True)
        written[str(path)] = {kind: str(p) for kind, p in group.items()}
        tracker.emit("progress", index + 1, f"{path.name} ({index + 1}/{len(paths)})")
    tracker.emit("done", len(paths), f"segmented {len(paths)} volume(s) into {output_dir}", outputs=written)
    return written
