"""Training images of any contrast drawn from label maps (SynthSeg-style domain randomisation), in torch.

One call of :func:`synthesize` takes a prepared label map (:mod:`MedAutoencoderLib.synthesis.sources`) and
returns an image with its truths, all on one output grid (2 mm, ``shape``):

1. geometry: one sampling grid = random affine (rotation, scale, shear, shift, left-right flip) + smooth elastic
   displacement; labels are sampled nearest, the real T1 (when drawn) linearly, both through the same grid;
2. intensity: a Gaussian per generation class (mean and spread drawn from a T1/T2/PD/FLAIR ordering of the
   anatomical groups with jitter, or fully at random), or the real IXI T1 itself;
3. acquisition: random resolution / slice thickness (2-6 mm along a random axis: averaged down, interpolated
   back), multiplicative smooth bias field, gamma, Gaussian or Rician noise;
4. field of view: sometimes cut at the top or the bottom (neck in, top of the head out) or on another axis;
   what is cut is zero in the image and background in the truths;
5. sometimes skull-stripped: the image is zero outside the brain dilated by 0-3 mm.

Truths: ``tissue`` (0 background, 1 CSF inside the brain, 2 grey matter, 3 white matter) and ``brain``
(``tissue > 0``). The brain definition is the one of :mod:`MedAutoencoderLib.synthesis.sources`.

Written in torch rather than with MONAI's dictionary transforms: the image and the labels must go through one
sampling grid built once (MONAI's ``Rand3DElastic`` builds a full-resolution field per key and runs its random
draws through numpy), and every step here is one or two tensor operations that run on the GPU as well and are
reproducible from one ``torch.Generator``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from MedAutoencoderLib.synthesis.sources import GROUPS, HEAD, AIR

# Mean intensity of each anatomical group (order of sources.GROUPS) in four contrasts, on a 0-1 scale.
#                          air   vent  ctx   deep  wm    cbctx bstem eCSF  head
CONTRAST_MEANS = {
    "t1":    torch.tensor([0.02, 0.15, 0.45, 0.55, 0.75, 0.50, 0.68, 0.12, -1.0]),
    "t2":    torch.tensor([0.02, 0.90, 0.55, 0.45, 0.35, 0.55, 0.40, 0.92, -1.0]),
    "pd":    torch.tensor([0.02, 0.75, 0.62, 0.55, 0.48, 0.60, 0.50, 0.78, -1.0]),
    "flair": torch.tensor([0.02, 0.06, 0.55, 0.50, 0.40, 0.55, 0.45, 0.08, -1.0]),
}
assert all(len(v) == len(GROUPS) for v in CONTRAST_MEANS.values())


@dataclass(frozen=True)
class SynthesisConfig:
    """Ranges of the random draws of :func:`synthesize` (all probabilities per image)."""

    shape: Tuple[int, int, int] = (96, 112, 96)  # output grid (S, P, L axes), 2 mm voxels
    spacing_mm: float = 2.0
    rotation_deg: float = 20.0  # uniform in +-, about each axis
    scale: Tuple[float, float] = (0.85, 1.2)
    shear: float = 0.05
    shift_mm: float = 20.0  # of the grid's centre from the brain's centre, each axis
    flip_probability: float = 0.5  # left-right
    elastic_std_mm: float = 3.0  # of the displacement at its control points
    elastic_points: int = 5  # control points per axis
    template_probability: float = 0.5  # class means from a contrast ordering (else fully random)
    class_jitter: float = 0.08
    class_std: Tuple[float, float] = (0.0, 0.08)
    real_probability: float = 0.25  # the real T1 (maps that have one) instead of a drawn contrast
    thick_probability: float = 0.6
    thickness_mm: Tuple[float, float] = (2.0, 6.0)
    bias_std: float = 0.3  # log field at 4x4x4 control points
    gamma_std: float = 0.3  # log gamma
    noise_std: Tuple[float, float] = (0.0, 0.06)
    rician_probability: float = 0.5
    cut_probability: float = 0.4
    strip_probability: float = 0.2
    strip_dilation_mm: Tuple[float, float] = (0.0, 3.0)


def _uniform(gen: torch.Generator, low: float, high: float, size: Sequence[int] = ()) -> torch.Tensor:
    return low + (high - low) * torch.rand(tuple(size), generator=gen)


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    ca, cb, cc = torch.cos(angles)
    sa, sb, sc = torch.sin(angles)
    rx = torch.tensor([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = torch.tensor([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = torch.tensor([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rx @ ry @ rz


def normalise_intensities(image: torch.Tensor, low_q: float = 0.005, high_q: float = 0.995) -> torch.Tensor:
    """``image`` scaled so that its 0.5th percentile is 0 and its 99.5th is 1, clipped to [0, 1.5]; the
    percentiles come from every 23rd voxel (the network's input normalisation, in training and inference)."""
    sample = image.reshape(-1)[::23].float()
    low = torch.kthvalue(sample, max(1, int(low_q * len(sample)))).values
    high = torch.kthvalue(sample, max(1, int(high_q * len(sample)))).values
    return ((image - low) / torch.clamp(high - low, min=1e-6)).clamp(0.0, 1.5)


def _index_to_normalised(shape: Sequence[int]) -> torch.Tensor:
    """4x4 matrix: array index (d, h, w, 1) -> grid_sample coordinates (x, y, z, 1) with align_corners=True."""
    size = torch.tensor(list(shape), dtype=torch.float32) - 1
    m = torch.zeros(4, 4)
    m[:3, :3] = torch.diag(2 / size).flip(0)  # rows x, y, z take columns w, h, d
    m[:3, 3] = -1
    m[3, 3] = 1
    return m


def sampling_grid(shape: Sequence[int], source_shape: Sequence[int], centre: torch.Tensor, gen: torch.Generator,
                  config: SynthesisConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """The sampling grid of one draw: where in the label map each output voxel comes from.

    Args:
        shape: output grid shape.
        source_shape: the label map's array shape.
        centre: source index (3,) that the output grid's centre maps to before the random shift.
        gen: random generator.
        config: ranges.

    Returns:
        ``(grid, affine)``: the grid as ``torch.nn.functional.grid_sample`` takes it (1, D, H, W, 3, normalised
        source coordinates, align_corners=True) and the 4x4 affine part (output index -> source index).
    """
    vox = config.spacing_mm
    angles = _uniform(gen, -1, 1, (3,)) * math.radians(config.rotation_deg)
    matrix = _rotation(angles) @ torch.diag(_uniform(gen, *config.scale, (3,)))
    matrix = matrix @ (torch.eye(3) + _uniform(gen, -config.shear, config.shear, (3, 3)) * (1 - torch.eye(3)))
    if torch.rand((), generator=gen) < config.flip_probability:
        matrix = matrix @ torch.diag(torch.tensor([1.0, 1.0, -1.0]))
    shift = _uniform(gen, -config.shift_mm, config.shift_mm, (3,)) / vox
    out_centre = (torch.tensor(list(shape), dtype=torch.float32) - 1) / 2
    affine = torch.eye(4)
    affine[:3, :3], affine[:3, 3] = matrix, centre.float() + shift - matrix @ out_centre
    theta = _index_to_normalised(source_shape) @ affine @ torch.linalg.inv(_index_to_normalised(shape))
    # affine and elastic parts on the control points, interpolated once: trilinear interpolation with
    # align_corners=True reproduces the affine part exactly
    n = config.elastic_points
    coarse = F.affine_grid(theta[None, :3], [1, 1, n, n, n], align_corners=True).permute(0, 4, 1, 2, 3)
    control = torch.randn((1, 3, n, n, n), generator=gen) * (config.elastic_std_mm / vox)
    scale = 2 / (torch.tensor(list(source_shape), dtype=torch.float32).flip(0) - 1)
    coarse = coarse + control.flip(1) * scale.view(1, 3, 1, 1, 1)
    grid = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)
    return grid.permute(0, 2, 3, 4, 1).contiguous(), affine


def grid_to_indices(grid: torch.Tensor, source_shape: Sequence[int]) -> torch.Tensor:
    """Source array indices (D, H, W, 3 in d, h, w order) of a :func:`sampling_grid` grid."""
    size = torch.tensor(list(source_shape), dtype=torch.float32) - 1
    return (grid[0].flip(-1) + 1) / 2 * size


def warp_labels(labels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Integer ``labels`` (D, H, W) sampled nearest at ``grid`` (:func:`sampling_grid`); 0 outside."""
    out = F.grid_sample(labels[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True)
    return out[0, 0].round().long()


def _class_intensities(groups: torch.Tensor, gen: torch.Generator, config: SynthesisConfig,
                       contrast: Optional[str] = None):
    k = len(groups)
    stds = _uniform(gen, *config.class_std, (k,))
    if contrast is not None or torch.rand((), generator=gen) < config.template_probability:
        names = sorted(CONTRAST_MEANS)
        name = contrast or names[int(torch.randint(len(names), (), generator=gen))]
        means = CONTRAST_MEANS[name][groups.long()] + torch.randn((k,), generator=gen) * config.class_jitter
        head = groups == HEAD
        means[head] = torch.rand((int(head.sum()),), generator=gen)
    else:
        means = torch.rand((k,), generator=gen)
    air = groups == AIR
    means[air] = _uniform(gen, 0.0, 0.08, (int(air.sum()),))
    return means.clamp(0, 1), stds


def _thick_slices(image: torch.Tensor, gen: torch.Generator, config: SynthesisConfig) -> torch.Tensor:
    axis = int(torch.randint(3, (), generator=gen))
    thickness = float(_uniform(gen, *config.thickness_mm))
    size = list(image.shape[-3:])
    low = list(size)
    low[axis] = max(2, int(round(size[axis] * config.spacing_mm / thickness)))
    down = F.adaptive_avg_pool3d(image, low)
    return F.interpolate(down, size=size, mode="trilinear", align_corners=False)


def _bias(shape: Sequence[int], gen: torch.Generator, std: float) -> torch.Tensor:
    control = torch.randn((1, 1, 4, 4, 4), generator=gen) * std * float(torch.rand((), generator=gen))
    return torch.exp(F.interpolate(control, size=tuple(shape), mode="trilinear", align_corners=True))


def _cut(image: torch.Tensor, tissue: torch.Tensor, gen: torch.Generator) -> None:
    """Zero the image and the truth beyond a random plane (in place): mostly top or bottom (axis 0, superior)."""
    brain = tissue > 0
    axis = 0 if torch.rand((), generator=gen) < 0.75 else int(torch.randint(1, 3, (), generator=gen))
    profile = brain.flatten(1 if axis == 0 else 0).any(-1) if axis == 0 else brain.movedim(axis, 0).flatten(1).any(-1)
    idx = torch.nonzero(profile).flatten()
    n = tissue.shape[axis]
    if len(idx) == 0:
        return
    lo, hi = int(idx[0]), int(idx[-1])
    extent = hi - lo
    if torch.rand((), generator=gen) < 0.5:  # cut below: keep from a plane between the grid's start and 30 % up
        plane = int(_uniform(gen, 0, lo + 0.3 * extent))
        sl = [slice(None)] * 3
        sl[axis] = slice(0, plane)
    else:  # cut above
        plane = int(_uniform(gen, hi - 0.3 * extent, n))
        sl = [slice(None)] * 3
        sl[axis] = slice(plane, n)
    image[(slice(None), slice(None)) + tuple(sl)] = 0
    tissue[tuple(sl)] = 0


def synthesize(label_map: Dict[str, torch.Tensor], gen: torch.Generator,
               config: SynthesisConfig = SynthesisConfig(), contrast: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """One random training image and its truths from a prepared label map.

    Args:
        label_map: a prepared map as :func:`to_tensors` gives it.
        gen: the random generator (the result is a function of its state: same seed, same image).
        config: ranges of the random draws.
        contrast: force a contrast ordering (``"t1"``, ``"t2"``, ``"pd"``, ``"flair"``) or ``"real"`` (the real
            T1); ``None`` draws it.

    Returns:
        ``image`` (1, D, H, W float32, normalised as the extractor's input), ``tissue`` (D, H, W int64), ``brain``
        (D, H, W bool), ``affine`` (4x4: output index -> source index before the elastic displacement),
        ``grid`` (the sampling grid, :func:`sampling_grid`) and ``stripped`` (bool).
    """
    classes, tissue_src = label_map["classes"], label_map["tissue"]
    shape = config.shape
    grid, affine = sampling_grid(shape, classes.shape, label_map["centre"], gen, config)
    code = warp_labels(label_map["code"], grid)
    cls, tissue = code // 4, code % 4
    use_real = "t1" in label_map and (contrast == "real" or (
        contrast is None and torch.rand((), generator=gen) < config.real_probability))
    if use_real:
        t1 = label_map["t1"].float()
        image = F.grid_sample(t1[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        image = image / label_map["t1_scale"]
    else:
        forced = contrast if contrast in CONTRAST_MEANS else None
        means, stds = _class_intensities(label_map["groups"], gen, config, forced)
        image = (means[cls] + stds[cls] * torch.randn(cls.shape, generator=gen))[None]
    image = image[None]  # (1, 1, D, H, W)
    if torch.rand((), generator=gen) < config.thick_probability:
        image = _thick_slices(image, gen, config)
    image = image * _bias(shape, gen, config.bias_std)
    image = image.clamp(min=0)
    image = image / torch.clamp(image.amax(), min=1e-6)
    image = image ** torch.exp(torch.randn((), generator=gen) * config.gamma_std)
    sigma = float(_uniform(gen, *config.noise_std))
    if torch.rand((), generator=gen) < config.rician_probability:
        image = torch.sqrt((image + sigma * torch.randn(image.shape, generator=gen)) ** 2
                           + (sigma * torch.randn(image.shape, generator=gen)) ** 2)
    else:
        image = (image + sigma * torch.randn(image.shape, generator=gen)).clamp(min=0)
    if torch.rand((), generator=gen) < config.cut_probability:
        _cut(image, tissue, gen)
    stripped = bool(torch.rand((), generator=gen) < config.strip_probability)
    if stripped:
        radius = float(_uniform(gen, *config.strip_dilation_mm)) / config.spacing_mm
        keep = (tissue > 0).float()[None, None]
        if radius >= 0.5:
            k = 2 * int(round(radius)) + 1
            keep = F.max_pool3d(keep, k, stride=1, padding=k // 2)
        image = image * keep
    image = normalise_intensities(image[0])
    return {"image": image.float(), "tissue": tissue, "brain": tissue > 0, "affine": affine,
            "grid": grid, "stripped": torch.tensor(stripped)}


def to_tensors(arrays: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    """A prepared map's arrays (:func:`MedAutoencoderLib.synthesis.sources.load_map`) as the tensors
    :func:`synthesize` takes, with what every draw needs computed once: ``code`` (class * 4 + tissue, float, sampled
    nearest in one pass), ``centre`` (the brain's centre, source index) and ``t1_scale`` (the T1's 99th
    percentile)."""
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    out["code"] = (out["classes"].long() * 4 + out["tissue"].long()).float()
    brain = torch.nonzero(out["tissue"] > 0).float()
    out["centre"] = brain.mean(0) if len(brain) else (torch.tensor(out["classes"].shape).float() - 1) / 2
    if "t1" in out:
        out["t1"] = out["t1"].float()
        out["t1_scale"] = torch.quantile(out["t1"].reshape(-1)[::7], 0.99).clamp(min=1e-6)
    return out
