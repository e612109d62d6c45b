"""Bringing a volume onto the model grid and every output back onto the input's own grid.

The model grid is axis-aligned in patient space with the model's spacing and size, centred on the foreground.
A single SimpleITK resampling does orientation, spacing and crop/pad together, and the inverse is a
resampling onto the input image itself (same size, spacing, origin and direction by construction), so outputs
land exactly on the input grid whatever its direction matrix or spacing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from MedAutoencoderLib.config import BRAIN_FOREGROUNDS, PreprocessConfig
from MedAutoencoderLib.errors import InputImageError
from MedAutoencoderLib.preprocessing import morphology
from MedAutoencoderLib.preprocessing.quantiles import percentile

_CENTRING_GRID_VOXELS = 64  # the foreground centroid is found on a coarse copy of about this many voxels/axis


@dataclass
class PreparedVolume:
    """A volume on the model grid: what the network sees, plus what is needed to map results back."""

    image: np.ndarray  # (z, y, x) float32, normalised, zero outside the foreground
    foreground: np.ndarray  # (z, y, x) bool
    grid: sitk.Image  # the model grid (geometry only is used)
    source: sitk.Image  # the input as given
    background: float = 0.0  # the input's background level (1st percentile), for voxels outside the model grid
    offset: float = 0.0  # normalised = (original - offset) / scale
    scale: float = 1.0
    name: str = "input"
    # "brain" foreground: the tissue levels of the learned extractor's classes (brain.contrast.extraction_levels),
    # which tell the scan's contrast
    tissue_levels: Optional[Dict[str, Any]] = None

    def denormalise(self, array: np.ndarray) -> np.ndarray:
        """Back to the input's intensity units (a reconstruction shown beside the input must look like it)."""
        return array * self.scale + self.offset

    def on_grid(self, array: np.ndarray) -> sitk.Image:
        """An array of the model grid's shape as an image with the model grid's geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.CopyInformation(self.grid)
        return image

    def to_input_grid(self, array: np.ndarray, nearest: bool = False, outside: float = 0.0) -> sitk.Image:
        """Resample a model-grid array onto the input's exact grid (float32, or uint8 when ``nearest``);
        input voxels beyond the model grid get ``outside``."""
        interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
        pixel_type = sitk.sitkUInt8 if nearest else sitk.sitkFloat32
        source = array.astype(np.uint8 if nearest else np.float32, copy=False)
        _require_room(self.source, 1 if nearest else 4)
        return sitk.Resample(self.on_grid(source), self.source, sitk.Transform(), interpolator, outside, pixel_type)


def _require_room(grid: sitk.Image, bytes_per_voxel: int) -> None:
    """Raise MemoryError unless twice an image of ``grid``'s size can still be allocated: an allocation that fails
    inside ITK's worker threads can end the process instead of raising, so the room is checked from Python first.
    """
    np.empty(2 * bytes_per_voxel * int(np.prod(grid.GetSize(), dtype=np.int64)), dtype=np.uint8)


def as_float32(image: sitk.Image) -> sitk.Image:
    """``image`` with float32 voxels.

    Args:
        image: any scalar image.

    Returns:
        ``image`` itself when its voxels are float32 (``sitk.Cast`` would copy every one), else a float32 copy.
    """
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


def otsu_foreground(image: sitk.Image) -> sitk.Image:
    """Largest Otsu-bright connected region with the holes of each axial slice filled (uint8).

    Filling holes slice by slice keeps dark lesions and ventricles inside the organ instead of treating them as
    background, also where a ventricle is open in 3D. (Every 3D hole lies within holes of the slices it crosses,
    so a 3D fill before it would add nothing.)
    """
    _require_smoothable(image)
    smoothed = sitk.SmoothingRecursiveGaussian(as_float32(image), min(image.GetSpacing()))
    bright = sitk.OtsuThreshold(smoothed, 0, 1)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(bright), sortByObjectSize=True)
    largest = sitk.GetArrayViewFromImage(components) == 1
    if not largest.any():
        raise InputImageError("no foreground found (Otsu threshold left no bright region)")
    filled = sitk.GetImageFromArray(fill_holes_per_slice(morphology.close(largest, (2, 2, 2))).astype(np.uint8))
    filled.CopyInformation(image)
    return filled


_SMOOTHING_MIN_VOXELS = 4  # ITK's recursive Gaussian needs this many voxels along every axis


def _require_smoothable(image: sitk.Image) -> None:
    """A slab of a few slices fails inside ITK's smoothing with a message about filter internals: say what it
    is instead."""
    for axis, voxels in zip("xyz", image.GetSize()):
        if voxels < _SMOOTHING_MIN_VOXELS:
            raise InputImageError(f"has only {voxels} voxels along {axis} (size {image.GetSize()}); the foreground "
                                  f"detection smooths the volume and needs at least {_SMOOTHING_MIN_VOXELS}")


_IN_PLANE = np.array([np.zeros((3, 3)), [[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.zeros((3, 3))], dtype=bool)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """``mask`` (z, y, x) with every background region of an axial slice that does not reach the slice's edge
    filled (in-plane 4-connectivity), as ``scipy.ndimage.binary_fill_holes`` with an in-plane structure gives
    it, in a tenth of its time: the background is labelled once and the labels met on the edges kept."""
    labels, count = ndimage.label(~mask.astype(bool, copy=False), structure=_IN_PLANE)
    reaches_edge = np.zeros(count + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        reaches_edge[edge] = True
    reaches_edge[0] = False  # label 0 is the mask itself
    return ~reaches_edge[labels]


def _every_nth_voxel(image: sitk.Image) -> sitk.Image:
    """Every n-th voxel of ``image``, about 64 per axis: enough to find where the object is."""
    factors = [max(1, int(s // _CENTRING_GRID_VOXELS)) for s in image.GetSize()]
    return sitk.Shrink(image, factors) if max(factors) > 1 else image


def foreground_centroid(image: sitk.Image) -> np.ndarray:
    """Physical centroid (LPS, mm) of the foreground, found on a coarse copy for speed."""
    coarse = _every_nth_voxel(image)
    foreground = otsu_foreground(coarse)
    _require_contrast(coarse, foreground)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(foreground)
    return np.array(stats.GetCentroid(1))


_MIN_FOREGROUND_CONTRAST = 3.0  # foreground median above background median, in robust background SDs


def _require_contrast(image: sitk.Image, foreground: sitk.Image) -> None:
    """Otsu always splits an image in two, even pure noise; refuse when the "foreground" is hardly brighter
    than the background (an empty or noise-only volume)."""
    values = sitk.GetArrayViewFromImage(image)
    inside = sitk.GetArrayViewFromImage(foreground) > 0
    background = values[~inside]
    if background.size == 0:
        return
    spread = 1.4826 * float(np.median(np.abs(background - np.median(background))))
    contrast = float(np.median(values[inside])) - float(np.median(background))
    if contrast <= _MIN_FOREGROUND_CONTRAST * spread:
        raise InputImageError("no foreground found: the brightest region is hardly brighter than the "
                              "background (an empty or noise-only volume?)")


_MAX_SHARE_BELOW_BACKGROUND = 0.01  # real scans: at most 0.08 % (interpolation ringing); z-scored brains: 10 %
# Voxels count as below the background only by more than this share of the scan's range (1st to 99th
# percentile): a smoothed or denoised scan padded with exact zeros has a background a hair below zero (-1e-6
# after a recursive Gaussian: 9 % of a head's voxels), or zero-mean noise; a z-scored brain's dark tissue lies
# a good part of its range below.
_BELOW_BACKGROUND_MARGIN = 0.1


def _every_8th(values: np.ndarray) -> np.ndarray:
    """Every 8th voxel of a (z, y, x) array (every 2nd along each axis), contiguous: it estimates the shares of
    intensity ranges well, and counting over a contiguous copy is several times faster than over the strided view."""
    return np.ascontiguousarray(values[::2, ::2, ::2])


def _require_darkest_background(values: np.ndarray) -> None:
    """Refuse a brain scan whose constant background (the value at all eight corners) is brighter than a good
    part of it, as in a brain z-scored inside its mask with the background left at 0: the foreground, the
    normalisation and the model all take the background to be the darkest tissue, and would silently give
    nonsense. (Brain models only: a CT padded with 0 around air at -1000 looks the same and may suit a user's
    own CT model, trained on such scans.)"""
    corners = {float(values[z, y, x]) for z in (0, -1) for y in (0, -1) for x in (0, -1)}
    if len(corners) != 1:
        return
    level = corners.pop()
    sample = _every_8th(values)
    low, high = np.percentile(sample, (1.0, 99.0))
    share_below = float(np.mean(sample < level - _BELOW_BACKGROUND_MARGIN * (high - low)))
    if share_below > _MAX_SHARE_BELOW_BACKGROUND:
        raise InputImageError(f"its background (value {level:g} at the corners) is brighter than {share_below:.0%} "
                              "of the voxels, as in a scan normalised inside a mask with the background left "
                              "at 0; give the scan with its original intensities")


_CT_AIR_HU = (-1100.0, -900.0)  # air in Hounsfield units: a CT's surroundings, sinuses, airways
_CT_SOFT_TISSUE_HU = (-100.0, 100.0)  # fat, water, brain (20-45), muscle, blood
_CT_BONE_HU = 700.0  # skull: cortical bone 1000-2000 HU
_MIN_CT_AIR_SHARE = 0.05  # of all voxels: a CT of a head has 30-60 % air
# of the voxels that are not air: a head CT has 70-80 % soft tissue (brain, scalp) and the rest bone; an MRI stored
# with its background at -1024 has its tissue spread over the whole range (the real head stored so: 26 %)
_MIN_CT_SOFT_TISSUE_SHARE = 0.5
# A CT stored without its rescale (DICOM's intercept is usually -1024): raw values are HU + 1024, and air then
# sits at 0 like an MRI's background. An MRI whose tissue happens to lie near 1024 can have much of it in the soft
# tissue window (the real scans here scaled to every position: up to 48 %, MS FLAIR), but never together with
# bone: among scalings leaving 2 % of the rest above 700 HU, at most 34 % (BraTS FLAIR). A head's skull is 10-20 %.
_CT_RAW_OFFSET = 1024.0
_MIN_CT_BONE_SHARE = 0.02


def _hounsfield_shares(sample: np.ndarray) -> Tuple[float, float, float]:
    """Were ``sample`` in Hounsfield units: the share of air among all voxels, and of soft tissue and of bone
    among those above air (zeros when there are none). Counted, not copied: soft tissue and bone lie above air."""
    def within(low: float, high: float) -> int:
        return int(np.count_nonzero((sample >= low) & (sample <= high)))

    def above(level: float) -> int:
        return int(np.count_nonzero(sample > level))

    air = within(*_CT_AIR_HU) / sample.size
    body = above(_CT_AIR_HU[1])
    if body == 0:
        return air, 0.0, 0.0
    return air, within(*_CT_SOFT_TISSUE_HU) / body, above(_CT_BONE_HU) / body


def _require_not_ct(values: np.ndarray) -> None:
    """Refuse a CT for a brain MRI model: its Hounsfield units (air at -1000, tissue near 0) are no MRI contrast,
    and the template's registration can place the brain on a CT of a head well enough to pass the brain check,
    after which the model would report confident nonsense. (Brain models only: a user's own model may be a CT
    one.) An MRI has no good share of its voxels near -1000 with most of the rest near 0; stored as HU + 1024
    (a CT without its rescale), it is told apart by the skull as well."""
    sample = _every_8th(values)
    air, soft_tissue, _ = _hounsfield_shares(sample)
    advice = ""
    if air > _MIN_CT_AIR_SHARE and soft_tissue >= _MIN_CT_SOFT_TISSUE_SHARE:
        evidence = f"a CT ({air:.0%} of the voxels at air's -1000 HU, {soft_tissue:.0%} of the rest near 0 HU)"
        advice = ". An MRI stored with an offset: shift its background to 0"
    else:
        air, soft_tissue, bone = _hounsfield_shares(sample - _CT_RAW_OFFSET)
        if not (air > _MIN_CT_AIR_SHARE and soft_tissue >= _MIN_CT_SOFT_TISSUE_SHARE and bone >= _MIN_CT_BONE_SHARE):
            return
        evidence = (f"a CT stored without its rescale, as HU + {_CT_RAW_OFFSET:g} ({air:.0%} of the voxels at air's "
                    f"0, {soft_tissue:.0%} of the rest near soft tissue's {_CT_RAW_OFFSET:g} and {bone:.0%} at "
                    f"bone's {_CT_RAW_OFFSET + _CT_BONE_HU:g} and above)")
    raise InputImageError(f"it looks like {evidence}, not an MRI; brain-template models (--foreground template), "
                          "such as the bundled one, are for brain T1 MRI: for CTs, train a model with --foreground "
                          f"otsu and pass it (--model){advice}")


# A head is 130-250 mm across; a brain scan's field of view, whole or cut by a quarter, lies well within these.
_HEAD_FIELD_OF_VIEW_MM = (50.0, 1000.0)


def _require_head_sized(image: sitk.Image) -> None:
    """Refuse a field of view no head fits (a wrong unit in the header: a NIfTI's spatial unit set to microns or
    metres, ITK then scales its spacing by 1000): the registration failed on it deep inside ITK, or ran the
    machine out of memory making a 2 mm copy of a field 240 m wide. (Brain models only: a user's own model
    may be for anything.)"""
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    low, high = _HEAD_FIELD_OF_VIEW_MM
    if extent.min() < low or extent.max() > high:
        shown = " x ".join(f"{e:.3g}" for e in extent)
        spacing = " x ".join(f"{s:.3g}" for s in image.GetSpacing())
        raise InputImageError(f"its field of view, {shown} mm (voxels of {spacing} mm), is no head's (brain-template "
                              f"models such as the bundled one take {low:g} to {high:g} mm along each axis): is "
                              "the voxel spacing or its unit in the header wrong?")


def model_grid(centre: np.ndarray, config: PreprocessConfig) -> sitk.Image:
    """Empty axis-aligned (LPS identity direction) grid of the model's size and spacing, centred on ``centre``."""
    size = [int(s) for s in config.size]
    spacing = np.array(config.spacing, dtype=float)
    origin = centre - spacing * (np.array(size) - 1) / 2.0
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def normalise(values: np.ndarray, foreground: np.ndarray, config: PreprocessConfig,
              background: float) -> Tuple[np.ndarray, float, float]:
    """Intensity normalisation inside the foreground, robust to outliers; zero outside it.

    "percentile" maps ``background`` (the 1st percentile of the whole input, so that it does not depend on
    the field of view of the model grid) to 0 and the foreground's
    ``upper_percentile`` to 1, so MRI (background 0) and CT (air -1000) both work; "zscore" uses the
    foreground's mean and standard deviation. Returns the normalised array, its offset and its scale.
    """
    inside = values[foreground]
    if inside.size == 0:
        raise InputImageError("the foreground mask is empty on the model grid")
    if config.normalization == "percentile":
        low = background
        high = float(np.percentile(inside, config.upper_percentile))
        if high <= low:
            raise InputImageError("foreground intensities do not exceed the background; cannot normalise")
        offset, scale, limits = low, high - low, (0.0, config.clip_max)
    else:
        offset, scale, limits = float(inside.mean()), float(inside.std()), (-5.0, 5.0)
        if scale == 0:
            raise InputImageError("foreground intensities are constant; cannot normalise")
    result = np.clip((values - offset) / scale, *limits)
    return np.where(foreground, result, 0.0).astype(np.float32), offset, scale


