"""Model grid, foreground and normalisation (MedAutoencoderLib.preprocessing.prepare)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_direction, organ_mask, rotation_z, toy
from scipy import ndimage

from MedAutoencoderLib.config import PreprocessConfig
from MedAutoencoderLib.errors import InputImageError
from MedAutoencoderLib.preprocessing import morphology
from MedAutoencoderLib.preprocessing.prepare import (
    erode_mask,
    fill_holes_per_slice,
    normalise,
    otsu_foreground,
    prepare_volume,
)

# 64 mm of model grid (finer than the input, so little is lost by resampling) hold the whole toy organ of any cohort geometry
COVERING = PreprocessConfig(spacing=(1.0, 1.0, 1.0), size=(64, 64, 64))


@pytest.mark.parametrize("direction", [rotation_z(35.0), oblique_direction()], ids=["rot-z", "oblique"])
def test_round_trip_lands_exactly_on_the_input_grid(direction):
    image = toy(21, direction, spacing=(1.0, 1.1, 1.3))
    image.SetOrigin((12.5, -30.0, 7.25))  # away from zero, to catch origin mistakes
    prepared = prepare_volume(image, COVERING, name="rotated")

    # the model grid is axis-aligned, of the configured size and spacing
    assert prepared.grid.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert prepared.grid.GetSize() == COVERING.size
    assert prepared.image.shape == COVERING.size[::-1]

    back = prepared.to_input_grid(prepared.denormalise(prepared.image))
    assert back.GetSize() == image.GetSize()
    assert back.GetSpacing() == image.GetSpacing()
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetDirection() == image.GetDirection()

    inside = sitk.GetArrayFromImage(organ_mask(image, erode=3)) > 0
    original = sitk.GetArrayFromImage(image)[inside]
    returned = sitk.GetArrayFromImage(back)[inside]
    assert np.corrcoef(original, returned)[0, 1] > 0.95
    assert np.median(np.abs(returned - original) / original) < 0.05

    # a nearest-neighbour labelmap comes back as uint8 on the same grid
    mask = prepared.to_input_grid(prepared.foreground, nearest=True)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == image.GetSize() and mask.GetDirection() == image.GetDirection()
    assert (sitk.GetArrayFromImage(mask)[inside] == 1).mean() > 0.99


def test_model_grid_is_centred_on_the_foreground():
    image = toy(22, rotation_z(20.0))
    image.SetOrigin(tuple(np.array(image.GetOrigin()) + [40.0, -25.0, 10.0]))
    prepared = prepare_volume(image, PreprocessConfig(size=(32, 32, 32)))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(organ_mask(image, erode=0))
    grid = prepared.grid
    grid_centre = np.array(grid.GetOrigin()) + np.array(grid.GetSpacing()) * (np.array(grid.GetSize()) - 1) / 2
    assert np.linalg.norm(grid_centre - np.array(stats.GetCentroid(1))) < 3.0


def test_foreground_fills_a_dark_interior_hole():
    image = toy(23)
    array = sitk.GetArrayFromImage(image)
    zz, yy, xx = np.indices(array.shape)
    hole = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 5 ** 2
    array[hole] = 0.5  # as dark as the background
    holed = sitk.GetImageFromArray(array)
    holed.CopyInformation(image)

    foreground = sitk.GetArrayFromImage(otsu_foreground(holed)) > 0
    assert foreground[hole].all()
    assert not foreground[0, 0, 0]  # the corner is background

    prepared = prepare_volume(holed, COVERING)
    centre = prepared.grid.TransformPhysicalPointToIndex(holed.TransformIndexToPhysicalPoint((20, 20, 20)))
    assert prepared.foreground[centre[2], centre[1], centre[0]]
    assert prepared.image[centre[2], centre[1], centre[0]] == pytest.approx(0.0, abs=0.05)  # dark, but inside


def test_percentile_normalisation_maps_background_to_0_and_upper_percentile_to_1():
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 1.0, (10, 20, 20))
    foreground = np.zeros(values.shape, bool)
    foreground[2:8, 5:15, 5:15] = True
    values[foreground] = rng.uniform(100.0, 300.0, foreground.sum())
    values[5, 10, 10:14] = 5000.0  # outliers inside: clipped
    config = PreprocessConfig(upper_percentile=95.0, clip_max=1.2)
    result, offset, scale = normalise(values, foreground, config, background=float(np.percentile(values, 1.0)))
    assert result.dtype == np.float32
    assert offset == pytest.approx(np.percentile(values, 1.0))
    assert offset + scale == pytest.approx(np.percentile(values[foreground], 95.0))
    assert (result[~foreground] == 0).all()
    inside = result[foreground]
    assert inside.min() >= 0.0 and inside.max() == pytest.approx(1.2)  # clipped to [0, clip_max]
    assert np.mean(inside >= 1.0) == pytest.approx(0.05, abs=0.01)
    assert (result[5, 10, 10:14] == pytest.approx(1.2))  # the top 5 % reach 1
    np.testing.assert_allclose(inside[inside < 1.2], ((values[foreground] - offset) / scale)[inside < 1.2],
                               rtol=1e-5)


def test_zscore_normalisation_standardises_the_foreground():
    rng = np.random.default_rng(1)
    values = rng.normal(5.0, 0.1, (10, 20, 20))
    foreground = np.zeros(values.shape, bool)
    foreground[:, 4:16, 4:16] = True
    values[foreground] = rng.normal(400.0, 50.0, foreground.sum())
    result, offset, scale = normalise(values, foreground, PreprocessConfig(normalization="zscore"), background=5.0)
    assert offset == pytest.approx(values[foreground].mean())
    assert scale == pytest.approx(values[foreground].std())
    assert result[foreground].mean() == pytest.approx(0.0, abs=0.01)
    assert result[foreground].std() == pytest.approx(1.0, abs=0.01)
    assert (result[~foreground] == 0).all()


def test_constant_foreground_cannot_be_normalised():
    values = np.zeros((4, 4, 4))
    foreground = np.zeros(values.shape, bool)
    foreground[1:3, 1:3, 1:3] = True
    values[foreground] = 10.0
    with pytest.raises(InputImageError, match="constant"):
        normalise(values, foreground, PreprocessConfig(normalization="zscore"), background=0.0)
    with pytest.raises(InputImageError, match="empty"):
        normalise(values, np.zeros_like(foreground), PreprocessConfig(), background=0.0)


def test_noise_only_volume_gives_a_clear_error():
    noise = np.abs(np.random.default_rng(2).normal(size=(40, 40, 40))).astype(np.float32)
    image = sitk.GetImageFromArray(noise)
    with pytest.raises(InputImageError) as caught:
        prepare_volume(image, PreprocessConfig(size=(32, 32, 32)), name="noise.nii.gz")
    assert "noise.nii.gz" in str(caught.value) and "foreground" in str(caught.value)


def test_noise_only_volume_is_refused_also_where_the_brain_comes_from_the_template():
    """The registration places the template brain on anything, noise included."""
    noise = np.abs(np.random.default_rng(3).normal(100, 10, size=(90, 100, 80))).astype(np.float32)
    image = sitk.GetImageFromArray(noise)
    image.SetSpacing((2.0, 2.0, 2.0))
    with pytest.raises(InputImageError, match="noise.nii.gz: no foreground found"):
        prepare_volume(image, PreprocessConfig(size=(64, 64, 64), spacing=(3.0, 3.0, 3.0), foreground="template"),
                       name="noise.nii.gz")


def test_a_brain_normalised_inside_its_mask_with_its_background_at_zero_is_refused():
    """Z-scores inside a brain mask put the background (0) amid the brain's intensities: the foreground and
    the normalisation, which take the background to be the darkest, would silently make nonsense of it. Only
    the brain model refuses it (before its registration): a user's own model may be trained on such scans."""
    values = sitk.GetArrayFromImage(toy(4))
    inside = values > 30  # the toy organ
    values[inside] = (values[inside] - values[inside].mean()) / values[inside].std()
    values[~inside] = 0.0
    brain = PreprocessConfig(size=(32, 32, 32), foreground="template")
    with pytest.raises(InputImageError, match="z.nii.gz: its background .* brighter than"):
        prepare_volume(sitk.GetImageFromArray(values), brain, name="z.nii.gz")
    prepare_volume(sitk.GetImageFromArray(values), PreprocessConfig(size=(32, 32, 32)))  # Otsu foreground


