"""Train and calibrate the bundled real-scan models: brain T1 (real IXI anatomy) and brain T2/FLAIR/PD (synthesised).

Both fine-tune the bundled template-trained DAE (same network, grid and noise) with the learned brain extractor as
the brain mask, so that training sees the mask detection uses:

* ``t1``: the real IXI T1 heads of the training split (``scripts/ixi_split.json``, with face and neck) together
  with template-generated healthy subjects (:func:`MedAutoencoderLib.data.synthetic.make_cohort`; they keep the
  template's anatomy in the model's domain), and (``--appearance engine``) engine images of the training maps as other
  scanners show them: each head's real T1 through the engine's bias field, gamma, noise, blur and slices, and a
  drawn T1 contrast. Threshold: the IXI calibration heads (real, healthy, never trained on).
* ``t2flair``: images the synthesis engine draws from the label maps of the training split (IXI DLMUSE heads and the
  SynthSeg whole-head maps) in the T2, FLAIR and PD orderings, with skull or stripped, cut or whole. The residual
  counts where the input is brighter than its reconstruction (lesions are bright in these contrasts). Threshold: one
  per contrast, on engine images drawn from the IXI calibration maps (no real healthy T2/FLAIR/PD scan is here).

No lesion scan, and no scan of the test split, is read. Reproducible: every draw is seeded (``--seed``); training
is bounded by time (``--minutes``), so the number of steps depends on the machine (the file records it).

The shipped models, in this order (``S=scripts/train_contrast_models.py``; both started from the template-trained
model bundled before them: ``git show d1c13c8:MedAutoencoderLib/models/default_brain_t1.pt > template_t1.pt``, or
``scripts/train_default_model.py``):

    PYTHONPATH=$PWD python $S data
    PYTHONPATH=$PWD python $S train t2flair --minutes 28 --init-from template_t1.pt
    PYTHONPATH=$PWD python $S train t1 --minutes 28 --init-from template_t1.pt
    PYTHONPATH=$PWD python $S train t1 --noise restore --minutes 28 --init-from template_t1.pt
    PYTHONPATH=$PWD python $S validate t2flair          # intensity prior and threshold rate
    PYTHONPATH=$PWD python $S validate t1 --init-from template_t1.pt   # real-anatomy vs template-trained, rate
    PYTHONPATH=$PWD python $S validate t1 --sweep-only --sweep-models t1_restore   # restoration vs plain noise
    PYTHONPATH=$PWD python $S calibrate t2flair --target-fpr 0.003
    PYTHONPATH=$PWD python $S train t1 --noise restore --appearance engine --minutes 28 \
        --init-from <work>/t1_restore_trained.pt                      # other scanners' appearances
    PYTHONPATH=$PWD:$PWD/scripts python scripts/choose_error_level.py t1 --model <the calibrated t1_restore_engine>
    PYTHONPATH=$PWD python $S calibrate t1 --trained t1_restore_engine --target-fpr 0.001
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MedAutoencoderLib.api import load_model, train_model  # noqa: E402
from MedAutoencoderLib.config import TrainConfig  # noqa: E402
from MedAutoencoderLib.detection.scoring import calibrate_threshold, reconstruct_and_score  # noqa: E402
from MedAutoencoderLib.errors import InputImageError  # noqa: E402
from MedAutoencoderLib.io.checkpoint import save_model  # noqa: E402
from MedAutoencoderLib.io.volumes import read_image  # noqa: E402
from MedAutoencoderLib.preprocessing.prepare import prepare_volume  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "MedAutoencoderLib" / "models"
CONTRASTS = {"t2": "T2", "flair": "FLAIR", "pd": "PD"}  # engine ordering -> contrast name
OUT_NAMES = {"t1": "default_brain_t1.pt", "t2flair": "brain_t2_flair_pd.pt"}
_TEMPLATE = "MNI ICBM152 2009a nonlinear symmetric T1 template (bundled; see its NOTICE): the bundled model's weights"
SOURCES = {
    "t1": [_TEMPLATE,
           "IXI T1 heads of the training split (scripts/ixi_split.json), CC BY-SA 3.0, "
           "brain-development.org/ixi-dataset",
           "template-generated healthy subjects (MedAutoencoderLib.data.synthetic)",
           "threshold: the IXI calibration heads (CC BY-SA 3.0)"],
    "t2flair": [_TEMPLATE, "images synthesised by MedAutoencoderLib.synthesis from the DLMUSE parcellations of the "
                "IXI training heads (IXI: CC BY-SA 3.0) and the SynthSeg whole-head label maps (Apache 2.0)",
                "thresholds: synthesised images of the IXI calibration heads' parcellations"],
}


ENGINE_T1_SOURCES = ["images synthesised by MedAutoencoderLib.synthesis from the IXI training heads (their real T1 "
                     "with other scanners' bias, gamma, noise, blur and slices; drawn T1 contrasts of their DLMUSE "
                     "parcellations; IXI: CC BY-SA 3.0) and the SynthSeg whole-head label maps (Apache 2.0)"]


def _engine_volumes(maps: list, out_dir: Path, per_map: int, seed: int, strip_share: float, cut_share: float,
                    contrasts: tuple = tuple(CONTRASTS)) -> list:
    """Engine images of the maps in ``contrasts`` (engine orderings or "real", cycled; default T2/FLAIR/PD), written
    as 2 mm NIfTI volumes."""
    from MedAutoencoderLib.config import PreprocessConfig
    from MedAutoencoderLib.synthesis.engine import SynthesisConfig, synthesize, to_tensors
    from MedAutoencoderLib.synthesis.sources import load_map

    config = SynthesisConfig(shape=(96, 120, 104), rotation_deg=10.0, strip_probability=strip_share,
                             cut_probability=cut_share, thick_probability=0.4, thickness_mm=(2.0, 5.0))
    out_dir.mkdir(parents=True, exist_ok=True)
    names, written = list(contrasts), []
    gen = torch.Generator().manual_seed(seed)
    for i, path in enumerate(maps):
        label_map = to_tensors(load_map(str(path)))
        for k in range(per_map):
            contrast = names[(i * per_map + k) % len(names)]
            drawn = synthesize(label_map, gen, config, contrast)
            image = sitk.GetImageFromArray(drawn["image"][0].numpy())
            image.SetSpacing((2.0, 2.0, 2.0))
            try:  # a draw training would refuse (a brain scaled past 2200 mL, noise over all): left out
                prepare_volume(image, PreprocessConfig(foreground="brain"), name=str(path))
            except InputImageError as error:
                print("left out:", error, flush=True)
                continue
            target = out_dir / f"{Path(path).stem}_{k}_{contrast}.nii.gz"
            sitk.WriteImage(image, str(target))
            written.append(target)
    return written


def make_data(args: argparse.Namespace) -> None:
    from MedAutoencoderLib.data.synthetic import LESION_KINDS, make_cohort
    from MedAutoencoderLib.synthesis.sources import build_cache

    split = json.loads((HERE / "ixi_split.json").read_text())
    paths = [Path(p) for p in build_cache(args.data, args.cache, split["train"] + split["calibration"])]
    synthseg = sorted(p for p in paths if p.name.startswith("synthseg_"))
    train_maps = synthseg + [Path(args.cache) / f"ixi_{s}.npz" for s in split["train"]]
    calibration_maps = [Path(args.cache) / f"ixi_{s}.npz" for s in split["calibration"]]
    work = Path(args.work)
    for folder in ("t2flair_train", "t2flair_calibration"):
        for old in (Path(args.work) / folder).glob("*.nii.gz"):
            old.unlink()
    n = len(_engine_volumes(train_maps, work / "t2flair_train", 1, args.seed, 0.3, 0.3))
    # every calibration map in each contrast, whole heads and stripped brains as detection meets them
    m = len(_engine_volumes(calibration_maps, work / "t2flair_calibration", 3, args.seed + 1, 0.3, 0.0))
    t = len(make_cohort(work / "t1_template", args.template_subjects, args.seed, overwrite=True))
    print(f"written: {n} T2/FLAIR/PD training volumes, {m} calibration volumes, {t} template T1 subjects")
    # T1 appearances of other scanners (train t1 --appearance engine): each training map's real T1 through the
    # engine's bias field, gamma, noise, blur and thick slices, and a drawn T1 contrast
    for old in (work / "t1_engine_train").glob("*.nii.gz"):
        old.unlink()
    e = len(_engine_volumes(train_maps, work / "t1_engine_train", 2, args.seed + 3, 0.3, 0.0, ("real", "t1")))
    print(f"written: {e} T1 engine training volumes")
    # the T1 validation sets (validate t1): lesions in the IXI validation heads, lesioned template subjects
    subprocess.run([sys.executable, str(HERE / "make_ixi_lesions.py"), "--out", str(work / "ixi_val_lesions"),
                    "--split", "validation", "--seed", "31"], check=True)
    for k, kind in enumerate(LESION_KINDS):
        for path in make_cohort(work / "template_val" / kind, 2, 500 + 1000 * k, lesioned=True, kinds=(kind,),
                                overwrite=True):
            for source, folder in ((path, "flat"), (path.with_name(path.name.replace(".nii", "_mask.nii")), "masks")):
                (work / "template_val" / folder).mkdir(parents=True, exist_ok=True)
                source.replace(work / "template_val" / folder / f"{kind}_{source.name}")
    make_cohort(work / "template_val" / "healthy", 3, 599, overwrite=True)


def train(args: argparse.Namespace) -> None:
    work = Path(args.work)
    split = json.loads((HERE / "ixi_split.json").read_text())
    if args.which == "t1":
        data = [str(Path(args.data) / "ixi_t1_2mm" / "t1" / f"{s}_T1.nii.gz") for s in split["train"]]
        data += [str(work / "t1_template")]
        if args.appearance == "engine":
            data += [str(work / "t1_engine_train")]
    else:
        data = [str(work / "t2flair_train")]
    init, name = args.init_from or "default", args.which
    if args.unshuffle > 1:  # another architecture: from scratch, or from --init-from's weights folded into it
        init, name = None, f"{args.which}_u{args.unshuffle}"
        if args.init_from:
            init, name = _unshuffled_init(Path(args.init_from), args.unshuffle, args.noise, work), name + "_init"
    else:  # the weights to start from, with the corruption to train with recorded
        from MedAutoencoderLib.io.checkpoint import read_model_file

        payload = read_model_file(Path(args.init_from) if args.init_from else MODELS / "default_brain_t1.pt")
        if payload["model"].get("noise", "coarse") != args.noise:
            payload["model"]["noise"] = args.noise
            init = str(work / f"init_{args.noise}.pt")
            torch.save(payload, init)
        if args.noise != "coarse":
            name = f"{args.which}_{args.noise}"
    if args.appearance == "engine":
        name += "_engine"
    if args.unshuffle > 1 and args.noise != "coarse":
        name += f"_{args.noise}"
    config = TrainConfig(data=data, out=str(work / f"{name}_trained.pt"), init=init,
                         max_minutes=args.minutes, epochs=args.epochs, learning_rate=args.learning_rate,
                         validation_fraction=0.1, seed=args.seed, overwrite=True)
    config.preprocess.foreground = "brain"
    if args.unshuffle > 1:
        config.model.noise, config.model.unshuffle = args.noise, args.unshuffle
    print("model written:", train_model(config))


def _unshuffled_init(path: Path, factor: int, noise: str, work: Path) -> str:
    """A model file with ``path``'s model, grid and normalisation but a U-Net that runs at 1/``factor`` resolution
    (``ModelConfig.unshuffle``): every weight whose shape is unchanged is copied; the first convolution takes each
    folded voxel with the original kernel over the block count (the mean of the block), and the last one gives each
    of them the original output (nearest-neighbour unfolding). It starts as the original network on a downsampled
    slice."""
    from MedAutoencoderLib.config import ModelConfig
    from MedAutoencoderLib.io.checkpoint import read_model_file
    from MedAutoencoderLib.networks.autoencoders import build_network

    payload = read_model_file(path)
    payload["model"] = dict(payload["model"], unshuffle=factor, noise=noise)
    network = build_network(ModelConfig(**payload["model"]))
    state, old = network.state_dict(), payload["state_dict"]
    folded = factor ** network.spatial_dims
    for key, value in old.items():
        if state[key].shape == value.shape:
            state[key] = value
        elif key == "unet.conv_0.conv_0.conv.weight":
            state[key] = value.repeat_interleave(folded, dim=1) / folded
        else:  # the last convolution's weight and bias
            state[key] = value.repeat_interleave(folded, dim=0)
    payload["state_dict"] = state
    out = work / f"init_u{factor}_{path.stem}.pt"
    torch.save(payload, out)
    return str(out)


def _scored(model, record, paths: list) -> list:
    out = []
    for path in paths:
        prepared = prepare_volume(read_image(path), record.preprocess, name=str(path))
        out.append(reconstruct_and_score(model.network, prepared, record.model, record.detection, model.device)[1])
    return out


def _calibration_groups(args: argparse.Namespace) -> dict:
    """Healthy volumes never trained on, per contrast."""
    work = Path(args.work)
    if args.which == "t1":
        split = json.loads((HERE / "ixi_split.json").read_text())
        return {"T1": [Path(args.data) / "ixi_t1_2mm" / "t1" / f"{s}_T1.nii.gz" for s in split["calibration"]]}
    files = sorted((work / "t2flair_calibration").glob("*.nii.gz"))
    return {name: [f for f in files if f.name.endswith(f"_{key}.nii.gz")] for key, name in CONTRASTS.items()}


def _calibrated(model, prior: str, args: argparse.Namespace) -> None:
    """Set ``model``'s detection settings for its contrasts and calibrate its threshold(s) in place."""
    record = model.record
    groups = _calibration_groups(args)
    record.contrasts = list(groups)
    record.detection.target_fpr = args.target_fpr
    if args.which != "t1":
        record.detection.residual = "positive"
        record.detection.prior = prior
    by_contrast, levels, everything = {}, {}, []
    for name, paths in groups.items():
        scored = _scored(model, record, paths)
        calibration = calibrate_threshold(scored, record.detection.target_fpr)
        by_contrast[name], levels[name] = calibration["threshold"], calibration["error_level"]
        everything += scored
        print(f"{name}: threshold {by_contrast[name]:.4f}, error level {levels[name]:.4f} on {len(paths)} volumes",
              flush=True)
    record.calibration = {**calibrate_threshold(everything, record.detection.target_fpr),
                          "calibrated_on": [p.name for ps in groups.values() for p in ps]}
    if len(by_contrast) > 1:
        record.calibration["by_contrast"] = by_contrast
        record.calibration["error_level_by_contrast"] = levels
    else:
        record.calibration["threshold"] = by_contrast[record.contrasts[0]]
        record.calibration["error_level"] = levels[record.contrasts[0]]


