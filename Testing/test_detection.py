"""Post-processing, calibration and brain extraction on real arrays and images."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MedAutoencoderLib.brain.registration import template_brain_mask_on, template_to_image_transform
from MedAutoencoderLib.config import DetectionConfig, PreprocessConfig
from MedAutoencoderLib.data.synthetic import make_healthy_subject_with_mask
from MedAutoencoderLib.data.template import load_template, template_brain_mask
from MedAutoencoderLib.detection.evaluation import dice
from MedAutoencoderLib.detection.median import in_plane_median, median_network
from MedAutoencoderLib.detection.scoring import (
    ScoredVolume,
    calibrate_threshold,
    describe_components,
    level_factor,
    structural_dissimilarity,
    threshold_mask,
    to_error_level,
)
from MedAutoencoderLib.errors import InputImageError
from MedAutoencoderLib.preprocessing.prepare import prepare_volume


def test_structural_dissimilarity_is_zero_for_identical_slices_and_high_where_texture_changes():
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random((4, 48, 48)), (0, 1, 1)).astype(np.float32)
    assert np.abs(structural_dissimilarity(image, image)).max() < 1e-4
    changed = image.copy()
    changed[:, 16:32, 16:32] = rng.random((4, 16, 16))
    dissimilarity = structural_dissimilarity(image, changed)
    assert dissimilarity[:, 20:28, 20:28].mean() > 10 * dissimilarity[:, :8, :8].mean() + 0.1


def test_calibrated_threshold_leaves_the_target_share_of_healthy_voxels_above_it():
    rng = np.random.default_rng(1)
    healthy = [ScoredVolume(score_map=rng.random((10, 20, 20)).astype(np.float32),
                            region=np.ones((10, 20, 20), bool)) for _ in range(3)]
    calibration = calibrate_threshold(healthy, target_fpr=0.01)
    values = np.concatenate([v.values() for v in healthy])
    assert abs((values > calibration["threshold"]).mean() - 0.01) < 0.001
    assert calibration["healthy_volumes"] == 3 and calibration["healthy_voxels"] == values.size


def test_calibration_records_the_healthy_error_level_and_brings_worse_reconstructed_volumes_to_it():
    """The threshold is taken over the healthy maps as detection will see them: a calibration volume reconstructed
    three times worse than the others' median is divided by 3 first."""
    rng = np.random.default_rng(2)
    maps = [rng.random((10, 20, 20)).astype(np.float32) for _ in range(3)]
    healthy = [ScoredVolume(score_map=m, region=np.ones(m.shape, bool), error_level=level)
               for m, level in zip(maps, (0.02, 0.02, 0.06))]
    calibration = calibrate_threshold(healthy, target_fpr=0.01)
    assert calibration["error_level"] == pytest.approx(0.02)
    brought = np.concatenate([maps[0].ravel(), maps[1].ravel(), maps[2].ravel() / 3])
    assert calibration["threshold"] == pytest.approx(float(np.quantile(brought, 0.99)), rel=1e-5)
    assert calibration["threshold"] < float(np.quantile(np.concatenate([m.ravel() for m in maps]), 0.99))


def test_a_map_is_divided_only_where_the_scan_is_reconstructed_worse_than_the_healthy_scans():
    assert level_factor(0.01, 0.02) == 1.0  # never more sensitive than calibrated
    assert level_factor(0.05, 0.02) == pytest.approx(2.5)
    assert level_factor(0.05, None) == 1.0  # a model calibrated before error levels were recorded
    assert level_factor(0.05, float("nan")) == 1.0 and level_factor(float("nan"), 0.02) == 1.0
    scored = ScoredVolume(score_map=np.full((2, 3, 3), 0.5, np.float32), region=np.ones((2, 3, 3), bool),
                          error_level=0.05)
    divided = to_error_level(scored, 0.02)
    assert divided.divided_by == pytest.approx(2.5) and np.allclose(divided.score_map, 0.2)
    assert np.allclose(scored.score_map, 0.5) and scored.divided_by == 1.0  # the scores given are kept
    assert to_error_level(scored, 0.1) is scored


