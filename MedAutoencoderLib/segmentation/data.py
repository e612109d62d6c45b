"""Labelled volumes for segmentation training: images paired with their label maps and both brought onto the
model grid (the image by :func:`~MedAutoencoderLib.preprocessing.prepare.prepare_volume`, the labels by a
nearest-neighbour resampling through physical space, so a label map on another grid than its image's still
lands on the right voxels)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.config import PreprocessConfig
from MedAutoencoderLib.errors import InputImageError
from MedAutoencoderLib.io.volumes import find_volumes, pair_by_stem, read_image, read_mask
from MedAutoencoderLib.preprocessing.prepare import PreparedVolume, prepare_volume
from MedAutoencoderLib.segmentation.labels import LabelSet, label_values
from MedAutoencoderLib.training.samples import training_slices

PathLike = Union[str, Path]


@dataclass
class LabelledVolume:
    """An image on the model grid with its label values there ((z, y, x), the user's values)."""

    prepared: PreparedVolume
    labels: np.ndarray
    values: List[int]  # the label values above 0 its label map holds
    classes: np.ndarray = None  # class indices of ``labels`` once the training set's LabelSet is known

    def slices(self, preprocess: PreprocessConfig) -> np.ndarray:
        """Axial slices to train on: enough foreground (as the autoencoders train), or any label."""
        labelled = np.flatnonzero(self.labels.reshape(self.labels.shape[0], -1).any(axis=1))
        return np.union1d(training_slices(self.prepared.foreground, preprocess), labelled)


def pair_images_with_labels(images: Sequence[PathLike], labels: Sequence[PathLike]) -> List[Tuple[Path, Path]]:
    """Match each image ``<stem>`` to the label map named ``<stem>`` or ``<stem>_<anything>`` (``_seg``,
    ``_labels``, ``_T1_DLMUSE``...), preferring one in the image's own folder.

    Args:
        images: image files, folders or glob patterns.
        labels: label map files, folders or glob patterns.

    Returns:
        (image, label map) pairs in the images' order.

    Raises:
        InputImageError: an image without a label map, with several, or a label map claimed by two images.
    """
    image_paths = find_volumes(images)
    label_paths = [p for p in find_volumes(labels) if p not in set(image_paths)]
    pairs = pair_by_stem(image_paths, label_paths,
                         lambda stem, other: other == stem or other.startswith(stem + "_"), "label maps",
                         "no label map named {stem} or {stem}_... (e.g. {stem}_seg) among the label maps")
    owner: Dict[Path, Path] = {}
    for image, label in pairs:
        if label in owner:
            raise InputImageError(f"{label}: is the label map of both {owner[label]} and {image}; give one per image")
        owner[label] = image
    return pairs


def labels_on_grid(label_map: sitk.Image, grid: sitk.Image, name: str) -> np.ndarray:
    """The label values of ``label_map`` on ``grid`` (nearest neighbour through physical space).

    Raises:
        InputImageError: no labelled voxel lands on the grid (another scan's labels, a wrong origin).
    """
    resampled = sitk.Resample(label_map, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    values = sitk.GetArrayFromImage(resampled)
    if not values.any():
        raise InputImageError(f"{name}: none of its labelled voxels lies on the model grid around its image (is it "
                              "the label map of another scan, or is its position in the header wrong?)")
    return values


def prepare_labelled(image_path: PathLike, label_path: PathLike, preprocess: PreprocessConfig) -> LabelledVolume:
    """One image and its label map on the model grid.

    Args:
        image_path: the image.
        label_path: its label map (integer values, 0 the background).
        preprocess: the model's preprocessing.

    Returns:
        The labelled volume (classes not yet assigned).

    Raises:
        InputImageError: either file unusable (named, with the reason).
    """
    label_map = read_mask(label_path)
    values = label_values(sitk.GetArrayViewFromImage(label_map), str(label_path))
    if label_map.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkUInt32, sitk.sitkInt8,
                                      sitk.sitkInt16, sitk.sitkInt32, sitk.sitkInt64, sitk.sitkUInt64):
        label_map = sitk.Cast(label_map, sitk.sitkInt32)  # integer values stored as floats (checked above)
    prepared = prepare_volume(read_image(image_path), preprocess, name=str(image_path))
    labels = labels_on_grid(label_map, prepared.grid, str(label_path))
    return LabelledVolume(prepared=prepared, labels=labels, values=values)


def assign_classes(volumes: Sequence[LabelledVolume], labels: LabelSet, names: Dict[int, str]) -> None:
    """Set every volume's class indices from the training set's :class:`LabelSet` (``names``: index -> file)."""
    for index, volume in enumerate(volumes):
        volume.classes = labels.to_classes(volume.labels, names.get(index, f"label map {index + 1}"))