def calibrate(args: argparse.Namespace) -> None:
    """The threshold(s) on healthy volumes never trained on; the model file gets its contrasts and sources."""
    model = load_model(Path(args.work) / f"{args.trained or args.which}_trained.pt", device="cpu")
    _calibrated(model, args.prior, args)
    if args.which == "t1":  # --foreground template: its own threshold, on the heads the registration takes
        record = model.record
        record.calibration["by_foreground"] = {"brain": record.calibration["threshold"]}
        with_template = copy.deepcopy(record)
        with_template.preprocess.foreground = "template"
        scored = []
        for path in _calibration_groups(args)["T1"]:
            try:
                scored += _scored(model, with_template, [path])
            except InputImageError as refused:
                print("template mask: left out", refused, flush=True)
        template = calibrate_threshold(scored, record.detection.target_fpr)
        record.calibration["by_foreground"]["template"] = template["threshold"]
        record.calibration["error_level_by_foreground"] = {"brain": record.calibration["error_level"],
                                                           "template": template["error_level"]}
        print("thresholds by brain mask:", record.calibration["by_foreground"], "error levels:",
              record.calibration["error_level_by_foreground"], flush=True)
    model.record.training["sources"] = SOURCES[args.which] + (ENGINE_T1_SOURCES if "engine" in args.trained else [])
    out = Path(args.out) if args.out else MODELS / OUT_NAMES[args.which]
    save_model(out, model.network, model.record)
    print("written:", out, model.record.calibration.get("by_contrast", model.record.calibration["threshold"]))


