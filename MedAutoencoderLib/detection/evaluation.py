"""Evaluating a model on volumes with ground-truth anomaly masks, beside an intensity baseline.

Reported (pooled over all voxels of all cases, inside the scored foreground, as in MOOD and Baur et al.):
voxel average precision and AUROC, Dice at the model's own healthy-calibrated threshold (what a user gets),
best-achievable Dice over one global threshold (chosen with the test labels, on the raw map: no small
components are removed, so it is no upper bound of the Dice at the own threshold), share of voxels flagged in
healthy controls, sample-level AUROC from the per-volume score, and reconstruction MSE/PSNR/SSIM.
The same voxel numbers are computed for "|robust z-score| of the input" so users see whether the model beats
"bright (or dark) = abnormal".

The voxel-level curves are computed here with vectorised numpy: MONAI's ``compute_roc_auc`` and
``compute_average_precision`` loop over samples in Python, which takes minutes for millions of voxels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import compute_roc_auc
from monai.metrics.regression import compute_ssim_and_cs

from MedAutoencoderLib.config import DetectOptions
from MedAutoencoderLib.detection.scoring import ScoredVolume, anomaly_score, robust_z, voxel_volume_ml
from MedAutoencoderLib.errors import InputImageError, detection_out_of_memory_reason, is_out_of_memory
from MedAutoencoderLib.io.volumes import (
    find_volumes,
    inside_grid,
    pair_by_stem,
    physical_points,
    read_image,
    read_mask,
    same_grid,
)
from MedAutoencoderLib.runtime.progress import ProgressCallback, ProgressTracker

_MASK_SUFFIXES = ("", "_mask", "_seg", "_label", "_labels", "_gt", "_lesion", "_segmentation")
_BASELINE_Z = 3.0  # the baseline's fixed threshold: |robust z| above 3


def curve_points(scores: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True/false positives at every distinct threshold (descending) and the thresholds themselves."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    hits = labels[order].astype(np.int64)
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    tp = np.cumsum(hits)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return tp, fp, sorted_scores[last_of_tie]


def voxel_metrics(scores: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """AUROC, average precision and best-achievable Dice (with its threshold) of pooled voxels."""
    labels = labels.astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return {"auroc": float("nan"), "average_precision": float("nan"), "best_dice": float("nan"),
                "best_dice_threshold": float("nan")}
    tp, fp, thresholds = curve_points(scores, labels)
    tpr = np.r_[0.0, tp / positives]
    fpr = np.r_[0.0, fp / negatives]
    precision = tp / (tp + fp)
    recall_steps = np.diff(np.r_[0.0, tp / positives])
    dice = 2 * tp / (tp + fp + positives)
    best = int(np.argmax(dice))
    return {"auroc": float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)), "average_precision": float(np.sum(recall_steps * precision)),
            "best_dice": float(dice[best]), "best_dice_threshold": float(thresholds[best])}


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (nothing to find, nothing found)."""
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(prediction, truth).sum()) / total


def robust_z_baseline(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """|x - median| / (1.4826 MAD) inside ``region``: the "bright/dark = abnormal" intensity baseline."""
    return np.where(region, np.abs(robust_z(image, region)), 0.0).astype(np.float32)


def reconstruction_quality(image: np.ndarray, reconstruction: np.ndarray, region: np.ndarray) -> Dict[str, float]:
    """MSE and PSNR inside the foreground and SSIM of the whole model grid (normalised intensities)."""
    mse = float(np.mean((image[region] - reconstruction[region]) ** 2))
    data_range = float(image[region].max()) or 1.0
    psnr = float(10 * np.log10(data_range ** 2 / mse)) if mse > 0 else float("inf")
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None, None].float()  # noqa: E731
    ssim, _ = compute_ssim_and_cs(as_tensor(reconstruction), as_tensor(image), spatial_dims=3,
                                  kernel_size=[7, 7, 7], kernel_sigma=[1.5, 1.5, 1.5], data_range=data_range)
    return {"mse": mse, "psnr": psnr, "ssim": float(ssim.mean())}


def pair_images_with_masks(images: Sequence[str], masks: Sequence[str]) -> List[Tuple[Path, Path]]:
    """Match each image to the mask named ``<stem>`` + one of the usual suffixes (``_mask``, ``_seg``...),
    preferring a mask in the image's own folder; an ambiguous match is an error, never a silent guess."""
    return pair_by_stem(find_volumes(images), find_volumes(masks),
                        lambda stem, other: any(other == stem + suffix for suffix in _MASK_SUFFIXES), "masks",
                        "no ground-truth mask named {stem}_mask (or _seg, _label...) among the masks")


