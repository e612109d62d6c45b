"""Synthetic healthy and lesioned volumes for training, tests and demos.

Why this module exists: the default model shipped with the product may only be trained on data the product
may carry, that is the MNI ICBM152 template bundled in ``data/`` (see ``data/NOTICE_MNI_ICBM152.txt``) and
what is generated from it. A model trained on the bare template would learn one grid, one orientation and one
contrast, so the generator varies anatomy (affine and elastic deformation), contrast (gamma, bias field,
Rician noise, intensity scale) and acquisition geometry (spacing, orientation, field of view) the way real
scans vary. Synthetic lesions come with exact masks, which gives labelled evaluation data free of licence
limits, and a tiny procedural "organ" keeps unit tests fast.

Everything is deterministic given a :class:`numpy.random.Generator`. Only SimpleITK, numpy and scipy are
used, so the module imports in 3D Slicer's Python as well as on a headless server.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from MedAutoencoderLib.data.template import load_template, template_brain_mask
from MedAutoencoderLib.errors import ConfigurationError, InputImageError, OutputExistsError
from MedAutoencoderLib.io.volumes import same_grid
from MedAutoencoderLib.preprocessing.morphology import largest_component

LESION_KINDS: tuple[str, ...] = ("hyper", "hypo", "mass", "subtle", "foreign")

# Lesion radius ranges in mm per kind: subtle changes are small, masses are large.
_LESION_RADIUS_MM: dict[str, tuple[float, float]] = {
    "hyper": (4.0, 15.0),
    "hypo": (4.0, 15.0),
    "mass": (10.0, 20.0),
    "subtle": (4.0, 12.0),
    "foreign": (6.0, 16.0),
}

# Index-axis -> physical-axis permutations of the three acquisition planes (axial, coronal, sagittal):
# the third index axis is the slice axis.
_ACQUISITION_PLANES: tuple[tuple[int, int, int], ...] = ((0, 1, 2), (0, 2, 1), (1, 2, 0))

_FIELD_SPACING_MM = 6.0  # node spacing of the coarse displacement field that carries the whole warp
_LESION_EDGE_SIGMA_VOXELS = 0.7  # blur of the lesion boundary, so that it is not a hard step
_MAX_PLACEMENT_TRIES = 200


@dataclass(frozen=True)
class SubjectVariation:
    """Ranges of the random changes that turn the template into one plausible "subject" scan.

    Defaults span adult heads scanned on different machines: positioning (rotation, translation), head size
    and shape (scaling, elastic warp), coil and sequence differences (bias field, gamma, intensity scale,
    noise) and acquisition protocols (voxel size, axial/coronal/sagittal planes, oblique tilt, field of view).
    """

    max_rotation_deg: float = 10.0
    max_scale_change: float = 0.08
    max_translation_mm: float = 10.0
    elastic_max_displacement_mm: float = 4.0
    elastic_smoothness_mm: float = 20.0
    gamma_range: tuple[float, float] = (0.75, 1.35)
    bias_field_strength: float = 0.2
    intensity_scale_range: tuple[float, float] = (0.5, 4.0)
    noise_fraction_range: tuple[float, float] = (0.01, 0.05)
    in_plane_spacing_mm: tuple[float, float] = (0.9, 1.3)
    max_slice_spacing_mm: float = 1.5
    max_oblique_deg: float = 10.0
    fov_margin_mm: tuple[float, float] = (5.0, 25.0)


@dataclass(frozen=True)
class _Grid:
    """Geometry of an image grid: size and spacing in (x, y, z) index order, direction columns = axes."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray


@dataclass(frozen=True)
class _Affine:
    """Affine map q = matrix @ p + offset (subject space -> template space)."""

    matrix: np.ndarray
    offset: np.ndarray

    def inverse_points(self, points: np.ndarray) -> np.ndarray:
        """Map template-space points (rows) back to subject space."""
        return np.linalg.solve(self.matrix, (points - self.offset).T).T


@dataclass(frozen=True)
class _LesionShape:
    """One lesion inside a crop of the image: binary extent, blending weight, normalised radius.

    ``weight`` is 1 on the lesion and falls off over about two voxels around it (partial volume).
    """

    inside: np.ndarray
    weight: np.ndarray
    radius_map: np.ndarray