def _validation_set(args: argparse.Namespace) -> list:
    """(contrast, lesioned image, truth, healthy image): engine T2 and FLAIR images of the IXI validation maps, each
    with one bright lesion (hyper or mass, in turn) painted inside its brain, and the same image without it."""
    from MedAutoencoderLib.data.synthetic import insert_lesion
    from MedAutoencoderLib.synthesis.engine import SynthesisConfig, synthesize, to_tensors
    from MedAutoencoderLib.synthesis.sources import build_cache, load_map

    split = json.loads((HERE / "ixi_split.json").read_text())
    build_cache(args.data, args.cache, split["validation"])
    config = SynthesisConfig(shape=(96, 120, 104), rotation_deg=10.0, strip_probability=0.3, cut_probability=0.0,
                             thick_probability=0.4, thickness_mm=(2.0, 5.0))
    gen, rng, cases = torch.Generator().manual_seed(args.seed + 2), np.random.default_rng(args.seed + 2), []
    for i, subject in enumerate(split["validation"]):
        label_map = to_tensors(load_map(str(Path(args.cache) / f"ixi_{subject}.npz")))
        for key in ("t2", "flair"):
            drawn = synthesize(label_map, gen, config, key)
            image = sitk.GetImageFromArray(drawn["image"][0].numpy())
            image.SetSpacing((2.0, 2.0, 2.0))
            brain = sitk.GetImageFromArray(drawn["brain"].numpy().astype(np.uint8))
            brain.CopyInformation(image)
            lesioned, truth = insert_lesion(image, brain, ("hyper", "mass")[i % 2], rng)
            cases.append((CONTRASTS[key], lesioned, sitk.GetArrayFromImage(truth) > 0, image))
    return cases


