"""The bundled default model and the brain extraction on real labelled scans from ``../shared/data``.

These scans may not ship with the product (licences), so the tests skip in a user's clone where ``../shared``
is absent; CI checks the project out beside ``shared/`` and runs them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedAutoencoderLib.api import load_model, run_detection
from MedAutoencoderLib.brain import registration as brain_mask
from MedAutoencoderLib.brain.registration import template_brain_mask_on, template_to_image_transform
from MedAutoencoderLib.data.synthetic import tilted_copy
from MedAutoencoderLib.detection.evaluation import dice, voxel_metrics
from MedAutoencoderLib.errors import InputImageError
from MedAutoencoderLib.io.volumes import read_image
from MedAutoencoderLib.preprocessing.prepare import otsu_foreground

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# real scans, read and registered to the template: seconds each
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside this checkout")]


@pytest.fixture(scope="module")
def head() -> sitk.Image:
    """The real healthy T1 head with skull, read once for the tests of this module."""
    return read_image(SHARED_DATA / "healthy_t1_head" / "chris_t1.nii.gz")


@pytest.fixture(scope="module")
def head_brain(head) -> np.ndarray:
    """The head's brain mask from the registration with the default seed, computed once."""
    return template_brain_mask_on(head, template_to_image_transform(head))


def test_brain_mask_of_a_head_with_skull_is_brain_sized_and_leaves_the_scalp_out(head, head_brain):
    brain = head_brain
    volume_ml = brain.sum() * np.prod(head.GetSpacing()) / 1000
    assert 1000 < volume_ml < 1700
    head_mask = otsu_foreground(head)  # the whole head, holes filled per slice
    inner = sitk.BinaryErode(head_mask, [int(round(6 / s)) for s in head.GetSpacing()])
    scalp = sitk.GetArrayViewFromImage(head_mask).astype(bool) & ~sitk.GetArrayViewFromImage(inner).astype(bool)
    # the outer 6 mm of the head (scalp, skull) is not brain; measured 1-2 % (registration is multi-threaded,
    # so its last digits vary between runs)
    assert brain[scalp].mean() < 0.05


def test_brain_mask_matches_a_skull_stripped_scan():
    scan = read_image(SHARED_DATA / "ms_lesion_patient26" / "T1.nii.gz")
    brain = template_brain_mask_on(scan, template_to_image_transform(scan))
    stripped = sitk.GetArrayViewFromImage(scan) > 0
    assert dice(brain, stripped) > 0.9


def test_a_scan_showing_only_the_top_of_the_brain_is_refused(head):
    """The head's top 60 % of slices: the registration grew the template brain by a third onto what is there
    (mask 1.4 l where 1.0 l of brain is in view), and a third of the brain lies outside the field of view
    (measured 32-33 %; a quarter is accepted)."""
    top = head[:, :, int(0.4 * head.GetSize()[2]):]
    with pytest.raises(InputImageError, match="covers only part of the brain: .*, 3.% of the brain lies outside"):
        template_to_image_transform(top)


def test_a_scan_without_its_lowest_slices_keeps_its_brain_mask(head, head_brain):
    """Cut by a fifth of its slices (a limited clinical coverage), the head is accepted with the same mask."""
    cut = int(0.2 * head.GetSize()[2])
    upper = head[:, :, cut:]
    on_upper = template_brain_mask_on(upper, template_to_image_transform(upper))
    assert dice(head_brain[cut:], on_upper) > 0.95  # (z, y, x) arrays


def test_a_head_mri_stored_with_its_background_at_minus_1024_is_not_taken_for_a_ct(head):
    """Some converters store MRI with an offset; its background then sits where a CT's air does, but its
    tissue spreads over the whole range instead of gathering near 0 HU (refused as a CT before: 50 % of the
    voxels near -1000, 13 % near 0)."""
    from MedAutoencoderLib.config import PreprocessConfig
    from MedAutoencoderLib.preprocessing.prepare import prepare_volume

    offset = sitk.Cast(head, sitk.sitkFloat32) * 10.0 - 1024.0
    prepared = prepare_volume(offset, PreprocessConfig(foreground="template"), name="offset.nii.gz")
    assert prepared.foreground.sum() * np.prod(prepared.grid.GetSpacing()) / 1000 > 1000  # a brain, in mL


