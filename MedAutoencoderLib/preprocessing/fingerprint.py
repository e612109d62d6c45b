"""The model grid chosen from the training data: a dataset fingerprint and the plan made from it.

As nnU-Net and MONAI Auto3DSeg do, ``train`` without ``--spacing`` / ``--size`` measures its volumes (spacing
along each patient axis, the foreground's extent around its centroid, obliquity, anisotropy, intensity
statistics inside and outside the foreground) and chooses the model grid from them:

- a brain cohort (``--foreground template``, or a head-sized foreground on every volume) gets the grid the
  bundled brain model was made on, 1.5 mm isotropic, 128 x 128 x 112 voxels (192 x 192 x 168 mm): it holds an
  adult brain or head centred on its foreground, and the detection settings were chosen on it;
- any other cohort gets its median spacing per axis (for strongly anisotropic data, nnU-Net's rule: the coarse
  axis at its 10th percentile, not finer than needed), a grid that holds the largest foreground of the cohort
  with a margin, rounded up to what the network's levels divide, and coarsened isotropically when it would
  exceed the voxels of the brain grid (the compute the defaults are sized for);
- the intensity normalisation stays ``percentile`` (background to 0, the foreground's upper percentile to 1)
  unless the background is not the darkest part of the volumes (data already normalised to zero mean, say):
  then ``zscore``;
- 2D (slice-wise) models stay the default for every kind of data (a 3D model is asked for with
  ``--spatial-dims 3``, and then gets a patch that fits the planned grid).

Options given explicitly always win; the plan fills in only those not given. The fingerprint and the plan are
recorded in the model file (``training["grid_plan"]``) and printed when training starts.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.config import BRAIN_FOREGROUNDS, PLANNABLE_PREPROCESSING, ModelConfig, PreprocessConfig
from MedAutoencoderLib.errors import InputImageError
from MedAutoencoderLib.io.volumes import physical_points, read_image
from MedAutoencoderLib.preprocessing.prepare import otsu_foreground

#: The preprocessing settings a plan can choose (the command line leaves out those given as options).
PLANNABLE = PLANNABLE_PREPROCESSING

_COARSE_VOXELS = 64  # the foreground is found on a copy of about this many voxels per axis, as for centring
# An adult brain (skull-stripped) to a whole head with some neck, along the LPS axes (left-right, front-back,
# foot-head), as this module measures the extent (twice the farthest edge from the centroid): the MNI template's
# brain 147 x 190 x 163 mm, the synthetic subjects made from it 141-156 x 182-200 x 155-161 mm, every third of the
# IXI T1 heads with skull and face 148-184 x 216-265 x 203-244 mm. The bounds leave room for a child's brain and a
# slab cut short below, and for a longer neck above.
_HEAD_EXTENT_MM = ((100.0, 230.0), (120.0, 300.0), (80.0, 300.0))
_ANISOTROPY = 3.0  # nnU-Net: a coarse axis more than 3 times the finest is "anisotropic"
_MARGIN_VOXELS = 2  # around the largest foreground, on each side, beyond the share below
_MARGIN_SHARE = 0.05
# Below the background (the median of the volume's outer faces) by more than this share of the intensity range
# (1st to 99th percentile) counts as darker than it, as in preprocessing: interpolation ringing and noise stay
# within it.
_DARKER_MARGIN = 0.1
_MAX_SHARE_DARKER = 0.01


@dataclass
class VolumeFingerprint:
    """What one volume says about the grid and normalisation a model for it needs (lengths in mm, LPS axes)."""

    name: str
    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]  # along L, P, S: of the voxel axis closest to each
    extent: Tuple[float, float, float]  # twice the farthest foreground edge from its centroid, per axis
    obliquity_deg: float  # largest angle between a voxel axis and the patient axis closest to it
    background: float  # 1st percentile of all voxels, as the normalisation takes it
    foreground_percentiles: Tuple[float, float, float]  # 1st, 50th, 99th inside the foreground
    foreground_mean: float
    foreground_std: float
    share_darker_than_background: float  # of all voxels, than the median of the outer faces


@dataclass
class CohortFingerprint:
    """The fingerprints of a cohort and their summary."""

    volumes: List[VolumeFingerprint]
    median_spacing: Tuple[float, float, float] = field(init=False)
    largest_extent: Tuple[float, float, float] = field(init=False)
    anisotropy: float = field(init=False)  # coarsest median spacing over the finest
    head_sized: bool = field(init=False)  # every volume's foreground is as large as a brain or a head
    background_darkest: bool = field(init=False)

    def __post_init__(self) -> None:
        if not self.volumes:
            raise InputImageError("no volumes to take a fingerprint of")
        spacings = np.array([v.spacing for v in self.volumes])
        extents = np.array([v.extent for v in self.volumes])
        self.median_spacing = tuple(float(s) for s in np.median(spacings, axis=0))
        self.largest_extent = tuple(float(e) for e in extents.max(axis=0))
        self.anisotropy = float(max(self.median_spacing) / min(self.median_spacing))
        self.head_sized = all(low <= e <= high for extent in extents for e, (low, high) in zip(extent, _HEAD_EXTENT_MM))
        self.background_darkest = all(v.share_darker_than_background <= _MAX_SHARE_DARKER for v in self.volumes)

    def spacing_percentile(self, axis: int, percentile: float) -> float:
        return float(np.percentile([v.spacing[axis] for v in self.volumes], percentile))

    def summary(self) -> Dict[str, Any]:
        """Plain data for the model file."""
        return {"volumes": len(self.volumes), "median_spacing": _rounded(self.median_spacing),
                "largest_foreground_extent": _rounded(self.largest_extent, 1),
                "anisotropy": round(self.anisotropy, 2), "head_sized": self.head_sized,
                "background_darkest": self.background_darkest,
                "max_obliquity_deg": round(max(v.obliquity_deg for v in self.volumes), 1),
                "foreground_median": _rounded([v.foreground_percentiles[1] for v in self.volumes], 4),
                "foreground_std": _rounded([v.foreground_std for v in self.volumes], 4)}


@dataclass
class GridPlan:
    """The preprocessing chosen for a cohort, what was taken from the data, and why."""

    preprocess: PreprocessConfig
    model: ModelConfig
    chosen: Tuple[str, ...]  # the settings the plan chose (the others were given)
    reason: str
    fingerprint: CohortFingerprint

    def record(self) -> Dict[str, Any]:
        """Plain data for the model file's training record."""
        return {"chosen": list(self.chosen), "reason": self.reason, "spacing": list(self.preprocess.spacing),
                "size": list(self.preprocess.size), "normalization": self.preprocess.normalization,
                "fingerprint": self.fingerprint.summary()}

    def describe(self) -> str:
        """One line for the training log."""
        spacing = " x ".join(f"{s:g}" for s in self.preprocess.spacing)
        size = " x ".join(str(s) for s in self.preprocess.size)
        view = " x ".join(f"{n * s:.0f}" for n, s in zip(self.preprocess.size, self.preprocess.spacing))
        given = [name for name in PLANNABLE if name not in self.chosen]
        return (f"model grid from the data ({', '.join(self.chosen)}; {'given: ' + ', '.join(given) if given else 'no grid option given'}): "
                f"{spacing} mm, {size} voxels ({view} mm), {self.preprocess.normalization} normalisation; "
                f"{self.reason}")


