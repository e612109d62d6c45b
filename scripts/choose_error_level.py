"""Choose how a scan's own error level scales its anomaly map, on validation data only.

A model trained at one site reconstructs another scanner's healthy head worse everywhere, and a threshold set on
the training site's healthy heads then flags the whole cortex. The error level of a scan is the median absolute
residual in its scoring region (detection.scoring.error_level); the healthy level is the median over the
calibration heads. Compared here: no scaling, dividing the map by level / healthy level where it is above 1
("one-sided": a scan is never made more sensitive than calibrated), and dividing by it always ("two-sided"). Each
calibrated on the IXI calibration heads (T1) or the engine's calibration images (T2/FLAIR) at the model's rate.

Validation sets (no test scan is read):
- t1: synthetic lesions in the 16 IXI validation heads with the untouched heads as controls
  (scripts/make_ixi_lesions.py --split validation --seed 31), template subjects with lesions and controls (as
  train_contrast_models.py validate t1 makes them), and the label-map engine's images of the 16 validation heads
  as another scanner would show them: their real T1 ("real": bias field, gamma, noise, blur, thick slices) and a
  drawn T1 contrast ("t1"), each with one synthetic lesion and without;
- t2flair: the engine's T2 and FLAIR images of the validation maps with one bright lesion and without
  (train_contrast_models.py's validation set).

    PYTHONPATH=$PWD python scripts/choose_error_level.py t1 | tee benchmarks/results/error_level_validation.txt
    PYTHONPATH=$PWD python scripts/choose_error_level.py t2flair | tee -a benchmarks/results/error_level_validation.txt
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

import train_contrast_models as tcm
from MedAutoencoderLib import load_model, read_image
from MedAutoencoderLib.data.synthetic import insert_lesion
from MedAutoencoderLib.detection.evaluation import mask_on_grid, pair_images_with_masks, voxel_metrics
from MedAutoencoderLib.detection.scoring import (ScoredVolume, finish_detection, reconstruction_on_input_grid,
                                                 score_volume)
from MedAutoencoderLib.io.volumes import find_volumes

HERE = Path(__file__).resolve().parent
MODES = ("none", "one-sided", "two-sided", "above-all")
LESION_KINDS = ("hyper", "hypo", "mass", "subtle", "foreign")


def scaled(scored: ScoredVolume, mode: str, reference: float, highest: float) -> ScoredVolume:
    """``scored`` divided as ``mode`` says: not at all, by its level over the healthy median where above 1
    ("one-sided") or always ("two-sided"), or by its level over the highest healthy calibration level where above
    1 ("above-all": nothing within the healthy scans' own spread is divided)."""
    ratio = scored.error_level / reference
    factor = {"none": 1.0, "one-sided": max(1.0, ratio), "two-sided": ratio,
              "above-all": max(1.0, scored.error_level / highest)}[mode]
    return ScoredVolume(score_map=scored.score_map / np.float32(factor), region=scored.region,
                        error_level=scored.error_level, divided_by=factor)


def large_lesion(image: sitk.Image, brain: np.ndarray, rng: np.random.Generator) -> tuple:
    """``image`` with one ellipsoidal lesion of radius 20-36 mm deep in its brain, darker (0.3-0.7 times the brain's
    median, as a glioma on T1), and its mask: the size of the lesions that users look for on T1."""
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    deep = ndimage.distance_transform_edt(brain) > 8
    z, y, x = np.argwhere(deep)[rng.integers(deep.sum())]
    r = rng.uniform(20, 36) / image.GetSpacing()[0]
    zz, yy, xx = np.ogrid[:values.shape[0], :values.shape[1], :values.shape[2]]
    blob = (((zz - z) / (r * rng.uniform(0.6, 1))) ** 2 + ((yy - y) / r) ** 2
            + ((xx - x) / (r * rng.uniform(0.6, 1))) ** 2 < 1) & brain
    values[blob] = np.median(values[brain]) * rng.uniform(0.3, 0.7) * rng.uniform(0.9, 1.1, blob.sum())
    out = sitk.GetImageFromArray(values)
    out.CopyInformation(image)
    return out, blob


def engine_sets(args: argparse.Namespace, run) -> Dict[str, tuple]:
    """The engine's images of the validation heads as other scanners would show them, with and without a lesion."""
    from MedAutoencoderLib.synthesis.engine import SynthesisConfig, synthesize, to_tensors
    from MedAutoencoderLib.synthesis.sources import build_cache, load_map

    split = json.loads((HERE / "ixi_split.json").read_text())
    build_cache(args.data, args.cache, split["validation"])
    config = SynthesisConfig(shape=(96, 120, 104), rotation_deg=10.0, strip_probability=0.2, cut_probability=0.0,
                             thick_probability=0.3, thickness_mm=(2.0, 4.0))
    gen, rng, sets = torch.Generator().manual_seed(args.seed), np.random.default_rng(args.seed), {}
    for key in ("real", "t1"):
        lesioned, large, healthy = [], [], []
        for i, subject in enumerate(split["validation"]):
            drawn = synthesize(to_tensors(load_map(str(Path(args.cache) / f"ixi_{subject}.npz"))), gen, config, key)
            image = sitk.GetImageFromArray(drawn["image"][0].numpy())
            image.SetSpacing((2.0, 2.0, 2.0))
            brain = sitk.GetImageFromArray(drawn["brain"].numpy().astype(np.uint8))
            brain.CopyInformation(image)
            with_lesion, truth = insert_lesion(image, brain, LESION_KINDS[i % len(LESION_KINDS)], rng)
            lesioned.append((run(with_lesion, f"{key}{i}L"), sitk.GetArrayFromImage(truth) > 0))
            with_large, blob = large_lesion(image, drawn["brain"].numpy(), rng)
            large.append((run(with_large, f"{key}{i}X"), blob))
            healthy.append(run(image, f"{key}{i}"))
        sets[f"engine {key}"] = (lesioned, healthy)
        sets[f"engine {key}, large"] = (large, healthy)
    return sets


def file_sets(work: Path, data: Path, seed: int, run) -> Dict[str, tuple]:
    sets = {}
    for name, folder, lesioned, healthy in (("IXI validation heads", "ixi_val_lesions", "lesioned", "healthy"),
                                            ("template subjects", "template_val", "flat", "healthy")):
        pairs = pair_images_with_masks([str(work / folder / lesioned)], [str(work / folder / "masks")])
        sets[name] = ([(run(read_image(i), str(i)), mask_on_grid(m, read_image(i))) for i, m in pairs],
                      [run(read_image(p), str(p)) for p in find_volumes([str(work / folder / healthy)])])
    rng, large = np.random.default_rng(seed), []
    for path in find_volumes([str(work / "ixi_val_lesions" / "healthy")]):
        image = read_image(path)
        brain = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "ixi_t1_2mm" / "dlmuse_seg" /
                                                          f"{path.name.split('.')[0]}_T1_DLMUSE.nii.gz"))) > 0
        with_large, blob = large_lesion(image, brain, rng)
        large.append((run(with_large, f"{path.name}X"), blob))
    sets["IXI validation heads, large"] = (large, sets["IXI validation heads"][1])
    return sets


