"""Development-set experiment behind the default threshold rule (target FPR, smallest component kept).

Thresholds come from healthy calibration subjects only (quantiles of their pooled voxel scores); the Dice of each
rule is measured on a development set of synthetic lesions (seeds 555-559, two per kind) that is separate from
the evaluation set of ``evaluate_anomalies.py`` (seeds 7+), so choosing the rule here never sees evaluation labels.

    python benchmarks/choose_threshold_rule.py --healthy calibration_subjects/ --model MedAutoencoderLib/models/default_brain_t1.pt
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.api import load_model, run_detection
from MedAutoencoderLib.data.synthetic import LESION_KINDS, make_cohort
from MedAutoencoderLib.detection.evaluation import dice
from MedAutoencoderLib.detection.scoring import threshold_mask
from MedAutoencoderLib.io.volumes import find_volumes, read_image

TARGET_FPRS = (0.005, 0.002, 0.001, 0.0005, 0.0002)
MIN_COMPONENT_ML = (0.05, 0.2, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--healthy", nargs="+", required=True, help="healthy calibration volumes")
    parser.add_argument("--max-healthy", type=int, default=6)
    args = parser.parse_args()
    model = load_model(args.model, device="cpu")
    healthy = [run_detection(read_image(p), model).scored.values() for p in find_volumes(args.healthy)[:args.max_healthy]]
    pooled = np.concatenate(healthy)
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, kind in enumerate(LESION_KINDS):
            for path in make_cohort(Path(tmp) / kind, 2, 555 + k, lesioned=True, kinds=(kind,)):
                run = run_detection(read_image(path), model)
                truth = sitk.GetArrayFromImage(sitk.ReadImage(str(path).replace(".nii.gz", "_mask.nii.gz"))) > 0
                cases.append((run.result.anomaly_map, truth))
    for fpr in TARGET_FPRS:
        threshold = float(np.quantile(pooled, 1 - fpr))
        for min_ml in MIN_COMPONENT_ML:
            scores = [dice(sitk.GetArrayFromImage(threshold_mask(m, threshold, min_ml)) > 0, t) for m, t in cases]
            print(f"FPR {fpr:<7} threshold {threshold:.4f} min {min_ml} mL: mean Dice {np.mean(scores):.3f}  "
                  + " ".join(f"{d:.2f}" for d in scores), flush=True)


if __name__ == "__main__":
    main()
