"""Issue 22's evaluation: a model on the real scans of ../shared/data, per contrast and dataset, beside thresholding.

Scans (never used to make or tune a model): the IXI test heads of scripts/ixi_split.json and the shared healthy
head (T1, healthy); the BraTS glioma case (t1n, t1c, t2w, t2f; whole tumour as truth) and MS patient 26 (T1,
T1POST, T2, FLAIR; expert lesion mask); synthetic lesions in template subjects (5 kinds, as
benchmarks/evaluate_anomalies.py makes them, same seed) with healthy controls. The model identifies each scan's
contrast itself, and what it refuses shows as refused (MedAutoencoderLib.detection.harness).

Thresholding ("bright = abnormal" z for T2/FLAIR, |z| for T1, robust z inside the model's brain region): its
threshold per contrast is the (1 - baseline_fpr) quantile over healthy calibration scans only: for T1 the IXI
calibration heads of the split; for T2 and FLAIR, which have no real healthy scans here, healthy volumes
synthesised by the label-map engine from the calibration subjects' label maps (inside the model's brain region,
or the volume's own brain where the model finds none). No lesion mask touches it.

    PYTHONPATH=$PWD python benchmarks/evaluate_real_scans.py --foreground brain \\
        --json benchmarks/results/real_scans_default_brain.json \\
        --markdown benchmarks/results/real_scans_default_brain.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import SimpleITK as sitk  # noqa: E402

from MedAutoencoderLib.api import load_model  # noqa: E402
from MedAutoencoderLib.config import PRECISIONS, DetectOptions  # noqa: E402
from MedAutoencoderLib.data.synthetic import LESION_KINDS, make_cohort  # noqa: E402
from MedAutoencoderLib.detection.harness import (HarnessConfig, ScanCase, Target, calibrate_baseline,  # noqa: E402
                                                  evaluate_scans, markdown_tables, synthetic_healthy_scan)
from MedAutoencoderLib.runtime.allocator import keep_freed_memory_for_reuse  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
IXI_TEST = "IXI test heads (held-out split)"
HEALTHY_HEAD = "healthy head with skull (chris_t1)"
BRATS = {"t1n": "T1", "t1c": "T1", "t2w": "T2", "t2f": "FLAIR"}
MS = {"T1": "T1", "T1POST": "T1", "T2": "T2", "FLAIR": "FLAIR"}
SYNTHETIC = "synthetic lesions in template subjects + healthy controls"

#: Issue 22 section 3, per row.
TARGETS: Dict[str, List[Target]] = {
    IXI_TEST: [Target("healthy_flagged_median", 0.001, at_most=True),
               Target("healthy_flagged_max", 0.005, at_most=True)],
    HEALTHY_HEAD: [Target("healthy_flagged_median", 0.001, at_most=True),
                   Target("healthy_flagged_max", 0.005, at_most=True)],
    "BraTS glioma t1n": [Target("average_precision", 0.5), Target("dice_at_threshold", 0.45)],
    "BraTS glioma t2f": [Target("flagged_outside_lesion", 0.005, at_most=True), Target("average_precision", 0.9),
                         Target("dice_at_threshold", 0.7)],
    "BraTS glioma t2w": [Target("flagged_outside_lesion", 0.005, at_most=True),
                         Target("average_precision", "baseline"), Target("dice_at_threshold", "baseline")],
    "MS patient 26 FLAIR": [Target("flagged_outside_lesion", 0.005, at_most=True), Target("average_precision", 0.35),
                            Target("dice_at_threshold", 0.35)],
    "MS patient 26 T2": [Target("flagged_outside_lesion", 0.005, at_most=True),
                         Target("average_precision", "baseline"), Target("dice_at_threshold", "baseline")],
    SYNTHETIC: [Target("average_precision", 0.66), Target("dice_at_threshold", 0.54)],
}


def real_cases(data: Path, split: dict, ixi_limit: int = 0) -> List[ScanCase]:
    """The healthy heads first, then the lesion scans of each dataset."""
    ixi = split["test"][:ixi_limit] if ixi_limit else split["test"]
    cases = [ScanCase(data / "ixi_t1_2mm" / "t1" / f"{s}_T1.nii.gz", "IXI", "T1", name=s, group=IXI_TEST) for s in ixi]
    cases.append(ScanCase(data / "healthy_t1_head" / "chris_t1.nii.gz", "healthy head", "T1", group=HEALTHY_HEAD))
    brats = data / "brats_glioma_case"
    cases += [ScanCase(brats / f"{n}.nii.gz", "BraTS glioma", c, truth=brats / "tumor_segmentation.nii.gz", name=n,
                       group=f"BraTS glioma {n}") for n, c in BRATS.items()]
    ms = data / "ms_lesion_patient26"
    cases += [ScanCase(ms / f"{n}.nii.gz", "MS patient 26", c, truth=ms / "lesion_mask.nii.gz", name=n,
                       group=f"MS patient 26 {n}") for n, c in MS.items()]
    return cases


def synthetic_cases(folder: Path, per_kind: int, healthy: int, seed: int) -> List[ScanCase]:
    """Lesioned template subjects, ``per_kind`` of each kind, and healthy controls (benchmarks/evaluate_anomalies.py's
    cohort for the same seed)."""
    cases = []
    for k, kind in enumerate(LESION_KINDS):
        for path in make_cohort(folder / kind, per_kind, seed + 1000 * k, lesioned=True, kinds=(kind,)):
            truth = path.with_name(path.name.replace(".nii.gz", "_mask.nii.gz"))
            cases.append(ScanCase(path, "synthetic", "T1", truth=truth, name=f"{kind}_{path.name.split('.')[0]}",
                                  group=SYNTHETIC))
    cases += [ScanCase(p, "synthetic", "T1", name=f"control_{p.name.split('.')[0]}", group=SYNTHETIC)
              for p in make_cohort(folder / "healthy", healthy, seed + 99)]
    return cases


def calibration_cases(data: Path, split: dict, folder: Path, contrasts: Sequence[str], synthetic: int,
                      ixi_limit: int = 0) -> List[ScanCase]:
    """Healthy scans for the baseline's thresholds: the IXI calibration heads (T1) and, for each other contrast,
    ``synthetic`` volumes synthesised from the calibration subjects' label maps."""
    from MedAutoencoderLib.synthesis.sources import prepare_ixi

    subjects = split["calibration"][:ixi_limit] if ixi_limit else split["calibration"]
    cases = [ScanCase(data / "ixi_t1_2mm" / "t1" / f"{s}_T1.nii.gz", "IXI calibration", "T1", name=s) for s in subjects]
    others = [c for c in contrasts if c != "T1"]
    for i in range(synthetic if others else 0):
        subject = split["calibration"][i % len(split["calibration"])]
        label_map = prepare_ixi(subject, str(data))
        for contrast in others:
            path = folder / f"synthetic_healthy_{contrast}_{i:02d}.nii.gz"
            image, brain = synthetic_healthy_scan(label_map, contrast, seed=1000 + i)
            sitk.WriteImage(image, str(path))
            sitk.WriteImage(brain, str(path).replace(".nii.gz", "_brain.nii.gz"))
            cases.append(ScanCase(path, "synthesised healthy", contrast, name=path.name.split(".")[0],
                                  brain=Path(str(path).replace(".nii.gz", "_brain.nii.gz"))))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file (default: the bundled model)")
    parser.add_argument("--foreground", choices=("brain", "template"), default=None,
                        help="how the model finds the brain (default: as it was trained); name it, so that the "
                             "figures keep their meaning when a default changes")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--split", type=Path, default=REPO / "scripts" / "ixi_split.json")
    parser.add_argument("--synthetic-per-kind", type=int, default=4, help="0: no synthetic lesions")
    parser.add_argument("--synthetic-healthy", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--calibration-synthetic", type=int, default=8,
                        help="synthesised healthy volumes per contrast without real healthy scans (T2, FLAIR)")
    parser.add_argument("--baseline-fpr", type=float, default=0.001)
    parser.add_argument("--ixi-limit", type=int, default=0, help="only the first N IXI test and calibration heads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--json", type=Path, required=True, help="the report (with --from-json: read from here)")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--from-json", action="store_true", help="only write the tables of an existing report")
    args = parser.parse_args()
    if args.from_json:
        table = markdown_tables(json.loads(args.json.read_text()), TARGETS)
        if args.markdown:
            args.markdown.write_text(table)
        print(table)
        return
    for out in (args.json, args.markdown):
        if out is not None and out.exists():
            parser.error(f"{out} exists; choose another name")

    start = time.time()
    split = json.loads(args.split.read_text())
    model = load_model(args.model, device=args.device, foreground=args.foreground)
    config = HarnessConfig(baseline_fpr=args.baseline_fpr,
                           detect=DetectOptions(device=args.device, precision=args.precision))
    report_progress = lambda event: print(f"[{time.time() - start:7.1f} s] {event.get('message', '')}",  # noqa: E731
                                          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = real_cases(args.data, split, args.ixi_limit)
        if args.synthetic_per_kind:
            cases += synthetic_cases(folder / "synthetic", args.synthetic_per_kind, args.synthetic_healthy, args.seed)
        contrasts = sorted({c.contrast for c in cases})
        calibration = calibration_cases(args.data, split, folder, contrasts, args.calibration_synthetic,
                                        args.ixi_limit)
        baseline = calibrate_baseline(calibration, model, config, progress=report_progress)
        report = evaluate_scans(cases, model, baseline, config, progress=report_progress)
    report["settings"] = {"foreground_asked": args.foreground, "seed": args.seed,
                          "synthetic_per_kind": args.synthetic_per_kind, "synthetic_healthy": args.synthetic_healthy,
                          "calibration_synthetic": args.calibration_synthetic, "baseline_fpr": args.baseline_fpr,
                          "ixi_limit": args.ixi_limit, "seconds": round(time.time() - start, 1),
                          "load_average": os.getloadavg()}
    args.json.write_text(json.dumps(report, indent=2))
    table = markdown_tables(report, TARGETS)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)


if __name__ == "__main__":
    keep_freed_memory_for_reuse()  # the script owns its process, as the command line does
    main()