def _image(array: np.ndarray, spacing=(2.0, 1.0, 1.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS-like axes, as an LPS direction
    image.SetOrigin((10.0, 20.0, -5.0))
    return image


def test_threshold_mask_removes_components_below_the_physical_minimum():
    array = np.zeros((20, 20, 20))
    array[2:4, 2:4, 2:4] = 1.0  # 8 voxels of 2 mm^3 = 0.016 mL
    array[10:15, 10:15, 10:15] = 1.0  # 125 voxels = 0.25 mL
    mask = sitk.GetArrayFromImage(threshold_mask(_image(array), 0.5, min_component_ml=0.05))
    assert mask[12, 12, 12] == 1 and mask[3, 3, 3] == 0 and mask.sum() == 125


def test_components_report_volume_and_centroid_in_lps_and_ras():
    array = np.zeros((20, 20, 20), np.uint8)
    array[10:15, 10:15, 10:15] = 1
    image = sitk.Cast(_image(array), sitk.sitkUInt8)
    (component,) = describe_components(image)
    expected_lps = image.TransformContinuousIndexToPhysicalPoint((12.0, 12.0, 12.0))
    assert component["voxels"] == 125 and component["volume_ml"] == pytest.approx(0.25)
    assert component["centroid_lps_mm"] == pytest.approx(expected_lps, abs=0.01)
    assert component["centroid_ras_mm"] == pytest.approx((-expected_lps[0], -expected_lps[1], expected_lps[2]),
                                                         abs=0.01)


def test_volumes_on_a_sheared_grid_are_not_overstated():
    """A sheared grid (a NRRD's space directions at 73 degrees, as a gantry-tilted CT's) holds less than the
    spacings' product per voxel: ITK's physical size overstated every component and the smallest one kept."""
    array = np.zeros((20, 20, 20), np.uint8)
    array[10:15, 10:15, 10:15] = 1
    image = sitk.Cast(_image(array), sitk.sitkUInt8)
    shear = 0.3
    sheared = np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1]], float)
    image.SetDirection((sheared / np.linalg.norm(sheared, axis=0)).ravel().tolist())  # unit columns, not perpendicular
    spacing_product_ml = 125 * np.prod(image.GetSpacing()) / 1000
    (component,) = describe_components(image)
    assert component["volume_ml"] == pytest.approx(spacing_product_ml / np.hypot(1, shear), abs=1e-4)
    between = spacing_product_ml / np.hypot(1, shear) * 1.02  # above the true volume, below the product
    assert sitk.GetArrayFromImage(threshold_mask(sitk.Cast(image, sitk.sitkFloat32), 0.5, between)).sum() == 0


@pytest.fixture(scope="module")
def subject_with_brain():
    template = load_template()
    return make_healthy_subject_with_mask(template, template_brain_mask(template), np.random.default_rng(5))


@pytest.mark.slow
def test_template_registration_recovers_the_brain_of_a_generated_subject(subject_with_brain):
    image, brain = subject_with_brain
    mask = template_brain_mask_on(image, template_to_image_transform(image))
    truth = sitk.GetArrayViewFromImage(brain) > 0
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.93


@pytest.mark.parametrize("rescale", [lambda a: (a - a.mean()) / a.std(), lambda a: a / a.max() * 3000 - 500],
                         ids=["z-scored", "background -500"])
def test_template_registration_is_not_thrown_off_by_the_intensity_scale(subject_with_brain, rescale):
    """The first pose comes from intensity moments: a background below zero used to pull it metres off."""
    image, brain = subject_with_brain
    rescaled = sitk.GetImageFromArray(rescale(sitk.GetArrayFromImage(image).astype(np.float64)).astype(np.float32))
    rescaled.CopyInformation(image)
    mask = template_brain_mask_on(rescaled, template_to_image_transform(rescaled))
    truth = sitk.GetArrayViewFromImage(brain) > 0
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.93


