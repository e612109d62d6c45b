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


def synthetic_anomalies(clean: torch.Tensor, foreground: torch.Tensor, generator: torch.Generator | None = None,
                        share: float = 0.5) -> torch.Tensor:
    """``clean`` with one soft-edged ellipsoidal blob, 2-12 voxels in radius, centred on a foreground voxel, made
    brighter (x1.4-2.2) or darker (x0.3-0.7), in ``share`` of the samples: what the restoration variant of the DAE
    learns to remove (synthetic anomalies lift it on real lesions; Kascenas 2023, see ANOMALY_NOTES). Written here
    because MONAI has no transform that paints a lesion; a sample without foreground is left as it is."""
    out = clean.clone()
    spatial = clean.shape[2:]
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in spatial], indexing="ij")
    for b in range(clean.shape[0]):
        inside = torch.nonzero(foreground[b, 0] > 0)
        if len(inside) == 0 or float(torch.rand((), generator=generator)) >= share:
            continue
        centre = inside[int(torch.randint(len(inside), (), generator=generator))].float()
        radii = 2.0 + 10.0 * torch.rand(len(spatial), generator=generator)
        distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
        weight = torch.clamp(1.5 - distance, 0.0, 1.0).to(clean.device) * foreground[b, 0]  # soft edge
        bright = float(torch.rand((), generator=generator)) < 0.5
        low, high = (1.4, 2.2) if bright else (0.3, 0.7)
        factor = low + (high - low) * float(torch.rand((), generator=generator))
        out[b, 0] = clean[b, 0] * (1.0 + (factor - 1.0) * weight)
    return out


def corrupt(clean: torch.Tensor, foreground: torch.Tensor, config: ModelConfig,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """The DAE's input: ``clean`` plus coarse or Gaussian noise inside ``foreground`` (``restore``: coarse noise
    on top of a synthetic anomaly, :func:`synthetic_anomalies`)."""
    if config.noise == "restore":
        clean = synthetic_anomalies(clean, foreground, generator)
    if config.noise in ("coarse", "restore"):
        noise = coarse_noise(clean.shape, config.noise_resolution, config.noise_std, generator, clean.device)
    else:
        noise = torch.randn(clean.shape, generator=generator, device="cpu").to(clean.device) * config.noise_std
    return clean + noise * foreground