@dataclass(frozen=True)
class _LesionSite:
    """Where a lesion goes: the image crop before painting, the shape, and the reference intensities."""

    patch: np.ndarray
    shape: _LesionShape
    brain_median: float
    local_mean: float


# ----------------------------------------------------------------------------------------- healthy subject


def make_healthy_subject(
    template: sitk.Image, rng: np.random.Generator, config: SubjectVariation | None = None
) -> sitk.Image:
    """A healthy "subject" scan (float32) generated from ``template``.

    The template is warped (random affine + smooth elastic deformation) onto a random acquisition grid
    (voxel size, axial/coronal/sagittal orientation with flips and an oblique tilt, field of view around the
    head) in one resampling; gamma, a smooth multiplicative bias field, a global intensity scale and Rician
    noise are then applied on the output grid.
    """
    image, _, _ = _simulate_subject(template, rng, config or SubjectVariation())
    return image


def make_healthy_subject_with_mask(
    template: sitk.Image,
    template_mask: sitk.Image,
    rng: np.random.Generator,
    config: SubjectVariation | None = None,
) -> tuple[sitk.Image, sitk.Image]:
    """Like :func:`make_healthy_subject` (same image for the same generator state) plus its brain mask.

    The mask is ``template_mask`` carried through the same warp (nearest neighbour), so it is exact rather
    than re-estimated from the noisy image.
    """
    image, grid, transform = _simulate_subject(template, rng, config or SubjectVariation())
    mask = _resample(template_mask, grid, transform, sitk.sitkNearestNeighbor, sitk.sitkUInt8)
    return image, mask