def _rounded(values, digits: int = 3) -> List[float]:
    return [round(float(v), digits) for v in values]


def _patient_axes(direction: np.ndarray) -> np.ndarray:
    """For each patient axis (L, P, S) the voxel axis that runs closest to it."""
    order = np.argmax(np.abs(direction), axis=1)
    if len(set(order.tolist())) < 3:  # 45-degree ties: assign greedily by alignment
        order = np.full(3, -1)
        for flat in np.argsort(-np.abs(direction), axis=None):
            patient, voxel = divmod(int(flat), 3)
            if order[patient] < 0 and voxel not in order:
                order[patient] = voxel
    return order


def fingerprint_volume(image: sitk.Image, name: str = "input") -> VolumeFingerprint:
    """Measure one volume: spacing and foreground extent along the patient axes, and intensity statistics.

    Args:
        image: the volume as read (any direction and spacing).
        name: how messages name it.

    Returns:
        Its fingerprint.

    Raises:
        InputImageError: the volume has no foreground (nothing brighter than its background).
    """
    direction = np.array(image.GetDirection()).reshape(3, 3)
    axes = _patient_axes(direction)
    spacing = np.array(image.GetSpacing())
    factors = [max(1, int(s // _COARSE_VOXELS)) for s in image.GetSize()]
    coarse = sitk.Shrink(image, factors) if max(factors) > 1 else image  # every n-th voxel: no averaging
    try:
        mask = sitk.GetArrayFromImage(otsu_foreground(coarse)) > 0  # a copy: a view would outlive its image
    except InputImageError as exc:
        raise InputImageError(f"{name}: {exc}") from None
    values = sitk.GetArrayViewFromImage(coarse).astype(np.float64)
    points = physical_points(coarse, np.argwhere(mask)[:, ::-1].astype(float))
    centroid = points.mean(axis=0)
    half_voxel = 0.5 * np.abs(direction) @ np.array(coarse.GetSpacing())  # a voxel's half width along each axis
    half = np.maximum(points.max(axis=0) - centroid, centroid - points.min(axis=0)) + half_voxel
    inside = values[mask]
    background = float(np.percentile(values, 1.0))
    low, median, high = (float(v) for v in np.percentile(inside, (1.0, 50.0, 99.0)))
    faces = np.concatenate([values[i].ravel() for i in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1],
                                                        np.s_[:, :, 0], np.s_[:, :, -1])])
    bottom, top = np.percentile(values, (1.0, 99.0))
    darker = float(np.mean(values < np.median(faces) - _DARKER_MARGIN * max(top - bottom, 1e-12)))
    cosines = np.abs(direction[np.arange(3), axes]).clip(0.0, 1.0)
    return VolumeFingerprint(
        name=name, size=tuple(int(s) for s in image.GetSize()), spacing=tuple(float(spacing[a]) for a in axes),
        extent=tuple(float(2 * h) for h in half), obliquity_deg=float(np.degrees(np.arccos(cosines.min()))),
        background=background, foreground_percentiles=(low, median, high), foreground_mean=float(inside.mean()),
        foreground_std=float(inside.std()), share_darker_than_background=darker)


def fingerprint_cohort(paths: Sequence[Path], on_volume: Optional[Callable[[int, Path], None]] = None
                       ) -> CohortFingerprint:
    """Fingerprints of the volumes at ``paths``.

    Args:
        paths: volume files (or DICOM series folders), as :func:`MedAutoencoderLib.io.volumes.find_volumes` lists
            them.
        on_volume: called with (index, path) before each volume is read (progress, cancellation).

    Returns:
        The cohort's fingerprint.

    Raises:
        InputImageError: a volume cannot be read or has no foreground.
    """
    volumes = []
    for i, path in enumerate(paths):
        if on_volume is not None:
            on_volume(i, path)
        volumes.append(fingerprint_volume(read_image(path), name=str(path)))
    return CohortFingerprint(volumes)


def _multiple_at_least(value: float, step: int, minimum: int) -> int:
    return max(minimum, int(math.ceil(value / step - 1e-6)) * step)


def _grid_size(extent: np.ndarray, spacing: np.ndarray, model: ModelConfig) -> List[int]:
    """Voxels that hold ``extent`` at ``spacing``: the axes the network halves rounded up to its factor, the
    slice axis of a 2D model to at least 8 (the smallest grid the settings accept)."""
    factor = model.downsampling_factor
    voxels = extent / spacing
    if model.spatial_dims == 3:
        return [_multiple_at_least(v, factor, factor) for v in voxels]
    size = [_multiple_at_least(v, factor, factor) for v in voxels[:2]] + [_multiple_at_least(voxels[2], 1, 8)]
    if model.name != "dae" and size[0] == size[1] == factor:  # a single-voxel bottleneck fails; see config
        size[int(np.argmax(voxels[:2]))] = 2 * factor
    return size


def _needed_extent(fingerprint: CohortFingerprint, spacing: np.ndarray) -> np.ndarray:
    extent = np.array(fingerprint.largest_extent)
    return extent + 2 * np.maximum(_MARGIN_VOXELS * spacing, _MARGIN_SHARE * extent)


def _voxel_budget() -> int:
    return int(np.prod(PreprocessConfig().size))


def _data_spacing(fingerprint: CohortFingerprint) -> Tuple[np.ndarray, str]:
    """The median spacing per axis; for anisotropic data the coarse axis at its 10th percentile (nnU-Net), so
    that the thick slices of a few volumes do not blur the rest."""
    spacing = np.array(fingerprint.median_spacing)
    if fingerprint.anisotropy <= _ANISOTROPY:
        return spacing, f"median spacing (anisotropy {fingerprint.anisotropy:.2g})"
    coarse = int(np.argmax(spacing))
    spacing[coarse] = max(fingerprint.spacing_percentile(coarse, 10.0), _ANISOTROPY * spacing.min())
    return spacing, (f"median spacing, the coarse {'LPS'[coarse]} axis at its 10th percentile (anisotropy "
                     f"{fingerprint.anisotropy:.2g})")


def _fitted_grid(fingerprint: CohortFingerprint, model: ModelConfig, given: PreprocessConfig,
                 choose: Sequence[str]) -> Tuple[Tuple[float, ...], Tuple[int, ...], str]:
    if "spacing" not in choose:  # the user's spacing; the grid holds the foreground at it
        spacing = np.array(given.spacing, dtype=float)
        size = _grid_size(_needed_extent(fingerprint, spacing), spacing, model)
        return tuple(given.spacing), tuple(size), "grid to hold the largest foreground at the given spacing"
    spacing, why = _data_spacing(fingerprint)
    if "size" not in choose:  # the user's size: coarsen the spacing until the foreground fits in it
        stretch = max(1.0, float(np.max(_needed_extent(fingerprint, spacing) / (np.array(given.size) * spacing))))
        spacing = spacing * stretch
        return _round_spacing(spacing), tuple(given.size), f"{why}, coarsened {stretch:.2g}x to fit the given size"
    size = _grid_size(_needed_extent(fingerprint, spacing), spacing, model)
    budget = _voxel_budget()
    stretch = 1.0
    while np.prod(size) > budget:  # a few rounds: rounding up to the factor can need one more
        stretch *= max(1.02, (np.prod(size) / budget) ** (1 / 3))
        size = _grid_size(_needed_extent(fingerprint, spacing * stretch), spacing * stretch, model)
    if stretch > 1:
        why += f", coarsened {stretch:.2g}x to stay within {budget:,} voxels"
    return _round_spacing(spacing * stretch), tuple(size), why + "; grid holds the largest foreground"


def _round_spacing(spacing: np.ndarray) -> Tuple[float, float, float]:
    return tuple(float(f"{s:.3g}") for s in spacing)


def plan_preprocessing(fingerprint: CohortFingerprint, model: ModelConfig, given: PreprocessConfig,
                       choose: Sequence[str] = PLANNABLE) -> GridPlan:
    """Choose the settings named in ``choose`` from ``fingerprint``; the others stay as in ``given``.

    Args:
        fingerprint: the training cohort's fingerprint.
        model: the architecture (its levels decide what the grid must divide by; a 3D model's patch is fitted
            to the grid).
        given: the preprocessing as the user set it (defaults where not given).
        choose: which of :data:`PLANNABLE` to take from the data.

    Returns:
        The plan: the preprocessing and model settings to train with, and why.
    """
    choose = tuple(name for name in PLANNABLE if name in choose)
    changes: Dict[str, Any] = {}
    if "normalization" in choose:
        changes["normalization"] = "percentile" if fingerprint.background_darkest else "zscore"
    brain = given.foreground in BRAIN_FOREGROUNDS or fingerprint.head_sized
    if brain:
        defaults = PreprocessConfig()
        changes.update({name: getattr(defaults, name) for name in ("spacing", "size") if name in choose})
        reason = (f"brain cohort (--foreground {given.foreground})" if given.foreground in BRAIN_FOREGROUNDS else
                  "head-sized foreground in every volume") + ": the grid of the bundled brain model"
    elif "spacing" in choose or "size" in choose:
        spacing, size, reason = _fitted_grid(fingerprint, model, given, choose)
        changes.update({"spacing": spacing, "size": size})
    else:
        reason = "grid as given"
    if "normalization" in choose and not fingerprint.background_darkest:
        reason += "; zscore: the background is not the darkest part of every volume"
    preprocess = dataclasses.replace(given, **changes)
    fitted_model = model
    if model.spatial_dims == 3 and any(p > s for p, s in zip(model.patch_size, preprocess.size)):
        factor = model.downsampling_factor
        patch = tuple(max(factor, min(p, s) // factor * factor) for p, s in zip(model.patch_size, preprocess.size))
        fitted_model = dataclasses.replace(model, patch_size=patch)
        reason += f"; 3D patch {' x '.join(map(str, patch))} to fit the grid"
    return GridPlan(preprocess=preprocess, model=fitted_model, chosen=choose, reason=reason, fingerprint=fingerprint)