@pytest.mark.slow
def test_template_foreground_excludes_a_skull_that_otsu_keeps(subject_with_brain):
    """A bright shell touching the brain (skull and scalp) is foreground for Otsu, not for the template."""
    image, brain = subject_with_brain
    brain_array = sitk.GetArrayFromImage(brain) > 0
    spacing_zyx = np.array(image.GetSpacing()[::-1])
    outside = ndimage.distance_transform_edt(~brain_array, sampling=spacing_zyx)
    skull = (outside > 0) & (outside < 10)
    values = sitk.GetArrayFromImage(image)
    values[skull] = np.percentile(values[brain_array], 95)
    head = sitk.GetImageFromArray(values)
    head.CopyInformation(image)
    config = PreprocessConfig(spacing=(2.0, 2.0, 2.0), size=(112, 112, 96))
    otsu = prepare_volume(head, config)
    template = prepare_volume(head, PreprocessConfig(**{**config.__dict__, "foreground": "template"}))
    skull_on_grid = sitk.GetArrayFromImage(otsu.to_input_grid(otsu.foreground.astype(np.uint8), nearest=True))
    template_on_input = sitk.GetArrayFromImage(template.to_input_grid(template.foreground.astype(np.uint8),
                                                                      nearest=True))
    assert skull_on_grid[skull].mean() > 0.8
    assert template_on_input[skull & (outside > 3)].mean() < 0.05  # a registration may be off by a voxel
    assert template_on_input[brain_array].mean() > 0.9


def _body_part(kind: str) -> sitk.Image:
    """A crude abdomen (body, liver, kidney, spine), knee (thigh around a femur), or a head-sized ellipsoid,
    uniform or with a bright rim (a phantom), at 2 mm, with noise."""
    z, y, x = np.mgrid[0:100, 0:128, 0:128].astype(np.float32)
    values = np.zeros(z.shape, np.float32)
    head_shape = ((x - 64) / 36) ** 2 + ((y - 64) / 45) ** 2 + ((z - 50) / 36) ** 2
    if kind in ("ellipsoid", "rimmed ellipsoid"):
        values[head_shape < 1] = 600
        if kind == "rimmed ellipsoid":
            values[(head_shape < 1) & (head_shape > 0.8)] = 900
    elif kind == "abdomen":
        values[((x - 64) / 55) ** 2 + ((y - 64) / 40) ** 2 < 1] = 200
        values[((x - 45) / 15) ** 2 + ((y - 60) / 12) ** 2 + ((z - 50) / 30) ** 2 < 1] = 500
        values[((x - 85) / 8) ** 2 + ((y - 70) / 8) ** 2 + ((z - 50) / 20) ** 2 < 1] = 700
        values[((x - 64) / 5) ** 2 + ((y - 85) / 5) ** 2 < 1] = 900
    else:
        values[((x - 64) / 30) ** 2 + ((y - 64) / 30) ** 2 < 1] = 300
        values[((x - 64) / 12) ** 2 + ((y - 64) / 12) ** 2 < 1] = 800
    values = np.abs(values + np.random.default_rng(0).normal(0, 20, values.shape)).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((2.0, 2.0, 2.0))
    return image


@pytest.mark.parametrize("kind", ["abdomen", "knee"])
def test_a_scan_that_is_no_brain_is_refused_by_the_brain_model(kind):
    """The registration places the template brain on whatever it is given; on an abdomen the brain model used
    to report confident anomalies. Its match with the template (-0.07, knee -0.17) is far from any brain's."""
    with pytest.raises(InputImageError, match=f"{kind}.nii.gz: it does not look like a whole brain MRI"):
        prepare_volume(_body_part(kind), PreprocessConfig(foreground="template"), name=f"{kind}.nii.gz")