def _simulate_subject(
    template: sitk.Image, rng: np.random.Generator, config: SubjectVariation
) -> tuple[sitk.Image, _Grid, sitk.Transform]:
    """The subject image plus the output grid and warp, so that masks can follow the same path."""
    head_corners = _head_corners(template)
    affine = _random_affine(rng, config, center=head_corners.mean(axis=0))
    grid = _random_acquisition_grid(rng, config, affine.inverse_points(head_corners))
    transform = _warp_transform(grid, affine, rng, config)

    warped = _resample(template, grid, transform, sitk.sitkLinear, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(warped)
    array = _apply_gamma(array, rng.uniform(*config.gamma_range))
    array *= _bias_field(array.shape, rng, config.bias_field_strength)
    array *= np.float32(rng.uniform(*config.intensity_scale_range))
    array = _add_rician_noise(array, rng.uniform(*config.noise_fraction_range), rng)
    return _like(array, warped), grid, transform


def _head_corners(template: sitk.Image) -> np.ndarray:
    """Physical coordinates (8 x 3) of the corners of the bounding box of the template's non-zero voxels."""
    foreground = sitk.GetArrayViewFromImage(template) > 0
    if not foreground.any():
        raise InputImageError("The template has no positive voxel; there is no head to simulate.")
    ranges_zyx = []
    for axis in range(3):
        present = np.flatnonzero(foreground.any(axis=tuple(a for a in range(3) if a != axis)))
        ranges_zyx.append((float(present[0]), float(present[-1])))
    corners_xyz = itertools.product(*ranges_zyx[::-1])
    corners = [template.TransformContinuousIndexToPhysicalPoint(corner) for corner in corners_xyz]
    return np.asarray(corners, dtype=np.float64)


def tilted_copy(image: sitk.Image, degrees: float, axis: Sequence[float]) -> sitk.Image:
    """The same voxels placed in patient space rotated by ``degrees`` about ``axis`` (LPS) through the volume's
    centre: the head of ``image`` tilted in the scanner. Anything found on the voxels must not change."""
    rotation = np.array(sitk.VersorTransform(tuple(float(a) for a in axis), np.deg2rad(degrees)).GetMatrix())
    rotation = rotation.reshape(3, 3)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([s / 2.0 for s in image.GetSize()]))
    result = sitk.Image(image)
    result.SetDirection((rotation @ np.array(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    result.SetOrigin((rotation @ (np.array(image.GetOrigin()) - centre) + centre).tolist())
    return result


def _random_rotation(rng: np.random.Generator, max_angle_deg: float) -> np.ndarray:
    """Rotation matrix about a uniformly random axis by an angle uniform in [-max, max] degrees."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg))
    cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross


def _random_affine(rng: np.random.Generator, config: SubjectVariation, center: np.ndarray) -> _Affine:
    """Random rotation, anisotropic scaling and translation about ``center`` (subject -> template)."""
    rotation = _random_rotation(rng, config.max_rotation_deg)
    scales = 1.0 + rng.uniform(-config.max_scale_change, config.max_scale_change, size=3)
    translation = rng.uniform(-config.max_translation_mm, config.max_translation_mm, size=3)
    matrix = rotation @ np.diag(scales)
    return _Affine(matrix=matrix, offset=center + translation - matrix @ center)


def _random_direction(rng: np.random.Generator, max_oblique_deg: float) -> np.ndarray:
    """Direction matrix of an axial, coronal or sagittal acquisition with random flips and oblique tilt."""
    plane = _ACQUISITION_PLANES[rng.integers(len(_ACQUISITION_PLANES))]
    signs = rng.choice([-1.0, 1.0], size=3)
    base = np.zeros((3, 3))
    for index_axis, physical_axis in enumerate(plane):
        base[physical_axis, index_axis] = signs[index_axis]
    return _random_rotation(rng, max_oblique_deg) @ base


def _random_spacing(rng: np.random.Generator, config: SubjectVariation) -> tuple[float, float, float]:
    """In-plane spacing shared by the first two index axes; slice spacing at least as large."""
    in_plane = rng.uniform(*config.in_plane_spacing_mm)
    slice_spacing = rng.uniform(in_plane, max(in_plane, config.max_slice_spacing_mm))
    return (float(in_plane), float(in_plane), float(slice_spacing))


def _random_acquisition_grid(
    rng: np.random.Generator, config: SubjectVariation, head_corners: np.ndarray
) -> _Grid:
    """A grid with random orientation and spacing whose field of view covers ``head_corners`` plus margins."""
    direction = _random_direction(rng, config.max_oblique_deg)
    spacing = _random_spacing(rng, config)
    along_axes = head_corners @ direction  # coordinates along each index axis
    safety = config.elastic_max_displacement_mm
    margin_low = rng.uniform(*config.fov_margin_mm, size=3) + safety
    margin_high = rng.uniform(*config.fov_margin_mm, size=3) + safety
    start = along_axes.min(axis=0) - margin_low
    extent = along_axes.max(axis=0) + margin_high - start
    size = tuple(int(np.ceil(e / s)) + 1 for e, s in zip(extent, spacing))
    return _Grid(size=size, spacing=spacing, origin=direction @ start, direction=direction)


def _grid_points(grid: _Grid) -> np.ndarray:
    """Physical coordinates of every voxel of ``grid`` as an array (z, y, x, 3)."""
    axes = [np.arange(n) * s for n, s in zip(grid.size, grid.spacing)]
    x = axes[0][None, None, :, None] * grid.direction[:, 0]
    y = axes[1][None, :, None, None] * grid.direction[:, 1]
    z = axes[2][:, None, None, None] * grid.direction[:, 2]
    return grid.origin + x + y + z


def _warp_transform(
    grid: _Grid, affine: _Affine, rng: np.random.Generator, config: SubjectVariation
) -> sitk.Transform:
    """One displacement-field transform holding the affine and the elastic warp (output -> template).

    The field is sampled on a coarse grid (``_FIELD_SPACING_MM``) over the output field of view; linear
    interpolation reproduces the affine part exactly and the elastic part is smooth at that scale, so the
    whole warp costs one cheap field lookup per output voxel.
    """
    extent = np.array([(n - 1) * s for n, s in zip(grid.size, grid.spacing)])
    field_size = tuple(int(np.ceil(e / _FIELD_SPACING_MM)) + 2 for e in extent)
    field_grid = _Grid(field_size, (_FIELD_SPACING_MM,) * 3, grid.origin, grid.direction)
    points = _grid_points(field_grid)
    displacement = points @ affine.matrix.T + affine.offset - points
    displacement += _elastic_displacement(points.shape, rng, config)

    field = sitk.GetImageFromArray(displacement.astype(np.float64), isVector=True)
    field.SetOrigin(tuple(field_grid.origin))
    field.SetSpacing(field_grid.spacing)
    field.SetDirection(tuple(field_grid.direction.ravel()))
    return sitk.DisplacementFieldTransform(field)


def _elastic_displacement(
    shape: tuple[int, ...], rng: np.random.Generator, config: SubjectVariation
) -> np.ndarray:
    """Smooth random vector field (shape (z, y, x, 3)) whose largest displacement is up to the config's."""
    sigma_nodes = config.elastic_smoothness_mm / _FIELD_SPACING_MM
    noise = rng.standard_normal(shape)
    smooth = np.stack(
        [ndimage.gaussian_filter(noise[..., c], sigma_nodes, mode="reflect") for c in range(3)], axis=-1
    )
    largest = float(np.linalg.norm(smooth, axis=-1).max())
    amplitude = config.elastic_max_displacement_mm * rng.uniform(0.5, 1.0)
    return smooth * (amplitude / largest) if largest > 0 else smooth


def _resample(
    image: sitk.Image, grid: _Grid, transform: sitk.Transform, interpolator: int, pixel_type: int
) -> sitk.Image:
    return sitk.Resample(
        image,
        list(grid.size),
        transform,
        interpolator,
        tuple(float(v) for v in grid.origin),
        grid.spacing,
        tuple(float(v) for v in grid.direction.ravel()),
        0.0,
        pixel_type,
    )


def _apply_gamma(array: np.ndarray, gamma: float) -> np.ndarray:
    """Contrast change ``max * (x / max) ** gamma``, which keeps the maximum and the zero background."""
    peak = float(array.max())
    if peak <= 0:
        return array
    return (np.power(np.clip(array, 0, None) / peak, np.float32(gamma)) * peak).astype(np.float32)


def _bias_field(shape: tuple[int, ...], rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative field ``exp(p)`` with ``p`` a random cubic polynomial of the voxel position.

    ``p`` is built as ``sum_k z**k * P_k(x, y)`` so that only four full-volume operations are needed.
    """
    z, y, x = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    order = 3
    log_bias = np.zeros(shape, dtype=np.float32)
    for k in range(order + 1):
        plane = np.zeros((shape[1], shape[2]), dtype=np.float32)
        for j in range(order + 1 - k):
            for i in range(order + 1 - k - j):
                if i + j + k == 0:
                    continue
                weight = np.float32(rng.uniform(-strength, strength) / (i + j + k))
                plane += weight * np.outer(y**j, x**i)
        log_bias += z[:, None, None] ** k * plane[None]
    return np.exp(log_bias)


def _add_rician_noise(array: np.ndarray, noise_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Rician noise (magnitude of complex Gaussian noise), sigma relative to the median foreground value."""
    sample = array[::2, ::2, ::2]
    foreground = sample[sample > 0]
    level = float(np.median(foreground)) if foreground.size else 1.0
    sigma = np.float32(noise_fraction * level)
    real = rng.standard_normal(array.shape, dtype=np.float32)  # in-place below: these volumes are large
    real *= sigma
    real += array
    np.square(real, out=real)
    imaginary = rng.standard_normal(array.shape, dtype=np.float32)
    imaginary *= sigma
    np.square(imaginary, out=imaginary)
    real += imaginary
    return np.sqrt(real, out=real)


# ----------------------------------------------------------------------------------------------- lesions


def insert_lesion(
    image: sitk.Image, brain_mask: sitk.Image, kind: str, rng: np.random.Generator
) -> tuple[sitk.Image, sitk.Image]:
    """Paint one synthetic lesion of ``kind`` (see :data:`LESION_KINDS`) entirely inside ``brain_mask``.

    Returns the lesioned image (float32) and the lesion mask (uint8, 0/1), both on ``image``'s grid. The
    shape is an ellipsoid of random radius (range per kind, 4-20 mm) carved by thresholded smooth noise;
    intensities are set relative to the brain median and the lesion's local mean, so the result looks the
    same for any scanner intensity scale. Voxels change only inside the lesion and at most two voxels
    around it (soft edge).

    Kinds: ``hyper`` bright blob, ``hypo`` dark blob, ``mass`` bright rim around a dark necrotic core,
    ``subtle`` +-15-20 % intensity change, ``foreign`` speckled texture unlike brain tissue.
    """
    if kind not in LESION_KINDS:
        raise ConfigurationError(f"Unknown lesion kind {kind!r}; choose one of {', '.join(LESION_KINDS)}.")
    _require_same_grid(image, brain_mask)
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    brain = sitk.GetArrayViewFromImage(brain_mask) > 0
    spacing_zyx = np.array(image.GetSpacing()[::-1], dtype=np.float64)

    box, shape = _place_lesion(brain, spacing_zyx, rng.uniform(*_LESION_RADIUS_MM[kind]), rng)
    patch = array[box]
    site = _LesionSite(
        patch=patch,
        shape=shape,
        brain_median=float(np.median(array[brain])),
        local_mean=float(patch[shape.inside].mean()),
    )
    array[box] = _LESION_PAINTERS[kind](site, rng)

    mask_array = np.zeros(array.shape, dtype=np.uint8)
    mask_array[box] = shape.inside
    return _like(array, image), _like(mask_array, image)


def _require_same_grid(image: sitk.Image, mask: sitk.Image) -> None:
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise InputImageError("Lesions can only be inserted into 3D scalar images.")
    if not same_grid(image, mask):
        raise InputImageError(
            "The brain mask must be on the same grid (size, spacing, origin, direction) as the image."
        )


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _place_lesion(
    brain: np.ndarray, spacing_zyx: np.ndarray, radius_mm: float, rng: np.random.Generator
) -> tuple[tuple[slice, ...], _LesionShape]:
    """Find a crop where a random lesion shape, soft edge included, lies entirely inside ``brain``.

    Centres are drawn from brain voxels; when none of them fits, the lesion is made smaller.
    """
    candidates = np.flatnonzero(brain)
    if candidates.size == 0:
        raise InputImageError("The brain mask is empty; there is nowhere to put a lesion.")
    smallest_radius_mm = float(spacing_zyx.max())
    radius_mm = max(radius_mm, smallest_radius_mm)
    while radius_mm >= smallest_radius_mm:
        shape = _random_lesion_shape(spacing_zyx, radius_mm, rng)
        half = np.array(shape.inside.shape) // 2
        for flat in rng.choice(candidates, size=min(_MAX_PLACEMENT_TRIES, candidates.size)):
            centre = np.array(np.unravel_index(flat, brain.shape))
            low = centre - half
            high = low + np.array(shape.inside.shape)
            if np.any(low < 0) or np.any(high > brain.shape):
                continue
            box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
            if np.all(brain[box][shape.weight > 0]):
                return box, shape
        radius_mm *= 0.75
    raise InputImageError("The brain mask is too small or too thin to hold a lesion.")


def _random_lesion_shape(
    spacing_zyx: np.ndarray, radius_mm: float, rng: np.random.Generator
) -> _LesionShape:
    """Irregular blob: a randomly rotated ellipsoid whose boundary is eroded by smooth noise.

    ``radius_map`` is the ellipsoidal radius plus noise (``< 1`` inside), which painters use for cores/rims.
    """
    semi_axes = radius_mm * rng.uniform(0.7, 1.3, size=3)
    pad = int(np.ceil(3 * _LESION_EDGE_SIGMA_VOXELS)) + 1
    half = np.ceil(semi_axes.max() / spacing_zyx).astype(int) + pad
    offsets = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing_zyx)], indexing="ij")
    rotated = np.tensordot(_random_rotation(rng, 180.0).T, np.stack(offsets), axes=1)
    ellipsoid_radius = np.sqrt(sum((rotated[a] / semi_axes[a]) ** 2 for a in range(3)))

    noise_sigma_voxels = 0.4 * radius_mm / spacing_zyx
    noise = ndimage.gaussian_filter(rng.standard_normal(ellipsoid_radius.shape), noise_sigma_voxels)
    noise /= max(float(noise.std()), 1e-12)
    radius_map = ellipsoid_radius + rng.uniform(0.15, 0.4) * noise
    inside = largest_component((radius_map < 1.0) & (ellipsoid_radius < 1.0))
    if not inside.any():
        inside = ellipsoid_radius < 0.5
    fringe = ndimage.gaussian_filter(inside.astype(np.float32), _LESION_EDGE_SIGMA_VOXELS)
    fringe[fringe < 0.01] = 0.0
    weight = np.maximum(inside.astype(np.float32), fringe)  # full change inside, partial volume outside
    return _LesionShape(inside=inside, weight=weight, radius_map=radius_map)


def _bright_level(site: _LesionSite, rng: np.random.Generator) -> float:
    """An intensity clearly above both the brain median and the surrounding tissue."""
    return max(site.brain_median, site.local_mean) * rng.uniform(1.3, 1.7)


def _dark_level(site: _LesionSite, rng: np.random.Generator) -> float:
    """An intensity clearly below both the brain median and the surrounding tissue."""
    return min(site.brain_median, site.local_mean) * rng.uniform(0.2, 0.5)


def _shift_towards(site: _LesionSite, target: np.ndarray | float) -> np.ndarray:
    """Move the local mean to ``target`` while keeping the tissue texture and noise.

    Values are kept above zero (or above the crop's minimum for images with negative values, such as CT).
    """
    floor = min(0.0, float(site.patch.min()))
    return np.clip(site.patch + site.shape.weight * (target - site.local_mean), floor, None)


def _paint_hyper(site: _LesionSite, rng: np.random.Generator) -> np.ndarray:
    return _shift_towards(site, _bright_level(site, rng))


def _paint_hypo(site: _LesionSite, rng: np.random.Generator) -> np.ndarray:
    return _shift_towards(site, _dark_level(site, rng))


def _paint_mass(site: _LesionSite, rng: np.random.Generator) -> np.ndarray:
    """Bright (enhancing-like) rim around a dark necrotic core."""
    core = site.shape.inside & (site.shape.radius_map < rng.uniform(0.45, 0.7))
    return _shift_towards(site, np.where(core, _dark_level(site, rng), _bright_level(site, rng)))


def _paint_subtle(site: _LesionSite, rng: np.random.Generator) -> np.ndarray:
    """Relative change of 15-20 %, brighter or darker."""
    change = rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.20)
    return site.patch * (1.0 + change * site.shape.weight)