def _centre_and_brain(image: sitk.Image, config: PreprocessConfig
                      ) -> Tuple[np.ndarray, Optional[Callable], Optional[Dict[str, Any]]]:
    """Where to centre the model grid and, for a brain foreground, a function giving the brain on a grid (and, for the
    "brain" foreground, the tissue levels of the learned extractor's classes)."""
    if config.foreground == "otsu":
        return foreground_centroid(image), None, None
    coarse = _every_nth_voxel(image)  # the registration would place the template brain on anything, noise included
    _require_contrast(coarse, sitk.OtsuThreshold(coarse, 0, 1))
    if config.foreground == "brain":
        from MedAutoencoderLib.brain.contrast import extraction_levels
        from MedAutoencoderLib.brain.extractor import extract_brain

        extraction = extract_brain(image, on_input_grid=False)  # the mask is made on the model grid itself
        return extraction.centre_lps, extraction.mask_on, extraction_levels(extraction)
    from MedAutoencoderLib.brain.registration import (template_brain_centroid, template_brain_mask_on,
                                                      template_to_image_transform)

    transform = template_to_image_transform(image)
    return (np.array(transform.TransformPoint(template_brain_centroid())),
            lambda grid: template_brain_mask_on(grid, transform), None)


# Interquartile range of the intensities inside the registered brain over their median above the background: real
# brains here 0.18 (MS FLAIR) to 0.44 (BraTS T2), T1 0.25-0.36, and with 3 or 6 mm slices down to 0.136 (MS FLAIR);
# a uniform ellipsoid the size of a head 0.014, one with a bright rim 0.022. Both of those pass the registration's
# brain check (their outline matches a head's).
_MIN_BRAIN_CONTRAST = 0.06