def evaluate(record, calibration: List, sets: Dict[str, tuple], label: str, quantile: float = 50.0) -> dict:
    """For each mode: the threshold at the model's rate on the calibration runs, then per set the pooled voxel AP,
    the Dice at that threshold and the healthy runs' share of the scored brain flagged (median, max), each detection
    finished as detect finishes it."""
    def scored_of(run):
        scored = score_volume(run[0], run[1], record.detection)
        if quantile != 50.0:  # another quantile of the absolute residual than the median as the error level
            scored.error_level = float(np.percentile(np.abs(run[0].image - run[1])[scored.region], quantile))
        return scored

    def finished(run, scored, threshold):
        prepared, rec = run
        result = finish_detection(prepared, reconstruction_on_input_grid(prepared, rec), scored, threshold,
                                  record.detection)
        region = sitk.GetArrayFromImage(prepared.to_input_grid(scored.region, nearest=True)) > 0
        return sitk.GetArrayFromImage(result.anomaly_map), sitk.GetArrayFromImage(result.anomaly_mask) > 0, region

    calibration_scored = [scored_of(r) for r in calibration]
    reference = float(np.median([s.error_level for s in calibration_scored]))
    highest = max(s.error_level for s in calibration_scored)
    print(f"{label}: healthy error level {reference:.4f}; calibration heads' ratios "
          f"{min(s.error_level for s in calibration_scored) / reference:.2f}-"
          f"{max(s.error_level for s in calibration_scored) / reference:.2f}", flush=True)
    cache = {name: ([(scored_of(r), r, t) for r, t in les], [(scored_of(r), r) for r in hea])
             for name, (les, hea) in sets.items()}
    for name, (_, hea) in cache.items():
        ratios = [s.error_level / reference for s, _ in hea]
        print(f"  {name}: healthy scans' error level ratios {min(ratios):.2f}-{max(ratios):.2f} "
              f"(median {np.median(ratios):.2f})", flush=True)
    rows = {}
    for mode in MODES:
        values = np.concatenate([scaled(s, mode, reference, highest).values() for s in calibration_scored])
        threshold = float(np.quantile(values, 1.0 - record.detection.target_fpr))
        for name, (les, hea) in cache.items():
            scores, labels, found = [], [], []
            for s, run, truth in les:
                score_map, mask, region = finished(run, scaled(s, mode, reference, highest), threshold)
                keep = region | truth
                scores.append(score_map[keep])
                labels.append(truth[keep])
                found.append(mask[keep])
            flagged = [float(mask[region].mean()) for _, mask, region in
                       (finished(run, scaled(s, mode, reference, highest), threshold) for s, run in hea)]
            f, t = np.concatenate(found), np.concatenate(labels)
            row = {"threshold": threshold, "average_precision": voxel_metrics(np.concatenate(scores), t)[
                "average_precision"], "dice": 2 * float((f & t).sum()) / max(1, int(f.sum() + t.sum())),
                   "healthy_flagged_median": float(np.median(flagged)), "healthy_flagged_max": float(max(flagged))}
            rows[f"{label} {mode} {name}"] = row
            print(f"  {mode:9s} {name:22s} threshold {threshold:.4f}  AP {row['average_precision']:.3f}  Dice "
                  f"{row['dice']:.3f}  healthy flagged median {100 * row['healthy_flagged_median']:.3f} % "
                  f"(max {100 * row['healthy_flagged_max']:.3f} %)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("t1", "t2flair"))
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--cache", default="/work/cache/brain_maps", help="prepared label maps (synthesis.sources)")
    parser.add_argument("--work", default="/work/cache/contrast_models", help="train_contrast_models.py's folder")
    parser.add_argument("--seed", type=int, default=77)
    parser.add_argument("--model", default="", help="model file (default: the bundled one of the kind)")
    parser.add_argument("--level-quantile", type=float, default=50.0,
                        help="the error level as this percentile of the absolute residual (detection: the median)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    name = {"t1": "default_brain_t1.pt", "t2flair": "brain_t2_flair_pd.pt"}[args.which]
    model = load_model(args.model or HERE.parent / "MedAutoencoderLib" / "models" / name, device="cpu")
    print(f"model: {args.model or name}; error level: percentile {args.level_quantile:g} of |residual|", flush=True)
    record = model.record

    def run(image, label):
        return tcm._run(model, record, image, label)

    groups = tcm._calibration_groups(argparse.Namespace(which=args.which, data=args.data, work=args.work))
    calibration = {c: [run(read_image(p), str(p)) for p in paths] for c, paths in groups.items()}
    if args.which == "t1":
        sets = {**file_sets(Path(args.work), Path(args.data), args.seed, run), **engine_sets(args, run)}
        rows = evaluate(record, calibration["T1"], sets, "T1", args.level_quantile)
    else:
        cases = [(c, run(les, f"{c}{i}"), truth, run(hea, f"{c}{i}h")) for i, (c, les, truth, hea) in
                 enumerate(tcm._validation_set(argparse.Namespace(data=args.data, cache=args.cache, seed=2026)))]
        rows = {}
        for contrast in ("T2", "FLAIR"):
            sets = {f"engine {contrast}": ([(r, t) for c, r, t, _ in cases if c == contrast],
                                           [h for c, _, _, h in cases if c == contrast])}
            rows.update(evaluate(record, calibration[contrast], sets, contrast, args.level_quantile))
    stem = f"error_level_{args.which}_{Path(args.model or name).stem}_q{args.level_quantile:g}"
    (Path(args.work) / f"{stem}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
