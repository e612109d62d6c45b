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
# Multi-resolution levels: voxel size of the copies both images are registered on (the mask needs millimetres
# only) and the Gaussian smoothing at each. The copies are made here instead of by ITK's shrink factors because
# ITK smooths the full-size images and filters the moving image's gradient again at every level of every stage;
# on copies of each level's size the 4 mm levels cost an eighth, and the template's copies are made once per
# process. Registration 1.38 -> 1.05 s on two cores (benchmark volume, interleaved runs), masks as accurate
# (benchmarks/results/registration_tilt.txt).
_LEVELS_MM = (4.0, 2.0)
_SMOOTHING_MM = (2.0, 1.0)
_MASK_MARGIN_MM = 8  # the metric sees the brain plus this margin of the template: skull does not pull on it
# The similarity stage starts with the template shrunk to 0.8, below the size of most brains (the MNI152 template
# brain is large; this project's real head registers at 0.86-0.98), so that the optimiser approaches from the small
# side: from 1.0 it often slid into the basin above, where the template brain grows onto the scalp of a whole head
# (scale 1.03-1.15), although the metric clearly prefers the true pose. Repeated registrations of the real head
# untilted and tilted by 10-30 degrees (benchmarks/registration_tilt.py) failed so 19 of 32 times from 1.0, 4 of 62
# from 0.9 and 0 of 60 from 0.8; skull-stripped scans (MS, BraTS, four contrasts) register alike from all three.
# A similarity result that grew the template beyond its own size is rare from 0.8 (1 in about 150 registrations of
# the tilted head) but is where that basin lies: it is checked against a second start from 0.7, and the pose the
# metric prefers is kept. Brains larger than the template pay for one more similarity stage, nothing else does.
_INITIAL_SCALE = 0.8
_SECOND_START_SCALE = 0.7
_GROWN_SCALE = 1.0

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
    """Copies of ``image`` at the voxel sizes of :data:`_LEVELS_MM`, each averaged from the next finer one."""
    levels = [coarse_copy(image, _LEVELS_MM[-1])]
    for spacing_mm in reversed(_LEVELS_MM[:-1]):
        levels.insert(0, coarse_copy(levels[0], spacing_mm))
    return levels


@lru_cache(maxsize=1)
def _template_levels() -> Tuple[Tuple[sitk.Image, sitk.Image], ...]:
    """The template at each level with the region the metric sees there (brain mask plus margin)."""
    template, mask = _template_and_mask()
    levels = []
    for copy in image_levels(template):
        coarse_mask = sitk.Resample(mask, copy, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        levels.append((copy, _metric_region(coarse_mask)))
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


def _register(moving_levels: Sequence[sitk.Image], transform: sitk.Transform, seed: int) -> float:
    """Optimise ``transform`` in place, coarse level to fine, and return the metric's final value (Mattes mutual
    information on the finest level's samples, the same samples for every call with ``seed``: lower is better)."""
    for (template, region), moving, sigma_mm in zip(_template_levels(), moving_levels, _SMOOTHING_MM):
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(_SAMPLING_SHARE, seed)
        method.SetMetricFixedMask(region)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=150,
                                                        relaxationFactor=0.6)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([1])
        method.SetSmoothingSigmasPerLevel([sigma_mm])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(template, moving)
    return method.GetMetricValue()


def _similarity(moving_levels: Sequence[sitk.Image], seed: int) -> sitk.Similarity3DTransform:
    """The similarity stage, from a second, smaller start too when the first grew the template (see
    :data:`_GROWN_SCALE`); the pose with the better metric wins."""
    candidates = []
    for scale in (_INITIAL_SCALE, _SECOND_START_SCALE):
        transform = sitk.CenteredTransformInitializer(_template_levels()[-1][0], moving_levels[-1],
                                                      sitk.Similarity3DTransform(),
                                                      sitk.CenteredTransformInitializerFilter.MOMENTS)
        transform.SetScale(scale)
        candidates.append((_register(moving_levels, transform, seed), transform))
        if transform.GetScale() <= _GROWN_SCALE:
            break
    return min(candidates, key=lambda candidate: candidate[0])[1]


def template_to_image_transform(image: sitk.Image, seed: int = 0) -> sitk.Transform:
    """Affine transform mapping template points to ``image`` points (similarity first, then full affine)."""
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
