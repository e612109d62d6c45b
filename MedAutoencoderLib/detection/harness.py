"""The evaluation harness: a model judged per contrast and per dataset, beside intensity thresholding.

Every scan is run as a user runs it: the model identifies the contrast itself (``contrast="auto"`` unless the
configuration states one) and a scan it refuses (a contrast it is not made for, no brain found) is reported as
refused, never scored. Beside the model, on the same scans and inside the same region (the model's scoring
region: its brain mask less the eroded border, on the scan's own grid), the intensity baseline ("thresholding"):

- score: the robust z-score of the scan's intensity inside that region, (x - median) / (1.4826 MAD), with the
  median and MAD of the scan's own region (no label); "bright = abnormal" (z) for T2, FLAIR and PD, "bright or
  dark = abnormal" (|z|) for T1, where gliomas are dark (native) or dark and bright (post-contrast);
- threshold: per contrast, the value exceeded by ``baseline_fpr`` of the region voxels of healthy calibration
  scans of that contrast, pooled: real healthy heads for T1, synthesised healthy volumes for contrasts without
  real healthy scans. Calibration scans carry no lesion mask (one that does is refused), so the lesion labels
  never touch it. No component filter: plain thresholding.

Figures, each for the model and the baseline: healthy scans: the share of the region flagged (median and max
over scans); lesion scans: the share flagged outside the lesion mask, voxel AP and AUROC, Dice at the own
threshold (the model's calibrated threshold, with its component filter; the baseline's healthy threshold), and
the best Dice over one global threshold (chosen with the labels, on the raw map). A group of several scans (a
dataset's scans of one contrast) pools their region voxels for AP, AUROC and best Dice, pools the voxels outside
the lesions (its healthy controls' whole region included) for the share flagged there, and averages the Dice at
the own threshold over its lesion scans.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.config import DetectOptions
from MedAutoencoderLib.detection.evaluation import dice, finite_or_none, mask_on_grid, voxel_metrics
from MedAutoencoderLib.detection.scoring import robust_z
from MedAutoencoderLib.errors import ConfigurationError, InputImageError
from MedAutoencoderLib.io.loaded_model import LoadedModel, bundled_contrasts
from MedAutoencoderLib.runtime.progress import ProgressCallback, ProgressTracker

#: How the baseline reads intensity per contrast: "bright" (z) or "both" (|z|).
BASELINE_DIRECTIONS = {"T1": "both", "T2": "bright", "FLAIR": "bright", "PD": "bright"}


@dataclass(frozen=True)
class ScanCase:
    """One scan of the evaluation.

    ``contrast`` is the scan's known contrast (T1, T2, FLAIR, PD): it chooses the baseline's direction and
    threshold and labels the table; the model is not told it. ``truth`` is the lesion mask (None: healthy).
    Cases with the same ``group`` (default: dataset and name) are pooled into one row. ``brain``: a known brain
    mask of a calibration scan, its region (eroded as the model's) where the model finds no brain in it."""

    image: Path
    dataset: str
    contrast: str
    truth: Optional[Path] = None
    name: str = ""
    group: str = ""
    brain: Optional[Path] = None

    @property
    def label(self) -> str:
        return self.name or Path(self.image).name.split(".")[0]

    @property
    def row(self) -> str:
        return self.group or f"{self.dataset}: {self.label}"


@dataclass
class HarnessConfig:
    """How scans are run and the baseline is set.

    ``baseline_fpr``: the share of healthy calibration voxels above the baseline's threshold (default 0.1 %, the
    healthy-T1 target of issue 22: the baseline is held to the false-positive budget the model is asked to meet).
    ``detect``: the detection options of every scan (``contrast`` "auto": the model checks the contrast)."""

    baseline_fpr: float = 0.001
    detect: DetectOptions = field(default_factory=DetectOptions)
    # a scan whose contrast the model cannot tell is run again with its contrast stated, as its refusal tells a
    # user to do (--contrast); the case says so ("contrast_stated")
    state_unknown_contrast: bool = True

    def validate(self) -> None:
        if not 0 < self.baseline_fpr < 1:
            raise ConfigurationError(f"baseline_fpr must be between 0 and 1, not {self.baseline_fpr!r}")
        self.detect.validate()


def intensity_baseline(image: np.ndarray, region: np.ndarray, contrast: str) -> np.ndarray:
    """The thresholding baseline's score map: the robust z-score inside ``region`` (0 outside), signed ("bright
    = abnormal") or absolute ("bright or dark") as :data:`BASELINE_DIRECTIONS` says for ``contrast``.

    Args:
        image: the scan's intensities (any shape).
        region: where to score (same shape); its median and MAD normalise the scan.
        contrast: one of :data:`BASELINE_DIRECTIONS`.

    Returns:
        float32 scores of ``image``'s shape.

    Raises:
        ConfigurationError: an unknown contrast.
    """
    if contrast not in BASELINE_DIRECTIONS:
        raise ConfigurationError(f"contrast must be one of {', '.join(BASELINE_DIRECTIONS)}, not {contrast!r}")
    z = robust_z(image, region)
    if BASELINE_DIRECTIONS[contrast] == "both":
        z = np.abs(z)
    return np.where(region, z, 0.0).astype(np.float32)


def synthetic_healthy_scan(label_map: Mapping[str, np.ndarray], contrast: str,
                           seed: int) -> Tuple[sitk.Image, sitk.Image]:
    """A healthy volume of ``contrast`` synthesised from a prepared label map by the label-map engine (field of
    view not cut), on a 2 mm grid in LPS orientation: calibration data for the baseline of a contrast without
    real healthy scans, as issue 22 allows.

    Args:
        label_map: a prepared map (:func:`MedAutoencoderLib.synthesis.sources.prepare_ixi` or ``load_map``).
        contrast: T1, T2, FLAIR or PD.
        seed: the random draws' seed (same seed, same volume).

    Returns:
        The volume (float32, normalised 0-1) and its brain (uint8) on the same grid.
    """
    import torch

    from MedAutoencoderLib.synthesis.engine import SynthesisConfig, synthesize, to_tensors

    config = SynthesisConfig(cut_probability=0.0)
    drawn = synthesize(to_tensors(dict(label_map)), torch.Generator().manual_seed(seed), config,
                       contrast=contrast.lower())
    image = sitk.GetImageFromArray(drawn["image"][0].numpy().astype(np.float32))
    image.SetSpacing([config.spacing_mm] * 3)
    brain = sitk.GetImageFromArray(drawn["brain"].numpy().astype(np.uint8))
    brain.CopyInformation(image)
    return image, brain


@dataclass
class _Scan:
    """A scan read, its region found and (unless refused) the model run: what the figures are computed from."""

    case: ScanCase
    region: Optional[np.ndarray] = None  # input grid; None: the model found no brain region
    image: Optional[np.ndarray] = None
    truth: Optional[np.ndarray] = None  # inside the region
    anomaly_map: Optional[np.ndarray] = None  # None: refused
    anomaly_mask: Optional[np.ndarray] = None
    refusal: str = ""
    refused_at: str = ""
    contrast_found: Optional[Dict[str, Any]] = None
    contrast_stated: bool = False  # run again with the case's contrast stated (HarnessConfig.state_unknown_contrast)
    model_used: Optional[Dict[str, Any]] = None  # the model that ran (the bundled set's, by contrast) and threshold
    voxel_ml: float = 0.0


def _run_scan(case: ScanCase, model: LoadedModel, options: DetectOptions, with_model: bool = True,
              state_unknown: bool = False) -> _Scan:
    """Read ``case``, bring it onto the model grid (its region) and, with ``with_model``, run the model."""
    from MedAutoencoderLib.detection.pipeline import detect_prepared
    from MedAutoencoderLib.detection.scoring import scoring_region
    from MedAutoencoderLib.io.volumes import read_image
    from MedAutoencoderLib.preprocessing.prepare import erode_mask, prepare_volume

    scan = _Scan(case=case)
    image = read_image(case.image)
    truth = mask_on_grid(Path(case.truth), image) if case.truth is not None else None
    scan.voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    try:
        prepared = prepare_volume(image, model.record.preprocess, name=str(case.image))
    except InputImageError as exc:
        scan.refusal, scan.refused_at = str(exc), "brain region"
        if case.brain is not None and not with_model:  # a calibration scan with a known brain
            scan.image = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
            scan.region = erode_mask(mask_on_grid(Path(case.brain), image), model.record.detection.mask_erosion_mm,
                                     image.GetSpacing())
            scan.truth = np.zeros(scan.region.shape, bool)
        return scan
    region = scoring_region(prepared, model.record.detection)
    scan.region = sitk.GetArrayFromImage(prepared.to_input_grid(region, nearest=True)) > 0
    scan.image = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
    scan.truth = (truth & scan.region) if truth is not None else np.zeros(scan.region.shape, bool)
    if not with_model:
        return scan
    try:
        run = detect_prepared(prepared, model, options)
    except InputImageError as exc:
        if not (state_unknown and options.contrast == "auto" and getattr(exc, "contrast", "") is None):
            scan.refusal, scan.refused_at = str(exc), "contrast check"
            return scan
        try:
            run = detect_prepared(prepared, model, replace(options, contrast=case.contrast))
        except InputImageError as stated:
            scan.refusal, scan.refused_at = str(stated), "contrast check"
            return scan
        scan.contrast_stated = True
    scan.anomaly_map = sitk.GetArrayFromImage(run.result.anomaly_map)
    scan.anomaly_mask = sitk.GetArrayFromImage(run.result.anomaly_mask) > 0
    scan.contrast_found = run.result.summary.get("contrast")
    scan.model_used = {"name": run.result.summary.get("model"), "threshold": run.result.summary.get("threshold"),
                       "error_level": run.result.summary.get("error_level")}
    return scan


def calibrate_baseline(cases: Sequence[ScanCase], model: LoadedModel, config: Optional[HarnessConfig] = None,
                       progress: Optional[ProgressCallback] = None) -> Dict[str, Dict[str, Any]]:
    """The baseline's threshold per contrast from healthy calibration scans (the network is not run).

    Args:
        cases: healthy scans (no ``truth``), any mix of contrasts; their region is the model's scoring region.
        model: the model whose region (brain mask, erosion) the baseline shares.
        config: ``baseline_fpr`` sets the quantile.
        progress: optional progress callback.

    Returns:
        Per contrast: "threshold", "scans" (used), "voxels", "target_fpr", "known_brain" (scans whose region is
        their known brain, the model having found none) and "not_used" (scans without a region, and why).

    Raises:
        ConfigurationError: a calibration case has a lesion mask, or none of a contrast's scans has a region.
    """
    config = config or HarnessConfig()
    config.validate()
    labelled = [str(c.image) for c in cases if c.truth is not None]
    if labelled:
        raise ConfigurationError(f"the baseline is calibrated on healthy scans only; these have a lesion mask: "
                                 f"{', '.join(labelled)}")
    tracker = ProgressTracker(progress, total=len(cases))
    values: Dict[str, List[np.ndarray]] = {}
    not_used: Dict[str, List[str]] = {}
    known_brain: Dict[str, int] = {}
    for i, case in enumerate(cases):
        scan = _run_scan(case, model, config.detect, with_model=False)
        if scan.region is None:
            not_used.setdefault(case.contrast, []).append(scan.refusal)
        else:
            known_brain[case.contrast] = known_brain.get(case.contrast, 0) + bool(scan.refusal)
            score = intensity_baseline(scan.image, scan.region, case.contrast)
            values.setdefault(case.contrast, []).append(score[scan.region])
        tracker.emit("progress", i + 1, f"baseline calibration: {case.label}")
    thresholds = {}
    for contrast in sorted({c.contrast for c in cases}):
        if contrast not in values:
            raise ConfigurationError(f"no {contrast} calibration scan had a brain region: "
                                     f"{'; '.join(not_used.get(contrast, []))}")
        pooled = np.concatenate(values[contrast])
        thresholds[contrast] = {"threshold": float(np.quantile(pooled, 1.0 - config.baseline_fpr)),
                                "target_fpr": config.baseline_fpr, "scans": len(values[contrast]),
                                "voxels": int(pooled.size), "known_brain": known_brain.get(contrast, 0),
                                "not_used": not_used.get(contrast, [])}
    return thresholds


def _figures(mask: np.ndarray, scan: _Scan) -> Dict[str, Any]:
    """Per-scan figures of a binary ``mask`` (input grid) inside the scan's region."""
    region, truth = scan.region, scan.truth
    flagged = mask & region
    out: Dict[str, Any] = {"flagged_share": float(flagged.sum() / max(int(region.sum()), 1)),
                           "flagged_ml": float(flagged.sum() * scan.voxel_ml)}
    outside = region & ~truth
    out.update(outside_voxels=int(outside.sum()), flagged_outside_voxels=int((flagged & outside).sum()))
    if scan.case.truth is not None:
        out.update(flagged_outside_lesion=out["flagged_outside_voxels"] / max(out["outside_voxels"], 1),
                   dice_at_threshold=dice(flagged, truth), lesion_ml=float(truth.sum() * scan.voxel_ml))
    return out


@dataclass
class _Pool:
    """Region voxels of one method over a group's scans, for pooled figures."""

    scores: List[np.ndarray] = field(default_factory=list)
    truths: List[np.ndarray] = field(default_factory=list)

    def add(self, scores: np.ndarray, scan: _Scan) -> None:
        self.scores.append(scores[scan.region].astype(np.float32))
        self.truths.append(scan.truth[scan.region])

    def metrics(self) -> Dict[str, float]:
        if not self.scores:
            return {}
        return voxel_metrics(np.concatenate(self.scores), np.concatenate(self.truths))


def evaluate_scans(cases: Sequence[ScanCase], model: LoadedModel, baseline: Mapping[str, Mapping[str, Any]],
                   config: Optional[HarnessConfig] = None,
                   progress: Optional[ProgressCallback] = None) -> Dict[str, Any]:
    """Run the model and the baseline on every case and compute the per-scan and per-group figures.

    Args:
        cases: the scans, healthy and lesioned; cases sharing a :attr:`ScanCase.row` form one group (row).
        model: the model, loaded with the foreground it is to be judged with.
        baseline: the baseline's thresholds per contrast (:func:`calibrate_baseline`); a contrast without one
            gets the baseline's threshold-free figures only (AP, AUROC, best Dice).
        config: detection options and the baseline's calibration rate.
        progress: optional progress callback.

    Returns:
        Plain data (JSON-ready, no NaN): "model" (name, foreground, threshold, contrasts), "baseline" (the
        thresholds), "cases" (per scan) and "groups" (per row, in the order of first appearance).
    """
    from MedAutoencoderLib.detection.pipeline import model_name

    config = config or HarnessConfig()
    config.validate()
    tracker = ProgressTracker(progress, total=len(cases))
    tracker.emit("start", 0, f"evaluating {model_name(model)} on {len(cases)} scan(s)")
    rows: List[str] = []
    for case in cases:
        if case.row not in rows:
            rows.append(case.row)
    pooled_rows = {c.row for c in cases if c.truth is not None}  # rows whose voxels are kept for AP
    per_case: List[Dict[str, Any]] = []
    pools: Dict[str, Tuple[_Pool, _Pool]] = {row: (_Pool(), _Pool()) for row in pooled_rows}
    for i, case in enumerate(cases):
        scan = _run_scan(case, model, config.detect, state_unknown=config.state_unknown_contrast)
        entry: Dict[str, Any] = {"scan": case.label, "row": case.row, "dataset": case.dataset,
                                 "contrast": case.contrast, "image": str(case.image),
                                 "lesioned": case.truth is not None}
        if scan.anomaly_map is None:
            entry["model"] = {"status": "refused", "refused_at": scan.refused_at, "refusal": scan.refusal}
        else:
            entry["model"] = {"status": "scored", "contrast_found": scan.contrast_found, "model_used": scan.model_used,
                              "contrast_stated": scan.contrast_stated,
                              **_figures(scan.anomaly_mask, scan)}
        if scan.region is None:
            entry["baseline"] = {"status": "no region", "reason": "the model found no brain region to score in"}
        else:
            score = intensity_baseline(scan.image, scan.region, case.contrast)
            threshold = baseline.get(case.contrast, {}).get("threshold")
            entry["baseline"] = {"status": "scored", "threshold": threshold,
                                 **(_figures(score > threshold, scan) if threshold is not None else {})}
            if case.row in pools:
                model_pool, baseline_pool = pools[case.row]
                baseline_pool.add(score, scan)
                if scan.anomaly_map is not None:
                    model_pool.add(scan.anomaly_map, scan)
        per_case.append(entry)
        status = "refused" if scan.anomaly_map is None else f"{entry['model']['flagged_share']:.2%} flagged"
        tracker.emit("progress", i + 1, f"{case.row} {case.label}: {status}")
    groups = [_group(row, [c for c in per_case if c["row"] == row], pools.get(row)) for row in rows]
    tracker.emit("done", len(cases), "evaluation finished")
    return finite_or_none({"model": _model_entry(model, config), "baseline": {k: dict(v) for k, v in baseline.items()},
                           "cases": per_case, "groups": groups})


def _model_entry(model: LoadedModel, config: HarnessConfig) -> Dict[str, Any]:
    from MedAutoencoderLib.detection.pipeline import model_name

    record = model.record
    return {"name": model_name(model), "path": str(model.path) if model.path else None,
            "foreground": record.preprocess.foreground, "contrasts": record.contrasts,
            "threshold": record.threshold if config.detect.threshold is None else config.detect.threshold,
            "target_fpr": record.calibration.get("target_fpr"),
            "min_component_ml": record.detection.min_component_ml, "contrast_option": config.detect.contrast,
            **({"bundled_set": {c: model.for_contrast(c).path.name for c in bundled_contrasts()}}
               if model.bundled_set else {})}


def _method_group(cases: List[Dict[str, Any]], method: str, pool: Optional[_Pool]) -> Dict[str, Any]:
    scored = [c for c in cases if c[method]["status"] == "scored"]
    out: Dict[str, Any] = {"scored": len(scored),
                           "not_scored": [{"scan": c["scan"],
                                           "why": c[method].get("refusal") or c[method].get("reason")}
                                          for c in cases if c[method]["status"] != "scored"]}
    healthy = [c[method]["flagged_share"] for c in scored if not c["lesioned"] and "flagged_share" in c[method]]
    if healthy:
        out.update(healthy_scans=len(healthy), healthy_flagged_median=float(np.median(healthy)),
                   healthy_flagged_max=float(np.max(healthy)), healthy_flagged_min=float(np.min(healthy)))
    lesioned = [c[method] for c in scored if c["lesioned"] and "dice_at_threshold" in c[method]]
    if lesioned:  # the share flagged outside the lesions: over every scored scan's non-lesion region, pooled
        thresholded = [c[method] for c in scored if "outside_voxels" in c[method]]
        out.update(lesion_scans=len(lesioned),
                   dice_at_threshold=float(np.mean([c["dice_at_threshold"] for c in lesioned])),
                   flagged_outside_lesion=sum(c["flagged_outside_voxels"] for c in thresholded)
                   / max(sum(c["outside_voxels"] for c in thresholded), 1))
    if pool is not None:
        out.update(pool.metrics())
    return out


def _group(row: str, cases: List[Dict[str, Any]], pools: Optional[Tuple[_Pool, _Pool]]) -> Dict[str, Any]:
    model_pool, baseline_pool = pools if pools is not None else (None, None)
    return {"row": row, "dataset": cases[0]["dataset"], "contrast": cases[0]["contrast"], "scans": len(cases),
            "lesion_scans": sum(c["lesioned"] for c in cases),
            "model": _method_group(cases, "model", model_pool),
            "baseline": _method_group(cases, "baseline", baseline_pool)}


# ----------------------------------------------------------------------------------------------------------
# Targets and the markdown table


@dataclass(frozen=True)
class Target:
    """A goal for one figure of a row: at least (or, ``at_most``, at most) ``bound``, a number or "baseline"
    (the thresholding's figure on the same scans)."""

    metric: str
    bound: Union[float, str]
    at_most: bool = False

    def check(self, group: Mapping[str, Any]) -> Tuple[Optional[float], Optional[float], Optional[bool]]:
        """(the model's value, the bound, met) for ``group``; Nones where the model has no such figure."""
        value = group["model"].get(self.metric)
        bound = group["baseline"].get(self.metric) if self.bound == "baseline" else self.bound
        if value is None or bound is None or (isinstance(value, float) and math.isnan(value)):
            return value, bound, None
        return value, float(bound), bool(value <= bound if self.at_most else value >= bound)


_SHARES = ("healthy_flagged_median", "healthy_flagged_max", "flagged_outside_lesion", "flagged_share")
_NAMES = {"healthy_flagged_median": "median flagged", "healthy_flagged_max": "max flagged",
          "flagged_outside_lesion": "flagged outside lesion", "average_precision": "AP",
          "dice_at_threshold": "Dice", "best_dice": "best Dice", "auroc": "AUROC"}


def _value(metric: str, value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f} %" if metric in _SHARES else f"{value:.3f}"


def describe_target(target: Target, group: Mapping[str, Any]) -> str:
    """'AP >= 0.5: 0.378, short by 0.122', or 'median flagged <= 0.10 %: 8.77 %, 87x over' in words."""
    value, bound, met = target.check(group)
    sign = "<=" if target.at_most else ">="
    what = f"{_NAMES.get(target.metric, target.metric)} {sign} " + \
        ("thresholding" + (f" ({_value(target.metric, bound)})" if bound is not None else "")
         if target.bound == "baseline" else _value(target.metric, bound))
    if group["model"].get("scored", 1) == 0:
        return f"{what}: refused by the model"
    if value is None or bound is None:
        return f"{what}: not measured"
    if met:
        return f"{what}: met ({_value(target.metric, value)})"
    if target.metric in _SHARES:
        gap = f"{value / bound:.0f}x the bound" if bound > 0 else "over"
    else:
        gap = f"short by {bound - value:.3f}"
    return f"{what}: **not met** ({_value(target.metric, value)}, {gap})"


def _pair(group: Mapping[str, Any], metric: str) -> str:
    model, base = group["model"], group["baseline"]
    left = "refused" if model["scored"] == 0 else _value(metric, model.get(metric))
    right = "–" if base["scored"] == 0 else _value(metric, base.get(metric))
    return f"{left} / {right}"


def markdown_tables(report: Mapping[str, Any], targets: Optional[Mapping[str, Sequence[Target]]] = None) -> str:
    """The report as two markdown tables (healthy scans first, then lesion scans), each cell "model /
    thresholding", with the targets' distances, and the refusals listed below."""
    targets = targets or {}
    model = report["model"]
    lines = [f"Model `{model['name']}`, foreground `{model['foreground']}`, threshold "
             f"{_value('threshold', model['threshold'])} (contrast: {model['contrast_option']}). Thresholding: "
             + "; ".join(f"{c} {'|z|' if BASELINE_DIRECTIONS[c] == 'both' else 'z'} > {b['threshold']:.2f} "
                         f"({100 * b['target_fpr']:.2f} % of {b['scans']} healthy scans' brain voxels"
                         + (f", {b['known_brain']} of them inside their own brain" if b.get("known_brain") else "")
                         + ")"
                         for c, b in report["baseline"].items()) + ".", ""]
    if model.get("bundled_set"):
        lines[0] = lines[0].replace(f"Model `{model['name']}`", "Bundled models: " + ", ".join(
            f"{c} `{name}`" for c, name in model["bundled_set"].items()) + " (threshold per model and contrast)")
    healthy = [g for g in report["groups"] if g["lesion_scans"] == 0]
    lesioned = [g for g in report["groups"] if g["lesion_scans"] > 0]
    if healthy:
        lines += ["| healthy scans | contrast | scans (refused by the model) | brain flagged, median (min–max): "
                  "model | thresholding | target (issue 22) |", "|---|---|---|---|---|---|"]
        for g in healthy:
            m, b = g["model"], g["baseline"]
            spread = lambda x: ("refused" if x["scored"] == 0 else  # noqa: E731
                                f"{_value('flagged_share', x.get('healthy_flagged_median'))} "
                                f"({_value('flagged_share', x.get('healthy_flagged_min'))}–"
                                f"{_value('flagged_share', x.get('healthy_flagged_max'))})")
            lines.append(f"| {g['row']} | {g['contrast']} | {g['scans']} ({len(m['not_scored'])}) | {spread(m)} | "
                         f"{spread(b)} | {_targets(g, targets)} |")
        lines.append("")
    if lesioned:
        lines += ["| lesion scans | contrast | flagged outside the lesion | voxel AP | Dice @ own threshold | "
                  "best Dice* | target (issue 22) |", "|---|---|---|---|---|---|---|"]
        for g in lesioned:
            cells = [_pair(g, k) for k in ("flagged_outside_lesion", "average_precision", "dice_at_threshold",
                                           "best_dice")]
            scans = f" ({g['scans']} scans)" if g["scans"] > 1 else ""
            if g["lesion_scans"] < g["scans"]:  # healthy controls among them
                scans = f" ({g['lesion_scans']} lesioned + {g['scans'] - g['lesion_scans']} healthy controls: brain " \
                        f"flagged {_pair(g, 'healthy_flagged_median')}, median)"
            refused = len(g["model"]["not_scored"])
            if 0 < refused < g["scans"]:  # the model's figures cover the others only
                scans += f" (**{refused} refused** by the model: its figures without them)"
            lines.append(f"| {g['row']}{scans}{_how_run(report, g['row'])} | {g['contrast']} | {' | '.join(cells)} | "
                         f"{_targets(g, targets)} |")
        lines.append("")
    refusals = [(g["row"], r) for g in report["groups"] for r in g["model"]["not_scored"]]
    if refusals:
        lines.append("Refused by the model:")
        lines += [f"- {row}, {r['scan']}: {_short(r['why'])}" for row, r in refusals]
    return "\n".join(lines) + "\n"


def _how_run(report: Mapping[str, Any], row: str) -> str:
    """How the model ran a row's scans where that is not plain: read as another contrast, or its contrast stated
    after the model could not tell it."""
    notes = []
    for case in (c for c in report["cases"] if c["row"] == row and c["model"]["status"] == "scored"):
        contrast = case["model"].get("contrast_found") or {}
        found = contrast.get("name")
        if case["model"].get("contrast_stated"):
            notes.append(f"contrast not told by the model: run as {found}, stated")
        elif found and found != case["contrast"]:
            notes.append(f"read as {found}")
        elif not found and contrast.get("candidates"):
            notes.append(f"read as one of {', '.join(contrast['candidates'])}")
    return f" ({'; '.join(sorted(set(notes)))})" if notes else ""


def _targets(group: Mapping[str, Any], targets: Mapping[str, Sequence[Target]]) -> str:
    """The targets' cell of a row: each with its distance, or, where the model refused every scan of the row,
    the targets it does not reach by refusing."""
    wanted = targets.get(group["row"], [])
    if not wanted:
        return "–"
    if group["model"]["scored"] == 0:
        bounds = "; ".join(describe_target(t, group).rsplit(":", 1)[0] for t in wanted)
        return f"**not met: refused by the model** ({bounds})"
    return "; ".join(describe_target(t, group) for t in wanted)


def _short(message: Optional[str]) -> str:
    """A refusal without the file's path (the row names the scan)."""
    text = message or ""
    return text.split(": ", 1)[1] if text.startswith("/") and ": " in text else text
