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

from MedAutoencoderLib.errors import InputImageError

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
    from MedAutoencoderLib.synthetic import load_template, template_brain_mask

    template = load_template()
    return template, template_brain_mask(template)


def coarse_copy(image: sitk.Image, spacing_mm: float = _REGISTRATION_SPACING_MM) -> sitk.Image:
    """``image`` averaged down to about ``spacing_mm`` voxels (same direction and extent), float32."""
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    return sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), factors)  # block averages: anti-aliased, cheap


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


def _register(scan_levels: Tuple[sitk.Image, ...], transform: sitk.Transform, seed: int) -> None:
    """Optimise ``transform`` in place, level after level (Mattes mutual information on random samples), each
    level an ITK registration of its own on the images smoothed for it; ``scan_levels`` is the scan's 2 mm copy
    as :func:`_smoothed_levels` gives it."""
    region = _coarse_template_and_region()[1]
    for level, template, scan in zip(_LEVELS, _template_levels(), scan_levels):
        method = _method_with_metric(region)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(_SAMPLING_SHARE, seed)
        method.SetMetricUseMovingImageGradientFilter(level.gradient_filter)
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=150,
                                                        relaxationFactor=0.6)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([level.shrink])
        method.SetSmoothingSigmasPerLevel([0.0])  # smoothed beforehand
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(template, scan)


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


def template_to_image_transform(image: sitk.Image, seed: int = DEFAULT_SEED) -> sitk.Transform:
    """Affine transform mapping template points to ``image`` points (similarity first, then full affine);
    ``seed`` draws the metric's random samples (not 0, which ITK takes as "seed from the clock")."""
    moving = coarse_copy(image)
    scan_levels = _smoothed_levels(moving)
    try:
        similarity = _similarity(moving, scan_levels, seed)
    except RuntimeError as exc:
        raise InputImageError(f"registration to the brain template failed ({str(exc).splitlines()[-1][:120]})") from None
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(similarity.GetMatrix())
    affine.SetTranslation(similarity.GetTranslation())
    affine.SetCenter(similarity.GetCenter())
    try:
        _register(scan_levels, affine, seed)
        return affine
    except RuntimeError:  # the affine refinement is optional: the similarity result already places the brain
        affine.SetMatrix(similarity.GetMatrix())
        affine.SetTranslation(similarity.GetTranslation())
        return affine


def template_brain_mask_on(reference: sitk.Image, template_to_image: sitk.Transform) -> np.ndarray:
    """The template's brain mask carried onto ``reference``'s grid, as a (z, y, x) boolean array."""
    _, mask = _template_and_mask()
    image_to_template = template_to_image.GetInverse()
    carried = sitk.Resample(mask, reference, image_to_template, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayViewFromImage(carried) > 0
