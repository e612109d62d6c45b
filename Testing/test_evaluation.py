"""Metrics and the evaluation report (MedAutoencoderLib.detection.evaluation)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import toy
from sklearn.metrics import average_precision_score, roc_auc_score

from MedAutoencoderLib.detection.evaluation import (
    dice,
    evaluate_model,
    finite_or_none,
    format_report,
    mask_on_grid,
    pair_images_with_masks,
    voxel_metrics,
)
from MedAutoencoderLib.errors import InputImageError


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voxel_metrics_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(3000) < 0.1
    scores = rng.integers(0, 12, 3000).astype(np.float32) + 3 * labels * rng.random(3000)  # many ties
    scores = np.round(scores, 1)
    metrics = voxel_metrics(scores, labels)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert metrics["average_precision"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)


def test_best_dice_on_a_hand_made_example():
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    labels = np.array([1, 0, 1, 0])
    # thresholds 0.9 / 0.8 / 0.7 / 0.1 give Dice 2/3, 1/2, 4/5, 2/3
    metrics = voxel_metrics(scores, labels)
    assert metrics["best_dice"] == pytest.approx(0.8)
    assert metrics["best_dice_threshold"] == pytest.approx(0.7)
    assert metrics["auroc"] == pytest.approx(0.75)


def test_voxel_metrics_without_both_classes_are_nan():
    for labels in (np.zeros(5, bool), np.ones(5, bool)):
        assert all(math.isnan(v) for v in voxel_metrics(np.arange(5.0), labels).values())


def test_dice_edge_cases():
    empty = np.zeros((3, 3), bool)
    full = np.ones((3, 3), bool)
    half = np.zeros((3, 3), bool)
    half[0] = True
    assert dice(empty, empty) == 1.0
    assert dice(full, empty) == 0.0 and dice(empty, full) == 0.0
    assert dice(full, full) == 1.0
    assert dice(half, full) == pytest.approx(2 * 3 / (3 + 9))


def test_pairs_images_with_masks_by_name(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    volume = toy(1)
    for name in ("case_a.nii.gz", "case_b.nrrd"):
        sitk.WriteImage(volume, str(images / name))
    label = sitk.Cast(volume > 50, sitk.sitkUInt8)
    sitk.WriteImage(label, str(masks / "case_a_mask.nii.gz"))
    sitk.WriteImage(label, str(masks / "case_b_seg.nii.gz"))
    sitk.WriteImage(label, str(masks / "case_ab_mask.nii.gz"))  # a near miss that must not be picked
    pairs = pair_images_with_masks([str(images)], [str(masks)])
    assert pairs == [(images / "case_a.nii.gz", masks / "case_a_mask.nii.gz"),
                     (images / "case_b.nrrd", masks / "case_b_seg.nii.gz")]
    sitk.WriteImage(volume, str(images / "case_c.nii.gz"))
    with pytest.raises(InputImageError, match="case_c"):
        pair_images_with_masks([str(images)], [str(masks)])


def test_evaluate_model_report(dae_model, lesion_case):
    pairs = pair_images_with_masks([str(lesion_case["image_path"])], [str(lesion_case["mask_path"])])
    events = []
    report = evaluate_model(dae_model, pairs, [str(lesion_case["healthy_path"])], progress=events.append)
    assert report["n_lesioned"] == 1 and report["n_healthy"] == 1 and len(report["cases"]) == 2
    for method in ("model", "baseline_robust_z"):
        for key in ("auroc", "average_precision", "best_dice", "dice_at_threshold", "healthy_flagged_share"):
            assert math.isfinite(report[method][key]), (method, key)
    assert 0.8 < report["model"]["auroc"] <= 1.0
    assert report["model"]["sample_auroc"] == 1.0  # the lesioned case outscores its healthy twin
    assert math.isfinite(report["model"]["reconstruction_psnr"])
    lesioned, healthy = report["cases"]
    assert lesioned["lesioned"] and not healthy["lesioned"] and lesioned["lesion_ml"] > 0
    assert {"dice", "baseline_dice_z3", "mse", "psnr", "ssim", "flagged_share"} <= set(lesioned)
    assert [e["event"] for e in events] == ["start", "progress", "progress", "done"]
    table = format_report(report)
    assert "model" in table and "|z| baseline" in table and "voxel AUROC" in table


def test_a_mask_stored_flipped_is_compared_in_physical_space(lesion_case, tmp_path):
    flipped = sitk.Flip(lesion_case["truth"], [True, False, False])  # same size and spacing, other origin/direction
    path = tmp_path / "case_000_mask.nii.gz"
    sitk.WriteImage(flipped, str(path))
    assert np.array_equal(mask_on_grid(path, lesion_case["image"]), sitk.GetArrayFromImage(lesion_case["truth"]) > 0)


def test_masks_are_checked_like_images_before_any_detection_but_may_hold_one_value(dae_model, lesion_case,
                                                                                   tmp_path):
    bad_masks = {"flat_mask.nii.gz": (sitk.GetImageFromArray(np.zeros((3, 3), np.uint8)), "2D"),
                 "rgb_mask.nrrd": (sitk.GetImageFromArray(np.zeros((4, 4, 4, 3), np.uint8), isVector=True),
                                   "3 components")}
    for name, (mask, problem) in bad_masks.items():
        sitk.WriteImage(mask, str(tmp_path / name))
        events = []
        with pytest.raises(InputImageError, match=f"{name}: .*{problem}"):
            evaluate_model(dae_model, [(lesion_case["image_path"], tmp_path / name)], progress=events.append)
        assert [e["event"] for e in events] == ["start"]
    healthy_truth = tmp_path / "healthy_mask.nii.gz"
    sitk.WriteImage(lesion_case["truth"] * 0, str(healthy_truth))
    assert not mask_on_grid(healthy_truth, lesion_case["image"]).any()


def test_a_mask_whose_labels_lie_off_the_image_is_refused_and_an_all_zero_one_is_a_healthy_control(
        dae_model, lesion_case, tmp_path):
    """A mask shifted off its image (another scan's, or a wrong origin) gave a "lesioned" case without lesion and
    NaN metrics, silently; an all-zero mask counted as lesioned too."""
    moved = sitk.Image(lesion_case["truth"])
    moved.SetOrigin([1000.0, -239.0, 0.0])
    moved_path = tmp_path / "moved_mask.nii.gz"
    sitk.WriteImage(moved, str(moved_path))
    with pytest.raises(InputImageError, match="moved_mask.nii.gz: none of its labelled voxels lies on its image"):
        mask_on_grid(moved_path, lesion_case["image"])
    fine = sitk.Image([4 * n for n in lesion_case["image"].GetSize()], sitk.sitkUInt8)  # a quarter of each voxel
    fine.SetSpacing([s / 4 for s in lesion_case["image"].GetSpacing()])
    fine.SetDirection(lesion_case["image"].GetDirection())
    fine.SetOrigin(lesion_case["image"].TransformContinuousIndexToPhysicalPoint([-0.375] * 3))
    fine[41, 41, 41] = 1  # one fine voxel between the image's voxel centres: lost in the resampling, yet inside
    fine_path = tmp_path / "fine_mask.nii.gz"
    sitk.WriteImage(fine, str(fine_path))
    assert not mask_on_grid(fine_path, lesion_case["image"]).any()  # not refused as another scan's mask
    zero_path = tmp_path / "zero_mask.nii.gz"
    sitk.WriteImage(lesion_case["truth"] * 0, str(zero_path))
    report = evaluate_model(dae_model, [(lesion_case["image_path"], zero_path)])
    assert report["n_lesioned"] == 0 and report["n_healthy"] == 1 and not report["cases"][0]["lesioned"]


def test_undefined_report_values_become_json_null():
    report = {"model": {"auroc": float("nan"), "dice": 0.5}, "cases": [{"psnr": float("inf")}], "n": 1}
    assert finite_or_none(report) == {"model": {"auroc": None, "dice": 0.5}, "cases": [{"psnr": None}], "n": 1}
    table = format_report({"n_lesioned": 0, "n_healthy": 1, "model": {"auroc": None},
                           "baseline_robust_z": {"auroc": None}})
    assert "nan" in next(line for line in table.splitlines() if line.startswith("voxel AUROC"))


def test_the_threshold_sweep_row_says_it_removes_no_components():
    # the model's own mask drops small components, the sweep does not: its Dice can be the lower one
    methods = {"best_dice": 0.40, "dice_at_threshold": 0.47}
    report = {"n_lesioned": 1, "n_healthy": 0, "model": methods, "baseline_robust_z": methods}
    sweep_row = next(line for line in format_report(report).splitlines() if line.split()[-1] == "0.4000")
    assert sweep_row.startswith("best Dice over thresholds (no component filter)")
    assert "upper bound" not in format_report(report)
