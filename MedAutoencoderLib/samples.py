"""Training samples from prepared volumes: axial slices (2D models) or foreground patches (3D models).

Samples are MONAI dictionaries (``image``, ``mask``) so that augmentation and cropping are MONAI transforms.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
from monai.data import DataLoader, Dataset, list_data_collate
from monai.transforms import (
    Compose,
    EnsureTyped,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    Randomizable,
)

from MedAutoencoderLib.config import ModelConfig, PreprocessConfig
from MedAutoencoderLib.preprocessing import PreparedVolume

_PATCHES_PER_VOLUME = 8  # 3D: random foreground patches drawn from each volume per epoch


def _augmentation(augment: bool, spatial_dims: int) -> List:
    """Small affine changes and gamma: plausible variation of healthy anatomy and contrast."""
    if not augment:
        return []
    rotate = (0.15,) if spatial_dims == 2 else (0.1, 0.1, 0.1)
    return [
        RandAffined(keys=("image", "mask"), prob=0.5, rotate_range=rotate, scale_range=0.08,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.85, 1.2)),
    ]


def slice_samples(volumes: Sequence[PreparedVolume], config: PreprocessConfig) -> List[dict]:
    """Axial slices whose foreground covers at least ``config.mask_min_fraction`` of the slice."""
    samples = []
    for volume in volumes:
        coverage = volume.foreground.reshape(volume.foreground.shape[0], -1).mean(axis=1)
        for z in np.flatnonzero(coverage >= config.mask_min_fraction):
            samples.append({"image": volume.image[z][None], "mask": volume.foreground[z][None].astype(np.float32)})
    return samples


def volume_samples(volumes: Sequence[PreparedVolume]) -> List[dict]:
    return [{"image": v.image[None], "mask": v.foreground[None].astype(np.float32)} for v in volumes]


def make_loader(volumes: Sequence[PreparedVolume], model: ModelConfig, preprocess: PreprocessConfig,
                batch_size: int, augment: bool, seed: int, shuffle: bool = True,
                num_workers: int = 0) -> DataLoader:
    """A loader of ``{"image", "mask"}`` batches of shape (B, 1, *spatial)."""
    transforms: List = []
    if model.spatial_dims == 2:
        data = slice_samples(volumes, preprocess)
    else:
        data = volume_samples(volumes)
        transforms.append(RandCropByPosNegLabeld(
            keys=("image", "mask"), label_key="mask", spatial_size=tuple(reversed(model.patch_size)),
            pos=1, neg=0, num_samples=_PATCHES_PER_VOLUME, allow_smaller=False))
    transforms += _augmentation(augment, model.spatial_dims)
    transforms.append(EnsureTyped(keys=("image", "mask"), track_meta=False))
    pipeline = Compose(transforms)
    for transform in pipeline.transforms:
        if isinstance(transform, Randomizable):
            transform.set_random_state(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(Dataset(data, pipeline), batch_size=batch_size, shuffle=shuffle,
                      num_workers=num_workers, collate_fn=list_data_collate, generator=generator,
                      persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