@pytest.mark.parametrize("spacing, unit", [((0.001, 0.001, 0.001), "microns"), ((1.0, 1.0, 0.001), "one axis"),
                                           ((1000.0, 1000.0, 1000.0), "metres")])
def test_a_field_of_view_no_head_fits_is_refused_by_the_brain_model(spacing, unit):
    """A NIfTI's spatial unit set to microns or metres (ITK scales the spacing by it): the registration failed
    deep inside ITK (BinShrink: "InputImage is too small"), or a 2 mm copy of a field 240 m wide ran the machine
    out of memory, which was reported as such."""
    head = sitk.GetImageFromArray(np.zeros((155, 240, 240), np.float32))
    head[60:180, 60:180, 20:135] = 100.0  # not reached: the field of view is checked before the registration
    head.SetSpacing(spacing)
    with pytest.raises(InputImageError, match=r"units.nii.gz: its field of view, .* mm .* is no head's"):
        prepare_volume(head, PreprocessConfig(foreground="template"), name="units.nii.gz")


def test_invalid_preprocessing_settings_are_refused():
    from MedAutoencoderLib.errors import ConfigurationError

    for bad in (dict(normalization="minmax"), dict(size=(4, 32, 32)), dict(spacing=(1.0, 0.0, 1.0))):
        with pytest.raises(ConfigurationError):
            PreprocessConfig(**bad).validate()


RADII = [(2, 2, 2), (1, 1, 1), (3, 3, 3), (1, 2, 3), (0, 2, 2)]  # (z, y, x), anisotropic and in-plane included