def _paint_foreign(site: _LesionSite, rng: np.random.Generator) -> np.ndarray:
    """Replace tissue by a speckled texture (fine-grained, high-contrast noise) that no brain region has."""
    grain = ndimage.gaussian_filter(rng.standard_normal(site.patch.shape), rng.uniform(0.5, 1.2))
    grain /= max(float(grain.std()), 1e-12)
    texture = site.brain_median * (rng.uniform(0.6, 1.4) + rng.uniform(0.4, 0.7) * grain)
    weight = site.shape.weight
    return (1.0 - weight) * site.patch + weight * np.clip(texture, 0.0, None)


_LESION_PAINTERS: dict[str, Callable[[_LesionSite, np.random.Generator], np.ndarray]] = {
    "hyper": _paint_hyper,
    "hypo": _paint_hypo,
    "mass": _paint_mass,
    "subtle": _paint_subtle,
    "foreign": _paint_foreign,
}


# ------------------------------------------------------------------------------------------------ toy data


def toy_volume(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (40, 40, 40),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    direction: tuple[float, ...] | None = None,
) -> sitk.Image:
    """A tiny procedural "organ" (float32) for fast unit tests.

    An ellipsoid of intensity ~100 with three internal structures of other intensities, smooth texture and a
    dark, slightly noisy background. ``shape`` and ``spacing`` are in SimpleITK (x, y, z) order;
    ``direction`` is a row-major 3 x 3 matrix (9 numbers), identity when None. The volume is centred on the
    physical origin.
    """
    if direction is None:
        direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    if len(direction) != 9:
        raise ConfigurationError("direction must have 9 numbers (a row-major 3 x 3 matrix).")
    coords = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape[::-1]], indexing="ij")  # z, y, x

    organ = _ellipsoid(coords, centre=rng.uniform(-0.05, 0.05, 3), semi_axes=rng.uniform(0.6, 0.85, 3))
    array = 100.0 * organ
    for level in rng.choice([45.0, 70.0, 140.0, 170.0], size=3, replace=False):
        structure = _ellipsoid(coords, centre=rng.uniform(-0.3, 0.3, 3), semi_axes=rng.uniform(0.08, 0.22, 3))
        array = np.where(structure & organ, level * rng.uniform(0.9, 1.1), array)
    texture = ndimage.gaussian_filter(rng.standard_normal(array.shape), 2.0)
    texture /= max(float(texture.std()), 1e-12)
    array = array * (1.0 + 0.05 * texture * organ) + np.abs(rng.standard_normal(array.shape))

    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in direction))
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    half_extent = (np.asarray(shape) - 1) * np.asarray(spacing) / 2.0
    image.SetOrigin(tuple(float(v) for v in -(matrix @ half_extent)))
    return image


