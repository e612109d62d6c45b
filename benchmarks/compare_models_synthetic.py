"""Several models on the evaluation harness's synthetic set, generated once: its "all kinds + healthy controls" row.

The set is exactly that of ``benchmarks/evaluate_anomalies.py`` with the same ``--per-kind``, ``--healthy`` and
``--seed`` (its own functions make it); each model is scored with its own healthy-calibrated threshold, the
contrast stated as T1. The per-kind Dice is the mean of the cases' Dice at that threshold.

    PYTHONPATH=$PWD python benchmarks/compare_models_synthetic.py bundled=default site=site.pt:brain --json out.json

A model is ``name=path`` (``default``: the bundled model), optionally ``:brain`` or ``:template`` for the foreground.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluate_anomalies import synthetic_pairs  # noqa: E402

from MedAutoencoderLib.api import load_model  # noqa: E402
from MedAutoencoderLib.config import DetectOptions  # noqa: E402
from MedAutoencoderLib.data.synthetic import LESION_KINDS, make_cohort  # noqa: E402
from MedAutoencoderLib.detection.evaluation import evaluate_model, finite_or_none, format_report  # noqa: E402
from MedAutoencoderLib.runtime.allocator import keep_freed_memory_for_reuse  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="name=path[:brain|:template] (path 'default': the bundled model)")
    parser.add_argument("--per-kind", type=int, default=4)
    parser.add_argument("--healthy", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        controls = [str(p) for p in make_cohort(folder / "healthy", args.healthy, args.seed + 99)]
        by_kind = synthetic_pairs(folder, args.per_kind, args.seed)
        everything = [pair for pairs in by_kind.values() for pair in pairs]
        for spec in args.models:
            name, _, rest = spec.partition("=")
            path, _, foreground = rest.partition(":")
            model = load_model(None if path == "default" else path, device="cpu", foreground=foreground or None)
            # T1 by construction: stated, so that the contrast check (evaluated on its own) does not stop a model
            # whose brain mask leaves a subject's contrast ambiguous
            report = evaluate_model(model, everything, controls, options=DetectOptions(device="cpu", contrast="T1"))
            # the cases come in the order of the kinds, per_kind each (their names repeat across kind folders)
            lesioned = [c for c in report["cases"] if c["lesioned"]]
            dice_by_kind = {kind: float(np.mean([c["dice"] for c in lesioned[k * args.per_kind:(k + 1) * args.per_kind]]))
                            for k, kind in enumerate(LESION_KINDS)}
            reports[name] = finite_or_none({"model_file": rest, "model": report["model"],
                                            "baseline_robust_z": report["baseline_robust_z"],
                                            "dice_by_kind": dice_by_kind, "cases": report["cases"]})
            print(f"\n== {name} ({rest}) ==\n{format_report(report)}\nDice by kind: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in dice_by_kind.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    keep_freed_memory_for_reuse()
    main()