def _require_tissue_contrast(values: np.ndarray, brain: np.ndarray, background: float) -> None:
    """Refuse a scan without tissue contrast where the registration put the brain (a uniform phantom, a
    featureless object of a head's shape): the brain model would call whatever it finds there anomalous.
    Measured above the background, so that it does not depend on the model's intensity normalisation."""
    inside = values[brain][::4] - background  # a quarter of the voxels estimates the quartiles well
    if inside.size == 0:
        return  # nothing of the brain on the model grid: the brain checks said why
    low, median, high = np.percentile(inside, (25.0, 50.0, 75.0))
    contrast = (high - low) / median if median > 0 else 0.0
    if contrast < _MIN_BRAIN_CONTRAST:
        raise InputImageError(f"it shows no brain tissue contrast: inside the brain found there its intensities "
                              f"vary by {contrast:.1%} (interquartile range over the median above the background; "
                              "brain MRIs: 14-44 %), as in a uniform phantom; brain models (--foreground brain or "
                              "template) such as the bundled one need a brain MRI")


def prepare_volume(image: sitk.Image, config: PreprocessConfig, name: str = "input") -> PreparedVolume:
    """Resample ``image`` onto the model grid, find its foreground (the brain, for ``foreground`` "brain" or
    "template") and normalise it."""
    try:
        if config.foreground in BRAIN_FOREGROUNDS:
            _require_not_ct(sitk.GetArrayViewFromImage(image))
            _require_darkest_background(sitk.GetArrayViewFromImage(image))
            _require_head_sized(image)
        centre, brain_on, tissue_levels = _centre_and_brain(image, config)
        grid = model_grid(centre, config)
        background = percentile(sitk.GetArrayViewFromImage(image), 1.0)
        resampled = sitk.Resample(as_float32(image), grid, sitk.Transform(), sitk.sitkLinear, background,
                                  sitk.sitkFloat32)
        if config.foreground == "brain":  # the learned brain mask follows the brain's edge: no Otsu region needed
            foreground = brain_on(grid)
        else:
            foreground = sitk.GetArrayFromImage(otsu_foreground(resampled)).astype(bool)
            if brain_on is not None:
                foreground &= brain_on(grid)
        values = sitk.GetArrayFromImage(resampled)
        if brain_on is not None:
            _require_tissue_contrast(values, foreground, background)
        normalised, offset, scale = normalise(values, foreground, config, background)
    except InputImageError as exc:
        raise InputImageError(f"{name}: {exc}") from None
    return PreparedVolume(image=normalised, foreground=foreground, grid=grid, source=image,
                          background=background, offset=offset, scale=scale, name=name,
                          tissue_levels=tissue_levels)


def erode_mask(mask: np.ndarray, radius_mm: float, spacing: tuple) -> np.ndarray:
    """Erode a (z, y, x) mask by ``radius_mm`` using a per-axis radius from the grid spacing (x, y, z)."""
    radius = [int(round(radius_mm / s)) for s in reversed(spacing)]
    if max(radius) == 0:
        return mask.copy()
    return morphology.erode(mask, radius)
