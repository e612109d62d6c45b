"""Brain mask of a head MRI from an affine registration to the bundled MNI template (SimpleITK).

Why: a brain model must score the brain only, whether the user's scan is skull-stripped or a whole head. An
Otsu foreground of a whole head includes skull and scalp, which a model trained on brains flags as anomalous.
Registering the template (skull-stripped, with its brain mask) to the scan and carrying the mask over gives the
brain region for both cases; intersected with the scan's own foreground it also stays tight on skull-stripped
scans. Affine (not deformable) registration keeps it robust and takes about a second on two cores.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Tuple

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.errors import InputImageError, itk_reason
from MedAutoencoderLib.io.volumes import inside_grid, physical_points

_SAMPLING_SHARE = 0.05  # share of template voxels used by the metric at each level
# The metric's random samples are drawn from this seed: ITK's default (0) seeds from the wall clock, which made every
# run of the same scan give a slightly different mask (and now and then a wrong one; see _INITIAL_SCALE).
DEFAULT_SEED = 1
_REGISTRATION_SPACING_MM = 2.0  # both images are registered on a 2 mm copy: the mask needs millimetres only


@dataclass(frozen=True)
class _Level:
    """One resolution level of a registration stage."""

    shrink: int  # ITK samples the metric on the template's 2 mm grid shrunk by this factor
    smoothing_mm: float  # Gaussian sigma applied to both images first
    gradient_filter: bool  # ITK filters the scan's whole gradient image (else central differences at the samples)


# Each stage runs a 4 mm level, then a 2 mm level (ITK's shrink factors on the 2 mm copies: copies made at each
# level's size, registration 1.38 -> 1.05 s, failed on the real head tilted by 30 degrees, 5 of 20 seeds against
# 0 of 20; README, tried and dropped). The 4 mm level only has to find the basin, so it differentiates the smoothed
# scan at the samples instead of filtering its whole gradient image (0.14 s a level); the 2 mm level keeps the
# filter, which the masks' accuracy needs (off at every level, BraTS's masks lost 0.01-0.02 Dice with its brain;
# off at the similarity stage's 2 mm level too, 0.002-0.007).
_LEVELS = (_Level(shrink=2, smoothing_mm=2.0, gradient_filter=False),
           _Level(shrink=1, smoothing_mm=1.0, gradient_filter=True))
_MASK_MARGIN_MM = 8  # the metric sees the brain plus this margin of the template: skull does not pull on it
# The similarity stage starts with the template shrunk to 0.8, below the size of most brains (the MNI152 template
# brain is large; this project's real head registers at 0.86-0.98), so that the optimiser approaches from the small
# side: from 1.0 it often slid into the basin above, where the template brain grows onto the scalp of a whole head
# (scale 1.03-1.15), although the metric clearly prefers the true pose. Repeated registrations of the real head
# untilted and tilted by 10-30 degrees (benchmarks/registration_tilt.py) failed so 19 of 32 times from 1.0, 4 of 62
# from 0.9 and 0 of 60 from 0.8; skull-stripped scans (MS, BraTS, four contrasts) register alike from all three.
# A similarity result that grew the template beyond its own size is in that basin (failures seen: scale 0.986-1.15,
# and a much worse metric; the real scans' true poses are at 0.84-0.94): it is checked against a second start, and
# the pose the metric prefers is kept. Brains registering above the template's size pay for one more similarity
# stage (the speed benchmark's volume, the template itself at 0.999, would too at a threshold of 0.95: registration
# 1.4 -> 3.5 s); failures ending at 0.986-1.0 are not caught (seen only from a deliberately bad start at 1.0).
_INITIAL_SCALE = 0.8
_GROWN_SCALE = 1.0  # a similarity result above this scale is checked against a second start ...
_SECOND_START_SCALE = 0.7  # ... from this one


@lru_cache(maxsize=1)
def _template_and_mask() -> tuple:
    from MedAutoencoderLib.data.template import load_template, template_brain_mask

    template = load_template()
    return template, template_brain_mask(template)


# A scan axis coarser than this after the averaging (slices thicker than 3 mm) is interpolated onto the
# registration's spacing; the averaged copies of scans with voxels under 2 mm are 2.67 mm or finer, and unchanged.
_MAX_COARSE_SPACING_MM = 3.0


def coarse_copy(image: sitk.Image, spacing_mm: float = _REGISTRATION_SPACING_MM) -> sitk.Image:
    """``image`` averaged down to about ``spacing_mm`` voxels (same direction and extent), float32.

    Axes coarser than :data:`_MAX_COARSE_SPACING_MM` (thick slices) are interpolated onto ``spacing_mm``: on
    the scan's own 5-6 mm slices the registration of a whole head slid into the basin where the template brain
    grows onto the scalp from every start (similarity scale 1.06-1.09 against 0.90 on the same head at 1 mm,
    brain mask 2.3 l, a fifth of the brain flagged), although the metric prefers the true pose by far."""
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    averaged = sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), factors)  # block averages: anti-aliased, cheap
    spacing = np.array(averaged.GetSpacing())
    thick = spacing > _MAX_COARSE_SPACING_MM
    if not thick.any():
        return averaged
    return _interpolated_onto(averaged, np.where(thick, spacing_mm, spacing))


def _interpolated_onto(image: sitk.Image, spacing: np.ndarray) -> sitk.Image:
    """``image`` linearly interpolated onto voxels of ``spacing`` covering the same extent (same direction)."""
    old_spacing = np.array(image.GetSpacing())
    extent = old_spacing * np.array(image.GetSize())
    size = np.maximum(1, np.round(extent / spacing)).astype(int)
    first_centre = (spacing - old_spacing) / 2.0 / old_spacing  # continuous index of the new first voxel's centre
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(image.TransformContinuousIndexToPhysicalPoint(first_centre.tolist()))
    background = float(np.percentile(sitk.GetArrayViewFromImage(image), 1.0))
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, background, sitk.sitkFloat32)


@lru_cache(maxsize=1)
def _coarse_template_and_region() -> Tuple[sitk.Image, sitk.Image]:
    """The template's 2 mm copy and the region the metric sees on it (brain mask plus margin)."""
    template, mask = _template_and_mask()
    coarse = coarse_copy(template)
    coarse_mask = sitk.Resample(mask, coarse, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return coarse, _metric_region(coarse_mask)


@lru_cache(maxsize=1)
def template_brain_centroid() -> tuple:
    """Physical centroid (LPS, mm) of the template's brain mask."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(_template_and_mask()[1])
    return stats.GetCentroid(1)


def _metric_region(mask: sitk.Image) -> sitk.Image:
    radius = [int(round(_MASK_MARGIN_MM / s)) for s in mask.GetSpacing()]
    return sitk.BinaryDilate(mask, radius)


def _method_with_metric(region: sitk.Image) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricFixedMask(region)
    method.SetInterpolator(sitk.sitkLinear)
    return method


def _smoothed_levels(image: sitk.Image) -> Tuple[sitk.Image, ...]:
    """``image`` smoothed for each of :data:`_LEVELS`, as ITK's registration smooths both images at a level
    (discrete Gaussian, sigma in millimetres, maximum error 0.01).

    Why here and not in ITK: ITK smooths the scan and the template again at every level of every stage (four
    times per scan, plus a second start), a third of a level's set-up; smoothed once per scan, and the
    template once per process, the levels are registered on these with no smoothing of ITK's own."""
    return tuple(sitk.DiscreteGaussian(image, variance=level.smoothing_mm ** 2, maximumKernelWidth=32,
                                       maximumError=0.01, useImageSpacing=True) for level in _LEVELS)


@lru_cache(maxsize=1)
def _template_levels() -> Tuple[sitk.Image, ...]:
    return _smoothed_levels(_coarse_template_and_region()[0])


def _sampled_method(seed: int) -> sitk.ImageRegistrationMethod:
    """The metric on :data:`_SAMPLING_SHARE` of the metric region's voxels, drawn from ``seed``."""
    method = _method_with_metric(_coarse_template_and_region()[1])
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(_SAMPLING_SHARE, seed)
    return method


def prepare_registration_template() -> None:
    """Read the template and smooth it for the registration now, not in the first registration (0.5 s)."""
    _template_levels()


def _register(scan_levels: Tuple[sitk.Image, ...], transform: sitk.Transform, seed: int) -> float:
    """Optimise ``transform`` in place, level after level (Mattes mutual information on random samples), each
    level an ITK registration of its own on the images smoothed for it; ``scan_levels`` is the scan's 2 mm copy
    as :func:`_smoothed_levels` gives it. Returns the metric's last value (:func:`template_match`)."""
    for level, template, scan in zip(_LEVELS, _template_levels(), scan_levels):
        method = _sampled_method(seed)
        method.SetMetricUseMovingImageGradientFilter(level.gradient_filter)
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=150,
                                                        relaxationFactor=0.6)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([level.shrink])
        method.SetSmoothingSigmasPerLevel([0.0])  # smoothed beforehand
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(template, scan)
    return method.GetMetricValue()