def _ellipsoid(coords: Sequence[np.ndarray], centre: np.ndarray, semi_axes: np.ndarray) -> np.ndarray:
    return sum(((c - m) / a) ** 2 for c, m, a in zip(coords, centre, semi_axes)) < 1.0


# ------------------------------------------------------------------------------------------------- cohorts


def make_cohort(
    out_dir: str | Path,
    n: int,
    rng_seed: int,
    lesioned: bool = False,
    kinds: Sequence[str] = LESION_KINDS,
    lesions_per_subject: int = 1,
    config: SubjectVariation | None = None,
    template: sitk.Image | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``n`` synthetic subjects as NIfTI files for demos and evaluation; return the image paths.

    Healthy subjects are ``healthy_000.nii.gz``...; lesioned ones ``lesioned_000.nii.gz`` with the ground
    truth in ``lesioned_000_mask.nii.gz``. Subject ``i`` depends only on ``rng_seed`` and ``i`` (not on
    ``n``), and the lesioned subject ``i`` is the healthy subject ``i`` with lesions, so cohorts are paired.
    Lesion kinds cycle through ``kinds``.
    """
    unknown = [k for k in kinds if k not in LESION_KINDS]
    if n < 0 or lesions_per_subject < 1 or unknown or not kinds:
        raise ConfigurationError(
            f"Invalid cohort request (n={n}, lesions_per_subject={lesions_per_subject}, kinds={list(kinds)})."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = template if template is not None else load_template()
    template_mask = template_brain_mask(template)
    paths: list[Path] = []
    for index, seed in enumerate(np.random.SeedSequence(rng_seed).spawn(n)):
        rng = np.random.default_rng(seed)
        image, brain = make_healthy_subject_with_mask(template, template_mask, rng, config)
        name = f"{'lesioned' if lesioned else 'healthy'}_{index:03d}"
        if lesioned:
            first = index * lesions_per_subject
            subject_kinds = [kinds[(first + j) % len(kinds)] for j in range(lesions_per_subject)]
            image, lesions = _insert_lesions(image, brain, subject_kinds, rng)
            _write(lesions, out / f"{name}_mask.nii.gz", overwrite)
        paths.append(_write(image, out / f"{name}.nii.gz", overwrite))
    return paths


def _insert_lesions(
    image: sitk.Image, brain: sitk.Image, kinds: Sequence[str], rng: np.random.Generator
) -> tuple[sitk.Image, sitk.Image]:
    """Insert one lesion per entry of ``kinds``; the returned mask is the union of their masks."""
    union = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    union.CopyInformation(image)
    for kind in kinds:
        image, lesion = insert_lesion(image, brain, kind, rng)
        union = sitk.Or(union, lesion)
    return image, union


def _write(image: sitk.Image, path: Path, overwrite: bool) -> Path:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass overwrite=True to replace it.")
    sitk.WriteImage(image, str(path), useCompression=True)
    return path