@pytest.mark.parametrize("kind", ["abdomen", "knee"])
def test_a_scan_that_is_no_brain_is_refused_by_the_brain_extractor(kind):
    """The default brain mask: the abdomen's 'brain' is unsure (confidence 0.84), the knee's 270 mm long."""
    with pytest.raises(InputImageError, match=f"^{kind}.nii.gz: it does not look like a brain MRI"):
        prepare_volume(_body_part(kind), PreprocessConfig(foreground="brain"), name=f"{kind}.nii.gz")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ellipsoid", "rimmed ellipsoid"])
def test_a_head_shaped_object_without_tissue_contrast_is_refused_by_the_brain_model(kind):
    """A uniform phantom of a head's size and shape passes the registration's brain check (its outline matches a
    head's); inside the brain placed on it, its intensities vary by 1.4 % (with a bright rim, 2.2 %) where brain
    MRIs vary by 14 % or more."""
    with pytest.raises(InputImageError, match=f"{kind}.nii.gz: it shows no brain tissue contrast"):
        prepare_volume(_body_part(kind), PreprocessConfig(foreground="template"), name=f"{kind}.nii.gz")


@pytest.mark.parametrize("stored, message", [
    ("hounsfield", r"it looks like a CT \(7.% of the voxels at air's -1000 HU"),
    ("raw uint16", r"it looks like a CT stored without its rescale, as HU \+ 1024 \(7.% of the voxels at air's 0"),
])
def test_a_ct_of_a_head_is_refused_by_the_brain_model_and_accepted_by_an_own_model(subject_with_brain, stored,
                                                                                    message):
    """A CT of a head (air -1000 HU, brain 20-45 HU, skull 1000 HU) is no T1 MRI; a user's own model may be a
    CT model, trained on such scans. Some exports store it without its rescale (HU + 1024, unsigned): air then
    sits at 0 like an MRI's background, and was taken for one."""
    image, brain = subject_with_brain
    brain_array = sitk.GetArrayFromImage(brain) > 0
    spacing_zyx = np.array(image.GetSpacing()[::-1])
    outside = ndimage.distance_transform_edt(~brain_array, sampling=spacing_zyx)
    values = sitk.GetArrayFromImage(image)
    hounsfield = np.full(values.shape, -1000.0, np.float32)
    hounsfield[brain_array] = 20.0 + 25.0 * values[brain_array] / np.percentile(values[brain_array], 99)
    hounsfield[(outside > 0) & (outside <= 6)] = 1000.0  # skull
    hounsfield[(outside > 6) & (outside <= 10)] = 40.0  # scalp
    ct = sitk.GetImageFromArray(hounsfield if stored == "hounsfield" else (hounsfield + 1024).astype(np.uint16))
    ct.CopyInformation(image)
    with pytest.raises(InputImageError, match="head_ct.nii.gz: " + message):
        prepare_volume(ct, PreprocessConfig(foreground="template"), name="head_ct.nii.gz")
    prepare_volume(ct, PreprocessConfig())  # Otsu foreground, as a user's own model


def test_a_scan_with_its_background_noise_around_zero_padded_with_zeros_is_not_taken_for_a_normalised_one(
        subject_with_brain):
    """A scan whose background noise was brought to zero mean (offset correction, denoising, smoothing, which
    leaves -1e-6), then padded with exact zeros: its corners are above a good share of the voxels, which the
    check for brains z-scored inside their mask used to refuse; its dark tissue is not below them."""
    image, brain = subject_with_brain
    values = sitk.GetArrayFromImage(image)
    centred = sitk.GetImageFromArray(values - np.median(values[sitk.GetArrayViewFromImage(brain) == 0]))
    centred.CopyInformation(image)
    padded = sitk.ConstantPad(centred, [4, 4, 4], [4, 4, 4], 0.0)
    assert (sitk.GetArrayViewFromImage(padded) < 0).mean() > 0.2
    prepared = prepare_volume(padded, PreprocessConfig(foreground="template"))
    on_input = sitk.GetArrayFromImage(prepared.to_input_grid(prepared.foreground.astype(np.uint8), nearest=True))
    inner = (slice(4, -4),) * 3
    assert dice(on_input[inner] > 0, sitk.GetArrayViewFromImage(brain) > 0) > 0.9