@pytest.mark.parametrize("scan", ["healthy_t1_head/chris_t1", "brats_glioma_case/t1n", "brats_glioma_case/t1c",
                                  "brats_glioma_case/t2w", "brats_glioma_case/t2f", "ms_lesion_patient26/T1",
                                  "ms_lesion_patient26/T1POST", "ms_lesion_patient26/T2",
                                  "ms_lesion_patient26/FLAIR"])
def test_no_mri_scaled_to_any_intensity_is_taken_for_a_ct_stored_without_its_rescale(scan):
    """A CT stored as HU + 1024 has its air at 0 like an MRI's background, so an MRI whose tissue happens to lie
    near 1024 must not be refused: each real scan is scaled so that each of its tissue's percentiles (2-98) in
    turn lies at 1024 (its soft-tissue share then reaches up to 48 %, but never with a skull)."""
    from MedAutoencoderLib.preprocessing.prepare import _require_not_ct

    values = sitk.GetArrayFromImage(read_image(SHARED_DATA / f"{scan}.nii.gz")).astype(np.float32)
    tissue = values[values > np.percentile(values, 1)]
    for percentile in range(2, 100, 2):
        _require_not_ct(values * np.float32(1024.0 / np.percentile(tissue, percentile)))


def test_a_t2_scan_is_not_taken_for_a_phantom_by_a_z_scored_brain_model():
    """The tissue-contrast check is measured above the background, not on the normalised intensities: z-scored
    inside the brain, a T2's median is below 0 (-0.3) and the check called it 0 % contrast."""
    from MedAutoencoderLib.config import PreprocessConfig
    from MedAutoencoderLib.preprocessing.prepare import prepare_volume

    scan = read_image(SHARED_DATA / "brats_glioma_case" / "t2w.nii.gz")
    prepared = prepare_volume(scan, PreprocessConfig(foreground="template", normalization="zscore"))
    assert np.median(prepared.image[prepared.foreground]) < 0


@pytest.fixture(scope="module")
def default_model():
    return load_model(None, device="cpu")


def _glioma_dice_at_the_undivided_threshold(model, image, truth):
    """The glioma scan is another site's: detection says it is out of the model's domain and divides its map; a user
    who lowers the threshold by that factor (the Results slider) finds the tumour."""
    from MedAutoencoderLib.config import DetectOptions

    run = run_detection(image, model)
    level = run.result.summary["error_level"]
    assert level["out_of_domain"] and level["map_divided_by"] > 1.5  # measured 2.09 (extractor mask)
    assert "times worse than the healthy scans" in run.result.summary["warnings"][0]
    lowered = run_detection(image, model, DetectOptions(threshold=run.result.summary["threshold"] /
                                                        level["map_divided_by"]))
    return run, dice(sitk.GetArrayFromImage(lowered.result.anomaly_mask) > 0, truth)


def test_default_model_finds_the_glioma_on_native_t1(default_model):
    image = read_image(SHARED_DATA / "brats_glioma_case" / "t1n.nii.gz")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(SHARED_DATA / "brats_glioma_case" /
                                                      "tumor_segmentation.nii.gz"))) > 0
    run, lowered_dice = _glioma_dice_at_the_undivided_threshold(default_model, image, truth)
    region = sitk.GetArrayFromImage(run.prepared.to_input_grid(run.scored.region, nearest=True)) > 0
    metrics = voxel_metrics(sitk.GetArrayFromImage(run.result.anomaly_map)[region], truth[region])
    assert metrics["auroc"] > 0.7 and metrics["average_precision"] > 0.35  # measured AP 0.45: docs/evaluation.md
    assert lowered_dice > 0.25
    assert run.result.anomaly_mask.GetSize() == image.GetSize()
    assert run.result.anomaly_mask.GetDirection() == image.GetDirection()


def test_default_model_with_the_registration_keeps_its_glioma_figures():
    """--foreground template: the registration's mask with the threshold calibrated with it (0.132, on the IXI
    calibration heads the registration takes)."""
    model = load_model(None, device="cpu", foreground="template")
    assert model.record.threshold == model.record.calibration["by_foreground"]["template"] == pytest.approx(
        0.1316, abs=2e-4)
    image = read_image(SHARED_DATA / "brats_glioma_case" / "t1n.nii.gz")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(SHARED_DATA / "brats_glioma_case" /
                                                      "tumor_segmentation.nii.gz"))) > 0
    assert _glioma_dice_at_the_undivided_threshold(model, image, truth)[1] > 0.3


