"""Recalibrate the bundled model's threshold with a brain mask, on the healthy calibration subjects it was
calibrated on (scripts/train_default_model.py: 10 synthetic subjects, seed 2026 + 30000, drawn in chunks of 4),
and write the model with the new threshold, keeping the other brain mask's threshold beside it (``calibration
["by_foreground"]``). No evaluation scan is used.

    PYTHONPATH=$PWD python scripts/calibrate_default_model.py --out-dir /tmp/calibration --foreground brain \
        [--write MedAutoencoderLib/models/default_brain_t1.pt]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MedAutoencoderLib.api import calibrate_model  # noqa: E402
from MedAutoencoderLib.data.synthetic import make_cohort  # noqa: E402
from MedAutoencoderLib.io.loaded_model import DEFAULT_MODEL  # noqa: E402


def calibration_subjects(out_dir: Path, n: int = 10, seed: int = 2026 + 30_000, chunk: int = 4) -> list:
    """The calibration subjects of scripts/train_default_model.py (each chunk of 4 its own seed)."""
    return [str(p) for first in range(0, n, chunk)
            for p in make_cohort(out_dir / f"part{first:03d}", min(chunk, n - first), seed + first, overwrite=True)]


def bundled_foreground() -> str:
    """The brain mask the bundled file records."""
    return torch.load(DEFAULT_MODEL, map_location="cpu", weights_only=True)["preprocess"]["foreground"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--foreground", choices=("brain", "template"), default="brain")
    parser.add_argument("--write", type=Path, help="also copy the calibrated model here (replacing it)")
    args = parser.parse_args()
    subjects = calibration_subjects(args.out_dir / "subjects")
    out = args.out_dir / f"default_brain_t1_{args.foreground}.pt"
    calibrate_model(DEFAULT_MODEL, subjects, out, foreground=args.foreground, device="cpu", overwrite=True)
    payload = torch.load(out, map_location="cpu", weights_only=True)
    bundled = torch.load(DEFAULT_MODEL, map_location="cpu", weights_only=True)["calibration"]
    before = bundled.get("by_foreground", {bundled_foreground(): bundled["threshold"]})
    new = payload["calibration"]["threshold"]
    print(f"{args.foreground}: threshold {new:.5f} (bundled {before})", flush=True)
    payload["calibration"]["by_foreground"] = {**before, args.foreground: new}
    levels = bundled.get("error_level_by_foreground", {})  # each mask's threshold beside the level it was set with
    payload["calibration"]["error_level_by_foreground"] = {**levels,
                                                           args.foreground: payload["calibration"]["error_level"]}
    torch.save(payload, out)
    if args.write:
        shutil.copyfile(out, args.write)
        print(f"written to {args.write}: thresholds {payload['calibration']['by_foreground']}")


if __name__ == "__main__":
    main()
