"""Segmentation from autoencoder pre-training on IXI heads: Dice per tissue class on 20 held-out heads after
training on 1, 3 or 10 labelled heads, starting from the bundled autoencoder or from scratch, 3 seeds each.

Data: ../shared/data/ixi_t1_2mm (real T1 heads with skull, 2 mm) and their DLMUSE parcellations merged into four
tissue classes (MedAutoencoderLib.synthesis.sources.muse_tissue_labels: CSF, cortical grey, white matter, deep
grey). Labelled heads: the first N subjects of the train list of scripts/ixi_split.json (so 1 of 3 of 10);
evaluation: its 20 test subjects, Dice on each test head's own grid against its merged parcellation.

Both arms run the same network (the bundled model's U-Net with a 5-class head), the same preprocessing (the
bundled model's, on the grid given by --spacing/--size, with the learned brain extractor's foreground), the same
slices, augmentation and seed, and the same number of optimiser steps; only the starting weights differ.

One call runs the trainings of the label counts given and appends each result to --results (a JSON-lines file;
runs already there are skipped), so that the table can be made in chunks; --table prints the table from it.

    python scripts/evaluate_segmentation.py --labelled 1 --results benchmarks/results/segmentation_ixi.jsonl
    python scripts/evaluate_segmentation.py --table --results benchmarks/results/segmentation_ixi.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MedAutoencoderLib.config import SegmentTrainConfig  # noqa: E402
from MedAutoencoderLib.io.loaded_model import DEFAULT_MODEL  # noqa: E402
from MedAutoencoderLib.io.volumes import read_image  # noqa: E402
from MedAutoencoderLib.segmentation.data import LabelledVolume, assign_classes, prepare_labelled  # noqa: E402
from MedAutoencoderLib.segmentation.inference import classes_on_input_grid, predict_probabilities  # noqa: E402
from MedAutoencoderLib.segmentation.labels import label_set  # noqa: E402
from MedAutoencoderLib.segmentation.networks import build_segmentation_network, load_pretrained  # noqa: E402
from MedAutoencoderLib.segmentation.trainer import fit, starting_point  # noqa: E402
from MedAutoencoderLib.synthesis.sources import SEGMENTATION_TISSUES, muse_tissue_labels  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "ixi_t1_2mm"
SEEDS = (0, 1, 2)
ARMS = ("pretrained", "scratch")


def merged_labels(subject: str, cache: Path) -> Path:
    """The subject's DLMUSE parcellation merged into the four tissue classes, written once into ``cache``."""
    out = cache / f"{subject}_T1_tissue.nii.gz"
    if not out.exists():
        muse = sitk.ReadImage(str(DATA / "dlmuse_seg" / f"{subject}_T1_DLMUSE.nii.gz"))
        tissue = sitk.GetImageFromArray(muse_tissue_labels(sitk.GetArrayFromImage(muse)))
        tissue.CopyInformation(muse)
        sitk.WriteImage(tissue, str(out))
    return out


def prepared_head(subject: str, cache: Path, preprocess) -> LabelledVolume:
    """A head and its merged labels on the model grid, prepared once (the brain extractor) and kept in ``cache``."""
    grid = "x".join(f"{v:g}" for v in (*preprocess.spacing, *preprocess.size))
    path = cache / f"{subject}_{grid}_{preprocess.foreground}.pickle"
    if path.exists():
        with path.open("rb") as stream:
            return pickle.load(stream)
    labelled = prepare_labelled(DATA / "t1" / f"{subject}_T1.nii.gz", merged_labels(subject, cache), preprocess)
    with path.open("wb") as stream:
        pickle.dump(labelled, stream)
    return labelled


def dice(prediction: np.ndarray, truth: np.ndarray, value: int) -> float:
    p, t = prediction == value, truth == value
    total = p.sum() + t.sum()
    return float(2.0 * (p & t).sum() / total) if total else float("nan")


