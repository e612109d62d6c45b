"""The evaluation harness (MedAutoencoderLib.detection.harness): the bundled model and the thresholding baseline
on small real scans, per contrast, with refusals shown as refusals and a baseline threshold set on healthy scans.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedAutoencoderLib.api import load_model
from MedAutoencoderLib.detection.harness import (
    HarnessConfig,
    ScanCase,
    Target,
    calibrate_baseline,
    describe_target,
    evaluate_scans,
    intensity_baseline,
    markdown_tables,
    synthetic_healthy_scan,
)
from MedAutoencoderLib.errors import ConfigurationError
from MedAutoencoderLib.io.loaded_model import CONTRAST_MODELS, DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SPLIT = json.loads((REPO / "scripts" / "ixi_split.json").read_text())
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside this checkout")


def test_the_baseline_reads_bright_as_abnormal_for_flair_and_bright_or_dark_for_t1():
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 5.0, (20, 30, 30)).astype(np.float32)
    image[5:8, 5:8, 5:8] = 160.0  # bright spot
    image[12:15, 20:23, 20:23] = 40.0  # dark spot
    image[:, :, :2] = 1000.0  # outside the region: must not move the normalisation
    region = np.zeros(image.shape, bool)
    region[:, :, 2:] = True
    t1, flair = intensity_baseline(image, region, "T1"), intensity_baseline(image, region, "FLAIR")
    assert t1[6, 6, 6] > 8 and t1[13, 21, 21] > 8  # |z|: both spots
    assert flair[6, 6, 6] > 8 and flair[13, 21, 21] < -8  # z: only the bright one is high
    assert np.all(t1[~region] == 0) and np.all(flair[~region] == 0)
    assert abs(np.median(t1[region & (image < 120) & (image > 80)])) < 1.5  # normalised by the region alone


def test_a_target_states_its_distance_or_that_it_is_met():
    group = {"model": {"scored": 1, "average_precision": 0.378, "healthy_flagged_median": 0.0877},
             "baseline": {"scored": 1, "average_precision": 0.2}}
    assert describe_target(Target("average_precision", 0.5), group) == \
        "AP >= 0.500: **not met** (0.378, short by 0.122)"
    assert "met (0.378)" in describe_target(Target("average_precision", "baseline"), group)
    assert "88x the bound" in describe_target(Target("healthy_flagged_median", 0.001, at_most=True), group)
    assert describe_target(Target("dice_at_threshold", 0.45), group).endswith("not measured")


def test_calibration_scans_with_a_lesion_mask_are_refused(tmp_path):
    model = load_model(device="cpu")
    case = ScanCase(tmp_path / "scan.nii.gz", "d", "T1", truth=tmp_path / "scan_mask.nii.gz")
    with pytest.raises(ConfigurationError, match="healthy scans only"):
        calibrate_baseline([case], model)


def _at_2mm(source: Path, target: Path, labels: bool = False) -> Path:
    """A 2 mm copy of a 1 mm scan (or its label map): a small real volume for a quick model run."""
    image = sitk.ReadImage(str(source))
    size = [int(round(n * s / 2.0)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
                              image.GetOrigin(), (2.0, 2.0, 2.0), image.GetDirection(), 0,
                              image.GetPixelID())
    sitk.WriteImage(resampled, str(target))
    return target


@pytest.fixture(scope="module")
def small_scans(tmp_path_factory):
    """An IXI test head, BraTS t1n and t2f at 2 mm with the tumour mask, an IXI calibration head and a synthesised
    healthy FLAIR with its brain."""
    from MedAutoencoderLib.synthesis.sources import prepare_ixi

    folder = tmp_path_factory.mktemp("harness")
    brats = SHARED_DATA / "brats_glioma_case"
    truth = _at_2mm(brats / "tumor_segmentation.nii.gz", folder / "tumour.nii.gz", labels=True)
    ixi = SHARED_DATA / "ixi_t1_2mm" / "t1"
    cases = [ScanCase(ixi / f"{SPLIT['test'][0]}_T1.nii.gz", "IXI", "T1", name="head", group="IXI test"),
             ScanCase(_at_2mm(brats / "t1n.nii.gz", folder / "t1n.nii.gz"), "BraTS", "T1", truth=truth, name="t1n"),
             ScanCase(_at_2mm(brats / "t2f.nii.gz", folder / "t2f.nii.gz"), "BraTS", "FLAIR", truth=truth, name="t2f")]
    flair, brain = synthetic_healthy_scan(prepare_ixi(SPLIT["calibration"][0], str(SHARED_DATA)), "FLAIR", seed=3)
    sitk.WriteImage(flair, str(folder / "flair.nii.gz"))
    sitk.WriteImage(brain, str(folder / "flair_brain.nii.gz"))
    calibration = [ScanCase(ixi / f"{SPLIT['calibration'][0]}_T1.nii.gz", "IXI", "T1"),
                   ScanCase(folder / "flair.nii.gz", "synthetic", "FLAIR", brain=folder / "flair_brain.nii.gz")]
    return folder, cases, calibration


@pytest.fixture(scope="module")
def evaluated(small_scans):
    folder, cases, calibration = small_scans
    model = load_model(DEFAULT_MODEL, device="cpu", foreground="brain")  # the T1 model alone, named by its file
    baseline = calibrate_baseline(calibration, model)
    return model, baseline, evaluate_scans(cases, model, baseline)


@pytest.mark.slow
@needs_shared
def test_the_report_has_every_row_and_figure_and_a_flair_refused_by_the_t1_model(evaluated):
    model, baseline, report = evaluated
    assert set(baseline) == {"T1", "FLAIR"} and all(b["threshold"] > 0 for b in baseline.values())
    rows = {g["row"]: g for g in report["groups"]}
    assert list(rows) == ["IXI test", "BraTS: t1n", "BraTS: t2f"]
    head = rows["IXI test"]
    assert head["model"]["scored"] == 1 and 0 <= head["model"]["healthy_flagged_median"] < 0.5
    assert 0 <= head["baseline"]["healthy_flagged_median"] < 0.5
    t1n = rows["BraTS: t1n"]
    for method in ("model", "baseline"):
        for key in ("flagged_outside_lesion", "average_precision", "auroc", "dice_at_threshold", "best_dice"):
            assert 0 <= t1n[method][key] <= 1, (method, key)
    assert t1n["model"]["average_precision"] > 0.1  # the glioma is found, not chance (its share of the brain: ~8 %)
    t2f = rows["BraTS: t2f"]
    assert t2f["model"]["scored"] == 0 and "made for T1" in t2f["model"]["not_scored"][0]["why"]
    assert "average_precision" not in t2f["model"] and "dice_at_threshold" not in t2f["model"]
    assert t2f["baseline"]["scored"] == 1 and t2f["baseline"]["average_precision"] > 0.3  # bright oedema
    case = next(c for c in report["cases"] if c["scan"] == "t2f")
    assert case["model"]["status"] == "refused" and case["model"]["refused_at"] == "contrast check"
    json.dumps(report, allow_nan=False)  # machine-readable as it stands

    table = markdown_tables(report, {"BraTS: t1n": [Target("average_precision", 0.5)]})
    lines = table.splitlines()
    assert any(line.startswith("| healthy scans | contrast |") for line in lines)
    header = next(line for line in lines if line.startswith("| lesion scans"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "lesion scans", "contrast", "flagged outside the lesion", "voxel AP", "Dice @ own threshold", "best Dice*",
        "target (issue 22)"]
    t2f_line = next(line for line in lines if line.startswith("| BraTS: t2f"))
    assert t2f_line.count("refused / ") == 4
    assert "AP >= 0.500" in next(line for line in lines if line.startswith("| BraTS: t1n"))
    refusal = next(line for line in lines if line.startswith("- BraTS: t2f, t2f: "))
    assert "made for T1" in refusal and str(SHARED_DATA) not in refusal and "/tmp" not in refusal


@pytest.mark.slow
@needs_shared
def test_the_baseline_threshold_and_mask_do_not_depend_on_the_lesion_labels(evaluated, small_scans, tmp_path):
    model, baseline, report = evaluated
    folder, cases, _ = small_scans
    t2f = cases[2]
    wrong = sitk.ReadImage(str(t2f.truth))  # another "lesion": a box far from the tumour
    array = np.zeros(sitk.GetArrayViewFromImage(wrong).shape, np.uint8)
    array[10:20, 30:50, 30:50] = 1
    other = sitk.GetImageFromArray(array)
    other.CopyInformation(wrong)
    sitk.WriteImage(other, str(tmp_path / "other_mask.nii.gz"))
    relabelled = ScanCase(t2f.image, t2f.dataset, t2f.contrast, truth=tmp_path / "other_mask.nii.gz", name="t2f")
    again = evaluate_scans([relabelled], model, baseline)["cases"][0]["baseline"]
    first = next(c for c in report["cases"] if c["scan"] == "t2f")["baseline"]
    assert again["threshold"] == first["threshold"] == baseline["FLAIR"]["threshold"]
    assert again["flagged_share"] == first["flagged_share"]  # the same voxels flagged
    assert again["dice_at_threshold"] != first["dice_at_threshold"]  # while the figures against the truth move


@pytest.mark.slow
@needs_shared
@pytest.mark.skipif(not CONTRAST_MODELS["FLAIR"].is_file(), reason="the bundled T2/FLAIR/PD model is not built")
def test_the_bundled_set_scores_the_flair_with_its_own_model(evaluated, small_scans):
    _, baseline, _ = evaluated
    _, cases, _ = small_scans
    bundled = load_model(device="cpu")
    report = evaluate_scans([cases[1], cases[2]], bundled, baseline)
    assert report["model"]["bundled_set"]["T1"] == DEFAULT_MODEL.name
    assert report["model"]["bundled_set"]["FLAIR"] == CONTRAST_MODELS["FLAIR"].name
    t1n, t2f = report["cases"]
    assert t1n["model"]["model_used"]["name"] == DEFAULT_MODEL.stem
    assert t2f["model"]["status"] == "scored" and t2f["model"]["model_used"]["name"] == CONTRAST_MODELS["FLAIR"].stem
    used = bundled.for_contrast(t2f["model"]["contrast_found"]["name"]).record
    assert t2f["model"]["model_used"]["threshold"] == used.threshold_for(t2f["model"]["contrast_found"]["name"])
    row = next(g for g in report["groups"] if g["row"] == t2f["row"])
    assert row["model"]["average_precision"] > 0.3  # the bright oedema is found, not chance (~8 % of the brain)