def test_default_model_flags_nothing_of_a_healthy_head_from_another_scanner(default_model, head):
    run = run_detection(head, default_model)
    region = sitk.GetArrayFromImage(run.prepared.to_input_grid(run.scored.region, nearest=True)) > 0
    flagged = sitk.GetArrayFromImage(run.result.anomaly_mask)[region].mean()
    # measured 0.00 % (4.4 % before the error level and other scanners' appearances in training; issue 22's bound
    # for healthy T1 is 0.5 %); the summary says the scan is out of the model's domain
    assert flagged < 0.005
    assert run.result.summary["error_level"]["out_of_domain"]


def test_brain_mask_registration_does_not_depend_on_the_metric_sampling(head, head_brain):
    """The metric samples random voxels (seeded); a registration that only works for some seeds would fail on
    some users' scans. On the real head with skull, three seeds must give the same brain mask."""
    others = [template_brain_mask_on(head, template_to_image_transform(head, seed=seed)) for seed in (2, 3)]
    agreement = [dice(head_brain, other) for other in others]
    # measured 0.991-0.996 over 45 registrations; the seed-dependent setting it guards against gave 0.47
    assert min(agreement) > 0.9, agreement


@pytest.mark.parametrize("axis", [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)], ids=["LR", "AP", "SI"])
def test_brain_mask_follows_a_head_tilted_by_ten_degrees(axis, head, head_brain):
    """A head tilted in the scanner is the same voxels with another direction matrix: its brain mask must be the
    same voxels. Starting the registration at the template's own size failed this in about a third of the runs
    (the template brain grew onto the scalp); tilts up to 30 degrees are measured by
    ``benchmarks/registration_tilt.py``."""
    tilted = tilted_copy(head, 10.0, axis)
    assert tilted.GetDirection() != head.GetDirection()
    on_tilted = template_brain_mask_on(tilted, template_to_image_transform(tilted))
    assert dice(head_brain, on_tilted) > 0.95


@pytest.mark.parametrize("axis", [0, 2], ids=["sagittal", "axial"])
def test_brain_mask_of_a_head_scanned_in_thick_slices(axis, head, head_brain):
    """The head averaged into 6 mm slices, as a quick clinical scan: on those slices the registration slid into
    the basin where the template brain grows onto the scalp from every start (brain 2.3 l, a fifth of it
    flagged); on the 2 mm copy interpolated across the slices it places the brain as on the 1 mm scan."""
    factors = [1, 1, 1]
    factors[axis] = int(round(6.0 / head.GetSpacing()[axis]))
    thick = sitk.BinShrink(sitk.Cast(head, sitk.sitkFloat32), factors)
    on_thick = template_brain_mask_on(thick, template_to_image_transform(thick))
    brain = sitk.GetImageFromArray(head_brain.astype(np.uint8))
    brain.CopyInformation(head)
    expected = sitk.GetArrayFromImage(sitk.Resample(brain, thick, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
    assert dice(expected, on_thick) > 0.9  # measured 0.99; grown onto the scalp 0.75-0.76


def test_a_similarity_stage_grown_onto_the_scalp_is_caught_by_the_second_start(head, head_brain, monkeypatch):
    """Started at the template's own size, the similarity stage lands on the scalp of this head tilted by 20
    degrees (scale 1.05, Dice 0.78 without the second start); the second start from 0.7 must find the true pose
    and win on the metric (Mattes MI over the metric region -0.18 against -0.33)."""
    monkeypatch.setattr(brain_mask, "_INITIAL_SCALE", 1.0)
    similarity_scales = []
    register = brain_mask._register

    def register_and_record(scan_levels, transform, seed):
        match = register(scan_levels, transform, seed)
        if isinstance(transform, sitk.Similarity3DTransform):
            similarity_scales.append(transform.GetScale())
        return match

    monkeypatch.setattr(brain_mask, "_register", register_and_record)
    tilted = tilted_copy(head, -20.0, (1.0, 0.0, 0.0))
    on_tilted = template_brain_mask_on(tilted, template_to_image_transform(tilted))
    assert len(similarity_scales) == 2 and similarity_scales[0] > brain_mask._GROWN_SCALE, similarity_scales  # 2nd ran
    assert dice(head_brain, on_tilted) > 0.95