def run(args: argparse.Namespace) -> None:
    split = json.loads((ROOT / "scripts" / "ixi_split.json").read_text())
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    results = Path(args.results)
    done = set()
    if results.exists():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            done.add((row["labelled"], row["arm"], row["seed"], row["steps"]))
    config = SegmentTrainConfig(images=["x"], labels=["y"], out="unused.pt", init="default",
                                spacing=tuple(args.spacing), size=tuple(args.size), foreground="brain")
    start = starting_point(config)  # the bundled model's architecture, preprocessing on the chosen grid, weights
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    train_subjects = split["train"][:max(args.labelled)]
    train = [prepared_head(s, cache, start.preprocess) for s in train_subjects]
    test = []
    for s in split["test"][:args.test_limit]:
        labelled = prepared_head(s, cache, start.preprocess)
        truth = sitk.GetArrayFromImage(read_image(merged_labels(s, cache)))
        test.append((s, labelled.prepared, truth))
    labels = label_set([[1, 2, 3, 4]], list(SEGMENTATION_TISSUES.values()))
    assign_classes(train, labels, {})
    print(f"prepared {len(train)} labelled and {len(test)} test heads in {time.monotonic() - t0:.0f} s", flush=True)
    for n in args.labelled:
        for arm in ARMS:
            for seed in SEEDS:
                if (n, arm, seed, args.steps) in done:
                    continue
                torch.manual_seed(seed)
                network = build_segmentation_network(start.model, labels.n_classes)
                if arm == "pretrained":
                    load_pretrained(network, start.state_dict, start.model, str(DEFAULT_MODEL))
                load = os.getloadavg()[0]
                trained = fit(network, train[:n], start.preprocess, args.steps, args.batch_size, args.learning_rate,
                              True, seed)
                started = time.monotonic()
                scores = []
                for subject, prepared, truth in test:
                    classes = classes_on_input_grid(
                        predict_probabilities(network, prepared, labels.n_classes, torch.device("cpu")), prepared)
                    scores.append([dice(classes, truth, v) for v in labels.values])
                row = {"labelled": n, "arm": arm, "seed": seed, "steps": trained["steps_done"],
                       "batch_size": args.batch_size, "train_s": trained["seconds"],
                       "predict_s": round(time.monotonic() - started, 1), "load_avg_1min": round(load, 2),
                       "grid": {"spacing": list(start.preprocess.spacing), "size": list(start.preprocess.size)},
                       "final_loss": trained["final_loss"],
                       "dice": dict(zip(labels.names, np.nanmean(np.array(scores), axis=0).round(4).tolist())),
                       "dice_per_head": {s: [round(x, 4) for x in d] for (s, _, _), d in zip(test, scores)}}
                with results.open("a") as stream:
                    stream.write(json.dumps(row) + "\n")
                print(f"{n} labelled, {arm}, seed {seed}: Dice {row['dice']}, train {row['train_s']} s, predict "
                      f"{row['predict_s']} s, load {load:.2f}", flush=True)


def table(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in Path(args.results).read_text().splitlines()]
    names = list(SEGMENTATION_TISSUES.values())
    print("| steps | labelled heads | start | " + " | ".join(names) + " | mean | train time (s) |")
    print("|---|---|---|" + "---|" * (len(names) + 2))
    for steps, n in sorted({(r["steps"], r["labelled"]) for r in rows}, key=lambda k: (-k[0], k[1])):
        for arm in ARMS:
            chosen = [r for r in rows if r["labelled"] == n and r["arm"] == arm and r["steps"] == steps]
            if not chosen:
                continue
            per_class = np.array([[r["dice"][c] for c in names] for r in chosen])
            means = per_class.mean(axis=1)
            cells = [f"{per_class[:, i].mean():.3f} ± {per_class[:, i].std():.3f}" for i in range(len(names))]
            seconds = np.mean([r["train_s"] for r in chosen])
            print(f"| {steps} | {n} | {arm} ({len(chosen)} seeds) | " + " | ".join(cells)
                  + f" | **{means.mean():.3f}** ± {means.std():.3f} | {seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.0, 2.0, 2.0])
    parser.add_argument("--size", type=int, nargs=3, default=[96, 96, 84])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test-limit", type=int, default=20, help="test heads (fewer: a quick check only)")
    parser.add_argument("--cache", default="/tmp/medautoencoder_segmentation_eval")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "segmentation_ixi.jsonl"))
    parser.add_argument("--table", action="store_true", help="print the table of --results and stop")
    args = parser.parse_args()
    table(args) if args.table else run(args)


if __name__ == "__main__":
    main()
