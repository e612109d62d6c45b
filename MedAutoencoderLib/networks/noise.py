"""Corruptions for the denoising autoencoder.

Coarse noise (Kascenas et al., MIDL 2022) is drawn on a low-resolution grid, upsampled, randomly shifted and
added inside the foreground only: the network must then restore region-sized intensity changes, which is what a
lesion looks like, instead of learning to remove pixel noise. Written here because MONAI's noise transforms are
per-voxel (``RandGaussianNoise``) or multiplicative (``RandBiasField``); none gives shifted low-resolution
additive noise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from MedAutoencoderLib.config import ModelConfig


def coarse_noise(shape: torch.Size, cells: int, std: float, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Noise of ``shape`` (B, C, *spatial) drawn on ``cells`` per axis, upsampled and randomly shifted."""
    batch, channels, *spatial = shape
    upsampled_size = [2 * s for s in spatial]  # draw on a 2x larger canvas so that a random shift stays inside
    coarse = torch.randn((batch, channels, *[2 * cells] * len(spatial)), generator=generator, device="cpu") * std
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    big = F.interpolate(coarse.to(device), size=upsampled_size, mode=mode, align_corners=False)
    offsets = [int(torch.randint(0, s + 1, (1,), generator=generator)) for s in spatial]
    index = tuple(slice(o, o + s) for o, s in zip(offsets, spatial))
    return big[(slice(None), slice(None)) + index]


def corrupt(clean: torch.Tensor, foreground: torch.Tensor, config: ModelConfig,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """The DAE's input: ``clean`` plus coarse or Gaussian noise inside ``foreground``."""
    if config.noise == "coarse":
        noise = coarse_noise(clean.shape, config.noise_resolution, config.noise_std, generator, clean.device)
    else:
        noise = torch.randn(clean.shape, generator=generator, device="cpu").to(clean.device) * config.noise_std
    return clean + noise * foreground
