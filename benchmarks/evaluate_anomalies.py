"""Evaluation harness: synthetic lesions on real anatomy, per anomaly type, plus the real labelled scans.

Synthetic part: subjects generated from the bundled MNI template on random grids and orientations, one lesion
each, cycling through every kind of :data:`MedAutoencoderLib.data.synthetic.LESION_KINDS`, plus healthy controls.
Real part (when ``../shared/data`` exists): the BraTS glioma T1 (``t1n``, whole tumour as truth) and the MS
patient T1 (expert lesion mask). Each table has the intensity baseline (|robust z|) beside the model.

    python benchmarks/evaluate_anomalies.py --model MedAutoencoderLib/models/default_brain_t1.pt --per-kind 4
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

from MedAutoencoderLib.api import load_model
from MedAutoencoderLib.config import PRECISIONS, DetectOptions
from MedAutoencoderLib.data.synthetic import LESION_KINDS, make_cohort
from MedAutoencoderLib.detection.evaluation import evaluate_model, format_report
from MedAutoencoderLib.runtime.allocator import keep_freed_memory_for_reuse

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_CASES = {
    "BraTS glioma (T1 native)": ("brats_glioma_case/t1n.nii.gz", "brats_glioma_case/tumor_segmentation.nii.gz"),
    "MS patient 26 (T1)": ("ms_lesion_patient26/T1.nii.gz", "ms_lesion_patient26/lesion_mask.nii.gz"),
}
REAL_HEALTHY = {"healthy T1 head with skull (CC BY-NC, evaluation only)": "healthy_t1_head/chris_t1.nii.gz"}


def synthetic_pairs(folder: Path, per_kind: int, seed: int) -> Dict[str, List[Tuple[Path, Path]]]:
    """``per_kind`` lesioned subjects of each kind, in their own folders so that names never collide."""
    pairs = {}
    for k, kind in enumerate(LESION_KINDS):
        images = make_cohort(folder / kind, per_kind, seed + 1000 * k, lesioned=True, kinds=(kind,))
        pairs[kind] = [(p, p.with_name(p.name.replace(".nii.gz", "_mask.nii.gz"))) for p in images]
    return pairs


def headline(report: dict) -> dict:
    return {"model": report["model"], "baseline_robust_z": report["baseline_robust_z"],
            "n_lesioned": report["n_lesioned"], "n_healthy": report["n_healthy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file (default: the bundled brain T1 model)")
    parser.add_argument("--per-kind", type=int, default=4)
    parser.add_argument("--healthy", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--foreground", choices=("brain", "template"),
                        help="the brain mask (default: brain, the learned extractor; template: the registration)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--json", type=Path, help="write all reports here")
    args = parser.parse_args()

    model = load_model(args.model, device=args.device, foreground=args.foreground)
    print(f"brain mask: {model.record.preprocess.foreground}", flush=True)
    options = DetectOptions(device=args.device, precision=args.precision)
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        controls = [str(p) for p in make_cohort(folder / "healthy", args.healthy, args.seed + 99)]
        by_kind = synthetic_pairs(folder, args.per_kind, args.seed)
        for kind, pairs in by_kind.items():
            reports[f"synthetic: {kind}"] = evaluate_model(model, pairs, [], options=options)
            print(f"\n== synthetic {kind} ==\n{format_report(reports[f'synthetic: {kind}'])}", flush=True)
        everything = [pair for pairs in by_kind.values() for pair in pairs]
        reports["synthetic: all kinds + healthy controls"] = evaluate_model(model, everything, controls, options=options)
        print(f"\n== synthetic, all kinds ==\n{format_report(reports['synthetic: all kinds + healthy controls'])}")
    if SHARED_DATA.is_dir():
        for name, (image, mask) in REAL_CASES.items():
            reports[name] = evaluate_model(model, [(SHARED_DATA / image, SHARED_DATA / mask)], [], options=options)
            print(f"\n== {name} ==\n{format_report(reports[name])}", flush=True)
        for name, image in REAL_HEALTHY.items():
            reports[name] = evaluate_model(model, [], [str(SHARED_DATA / image)], options=options)
            print(f"\n== {name} ==\n{format_report(reports[name])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({k: headline(v) | {"cases": v["cases"]} for k, v in reports.items()},
                                        indent=2))


if __name__ == "__main__":
    keep_freed_memory_for_reuse()  # the script owns its process, as the command line does
    main()
