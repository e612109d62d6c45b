"""Brain mask of a head MRI from an affine registration to the bundled MNI template (SimpleITK).

Why: a brain model must score the brain only, whether the user's scan is skull-stripped or a whole head. An
Otsu foreground of a whole head includes skull and scalp, which a model trained on brains flags as anomalous.
Registering the template (skull-stripped, with its brain mask) to the scan and carrying the mask over gives the
brain region for both cases; intersected with the scan's own foreground it also stays tight on skull-stripped
scans. Affine (not deformable) registration keeps it robust and takes about a second on two cores.
"""
from __future__ import annotations

from functools import lru_cache
from typing import List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.errors import InputImageError

_SAMPLING_SHARE = 0.05  # share of template voxels used by the metric at each level
# The metric's random samples are drawn from this seed: ITK's default (0) seeds from the wall clock, which made every
# run of the same scan give a slightly different mask (and now and then a wrong one; see _INITIAL_SCALE).
DEFAULT_SEED = 1
# Multi-resolution levels: (voxel size of the copies both images are registered on, Gaussian smoothing), in mm;
# the mask needs millimetres only. The copies are made here instead of by ITK's shrink factors because ITK smooths
# the full-size images and filters the moving image's gradient again at every level of every stage; on copies of
# each level's size the 4 mm levels cost an eighth, and the template's copies are made once per process.
# Registration 1.38 -> 1.05 s on two cores (benchmark volume, interleaved runs), masks as accurate
# (benchmarks/results/registration_tilt.txt).
_LEVELS = ((4.0, 2.0), (2.0, 1.0))
_MASK_MARGIN_MM = 8  # the metric sees the brain plus this margin of the template: skull does not pull on it
# The similarity stage starts with the template shrunk to 0.8, below the size of most brains (the MNI152 template
# brain is large; this project's real head registers at 0.86-0.98), so that the optimiser approaches from the small
# side: from 1.0 it often slid into the basin above, where the template brain grows onto the scalp of a whole head
# (scale 1.03-1.15), although the metric clearly prefers the true pose. Repeated registrations of the real head
# untilted and tilted by 10-30 degrees (benchmarks/registration_tilt.py) failed so 19 of 32 times from 1.0, 4 of 62
# from 0.9 and 0 of 60 from 0.8; skull-stripped scans (MS, BraTS, four contrasts) register alike from all three.
# A similarity result that grew the template beyond its own size is rare from 0.8 (1 in about 150 registrations of
# the tilted head with wall-clock seeds) but is where that basin lies: it is checked against a second start, and
# the pose the metric prefers is kept. Brains larger than the template pay for one more similarity stage, nothing
# else does.
_INITIAL_SCALE = 0.8
_GROWN_SCALE = 1.0  # a similarity result above this scale is checked against a second start ...
_SECOND_START_SCALE = 0.7  # ... from this one


@lru_cache(maxsize=1)
def _template_and_mask() -> tuple:
    from MedAutoencoderLib.synthetic import load_template, template_brain_mask

    template = load_template()
    return template, template_brain_mask(template)


def coarse_copy(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` averaged down to about ``spacing_mm`` voxels (same direction and extent), float32."""
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    return sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), factors)  # block averages: anti-aliased, cheap


def image_levels(image: sitk.Image) -> List[sitk.Image]:
    """Copies of ``image`` at the voxel sizes of :data:`_LEVELS`, coarse first, each averaged from the next finer
    one."""
    spacings_mm = [spacing_mm for spacing_mm, _ in _LEVELS]
    levels = [coarse_copy(image, spacings_mm[-1])]
    for spacing_mm in reversed(spacings_mm[:-1]):
        levels.insert(0, coarse_copy(levels[0], spacing_mm))
    return levels


@lru_cache(maxsize=1)
def _template_levels() -> Tuple[Tuple[sitk.Image, sitk.Image], ...]:
    """The template at each level with the region the metric sees there (brain mask plus margin)."""
    template, mask = _template_and_mask()
    levels = []
    for level in image_levels(template):
        level_mask = sitk.Resample(mask, level, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        levels.append((level, _metric_region(level_mask)))
    return tuple(levels)


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


def _register(moving_levels: Sequence[sitk.Image], transform: sitk.Transform, seed: int) -> None:
    """Optimise ``transform`` in place, coarse level to fine (Mattes mutual information on random samples)."""
    for (template, region), moving, (_, sigma_mm) in zip(_template_levels(), moving_levels, _LEVELS):
        method = _method_with_metric(region)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(_SAMPLING_SHARE, seed)
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=150,
                                                        relaxationFactor=0.6)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([1])
        method.SetSmoothingSigmasPerLevel([sigma_mm])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(template, moving)


def _metric_on_finest_level(moving_levels: Sequence[sitk.Image], transform: sitk.Transform) -> float:
    """Mattes mutual information of ``transform`` over every voxel of the finest level's metric region (no
    sampling: two poses are compared on the same voxels). Lower is better."""
    template, region = _template_levels()[-1]
    method = _method_with_metric(region)
    method.SetInitialTransform(transform, inPlace=False)
    return method.MetricEvaluate(template, moving_levels[-1])


def _similarity(moving_levels: Sequence[sitk.Image], seed: int) -> sitk.Similarity3DTransform:
    """The similarity stage; when it grew the template beyond :data:`_GROWN_SCALE`, also from
    :data:`_SECOND_START_SCALE`, keeping the pose the metric prefers."""
    start = sitk.CenteredTransformInitializer(_template_levels()[-1][0], moving_levels[-1],
                                              sitk.Similarity3DTransform(),
                                              sitk.CenteredTransformInitializerFilter.MOMENTS)
    first = sitk.Similarity3DTransform(start)
    first.SetScale(_INITIAL_SCALE)
    _register(moving_levels, first, seed)
    if first.GetScale() <= _GROWN_SCALE:
        return first
    second = sitk.Similarity3DTransform(start)
    second.SetScale(_SECOND_START_SCALE)
    try:
        _register(moving_levels, second, seed)
    except RuntimeError:  # the first result stands
        return first
    return min((first, second), key=lambda pose: _metric_on_finest_level(moving_levels, pose))


def template_to_image_transform(image: sitk.Image, seed: int = DEFAULT_SEED) -> sitk.Transform:
    """Affine transform mapping template points to ``image`` points (similarity first, then full affine);
    ``seed`` draws the metric's random samples (not 0, which ITK takes as "seed from the clock")."""
    moving_levels = image_levels(image)
    try:
        similarity = _similarity(moving_levels, seed)
    except RuntimeError as exc:
        raise InputImageError(f"registration to the brain template failed ({str(exc).splitlines()[-1][:120]})") from None
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(similarity.GetMatrix())
    affine.SetTranslation(similarity.GetTranslation())
    affine.SetCenter(similarity.GetCenter())
    try:
        _register(moving_levels, affine, seed)
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