def _metric_of(moving: sitk.Image, transform: sitk.Transform) -> float:
    """Mattes mutual information of ``transform`` over every voxel of the metric region on the 2 mm copies (no
    sampling: two poses are compared on the same voxels). Lower is better."""
    template, region = _coarse_template_and_region()
    method = _method_with_metric(region)
    method.SetInitialTransform(transform, inPlace=False)
    return method.MetricEvaluate(template, moving)


def _background_at_zero(image: sitk.Image) -> sitk.Image:
    """``image`` shifted so that its background level (1st percentile) is zero, for the moments that give the
    first pose: they weigh each voxel by its intensity, so the background of a z-scored or offset scan (below or
    above zero) would pull the centre of mass off the head, by metres where positive and negative weights nearly
    cancel. (Mutual information, which the registration then optimises, does not depend on such a shift.)"""
    level = float(np.percentile(sitk.GetArrayViewFromImage(image), 1.0))
    return image if level == 0.0 else image - level


def _similarity(moving: sitk.Image, scan_levels: Tuple[sitk.Image, ...], seed: int) -> sitk.Similarity3DTransform:
    """The similarity stage; when it grew the template beyond :data:`_GROWN_SCALE`, also from
    :data:`_SECOND_START_SCALE`, keeping the pose the metric prefers."""
    start = sitk.CenteredTransformInitializer(_coarse_template_and_region()[0], _background_at_zero(moving),
                                              sitk.Similarity3DTransform(),
                                              sitk.CenteredTransformInitializerFilter.MOMENTS)
    first = sitk.Similarity3DTransform(start)
    first.SetScale(_INITIAL_SCALE)
    _register(scan_levels, first, seed)
    if first.GetScale() <= _GROWN_SCALE:
        return first
    second = sitk.Similarity3DTransform(start)
    second.SetScale(_SECOND_START_SCALE)
    try:
        _register(scan_levels, second, seed)
    except RuntimeError:  # the first result stands
        return first
    return min((first, second), key=lambda pose: _metric_of(moving, pose))