def mask_on_grid(mask_path: Path, reference: sitk.Image) -> np.ndarray:
    """Ground truth (any label > 0) as a boolean array on ``reference``'s grid. A mask on another grid is
    resampled (nearest neighbour) through physical space: a copy stored flipped or shifted has the image's size
    and spacing but other voxels under each index."""
    mask = read_mask(mask_path)
    if same_grid(mask, reference):
        return sitk.GetArrayViewFromImage(mask) > 0
    resampled = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    truth = sitk.GetArrayViewFromImage(resampled) > 0  # (a view does not keep its image alive: named, it is)
    if not truth.any() and _labels_lie_outside(mask, reference):  # silently a "lesioned" case without lesion
        raise InputImageError(f"{mask_path}: none of its labelled voxels lies on its image's grid (size "
                              f"{reference.GetSize()}, origin {_rounded(reference.GetOrigin())}; the mask's origin "
                              f"is {_rounded(mask.GetOrigin())}): is it the mask of another scan, or is its "
                              "position in the header wrong?")
    return truth


def _labels_lie_outside(mask: sitk.Image, reference: sitk.Image) -> bool:
    """Whether ``mask`` has labelled voxels and none of their centres lies within ``reference``'s extent (a
    lesion smaller than the reference's voxels may vanish in the resampling while lying inside it)."""
    index_zyx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    return index_zyx.size > 0 and not inside_grid(reference, physical_points(mask, index_zyx[:, ::-1])).any()


def _rounded(point: Sequence[float]) -> Tuple[float, ...]:
    return tuple(round(float(v), 1) for v in point)