FPR_CHOICES = (0.0002, 0.001, 0.003, 0.01)  # voxel false-positive rates on healthy calibration volumes


def _run(model, record, image: sitk.Image, name: str):
    """A volume prepared and reconstructed once; the settings compared differ in the scoring only."""
    from MedAutoencoderLib.detection.inference import reconstruct

    prepared = prepare_volume(image, record.preprocess, name=name)
    return prepared, reconstruct(model.network, prepared, record.model, record.detection.batch_size, model.device)


def _sweep(record, calibration: list, lesioned: list, healthy: list) -> list:
    """For each rate of :data:`FPR_CHOICES`: the threshold on the calibration runs, the pooled voxel AP and Dice of
    the lesioned runs ((run, truth on the input grid)) and the median share of the healthy runs' scored brain
    flagged, each detection finished as detect finishes it (mapping back, components under 0.2 mL removed)."""
    from MedAutoencoderLib.detection.evaluation import voxel_metrics
    from MedAutoencoderLib.detection.scoring import (finish_detection, reconstruction_on_input_grid, score_volume,
                                                     to_error_level)

    def scored_run(run):  # scores, reconstruction and region on the input grid: the same for every rate
        prepared, rec = run
        scored = to_error_level(score_volume(prepared, rec, record.detection), reference)
        region = sitk.GetArrayFromImage(prepared.to_input_grid(scored.region, nearest=True)) > 0
        return prepared, reconstruction_on_input_grid(prepared, rec), scored, region

    def finished(ready, threshold):
        prepared, reconstruction, scored, region = ready
        result = finish_detection(prepared, reconstruction, scored, threshold, record.detection)
        return sitk.GetArrayFromImage(result.anomaly_map), sitk.GetArrayFromImage(result.anomaly_mask) > 0, region

    scored = [score_volume(p, r, record.detection) for p, r in calibration]
    reference = calibrate_threshold(scored, FPR_CHOICES[0])["error_level"]  # maps divided as detection divides them
    lesioned = [(scored_run(run), truth) for run, truth in lesioned]
    healthy = [scored_run(run) for run in healthy]
    rows = []
    for fpr in FPR_CHOICES:
        threshold = calibrate_threshold(scored, fpr)["threshold"]
        scores, labels, found = [], [], []
        for ready, truth in lesioned:
            score_map, mask, region = finished(ready, threshold)
            keep = region | truth
            scores.append(score_map[keep])
            labels.append(truth[keep])
            found.append(mask[keep])
        flagged = [float(mask[region].mean()) for mask, region in (finished(r, threshold)[1:] for r in healthy)]
        f, t = np.concatenate(found), np.concatenate(labels)
        rows.append({"target_fpr": fpr, "threshold": threshold,
                     "average_precision": voxel_metrics(np.concatenate(scores), t)["average_precision"],
                     "dice": 2 * float((f & t).sum()) / max(1, int(f.sum() + t.sum())),
                     "healthy_flagged_median": float(np.median(flagged)) if flagged else 0.0})
        print("  FPR {target_fpr:.4f}: threshold {threshold:.4f}  AP {average_precision:.3f}  Dice {dice:.3f}  "
              "healthy brain flagged (median) {healthy_flagged_median:.3%}".format(**rows[-1]), flush=True)
    return rows


