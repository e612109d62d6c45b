"""Train the bundled default brain T1 model (reproducible, seeded) and evaluate it on synthetic lesions.

Healthy training data: subjects generated from the bundled MNI ICBM152 2009a template with anatomical, contrast
and acquisition variation (:mod:`MedAutoencoderLib.data.synthetic`); evaluation data: other generated subjects
with synthetic lesions of every kind, plus healthy controls. Writes the model, its evaluation report and
the timing of detection into ``--out-dir``.

    python scripts/train_default_model.py --out-dir build/default_model --subjects 48 --epochs 40 --workers 8
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.api import calibrate_model, detect_image, load_model, train_model
from MedAutoencoderLib.config import DetectionConfig, ModelConfig, PreprocessConfig, TrainConfig
from MedAutoencoderLib.data.synthetic import make_cohort
from MedAutoencoderLib.detection.evaluation import evaluate_model, format_report
from MedAutoencoderLib.runtime.allocator import keep_freed_memory_for_reuse


def _cohort(job: tuple) -> list:
    out_dir, first, count, seed, lesioned = job
    return [str(p) for p in make_cohort(out_dir / f"part{first:03d}", count, seed + first, lesioned=lesioned)]


def generate(out_dir: Path, n: int, seed: int, lesioned: bool, workers: int) -> list:
    """``n`` subjects in parallel chunks (each chunk its own seed, so the result does not depend on workers)."""
    chunk = 4
    jobs = [(out_dir, first, min(chunk, n - first), seed, lesioned) for first in range(0, n, chunk)]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        return [p for part in pool.map(_cohort, jobs) for p in part]


def detect_seconds(model_path: Path, device: str, repeats: int) -> dict:
    """Median detect time (preprocess -> network -> post-process) on a 256x256x180, 1 mm volume."""
    model = load_model(model_path, device=device)
    template = sitk.ReadImage(str(Path(__file__).resolve().parents[1] / "MedAutoencoderLib" / "data" /
                                  "mni_icbm152_t1_09a.nii.gz"), sitk.sitkFloat32)
    reference = sitk.Image([256, 256, 180], sitk.sitkFloat32)
    centre = np.array(template.TransformContinuousIndexToPhysicalPoint([s / 2 for s in template.GetSize()]))
    reference.SetOrigin((centre - np.array([128, 128, 90])).tolist())
    volume = sitk.Resample(template, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    detect_image(volume, model)  # warm-up (cuDNN autotuning, allocations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        detect_image(volume, model)
        times.append(time.perf_counter() - start)
    return {"device": str(model.device), "median_s": statistics.median(times), "runs": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=48, help="healthy training + validation subjects")
    parser.add_argument("--calibration-subjects", type=int, default=10,
                        help="new healthy subjects on which the released threshold is calibrated")
    parser.add_argument("--eval-lesioned", type=int, default=20)
    parser.add_argument("--eval-healthy", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--base-channels", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--timing-repeats", type=int, default=5)
    args = parser.parse_args()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    healthy = generate(args.out_dir / "healthy", args.subjects, args.seed, False, args.workers)
    lesioned = generate(args.out_dir / "test_lesioned", args.eval_lesioned, args.seed + 10_000, True, args.workers)
    controls = generate(args.out_dir / "test_healthy", args.eval_healthy, args.seed + 20_000, False, args.workers)
    calibration = generate(args.out_dir / "calibration", args.calibration_subjects, args.seed + 30_000, False,
                           args.workers)
    print(f"generated data in {time.time() - started:.0f} s", flush=True)

    base = args.base_channels
    config = TrainConfig(
        data=healthy, out=str(args.out_dir / "default_brain_t1.pt"), overwrite=True,
        model=ModelConfig(name="dae", spatial_dims=2, channels=(base, 2 * base, 4 * base, 8 * base),
                          noise="coarse", noise_std=0.2, noise_resolution=16),
        preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5), size=(128, 128, 112)),
        detection=DetectionConfig(),
        epochs=args.epochs, max_minutes=args.max_minutes, batch_size=args.batch_size, learning_rate=1e-3,
        validation_fraction=0.2, patience=10, seed=args.seed, device=args.device, num_workers=args.workers,
    )
    started = time.time()
    trained = train_model(config, progress=lambda e: print(e["message"], flush=True)
                          if e["event"] != "progress" or "train" in e["message"] else None)
    train_seconds = time.time() - started
    # The released model extracts the brain by registration to the template, so that heads with skull work too,
    # and its threshold is calibrated with that preprocessing on subjects it has never seen. (Training used the
    # Otsu foreground: on these skull-stripped subjects both give the brain.) The copy has no optimizer state.
    model_path = calibrate_model(trained, calibration, args.out_dir / "release" / "default_brain_t1.pt",
                                 foreground="template", device=args.device, overwrite=True,
                                 target_fpr=DetectionConfig.target_fpr,
                                 min_component_ml=DetectionConfig.min_component_ml)

    model = load_model(model_path, device=args.device)
    pairs = [(Path(p), Path(p).with_name(Path(p).name.replace(".nii.gz", "_mask.nii.gz"))) for p in lesioned]
    report = evaluate_model(model, pairs, controls)
    print(format_report(report), flush=True)
    timing = detect_seconds(model_path, args.device, args.timing_repeats)
    print(f"detect on 256x256x180: median {timing['median_s']:.3f} s on {timing['device']}", flush=True)
    summary = {"train_seconds": train_seconds, "detect_timing": timing,
               "evaluation": {k: v for k, v in report.items() if k != "cases"}, "cases": report["cases"],
               "config": {"subjects": args.subjects, "epochs": args.epochs, "base_channels": base,
                          "batch_size": args.batch_size, "seed": args.seed}}
    (args.out_dir / "default_model_report.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    keep_freed_memory_for_reuse()  # the script owns its process, as the command line does
    main()
