"""Tests of the synthetic data generator (MedAutoencoderLib.data.synthetic).

Most tests use the template shrunk to 2 mm and coarse output grids so that the file runs in seconds; one
test checks the real template and its brain mask.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MedAutoencoderLib.data import synthetic
from MedAutoencoderLib.data import template as bundled_template
from MedAutoencoderLib.errors import ConfigurationError, InputImageError, OutputExistsError

# Coarse acquisition grids (2-2.6 mm) keep each subject well under 10^6 voxels.
FAST_VARIATION = synthetic.SubjectVariation(in_plane_spacing_mm=(2.0, 2.3), max_slice_spacing_mm=2.6)


def array_of(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


@pytest.fixture(scope="module")
def full_template() -> sitk.Image:
    return bundled_template.load_template()


@pytest.fixture(scope="module")
def template(full_template: sitk.Image) -> sitk.Image:
    return sitk.BinShrink(full_template, [2, 2, 2])


@pytest.fixture(scope="module")
def template_mask(template: sitk.Image) -> sitk.Image:
    return bundled_template.template_brain_mask(template)


@pytest.fixture(scope="module")
def subject(template: sitk.Image, template_mask: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    return synthetic.make_healthy_subject_with_mask(
        template, template_mask, np.random.default_rng(11), FAST_VARIATION
    )


# ----------------------------------------------------------------------------------------------- template


@pytest.mark.slow
def test_template_is_bundled_mni_t1_with_a_filled_brain_mask(full_template: sitk.Image) -> None:
    assert full_template.GetSize() == (197, 233, 189)
    assert full_template.GetPixelID() == sitk.sitkFloat32
    mask = bundled_template.template_brain_mask(full_template)
    assert mask.GetPixelID() == sitk.sitkUInt8
    mask_array = array_of(mask)
    assert set(np.unique(mask_array)) == {0, 1}
    assert 0.15 < mask_array.mean() < 0.30  # the brain is about a fifth of the template box
    assert np.array_equal(ndimage.binary_fill_holes(mask_array), mask_array.astype(bool))
    assert ndimage.label(mask_array)[1] == 1
    assert (bundled_template.TEMPLATE_PATH.parent / "NOTICE_MNI_ICBM152.txt").is_file()


# ---------------------------------------------------------------------------------------- healthy subjects


def test_healthy_subject_is_deterministic_for_a_seed(template: sitk.Image) -> None:
    first = synthetic.make_healthy_subject(template, np.random.default_rng(3), FAST_VARIATION)
    again = synthetic.make_healthy_subject(template, np.random.default_rng(3), FAST_VARIATION)
    other = synthetic.make_healthy_subject(template, np.random.default_rng(4), FAST_VARIATION)
    assert first.GetSize() == again.GetSize()
    assert first.GetDirection() == again.GetDirection() and first.GetOrigin() == again.GetOrigin()
    np.testing.assert_array_equal(array_of(first), array_of(again))
    assert first.GetSize() != other.GetSize() or not np.array_equal(array_of(first), array_of(other))


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_healthy_subject_has_a_new_acquisition_grid(template: sitk.Image, seed: int) -> None:
    image = synthetic.make_healthy_subject(template, np.random.default_rng(seed), FAST_VARIATION)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-6)
    assert not np.allclose(direction, np.eye(3), atol=1e-3)
    assert not np.allclose(direction, np.array(template.GetDirection()).reshape(3, 3), atol=1e-3)
    spacing = np.array(image.GetSpacing())
    assert not np.allclose(spacing, template.GetSpacing())
    assert np.all((spacing >= 2.0) & (spacing <= 2.6))
    assert spacing[0] == spacing[1] and spacing[2] >= spacing[0]  # in-plane / slice spacing
    values = array_of(image)
    assert image.GetPixelID() == sitk.sitkFloat32
    assert np.all(np.isfinite(values)) and values.min() >= 0
    assert values.std() > 0.1 * values.max()


def test_healthy_subject_grid_covers_the_head_and_mask_follows_the_anatomy(
    template: sitk.Image, subject: tuple[sitk.Image, sitk.Image]
) -> None:
    image, brain = subject
    assert brain.GetSize() == image.GetSize() and brain.GetDirection() == image.GetDirection()
    brain_array = array_of(brain).astype(bool)
    faces = [brain_array[0], brain_array[-1], brain_array[:, 0], brain_array[:, -1], brain_array[..., 0],
             brain_array[..., -1]]
    assert not any(face.any() for face in faces), "the field of view cuts the brain"
    brain_volume_ml = brain_array.sum() * np.prod(image.GetSpacing()) / 1000
    template_volume_ml = array_of(bundled_template.template_brain_mask(template)).sum() * 8 / 1000
    assert 0.7 < brain_volume_ml / template_volume_ml < 1.3  # scaling is at most 8 % per axis
    values = array_of(image)
    assert np.median(values[brain_array]) > 5 * np.median(values[~brain_array])


def test_subject_with_mask_has_the_same_image_as_subject_alone(
    template: sitk.Image, template_mask: sitk.Image, subject: tuple[sitk.Image, sitk.Image]
) -> None:
    alone = synthetic.make_healthy_subject(template, np.random.default_rng(11), FAST_VARIATION)
    np.testing.assert_array_equal(array_of(alone), array_of(subject[0]))


# ------------------------------------------------------------------------------------------------ lesions


def lesion_in(subject: tuple[sitk.Image, sitk.Image], kind: str, seed: int = 0):
    image, brain = subject
    return synthetic.insert_lesion(image, brain, kind, np.random.default_rng(seed))


@pytest.mark.parametrize("kind", synthetic.LESION_KINDS)
def test_lesion_lies_in_the_brain_and_changes_only_its_neighbourhood(
    subject: tuple[sitk.Image, sitk.Image], kind: str
) -> None:
    image, brain = subject
    lesioned, mask = lesion_in(subject, kind)
    assert mask.GetPixelID() == sitk.sitkUInt8 and lesioned.GetPixelID() == sitk.sitkFloat32
    for produced in (lesioned, mask):
        assert produced.GetSize() == image.GetSize()
        assert produced.GetOrigin() == image.GetOrigin() and produced.GetDirection() == image.GetDirection()
    mask_array = array_of(mask)
    assert set(np.unique(mask_array)) == {0, 1}

    # Inside the brain, checked in physical space so that it does not rely on the grids being identical.
    brain_array = array_of(brain)
    for index_zyx in np.argwhere(mask_array)[::7]:
        point = mask.TransformIndexToPhysicalPoint([int(i) for i in index_zyx[::-1]])
        brain_index = brain.TransformPhysicalPointToIndex(point)
        assert brain_array[brain_index[::-1]] == 1

    changed = array_of(lesioned) != array_of(image)
    assert changed[mask_array > 0].mean() > 0.9
    near_lesion = ndimage.binary_dilation(mask_array, iterations=3)
    assert not changed[~near_lesion].any()


@pytest.mark.parametrize("kind, sign", [("hyper", 1), ("hypo", -1)])
def test_hyper_and_hypo_lesions_change_intensity_in_their_direction(
    subject: tuple[sitk.Image, sitk.Image], kind: str, sign: int
) -> None:
    image, brain = subject
    before = array_of(image)
    brain_median = np.median(before[array_of(brain) > 0])
    for seed in range(4):
        lesioned, mask = lesion_in(subject, kind, seed)
        inside = array_of(mask) > 0
        shift = array_of(lesioned)[inside].mean() - before[inside].mean()
        assert sign * shift > 0.2 * brain_median


def test_mass_has_a_bright_rim_and_a_dark_core(subject: tuple[sitk.Image, sitk.Image]) -> None:
    image, brain = subject
    lesioned, mask = lesion_in(subject, "mass")
    before = array_of(image)
    brain_median = np.median(before[array_of(brain) > 0])
    difference = (array_of(lesioned) - before)[array_of(mask) > 0]
    assert np.percentile(difference, 95) > 0.2 * brain_median
    assert np.percentile(difference, 5) < -0.2 * brain_median


def test_subtle_lesion_changes_intensity_by_15_to_20_percent(subject: tuple[sitk.Image, sitk.Image]) -> None:
    image, _ = subject
    for seed in range(4):
        lesioned, mask = lesion_in(subject, "subtle", seed)
        inside = (array_of(mask) > 0) & (array_of(image) > 0)
        relative = np.abs(array_of(lesioned)[inside] / array_of(image)[inside] - 1.0)
        assert 0.145 < relative.max() < 0.201
        assert relative.mean() > 0.05


def test_foreign_lesion_replaces_the_texture(subject: tuple[sitk.Image, sitk.Image]) -> None:
    image, brain = subject
    lesioned, mask = lesion_in(subject, "foreign")
    before = array_of(image)
    inside = array_of(mask) > 0
    brain_median = np.median(before[array_of(brain) > 0])
    assert np.abs(array_of(lesioned)[inside] - before[inside]).mean() > 0.15 * brain_median
    assert array_of(lesioned)[inside].std() > before[inside].std()


def test_lesions_are_deterministic_and_independent_of_the_intensity_scale(
    subject: tuple[sitk.Image, sitk.Image]
) -> None:
    image, brain = subject
    for kind in synthetic.LESION_KINDS:
        lesioned, mask = lesion_in(subject, kind, seed=9)
        again, mask_again = lesion_in(subject, kind, seed=9)
        np.testing.assert_array_equal(array_of(lesioned), array_of(again))
        np.testing.assert_array_equal(array_of(mask), array_of(mask_again))
        scaled, scaled_mask = synthetic.insert_lesion(image * 1000.0, brain, kind, np.random.default_rng(9))
        np.testing.assert_array_equal(array_of(scaled_mask), array_of(mask))
        np.testing.assert_allclose(array_of(scaled), 1000.0 * array_of(lesioned), rtol=1e-4, atol=1e-2)


def test_lesion_sizes_vary(subject: tuple[sitk.Image, sitk.Image]) -> None:
    volumes = [array_of(lesion_in(subject, "hyper", seed)[1]).sum() for seed in range(8)]
    assert max(volumes) > 3 * min(volumes) > 0


def test_insert_lesion_rejects_bad_input(subject: tuple[sitk.Image, sitk.Image]) -> None:
    image, brain = subject
    with pytest.raises(ConfigurationError):
        synthetic.insert_lesion(image, brain, "tumour", np.random.default_rng(0))
    shifted = sitk.Image(brain)
    shifted.SetOrigin(tuple(o + 5.0 for o in brain.GetOrigin()))
    with pytest.raises(InputImageError):
        synthetic.insert_lesion(image, shifted, "hyper", np.random.default_rng(0))
    with pytest.raises(InputImageError):
        synthetic.insert_lesion(image, brain * 0, "hyper", np.random.default_rng(0))


# --------------------------------------------------------------------------------------------- toy volume

OBLIQUE = tuple(
    float(v) for v in (sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5).GetMatrix())
)


def test_toy_volume_geometry_and_content() -> None:
    image = synthetic.toy_volume(np.random.default_rng(0), shape=(30, 40, 20), spacing=(1.5, 1.0, 2.0),
                                 direction=OBLIQUE)
    assert image.GetSize() == (30, 40, 20)
    assert image.GetSpacing() == (1.5, 1.0, 2.0)
    np.testing.assert_allclose(image.GetDirection(), OBLIQUE)
    centre_index = [(n - 1) / 2 for n in image.GetSize()]
    np.testing.assert_allclose(image.TransformContinuousIndexToPhysicalPoint(centre_index), 0.0, atol=1e-9)
    values = array_of(image)
    assert values.dtype == np.float32 and np.all(np.isfinite(values))
    assert values[10, 20, 15] > 20 * np.median(values[0])  # organ centre vs background slice
    assert len(np.unique(np.round(values[values > 30], -1))) > 3  # internal structures and texture
    again = synthetic.toy_volume(np.random.default_rng(0), shape=(30, 40, 20), spacing=(1.5, 1.0, 2.0),
                                 direction=OBLIQUE)
    np.testing.assert_array_equal(values, array_of(again))
    assert synthetic.toy_volume(np.random.default_rng(0)).GetSize() == (40, 40, 40)
    with pytest.raises(ConfigurationError):
        synthetic.toy_volume(np.random.default_rng(0), direction=(1.0, 0.0))


def test_lesion_in_oblique_toy_volume_stays_in_the_organ() -> None:
    toy = synthetic.toy_volume(np.random.default_rng(1), direction=OBLIQUE)
    organ = bundled_template.template_brain_mask(toy)
    for kind in synthetic.LESION_KINDS:
        lesioned, mask = synthetic.insert_lesion(toy, organ, kind, np.random.default_rng(2))
        mask_array = array_of(mask)
        assert mask_array.any()
        assert np.all(array_of(organ)[mask_array > 0] == 1)
        assert mask.GetDirection() == toy.GetDirection()


# ------------------------------------------------------------------------------------------------ cohorts


@pytest.mark.slow
def test_make_cohort_writes_paired_healthy_and_lesioned_subjects(template: sitk.Image, tmp_path) -> None:
    common = dict(rng_seed=5, config=FAST_VARIATION, template=template)
    healthy = synthetic.make_cohort(tmp_path / "healthy", 2, **common)
    lesioned = synthetic.make_cohort(tmp_path / "lesioned", 2, lesioned=True, lesions_per_subject=2, **common)
    assert [p.name for p in healthy] == ["healthy_000.nii.gz", "healthy_001.nii.gz"]
    assert [p.name for p in lesioned] == ["lesioned_000.nii.gz", "lesioned_001.nii.gz"]
    for healthy_path, lesioned_path in zip(healthy, lesioned):
        clean, sick = sitk.ReadImage(str(healthy_path)), sitk.ReadImage(str(lesioned_path))
        mask = sitk.ReadImage(str(lesioned_path).replace(".nii.gz", "_mask.nii.gz"))
        assert clean.GetSize() == sick.GetSize() == mask.GetSize()
        np.testing.assert_allclose(clean.GetDirection(), sick.GetDirection(), atol=1e-6)
        changed = ~np.isclose(array_of(clean), array_of(sick), rtol=1e-5, atol=1e-3)
        assert array_of(mask).any()
        assert not changed[~ndimage.binary_dilation(array_of(mask), iterations=3)].any()
    assert not (tmp_path / "healthy" / "healthy_000_mask.nii.gz").exists()
    with pytest.raises(OutputExistsError):
        synthetic.make_cohort(tmp_path / "healthy", 1, **common)


def test_tilted_copy_rotates_the_placement_about_the_centre_and_keeps_the_voxels():
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    image.SetSpacing((1.0, 1.5, 2.0))
    image.SetOrigin((10.0, -20.0, 5.0))
    tilted = synthetic.tilted_copy(image, 90.0, (0.0, 0.0, 1.0))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(tilted), sitk.GetArrayViewFromImage(image))
    assert tilted.GetSpacing() == image.GetSpacing()
    np.testing.assert_allclose(np.array(tilted.GetDirection()).reshape(3, 3), [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
                               atol=1e-12)
    centre = [s / 2.0 for s in image.GetSize()]
    np.testing.assert_allclose(tilted.TransformContinuousIndexToPhysicalPoint(centre),
                               image.TransformContinuousIndexToPhysicalPoint(centre), atol=1e-9)
    # the origin turns a quarter about the z axis through the centre
    offset = np.subtract(image.GetOrigin(), image.TransformContinuousIndexToPhysicalPoint(centre))
    np.testing.assert_allclose(np.subtract(tilted.GetOrigin(), image.TransformContinuousIndexToPhysicalPoint(centre)),
                               [-offset[1], offset[0], offset[2]], atol=1e-9)