def validate_t1(args: argparse.Namespace) -> None:
    """Choose between the bundled template-trained T1 model and the new one on validation data: synthetic lesions
    painted in the IXI validation heads (scripts/make_ixi_lesions.py --split validation --seed 31) with the untouched
    heads as healthy controls, and template subjects with lesions of every kind, 2 each, and 3 healthy controls
    (make_cohort seeds 500 + 1000 k and 599; the reported evaluation uses seed 7). Both models calibrated alike on
    the IXI calibration heads."""
    from MedAutoencoderLib.detection.evaluation import evaluate_model, pair_images_with_masks

    work = Path(args.work)
    sets = {"IXI validation heads": (pair_images_with_masks([str(work / "ixi_val_lesions" / "lesioned")],
                                                            [str(work / "ixi_val_lesions" / "masks")]),
                                     [str(work / "ixi_val_lesions" / "healthy")]),
            "template subjects": (pair_images_with_masks([str(work / "template_val" / "flat")],
                                                         [str(work / "template_val" / "masks")]),
                                  [str(work / "template_val" / "healthy")])}
    results = {}
    start = Path(args.init_from) if args.init_from else MODELS / "default_brain_t1.pt"
    compared = (("started from", start), ("new", work / "t1_trained.pt"))
    for label, path in () if args.sweep_only else compared:
        model = load_model(path, device="cpu")
        _calibrated(model, "none", args)
        for name, (pairs, healthy) in sets.items():
            report = evaluate_model(model, pairs, healthy)["model"]
            results[f"{label} {name}"] = {k: report[k] for k in ("average_precision", "dice_at_threshold",
                                                                 "healthy_flagged_share")}
            print(f"{label:8s} {name:22s} AP {report['average_precision']:.3f}  Dice {report['dice_at_threshold']:.3f}"
                  f"  healthy flagged {100 * report['healthy_flagged_share']:.2f} %  (threshold "
                  f"{model.record.threshold:.4f})", flush=True)
    # the false-positive rate of each trained model (--sweep-models), on the same validation heads and subjects
    from MedAutoencoderLib.detection.evaluation import mask_on_grid
    from MedAutoencoderLib.io.volumes import find_volumes

    for trained in args.sweep_models.split(","):
        model = load_model(work / f"{trained}_trained.pt", device="cpu")
        record = model.record
        calibration = [_run(model, record, read_image(p), str(p)) for p in _calibration_groups(args)["T1"]]
        for name, (pairs, healthy) in sets.items():
            lesioned = []
            for image_path, mask_path in pairs:
                image = read_image(image_path)
                lesioned.append((_run(model, record, image, str(image_path)), mask_on_grid(mask_path, image)))
            controls = [_run(model, record, read_image(p), str(p)) for p in find_volumes(healthy)]
            print(f"{trained}, {name}:", flush=True)
            results[f"sweep {trained} {name}"] = _sweep(record, calibration, lesioned, controls)
    (work / f"validation_t1_{args.sweep_models.replace(',', '_')}.json").write_text(json.dumps(results, indent=2))