# The registration's final Mattes mutual information (:func:`template_match`; lower is a closer match) above which a
# scan is refused as no brain. Measured: real brains, T1 and the other contrasts, whole heads and skull-stripped,
# tilted by 30 degrees, slices of 1-6 mm: -0.42 or lower; synthetic subjects with strong noise and bias, 6 mm
# slices: -1.0 or lower. Not brains: an abdomen -0.07, a knee -0.17, a 7 cm crop of a brain -0.10. A head-shaped
# uniform ellipsoid (-0.14 or -0.37 between runs: it has no features to register) and a crude CT-like head
# (-0.34) may pass this check; preprocessing's tissue-contrast and CT checks refuse them.
_MAX_BRAIN_MATCH = -0.25


def template_match(scan_levels: Tuple[sitk.Image, ...], transform: sitk.Transform, seed: int) -> float:
    """How well the template brain matches the scan at ``transform``: the registration's metric at its last
    level (ITK's Mattes mutual information, negated: lower is better; 60 ms). For a registration that ended
    normally the metric's last value during the optimisation is used instead (free; evaluated again at the
    final pose it comes out 0.01-0.03 higher, far from any margin of :data:`_MAX_BRAIN_MATCH`)."""
    method = _sampled_method(seed)
    method.SetMetricUseFixedImageGradientFilter(False)  # one value, no derivative: filtered gradients cost 0.15 s
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInitialTransform(transform, inPlace=False)
    return method.MetricEvaluate(_template_levels()[-1], scan_levels[-1])