def finite_or_none(value: Any) -> Any:
    """``value`` (plain data) with NaN and infinite numbers as None: JSON has no NaN (Python writes a bare
    ``NaN`` token that strict parsers, JavaScript's among them, refuse), and "not defined" is what they mean
    here (no healthy case, no lesion, a perfect reconstruction's PSNR)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


@dataclass
class PooledScores:
    """Voxel scores and labels collected over cases for one method."""

    scores: List[np.ndarray] = field(default_factory=list)
    labels: List[np.ndarray] = field(default_factory=list)

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        self.scores.append(scores.astype(np.float32))
        self.labels.append(labels)

    def metrics(self) -> Dict[str, float]:
        return voxel_metrics(np.concatenate(self.scores), np.concatenate(self.labels))


def _case_arrays(run, truth: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
    region = sitk.GetArrayFromImage(run.prepared.to_input_grid(run.scored.region, nearest=True)) > 0
    image = sitk.GetArrayFromImage(sitk.Cast(run.prepared.source, sitk.sitkFloat32))
    return {"region": region, "map": sitk.GetArrayFromImage(run.result.anomaly_map),
            "mask": sitk.GetArrayFromImage(run.result.anomaly_mask) > 0,
            "baseline": robust_z_baseline(image, region),
            "truth": truth if truth is not None else np.zeros(region.shape, bool)}


def evaluate_model(model, pairs: Sequence[Tuple[Path, Path]], healthy: Sequence[str] = (),
                   progress: Optional[ProgressCallback] = None, options: Optional[DetectOptions] = None,
                   keep_going: bool = False) -> Dict[str, Any]:
    """Run detection on lesioned (``pairs``) and healthy volumes and compute the report (plain data).

    Args:
        model: the loaded model.
        pairs: (volume, ground-truth mask) of each lesioned case.
        healthy: healthy control volumes (files, folders or globs).
        progress: receives progress events.
        options: detection options.
        keep_going: a volume the model refuses (its checks, its contrast, the machine's memory) is left out and
            listed under the report's ``skipped``, and the others are evaluated, as a cohort of real scans wants;
            without it the first refusal is raised.

    Returns:
        The report: pooled voxel metrics of the model and the baseline, per-case figures, the skipped volumes.

    Raises:
        InputImageError: a volume or mask cannot be used (without ``keep_going``), or every volume was skipped.
    """
    from MedAutoencoderLib.detection.pipeline import run_detection

    healthy_paths = find_volumes(healthy) if healthy else []
    cases = [(image, mask) for image, mask in pairs] + [(p, None) for p in healthy_paths]
    tracker = ProgressTracker(progress, total=len(cases))
    tracker.emit("start", 0, f"evaluating on {len(pairs)} volume(s) with ground truth and {len(healthy_paths)} "
                             "healthy control(s)")
    model_pool, baseline_pool = PooledScores(), PooledScores()
    per_case, sample_labels, skipped = [], [], []
    for i, (image_path, mask_path) in enumerate(cases):
        try:
            image = read_image(image_path)
        except InputImageError as exc:
            skipped.append(_skipped(exc, image_path, mask_path, keep_going, tracker, i))
            continue
        given_truth = mask_on_grid(mask_path, image) if mask_path else None  # a bad mask stops before detection
        if given_truth is not None and not given_truth.any():
            mask_path = None  # an all-zero ground truth: a healthy control (so the report counts it)
        try:
            run = run_detection(image, model, options, name=str(image_path))
        except (InputImageError, MemoryError, RuntimeError) as exc:
            skipped.append(_skipped(exc, image_path, mask_path, keep_going, tracker, i))
            continue
        arrays = _case_arrays(run, given_truth)
        region, truth = arrays["region"], arrays["truth"] & arrays["region"]
        model_pool.add(arrays["map"][region], truth[region])
        baseline_pool.add(arrays["baseline"][region], truth[region])
        case = {"image": image_path.name, "lesioned": mask_path is not None,
                "anomaly_score": run.result.summary["anomaly_score"],
                "baseline_score": anomaly_score(ScoredVolume(score_map=arrays["baseline"], region=region)),
                "flagged_share": float(arrays["mask"][region].mean()),
                "baseline_flagged_share": float((arrays["baseline"][region] > _BASELINE_Z).mean()),
                **reconstruction_quality(run.prepared.image, run.reconstruction, run.prepared.foreground)}
        if mask_path is not None:
            case["dice"] = dice(arrays["mask"] & region, truth)
            case["baseline_dice_z3"] = dice((arrays["baseline"] > _BASELINE_Z) & region, truth)
            case["lesion_ml"] = float(truth.sum() * voxel_volume_ml(image))
        per_case.append(case)
        sample_labels.append(int(mask_path is not None))
        tracker.emit("progress", i + 1, f"{image_path.name}: dice {case.get('dice', float('nan')):.3f}")
    if not per_case:
        raise InputImageError(f"every volume was skipped, nothing to evaluate:"
                              + "".join(f"\n  {case['reason']}" for case in skipped))
    report = summarise(per_case, model_pool, baseline_pool, sample_labels)
    report["skipped"] = skipped
    tracker.emit("done", len(cases), "evaluation finished")
    return report


def _skipped(error: BaseException, image_path: Path, mask_path: Optional[Path], keep_going: bool,
             tracker: ProgressTracker, index: int) -> Dict[str, Any]:
    """The report's entry for a volume left out by :func:`evaluate_model`'s ``keep_going``: one its checks refused
    or the memory could not hold. Anything else, or any refusal without ``keep_going``, is raised."""
    if not keep_going or not (isinstance(error, InputImageError) or is_out_of_memory(error)):
        raise error
    reason = str(error) if isinstance(error, InputImageError) else detection_out_of_memory_reason(image_path)
    tracker.emit("log", index + 1, f"skipped {reason}")
    return {"image": image_path.name, "lesioned": mask_path is not None, "reason": reason}


def sample_auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """AUROC of per-volume scores (lesioned vs healthy); NaN without both kinds of volume."""
    if not 0 < sum(labels) < len(labels):
        return float("nan")
    return float(compute_roc_auc(torch.tensor(list(scores)), torch.tensor(list(labels))))


def summarise(per_case: List[Dict[str, Any]], model_pool: PooledScores, baseline_pool: PooledScores,
              sample_labels: List[int]) -> Dict[str, Any]:
    """Pooled voxel metrics, mean per-case numbers and sample-level AUROC, for the model and the baseline."""
    lesioned = [c for c in per_case if c["lesioned"]]
    healthy = [c for c in per_case if not c["lesioned"]]
    mean = lambda cases, key: float(np.mean([c[key] for c in cases])) if cases else float("nan")  # noqa: E731
    return {
        "model": {**model_pool.metrics(), "dice_at_threshold": mean(lesioned, "dice"),
                  "healthy_flagged_share": mean(healthy, "flagged_share"),
                  "sample_auroc": sample_auroc([c["anomaly_score"] for c in per_case], sample_labels),
                  "reconstruction_psnr": mean(per_case, "psnr"), "reconstruction_ssim": mean(per_case, "ssim")},
        "baseline_robust_z": {**baseline_pool.metrics(), "dice_at_threshold": mean(lesioned, "baseline_dice_z3"),
                              "healthy_flagged_share": mean(healthy, "baseline_flagged_share"),
                              "sample_auroc": sample_auroc([c["baseline_score"] for c in per_case], sample_labels)},
        "n_lesioned": len(lesioned),
        "n_healthy": len(healthy),
        "cases": per_case,
    }


def format_report(report: Dict[str, Any]) -> str:
    """A plain-text table of the model beside the intensity baseline."""
    rows = [("voxel AP", "average_precision"), ("voxel AUROC", "auroc"), ("Dice @ own threshold", "dice_at_threshold"),
            ("best Dice over thresholds (no component filter)", "best_dice"),
            ("healthy voxels flagged", "healthy_flagged_share"), ("sample AUROC", "sample_auroc")]
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{report['n_lesioned']} lesioned, {report['n_healthy']} healthy volume(s)",
             f"{'metric':<{width}}{'model':>10}{'|z| baseline':>14}"]
    for label, key in rows:
        model_value, base_value = (_number(report[method].get(key)) for method in ("model", "baseline_robust_z"))
        lines.append(f"{label:<{width}}{model_value:>10.4f}{base_value:>14.4f}")
    skipped = report.get("skipped", [])
    if skipped:
        lines.append(f"skipped {len(skipped)} volume(s), not in the figures above:")
        lines += [f"  {case['reason']}" for case in skipped]
    return "\n".join(lines)


def _number(value: Optional[float]) -> float:
    """A report's value for the table: None (not defined, see :func:`finite_or_none`) as nan."""
    return float("nan") if value is None else value