def validate(args: argparse.Namespace) -> None:
    """Choose the non-T1 model's intensity prior and threshold rate on validation data: synthetic bright lesions in
    engine images of the validation maps (:func:`_sweep` per contrast: pooled voxel AP, Dice at the calibrated
    threshold, healthy brain flagged in the same images without the lesion). Each volume is reconstructed once;
    the priors differ in the scoring only. No real scan is read."""
    model = load_model(Path(args.work) / f"{args.which}_trained.pt", device="cpu")
    record = model.record
    record.detection.residual = "positive"
    calibration = {c: [_run(model, record, read_image(p), str(p)) for p in paths]
                   for c, paths in _calibration_groups(args).items()}
    cases = [(c, _run(model, record, lesioned, f"{c}_{i}"), truth, _run(model, record, healthy, f"{c}_{i}_healthy"))
             for i, (c, lesioned, truth, healthy) in enumerate(_validation_set(args))]
    print(f"reconstructed {sum(map(len, calibration.values()))} calibration and {2 * len(cases)} validation volumes",
          flush=True)
    results = {}
    for prior in ("none",) if args.sweep_only else ("none", "bright"):
        record.detection.prior = prior
        for contrast in ("T2", "FLAIR"):
            print(f"prior {prior}, {contrast}:", flush=True)
            results[f"{prior} {contrast}"] = _sweep(
                record, calibration[contrast], [(run, truth) for c, run, truth, _ in cases if c == contrast],
                [healthy for c, _, _, healthy in cases if c == contrast])
    (Path(args.work) / "validation.json").write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("data", "train", "calibrate", "validate"))
    parser.add_argument("which", nargs="?", choices=("t1", "t2flair"), default="t2flair")
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--cache", default="/work/cache/brain_maps", help="prepared label maps (synthesis.sources)")
    parser.add_argument("--work", default="/work/cache/contrast_models")
    parser.add_argument("--out", default="", help="model file (default: the bundled file in MedAutoencoderLib/models)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--template-subjects", type=int, default=32)
    parser.add_argument("--prior", choices=("none", "bright"), default="none",
                        help="T2/FLAIR/PD model's intensity prior (chosen by the validate stage)")
    parser.add_argument("--target-fpr", type=float, default=0.0002,
                        help="calibrate: the voxel false-positive rate (chosen by the validate stage's sweep)")
    parser.add_argument("--noise", choices=("coarse", "restore"), default="coarse",
                        help="train: the DAE's corruption (restore: coarse noise plus synthetic anomalies)")
    parser.add_argument("--appearance", choices=("ixi", "engine"), default="ixi",
                        help="train t1: the IXI heads as they are, or also engine images of the training maps with "
                             "other scanners' appearances (data writes them)")
    parser.add_argument("--init-from", default="",
                        help="train: the model file to start from (default: the bundled T1 model)")
    parser.add_argument("--unshuffle", type=int, default=1,
                        help="train: a DAE whose U-Net runs at 1/N resolution (ModelConfig.unshuffle), from scratch or "
                             "from --init-from's weights folded into it")
    parser.add_argument("--trained", default="", help="calibrate: <work>/<name>_trained.pt (default: the kind's)")
    parser.add_argument("--sweep-models", default="t1",
                        help="validate t1: the trained models (<work>/<name>_trained.pt) whose rates are swept")
    parser.add_argument("--sweep-only", action="store_true",
                        help="validate: only the false-positive-rate sweep of the chosen model or prior")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    stages = {"data": make_data, "train": train, "calibrate": calibrate,
              "validate": validate_t1 if args.which == "t1" else validate}
    stages[args.stage](args)


if __name__ == "__main__":
    main()