def _require_brain(match: float) -> None:
    """Refuse a scan in which the registration found nothing like the template brain (``match`` as
    :func:`template_match` gives it): the mask would be placed on whatever tissue is there, and the brain model
    would report confident nonsense."""
    if match > _MAX_BRAIN_MATCH:
        raise InputImageError(f"it does not look like a whole brain MRI: registered to the brain template, it "
                              f"matches it poorly (match score {match:.2f}; scans of a whole brain give "
                              f"{_MAX_BRAIN_MATCH:.2f} or lower). A scan covering only part of the brain, or no "
                              "brain, cannot be used with brain-template models (--foreground template) such as "
                              "the bundled one; for other scans train a model with --foreground otsu and pass it "
                              "(--model)")


# Share of the registered template brain that may lie outside the scan's field of view. Whole brains: 0; the real
# scans here cut by 15-30 % of their slices: 0.004-0.19 with the brain in place; cut by 40 %: 0.27-0.33, and the
# head's template brain misplaced (grown by a third); cut by 60 %: 0.50-0.83.
_MAX_BRAIN_OUTSIDE_VIEW = 0.25


@lru_cache(maxsize=1)
def _template_brain_points() -> np.ndarray:
    """Physical points (LPS, mm) of every 4th voxel along each axis of the template's brain mask, (N, 3)."""
    _, mask = _template_and_mask()
    index_zyx = np.argwhere(sitk.GetArrayViewFromImage(mask)[::4, ::4, ::4] > 0) * 4
    return physical_points(mask, index_zyx[:, ::-1])


def brain_share_outside_view(image: sitk.Image, template_to_image: sitk.AffineTransform) -> float:
    """Share of the template brain, placed by ``template_to_image``, that lies outside ``image``'s grid."""
    matrix = np.array(template_to_image.GetMatrix()).reshape(3, 3)
    centre = np.array(template_to_image.GetCenter())
    placed = (_template_brain_points() - centre) @ matrix.T + centre + np.array(template_to_image.GetTranslation())
    return 1.0 - float(inside_grid(image, placed).mean())


def _require_brain_in_view(image: sitk.Image, template_to_image: sitk.AffineTransform) -> None:
    """Refuse a scan that shows only part of the brain: the registration then has too little to hold on to
    (the real head's top 60 %: the template brain grown by a third, a quarter of its mask outside the brain), and
    the threshold was calibrated on whole brains."""
    outside = brain_share_outside_view(image, template_to_image)
    if outside > _MAX_BRAIN_OUTSIDE_VIEW:
        raise InputImageError(f"it covers only part of the brain: registered to the brain template, {outside:.0%} of "
                              f"the brain lies outside its field of view (up to {_MAX_BRAIN_OUTSIDE_VIEW:.0%} is "
                              "accepted); brain-template models (--foreground template) such as the bundled one "
                              "need the whole brain in view")


def template_to_image_transform(image: sitk.Image, seed: int = DEFAULT_SEED) -> sitk.Transform:
    """Affine transform mapping template points to ``image`` points (similarity first, then full affine);
    ``seed`` draws the metric's random samples (not 0, which ITK takes as "seed from the clock"). Raises
    :class:`InputImageError` when the registration fails or the scan does not match a brain."""
    moving = coarse_copy(image)
    scan_levels = _smoothed_levels(moving)
    try:
        similarity = _similarity(moving, scan_levels, seed)
    except RuntimeError as exc:
        raise InputImageError(f"registration to the brain template failed ({itk_reason(exc)})") from None
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(similarity.GetMatrix())
    affine.SetTranslation(similarity.GetTranslation())
    affine.SetCenter(similarity.GetCenter())
    try:
        match = _register(scan_levels, affine, seed)
    except RuntimeError:  # the affine refinement is optional: the similarity result already places the brain
        affine.SetMatrix(similarity.GetMatrix())
        affine.SetTranslation(similarity.GetTranslation())
        match = template_match(scan_levels, affine, seed)
    _require_brain(match)
    _require_brain_in_view(image, affine)
    return affine


def template_brain_mask_on(reference: sitk.Image, template_to_image: sitk.Transform) -> np.ndarray:
    """The template's brain mask carried onto ``reference``'s grid, as a (z, y, x) boolean array."""
    _, mask = _template_and_mask()
    image_to_template = template_to_image.GetInverse()
    carried = sitk.Resample(mask, reference, image_to_template, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayViewFromImage(carried) > 0