@pytest.mark.parametrize("radius", RADII, ids=str)
def test_ball_morphology_gives_the_voxels_of_itks(radius):
    """Blobs with gaps and holes, touching the array's edges: dilation, erosion and closing give the same voxels
    as SimpleITK's ball filters (whose edge rules differ: background for dilation, foreground for erosion, a
    safe border for closing)."""
    rng = np.random.default_rng(sum(radius))
    blobs = ndimage.gaussian_filter(rng.random((30, 41, 37)), 2.0) > 0.5
    image = sitk.GetImageFromArray(blobs.astype(np.uint8))
    itk_radius = list(radius[::-1])
    expected = {
        "dilate": sitk.BinaryDilate(image, itk_radius),
        "erode": sitk.BinaryErode(image, itk_radius),
        "close": sitk.BinaryMorphologicalClosing(image, itk_radius),
    }
    for name, itk_result in expected.items():
        ours = getattr(morphology, name)(blobs, radius)
        assert not np.array_equal(ours, blobs), name  # the operation did change something
        np.testing.assert_array_equal(ours, sitk.GetArrayFromImage(itk_result) > 0, err_msg=name)


@pytest.mark.parametrize("radius", [1.0, 1.5, 3.0, 4.2])
def test_euclidean_dilation_is_the_exact_distance_map_thresholded(radius):
    """Every voxel at most ``radius`` voxels from the mask (SciPy's exact Euclidean distance transform), with
    the mask touching the array's edges."""
    rng = np.random.default_rng(int(radius * 10))
    mask = rng.random((21, 26, 30)) > 0.995
    mask[0, 0, 0] = mask[-1, -1, -1] = True
    expected = ndimage.distance_transform_edt(~mask) <= radius
    np.testing.assert_array_equal(morphology.dilate_euclidean(mask, radius), expected)


def test_bounding_box_grows_within_the_array_and_is_none_for_an_empty_mask():
    mask = np.zeros((10, 12, 14), bool)
    assert morphology.bounding_box(mask) is None
    mask[0, 3, 5] = mask[4, 7, 13] = True
    assert morphology.bounding_box(mask) == (slice(0, 5), slice(3, 8), slice(5, 14))
    assert morphology.bounding_box(mask, 2) == (slice(0, 7), slice(1, 10), slice(3, 14))


@pytest.mark.parametrize("seed", range(4))
def test_largest_component_is_the_whole_arrays_first_largest(seed):
    """Labelled in the mask's box, the same component as labelling the whole array: the largest, the first in
    raster order among equals (two equal blocks here), a lone component or none returned as given."""
    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((24, 30, 28)) > 0.6)
    mask[2:4, 2:4, 2:4] = mask[20:22, 25:27, 24:26] = True
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    expected = labels == int(np.argmax(sizes)) + 1
    np.testing.assert_array_equal(morphology.largest_component(mask), expected)
    twins = np.zeros((9, 9, 9), bool)
    twins[1:3, 1:3, 1:3] = twins[5:7, 5:7, 5:7] = True
    assert morphology.largest_component(twins)[1, 1, 1] and not morphology.largest_component(twins)[5, 5, 5]
    empty, lone = np.zeros((5, 5, 5), bool), twins[:4]
    assert morphology.largest_component(empty) is empty and morphology.largest_component(lone) is lone


def test_mask_erosion_in_millimetres_follows_each_axis_spacing():
    """3 mm on a grid of spacing (x, y, z) = (1, 1.5, 3) mm is a radius of 3, 2 and 1 voxels along x, y, z."""
    mask = np.zeros((20, 30, 40), dtype=bool)
    mask[3:17, 5:25, 6:34] = True
    eroded = erode_mask(mask, 3.0, (1.0, 1.5, 3.0))
    expected = sitk.BinaryErode(sitk.GetImageFromArray(mask.astype(np.uint8)), [3, 2, 1])
    np.testing.assert_array_equal(eroded, sitk.GetArrayFromImage(expected) > 0)
    assert eroded[4:16, 7:23, 9:31].all() and eroded.sum() == 12 * 16 * 22


@pytest.mark.parametrize("seed", range(6))
def test_fill_holes_per_slice_is_scipys_in_plane_fill_and_a_3d_fill_first_adds_nothing(seed):
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.random((9, 30, 31)), 1.2) > 0.48 + 0.01 * seed  # holes open in 3D
    mask[2:8, 4:16, 5:17] = True
    mask[3:7, 6:14, 7:15] = False  # and a cavity closed in 3D
    in_plane = np.array([np.zeros((3, 3)), [[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.zeros((3, 3))], dtype=bool)
    expected = ndimage.binary_fill_holes(mask, structure=in_plane)
    assert expected.sum() > mask.sum()  # the case has holes to fill
    np.testing.assert_array_equal(fill_holes_per_slice(mask), expected)
    filled_3d = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(mask.astype(np.uint8)))) > 0
    assert filled_3d.sum() >= mask.sum() + 4 * 8 * 8  # ITK's 3D fill closed the cavity at least
    np.testing.assert_array_equal(fill_holes_per_slice(filled_3d), expected)