def test_detection_config_rejects_an_unknown_score():
    with pytest.raises(Exception, match="score must be"):
        DetectionConfig(score="gradient").validate()


def test_detection_config_rejects_an_even_median_window():
    with pytest.raises(Exception, match="median_size must be odd"):
        DetectionConfig(median_size=4).validate()


@pytest.mark.parametrize("shape", [(11, 17, 23), (2, 3, 2)], ids=["more-slices-than-a-chunk", "smaller-than-window"])
@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_in_plane_median_matches_scipy_edges_included(size, shape):
    volume = np.random.default_rng(size).normal(size=shape).astype(np.float32)
    volume[:2, :2, :2] = 0.25  # ties
    expected = ndimage.median_filter(volume, size=(1, size, size), mode="nearest")
    np.testing.assert_array_equal(in_plane_median(volume, size), expected)


def run_median_network(wires):
    """The value :func:`median_network` leaves on the middle wire, applied to NumPy rows (one row per wire)."""
    for low, high, keep_min, keep_max in median_network(len(wires)):
        a, b = wires[low], wires[high]
        wires[low], wires[high] = (np.minimum(a, b) if keep_min else a), (np.maximum(a, b) if keep_max else b)
    return wires[len(wires) // 2]


def test_median_network_of_nine_values_is_right_for_every_zero_one_input():
    """The 0-1 principle: a comparator network that selects the median of every 0/1 input selects it of any."""
    inputs = (np.arange(2 ** 9)[:, None] >> np.arange(9)) & 1  # all 512 combinations
    np.testing.assert_array_equal(run_median_network(list(inputs.T)), np.sort(inputs, axis=1)[:, 4])


@pytest.mark.parametrize("count", [3, 9, 25, 49])
def test_median_network_leaves_the_middle_rank_in_the_middle_for_any_order(count):
    rng = np.random.default_rng(count)
    values = np.stack([rng.permutation(count) for _ in range(2000)], axis=1).astype(np.float32)  # ranks 0..n-1
    np.testing.assert_array_equal(run_median_network(list(values)), np.full(2000, count // 2))


def test_the_bright_prior_keeps_the_residuals_of_voxels_brighter_than_the_tissue_only():
    """--prior bright: a residual where the input is darker than the brain's typical tissue counts for nothing,
    one where it is brighter counts in proportion to how much brighter (its robust z)."""
    from MedAutoencoderLib.detection.scoring import robust_z, score_volume
    from MedAutoencoderLib.errors import ConfigurationError
    from MedAutoencoderLib.preprocessing.prepare import PreparedVolume

    rng = np.random.default_rng(0)
    image = np.zeros((20, 40, 40), np.float32)
    foreground = np.zeros(image.shape, bool)
    foreground[2:18, 5:35, 5:35] = True
    image[foreground] = 0.5 + 0.02 * rng.standard_normal(int(foreground.sum()))
    image[8:12, 10:14, 10:14] = 0.9  # bright lesion
    image[8:12, 25:29, 25:29] = 0.1  # dark lesion
    reconstruction = np.where(foreground, 0.5, 0.0).astype(np.float32)
    grid = sitk.GetImageFromArray(image)
    prepared = PreparedVolume(image=image, foreground=foreground, grid=grid, source=grid)
    plain = score_volume(prepared, reconstruction, DetectionConfig(median_size=1, mask_erosion_mm=0.0))
    bright = score_volume(prepared, reconstruction, DetectionConfig(median_size=1, mask_erosion_mm=0.0, prior="bright"))
    z = robust_z(image, plain.region)
    assert plain.score_map[10, 27, 27] == pytest.approx(0.4) and plain.score_map[10, 12, 12] == pytest.approx(0.4)
    assert bright.score_map[10, 27, 27] == 0.0
    assert bright.score_map[10, 12, 12] == pytest.approx(0.4 * z[10, 12, 12]) and z[10, 12, 12] > 10
    with pytest.raises(ConfigurationError, match="prior must be"):
        DetectionConfig(prior="dark").validate()


def test_a_model_without_a_calibrated_threshold_runs_with_a_given_one_and_refuses_without(dae_model_path,
                                                                                           lesion_case):
    """A training interrupted before calibration leaves no threshold: a detection needs the user's, and its summary
    says that none was calibrated."""
    from MedAutoencoderLib.api import load_model
    from MedAutoencoderLib.config import DetectOptions
    from MedAutoencoderLib.detection.pipeline import detect_image
    from MedAutoencoderLib.errors import ModelFileError

    model = load_model(dae_model_path, device="cpu")
    model.record.calibration = {}
    summary = detect_image(lesion_case["image"], model, DetectOptions(device="cpu", threshold=0.5)).summary
    assert (summary["threshold"], summary["calibrated_threshold"], summary["threshold_source"]) == (0.5, None, "user")
    with pytest.raises(ModelFileError, match="has no calibrated threshold"):
        detect_image(lesion_case["image"], model, DetectOptions(device="cpu"))


def test_a_scan_reconstructed_worse_than_the_healthy_calibration_scans_gets_its_map_divided_and_a_warning(
        dae_model_path, lesion_case):
    """Detection brings a scan's map to the healthy calibration scans' error level: a model whose healthy scans were
    reconstructed twice as well as this scan divides its map by 2 and says why; at this scan's own level nothing
    changes."""
    from MedAutoencoderLib.api import load_model
    from MedAutoencoderLib.config import DetectOptions
    from MedAutoencoderLib.detection.pipeline import run_detection

    model = load_model(dae_model_path, device="cpu")
    assert model.record.calibration["error_level"] > 0  # training records it with the threshold
    level = run_detection(lesion_case["image"], model, DetectOptions(device="cpu")).scored.error_level
    model.record.calibration["error_level"] = level
    same = run_detection(lesion_case["image"], model, DetectOptions(device="cpu")).result
    model.record.calibration["error_level"] = level / 2
    worse = run_detection(lesion_case["image"], model, DetectOptions(device="cpu")).result
    assert same.summary["error_level"]["map_divided_by"] == 1.0 and "warnings" not in same.summary
    assert worse.summary["error_level"]["map_divided_by"] == pytest.approx(2.0, rel=1e-3)
    assert np.allclose(2 * sitk.GetArrayFromImage(worse.anomaly_map), sitk.GetArrayFromImage(same.anomaly_map),
                       atol=1e-6)
    assert "reconstructed 2.0 times worse" in worse.summary["warnings"][0]
    assert worse.summary["anomalous_volume_ml"] <= same.summary["anomalous_volume_ml"]


def test_each_brain_mask_divides_by_the_healthy_level_its_threshold_was_calibrated_with():
    """The bundled T1 model holds a threshold per brain mask; the registration's mask covers another region, so its
    healthy error level is its own too (a threshold taken over maps divided by one level, applied to maps divided by
    another, would not flag the calibrated share)."""
    from MedAutoencoderLib.api import load_model

    for foreground in ("brain", "template"):
        record = load_model(None, device="cpu", foreground=foreground).record
        levels = record.calibration["error_level_by_foreground"]
        assert record.error_level_for("T1") == record.error_level_for(None) == levels[foreground]
    assert levels["brain"] != levels["template"]
