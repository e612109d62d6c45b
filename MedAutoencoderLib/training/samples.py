"""Training samples from prepared volumes: axial slices (2D models) or foreground patches (3D models).

Samples are MONAI dictionaries (``image``, ``mask``) so that augmentation and cropping are MONAI transforms.
In data-parallel training each process loads its own share of the samples (see :mod:`distributed`).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

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
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import DistributedSampler, Subset

from MedAutoencoderLib.config import ModelConfig, PreprocessConfig
from MedAutoencoderLib.preprocessing.prepare import PreparedVolume
from MedAutoencoderLib.training.distributed import DistributedContext

_PATCHES_PER_VOLUME = 8  # 3D: random foreground patches drawn from each volume per epoch


def augmentation(augment: bool, spatial_dims: int) -> List:
    """Small affine changes and gamma: plausible variation of healthy anatomy and contrast."""
    if not augment:
        return []
    rotate = (0.15,) if spatial_dims == 2 else (0.1, 0.1, 0.1)
    return [
        RandAffined(keys=("image", "mask"), prob=0.5, rotate_range=rotate, scale_range=0.08,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.85, 1.2)),
    ]


def training_slices(foreground: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Indices of the axial slices a 2D model trains on: foreground covers ``config.mask_min_fraction``."""
    coverage = foreground.reshape(foreground.shape[0], -1).mean(axis=1)
    return np.flatnonzero(coverage >= config.mask_min_fraction)


def volumes_without_samples(volumes: Sequence[PreparedVolume], model: ModelConfig,
                            preprocess: PreprocessConfig) -> List[PreparedVolume]:
    """The volumes that would contribute no sample, found before any loader is built (torch's sampler fails
    on an empty set with a message about ``num_samples``). 3D patches are drawn around foreground voxels, which
    every prepared volume has; 2D slices need ``mask_min_fraction`` of foreground, which a small object on a
    large grid never reaches."""
    if model.spatial_dims == 3:
        return []
    return [v for v in volumes if training_slices(v.foreground, preprocess).size == 0]


def slice_samples(volumes: Sequence[PreparedVolume], config: PreprocessConfig) -> List[dict]:
    """Axial slices whose foreground covers at least ``config.mask_min_fraction`` of the slice."""
    samples = []
    for volume in volumes:
        for z in training_slices(volume.foreground, config):
            samples.append({"image": volume.image[z][None], "mask": volume.foreground[z][None].astype(np.float32)})
    return samples


def volume_samples(volumes: Sequence[PreparedVolume]) -> List[dict]:
    return [{"image": v.image[None], "mask": v.foreground[None].astype(np.float32)} for v in volumes]


def _sharded(dataset: Dataset, shuffle: bool, seed: int,
             context: DistributedContext) -> Tuple[TorchDataset, Optional[DistributedSampler]]:
    """This rank's share of ``dataset`` and the sampler that draws it.

    Training (``shuffle``) uses a :class:`DistributedSampler`: one permutation per epoch shared by all ranks
    (same ``seed``), split into equal shares (padded by repeats) so that every rank takes the same number of
    steps, as DDP requires. Evaluation takes every ``world_size``-th sample without padding, so that the
    all-reduced loss is exactly the loss of the whole set (a rank may get no samples at all).
    """
    if context.world_size == 1:
        return dataset, None
    if shuffle:
        return dataset, DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank,
                                           shuffle=True, seed=seed)
    return Subset(dataset, range(context.rank, len(dataset), context.world_size)), None


def start_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a distributed sampler the epoch, so that each epoch gets its own (rank-consistent) shuffle."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


def make_loader(volumes: Sequence[PreparedVolume], model: ModelConfig, preprocess: PreprocessConfig,
                batch_size: int, augment: bool, seed: int, shuffle: bool = True,
                num_workers: int = 0, context: DistributedContext = DistributedContext()) -> DataLoader:
    """A loader of ``{"image", "mask"}`` batches of shape (B, 1, *spatial); under torchrun, of this rank's
    share, with random transforms seeded per rank."""
    transforms: List = []
    if model.spatial_dims == 2:
        data = slice_samples(volumes, preprocess)
    else:
        data = volume_samples(volumes)
        transforms.append(RandCropByPosNegLabeld(
            keys=("image", "mask"), label_key="mask", spatial_size=tuple(reversed(model.patch_size)),
            pos=1, neg=0, num_samples=_PATCHES_PER_VOLUME, allow_smaller=False))
    transforms += augmentation(augment, model.spatial_dims)
    transforms.append(EnsureTyped(keys=("image", "mask"), track_meta=False))
    pipeline = Compose(transforms)
    rank_seed = context.rank_seed(seed)
    for transform in pipeline.transforms:
        if isinstance(transform, Randomizable):
            transform.set_random_state(seed=rank_seed)
    dataset, sampler = _sharded(Dataset(data, pipeline), shuffle, seed, context)
    generator = torch.Generator().manual_seed(rank_seed)  # also seeds the loader processes' transforms
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, collate_fn=list_data_collate, generator=generator,
                      persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
