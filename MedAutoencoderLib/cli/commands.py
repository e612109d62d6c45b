"""Command line: ``python -m MedAutoencoderLib {train,detect,evaluate,info}`` (alias ``medautoencoder``).

Errors meant for the user print as ``error: ...`` (exit 1) instead of a traceback; a cancelled training run
exits 130 after saving its best model (cancelled before training began, it writes nothing). Progress is a bar on a
terminal and plain lines elsewhere (logs); ``--progress json`` prints one JSON event per line on stdout for
programs such as the Slicer module.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from MedAutoencoderLib import __version__
from MedAutoencoderLib.cli.exit_codes import EXIT_CANCELLED, EXIT_USER_ERROR
from MedAutoencoderLib.config import (
    EXPORT_FORMATS,
    FOREGROUND_METHODS,
    PRECISIONS,
    DetectOptions,
    SegmentTrainConfig,
    TrainConfig,
    from_options,
    option_fields,
)
from MedAutoencoderLib.errors import (
    OUT_OF_MEMORY_ADVICE,
    Cancelled,
    ConfigurationError,
    MedAutoencoderError,
    is_out_of_memory,
)
from MedAutoencoderLib.io.volumes import write_text
from MedAutoencoderLib.runtime.progress import PROGRESS_KINDS, make_reporter


def _threshold(text: str) -> Optional[float]:
    """``--threshold``: 'auto' (None: the model's calibrated one) or a number that DetectOptions accepts, checked
    here so that a bad value is refused before the model is loaded."""
    if text == "auto":
        return None
    try:
        value = float(text)
        DetectOptions(threshold=value).validate()
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold must be 'auto' or a number, not {text!r}") from None
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _shard(text: str):
    from MedAutoencoderLib.detection.shards import parse_shard

    return parse_shard(text)


def _device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N")


def _common(parser: argparse.ArgumentParser) -> None:
    _device(parser)
    parser.add_argument("--progress", choices=PROGRESS_KINDS, default="auto",
                        help="auto (default): a bar on a terminal, else (a log file, CI, a cluster job) plain lines, "
                             "one per epoch or volume; bar; lines; json: JSON lines on stdout (programs); none")


def _add_options(parser: argparse.ArgumentParser, config: type) -> None:
    """The options a config class declares (:func:`~MedAutoencoderLib.config.option`), in their help order."""
    for spec in option_fields(config):
        arguments: Dict[str, Any] = {"help": spec.option.help}
        if spec.value_type is bool:  # a switch: giving it flips the default
            arguments["action"] = "store_false" if spec.default else "store_true"
        else:
            if spec.value_type is not str:
                arguments["type"] = spec.value_type
            if spec.count != 1:
                arguments["nargs"] = spec.count
            if spec.option.choices is not None:
                arguments["choices"] = spec.option.choices
            if spec.option.required:
                arguments["required"] = True
            else:
                arguments["default"] = spec.default
        parser.add_argument(spec.option.flag, **arguments)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on healthy volumes",
                       description="Train an autoencoder on healthy volumes; a held-out share of them calibrates "
                                   "the anomaly threshold.")
    _add_options(p, TrainConfig)
    _common(p)


def _add_detect(sub) -> None:
    p = sub.add_parser("detect", help="detect anomalies in volumes",
                       description="Write <stem>_reconstruction, <stem>_anomaly_map, <stem>_anomaly_mask and "
                                   "<stem>_summary.json for each input.")
    p.add_argument("inputs", nargs="+", help="volume files, folders (of volume files or DICOM series) or glob "
                                              "patterns")
    p.add_argument("--model", help="model file (default: the bundled brain T1 model)")
    p.add_argument("--foreground", choices=("brain", "template"),
                   help="how a brain model finds the brain: brain (default), the learned brain extractor (any "
                        "contrast, with or without skull); template, registration to the MNI T1 template")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--threshold", type=_threshold, default=None,
                   help="'auto' (default: calibrated on healthy data, stored in the model) or a number")
    p.add_argument("--format", choices=("nii.gz", "nii", "nrrd", "mha"), help="output format (default: input's)")
    p.add_argument("--uncompressed", action="store_true",
                   help="write nrrd and mha outputs without compression: much faster to write and read, 2-8x "
                        "larger (the Slicer module reads its outputs back at once); with nii.gz inputs add "
                        "--format nii")
    _add_precision(p)
    p.add_argument("--prepare-ahead", type=int, default=0, metavar="N",
                   help="volumes of a batch read and preprocessed in worker threads while the network runs, for "
                        "a GPU machine with many cores; each holds its input and model-grid copy in memory "
                        "(default 0: one after the other, fastest on a few cores)")
    _add_options(p, DetectOptions)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--keep-going", action="store_true",
                   help="skip a volume that fails its checks, runs out of memory or meets a defect, and go on "
                        "with the others; the failures are listed at the end (exit code 1)")
    p.add_argument("--shard", type=_shard, metavar="K/N",
                   help="detect only share K of N of the inputs (K from 1 to N): every N-th input of the input "
                        "list (files as given, folders and globs sorted), starting at the K-th, for a cluster's "
                        "job array (SLURM: --array=1-N and --shard $SLURM_ARRAY_TASK_ID/N); the shards write the "
                        "files one run writes. Under torchrun each process takes its rank's share by itself")
    _common(p)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model on volumes with ground-truth anomaly masks")
    p.add_argument("--model", help="model file (default: the bundled brain T1 model)")
    p.add_argument("--foreground", choices=("brain", "template"),
                   help="how a brain model finds the brain: brain (default), the learned brain extractor (any "
                        "contrast, with or without skull); template, registration to the MNI T1 template")
    p.add_argument("--images", nargs="+", required=True, help="volumes (files, folders or globs)")
    p.add_argument("--masks", nargs="+", required=True,
                   help="ground-truth masks matched to images by name (<stem>, <stem>_mask, <stem>_seg...)")
    p.add_argument("--healthy", nargs="*", default=[], help="healthy control volumes (no lesion)")
    p.add_argument("--json", dest="json_out", help="also write the report as JSON to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--keep-going", action="store_true",
                   help="leave out a volume the model refuses (its checks, its contrast, the memory) and evaluate "
                        "the others; the skipped volumes are listed with the report (exit code 1)")
    _add_precision(p)
    _add_options(p, DetectOptions)
    _common(p)


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (default): mixed precision on GPUs, float32 on CPUs; float32: everywhere; bfloat16: "
                        "also on CPUs (2x faster network with AVX512-BF16/AMX, results move slightly)")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print a model card")
    p.add_argument("model", nargs="?", help="model file (default: the bundled brain T1 model)")
    p.add_argument("--json", action="store_true", help="print as JSON")


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="re-estimate a model's threshold on your own healthy scans",
                       description="Thresholds do not transfer between scanners and protocols: calibrate the "
                                   "model on healthy scans of your site and write a copy with the new threshold.")
    p.add_argument("--model", help="model file (default: the bundled brain T1 model)")
    p.add_argument("--healthy", nargs="+", required=True, help="healthy volumes (files, folders or globs)")
    p.add_argument("--out", required=True, help="model file to write (refused if it exists, see --overwrite)")
    p.add_argument("--target-fpr", type=float, help="share of healthy voxels allowed above the threshold")
    p.add_argument("--min-component-ml", type=float, help="smaller connected components are removed")
    p.add_argument("--foreground", choices=FOREGROUND_METHODS,
                   help="the foreground the new model records (default: a brain model's is brain, the learned "
                        "brain extractor; template: registration to the MNI T1 template)")
    p.add_argument("--overwrite", action="store_true")
    _common(p)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="generate a subject with a synthetic lesion and detect it (no downloads)")
    p.add_argument("--output-dir", default="demo_out")
    p.add_argument("--model", help="model file (default: the bundled brain T1 model)")
    p.add_argument("--lesion", default="mass", help="lesion kind: hyper, hypo, mass, subtle or foreign")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier demo in --output-dir")
    _common(p)


def _add_features(sub) -> None:
    p = sub.add_parser("features", help="write latent codes of volumes for downstream tasks",
                       description="One row per volume (mean of its slices' codes, each average-pooled per channel; "
                                   "a VAE's mean) and with --per-slice one row per slice it averages (those "
                                   "training uses: enough foreground); column 'slice' is -1 for a volume's row.")
    p.add_argument("inputs", nargs="+", help="volume files, folders or glob patterns")
    p.add_argument("--model", help="model file (default: the bundled brain T1 model)")
    p.add_argument("--out", required=True, help="feature table to write (.csv or .npy)")
    p.add_argument("--per-slice", action="store_true",
                   help="add one row per axial slice averaged into the volume's row (2D models)")
    p.add_argument("--format", choices=("csv", "npy"), help="table format (default: from --out's suffix)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _device(p)


def _add_classify(sub) -> None:
    p = sub.add_parser("classify", help="cross-validate a classifier on latent features",
                       description="Stratified k-fold cross-validation of a scikit-learn classifier on the volume "
                                   "rows of a feature table; accuracy and AUROC with 95% confidence intervals from "
                                   "a stratified bootstrap over the out-of-fold predictions.")
    p.add_argument("--features", required=True, help="table written by 'features' (.csv or .npy)")
    p.add_argument("--labels", required=True,
                   help="CSV with columns file,label (files matched by their path in the features table, or by name "
                        "where that is unique)")
    p.add_argument("--classifier", choices=("logreg", "forest"), default="logreg",
                   help="logreg: standardised logistic regression; forest: random forest")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", help="write a PNG of the latent space (PCA of the features) coloured by label")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate slices from a VAE's prior",
                       description="Decode codes drawn from N(0, I); writes samples.nii.gz (slice stack, model grid "
                                   "spacing, normalised intensities) and samples.png.")
    p.add_argument("--model", required=True, help="VAE model file (2D)")
    p.add_argument("--n", type=int, default=8, help="number of slices")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _device(p)


def _add_interpolate(sub) -> None:
    p = sub.add_parser("interpolate", help="decode a straight line between the codes of two volumes",
                       description="Linear interpolation between the codes (a VAE's means) of the central axial "
                                   "foreground slice of two volumes; writes interpolation.nii.gz and "
                                   "interpolation.png. Needs a 2D ae, sparse, vae or aae model.")
    p.add_argument("inputs", nargs=2, metavar="VOLUME", help="the two volumes")
    p.add_argument("--model", required=True, help="model file (2D ae, sparse, vae or aae)")
    p.add_argument("--steps", type=int, default=8, help="slices from the first to the second, both included")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _device(p)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a model as TorchScript, torch.export (pt2) or ONNX with a JSON "
                                      "sidecar",
                       description="The module maps model-grid input to the reconstruction; <out>.json keeps the "
                                   "preprocessing, detection settings and threshold for deployment.")
    p.add_argument("--model", help="model file (default: the bundled brain T1 model)")
    p.add_argument("--out", required=True, help="file to write, e.g. model.ts, model.pt2 or model.onnx")
    p.add_argument("--format", choices=EXPORT_FORMATS,
                   help="torchscript (deprecated from torch 2.13 on), pt2 (torch.export, its successor: "
                        "torch.export.load(file).module()) or onnx; default: as the --out name says (.pt2, .onnx), "
                        "else torchscript")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _add_segment_train(sub) -> None:
    p = sub.add_parser("segment-train", help="train a segmentation network from an autoencoder on labelled volumes",
                       description="Train a segmentation network on a few labelled volumes, starting from a trained "
                                   "autoencoder (--init): a dae's U-Net whole with a new last layer, or another "
                                   "type's encoder; with the autoencoder's preprocessing, MONAI's DiceCELoss and a "
                                   "fixed number of optimiser steps. The model file records the label values.")
    _add_options(p, SegmentTrainConfig)
    _common(p)


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment volumes with a segmentation model",
                       description="Write <stem>_segmentation (a labelmap of the model's label values, on the "
                                   "input's exact grid) and <stem>_segmentation.json (the volume of each label) "
                                   "for each input.")
    p.add_argument("--model", required=True, help="segmentation model file (written by segment-train)")
    p.add_argument("--images", nargs="+", required=True,
                   help="volume files, folders (of volume files or DICOM series) or glob patterns")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=("nii.gz", "nii", "nrrd", "mha"), help="output format (default: input's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _common(p)


def _add_serve(sub) -> None:
    sub.add_parser("serve", help="stay up and run the detections given on standard input (Slicer's worker)",
                   description='Reads JSON lines {"argv": ["detect", ...]} from standard input and runs each like '
                               'the command line would, answering with {"event": "served", "exit_code": N} after '
                               "its output; ends when its input closes. The Slicer module keeps one ready so that "
                               "a detection does not pay for starting a process.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m MedAutoencoderLib",
                                     description="Autoencoders for unsupervised anomaly detection in medical volumes.")
    parser.add_argument("--version", action="version", version=f"MedAutoencoderLib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_detect, _add_evaluate, _add_info, _add_demo, _add_calibrate, _add_features,
                _add_classify, _add_sample, _add_interpolate, _add_export, _add_segment_train, _add_segment,
                _add_serve):
        add(sub)
    return parser


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of a parsed ``train`` command line."""
    return from_options(TrainConfig, vars(args), device=args.device)


class StopOnSignal:
    """SIGINT/SIGTERM ask a training run to stop at the next step instead of killing it mid-save."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


def run_train(args: argparse.Namespace) -> int:
    stop = StopOnSignal()  # before the slow imports: a Ctrl-C during them is a stop request too
    from MedAutoencoderLib.api import train_model

    train_model(train_config_from_args(args), progress=make_reporter(args.progress), should_stop=stop)
    return 0


class _Terminated(BaseException):
    """Raised by SIGTERM's handler: a BaseException like KeyboardInterrupt, so that no ``except Exception`` on
    the way (concurrent.futures' callbacks, a check that tolerates failures) swallows it."""


@contextlib.contextmanager
def sigterm_cancels() -> Iterator[None]:
    """SIGTERM (``kill``, a cluster's time limit) cancels what runs, as Ctrl-C does, instead of ending the
    process at once: a detection then removes the files of the volume it was on and keeps those of the volumes
    it finished, and the command exits with :data:`EXIT_CANCELLED`. Only the main thread takes signals (and only
    on POSIX systems are they sent); elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except _Terminated:
        raise Cancelled("stopped by SIGTERM") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_detect(args: argparse.Namespace) -> int:
    from MedAutoencoderLib.api import detect_files, load_model
    from MedAutoencoderLib.io.volumes import find_volumes

    inputs = find_volumes(args.inputs)
    shard, device = _this_share(args, inputs)
    if shard is not None:
        share = shard.share(inputs)
        if args.progress != "none" or not share:
            print(f"shard {shard}: {len(share)} of {len(inputs)} input(s)" + ("; nothing to do" if not share else ""),
                  file=sys.stderr, flush=True)
        if not share:
            return 0
        inputs = share
    model = load_model(args.model, device=device, foreground=args.foreground)
    options = DetectOptions(threshold=args.threshold, device=device, precision=args.precision,
                            prepare_ahead=args.prepare_ahead, contrast=args.contrast)
    with sigterm_cancels():
        detect_files(inputs, args.output_dir, model, options, output_format=args.format, overwrite=args.overwrite,
                     progress=make_reporter(args.progress), keep_going=args.keep_going,
                     compress=not args.uncompressed)
    return 0


def _this_share(args: argparse.Namespace, inputs: Sequence[Path]):
    """This process's shard of ``inputs`` (None: all) and device, from --shard and, under torchrun, its rank
    (whose GPU is cuda:LOCAL_RANK). Inputs of other shards that would write the same outputs are refused here,
    as a single run refuses them."""
    from MedAutoencoderLib.detection.pipeline import detection_targets, refuse_shared_targets
    from MedAutoencoderLib.detection.shards import process_shard
    from MedAutoencoderLib.training.distributed import context_from_environment, training_device

    context = context_from_environment()
    shard = process_shard(args.shard, context)
    if shard is None:
        return None, args.device
    refuse_shared_targets({p: detection_targets(p, args.output_dir, args.format) for p in inputs})
    device = training_device(args.device, context)
    return shard, str(device) if context.launched else args.device


def _run_shard(args: argparse.Namespace) -> int:
    """``detect`` as one shard of a cohort: errors name the shard; under torchrun the processes finish
    together (see :mod:`~MedAutoencoderLib.detection.shards`)."""
    from MedAutoencoderLib.detection.shards import process_shard, ranks_finish_together
    from MedAutoencoderLib.training.distributed import context_from_environment

    context = context_from_environment()
    shard = process_shard(args.shard, context)
    if shard is None:
        return run_detect(args)
    where = f"shard {shard}" + (f" (rank {context.rank} of {context.world_size})" if context.launched else "")
    with ranks_finish_together(context):
        try:
            return run_detect(args)
        except MedAutoencoderError as exc:
            if exc.args and isinstance(exc.args[0], str):  # the same error, its message naming the shard
                exc.args = (f"{where}: {exc.args[0]}", *exc.args[1:])
            raise


def run_evaluate(args: argparse.Namespace) -> int:
    from MedAutoencoderLib.api import load_model
    from MedAutoencoderLib.detection.evaluation import (
        evaluate_model,
        finite_or_none,
        format_report,
        pair_images_with_masks,
    )
    from MedAutoencoderLib.io.volumes import find_volumes, require_new_file

    pairs = pair_images_with_masks(args.images, args.masks)
    if args.json_out:  # now, not after the whole evaluation; never over one of the scans (also with --overwrite)
        scans = [path for pair in pairs for path in pair] + (find_volumes(args.healthy) if args.healthy else [])
        require_new_file(args.json_out, "report.json", overwrite=args.overwrite,
                         protected=[*scans, *([Path(args.model)] if args.model else [])])
    model = load_model(args.model, device=args.device, foreground=args.foreground)
    options = DetectOptions(device=args.device, precision=args.precision, contrast=args.contrast)
    report = finite_or_none(evaluate_model(model, pairs, args.healthy, progress=make_reporter(args.progress),
                                           options=options, keep_going=args.keep_going))
    if args.json_out:
        write_text(Path(args.json_out), json.dumps(report, indent=2), overwrite=args.overwrite)
    print(format_report(report) if args.progress != "json" else json.dumps({"event": "report", **report}))
    return 1 if report["skipped"] else 0


def run_info(args: argparse.Namespace) -> int:
    from MedAutoencoderLib.api import describe_model

    card = describe_model(args.model)
    if args.json:
        print(json.dumps(card, indent=2))
        return 0
    if card.get("kind") == "segmentation":
        _print_segmentation_card(card)
        return 0
    calibration = card["calibration"]
    training = card["training"]
    print(f"MedAutoencoder model {card['file']} (library {card['library_version']})")
    print(f"  type: {card['model']['name']} {card['model']['spatial_dims']}D, channels {card['model']['channels']}, "
          f"{card['parameters']:,} parameters, loss {card['model']['reconstruction_loss']}")
    print(f"  preprocessing: spacing {card['preprocess']['spacing']} mm, grid {card['preprocess']['size']}, "
          f"{card['preprocess']['normalization']} normalisation, {card['preprocess'].get('foreground', 'otsu')} foreground")
    plan = (training or {}).get("grid_plan")
    if plan:
        print(f"  chosen from the data: {', '.join(plan['chosen'])} ({plan['reason']})")
    if training:
        print(f"  data: {training.get('n_volumes')} volume(s); validation {training.get('validation_files')}")
        print(f"  training: {training.get('epochs')} epochs, {training.get('seconds')} s on {training.get('device')}, "
              f"stopped by {training.get('stop_reason')}, best validation loss {training.get('best_val_loss')}")
    else:
        print("  data and training: not recorded")
    print(f"  threshold: {_calibration_text(calibration)}")
    by_contrast = calibration.get("by_contrast") or {}
    if by_contrast:
        print("  threshold per contrast: " + ", ".join(f"{name} {value:.5g}" for name, value in by_contrast.items()))
        levels = calibration.get("error_level_by_contrast") or {}
        if levels:
            print("  healthy error level per contrast: " + ", ".join(f"{name} {value:.4g}"
                                                                     for name, value in levels.items()))
    detection = card["detection"]
    print(f"  score: {detection['score']} ({detection['residual']} residual"
          + (", intensity prior " + detection["prior"] if detection.get("prior", "none") != "none" else "") + ")")
    contrasts = ", ".join(card["contrasts"]) if card["contrasts"] else "not recorded (the input's is not checked)"
    print(f"  made for contrasts: {contrasts}" + (f" ({card['contrasts_note']})" if card.get("contrasts_note") else ""))
    for source in (training or {}).get("sources", []):
        print(f"  source: {source}")
    if args.model is None:  # the bundled set: say which model takes the other contrasts
        from MedAutoencoderLib.io.loaded_model import CONTRAST_MODELS

        others: Dict[str, List[str]] = {}
        for contrast, path in CONTRAST_MODELS.items():
            if path.is_file():
                others.setdefault(str(path), []).append(contrast)
        for path, contrasts in others.items():
            print(f"bundled with it, for {', '.join(contrasts)}: {path} (info prints its card)")
    return 0


def _print_segmentation_card(card: Dict[str, Any]) -> None:
    training, labels = card["training"], card["labels"]
    init = training.get("init")
    print(f"MedAutoencoder segmentation model {card['file']} (library {card['library_version']})")
    print(f"  network: from a {card['model']['name']} {card['model']['spatial_dims']}D autoencoder, "
          f"{card['parameters']:,} parameters; started from "
          + (f"{init['model']} ({init['weights_loaded']} weight tensors)" if init else "scratch"))
    print(f"  preprocessing: spacing {card['preprocess']['spacing']} mm, grid {card['preprocess']['size']}, "
          f"{card['preprocess']['normalization']} normalisation, {card['preprocess']['foreground']} foreground")
    print("  labels: " + ", ".join(f"{v} {n}" for v, n in zip(labels["values"], labels["names"])))
    print(f"  training: {training.get('n_volumes')} labelled volume(s), {training.get('steps_done')} of "
          f"{training.get('steps')} steps of {training.get('batch_size')} slices, {training.get('seconds')} s on "
          f"{training.get('device')}, final loss {training.get('final_loss')}")
    contrasts = ", ".join(card["contrasts"]) if card["contrasts"] else "not recorded (the input's is not checked)"
    print(f"  made for contrasts: {contrasts}")


def _calibration_text(calibration: Dict[str, Any]) -> str:
    """The threshold and how it was chosen, as far as the model file records it (older or hand-made files may
    hold the threshold alone)."""
    threshold = calibration.get("threshold")
    if threshold is None:
        return "not calibrated"
    how = " ".join(part for part in (
        f"voxel FPR {calibration['target_fpr']}" if "target_fpr" in calibration else "",
        f"on {calibration['healthy_volumes']} healthy volume(s)" if "healthy_volumes" in calibration else "") if part)
    level = calibration.get("error_level")
    level_text = f"; healthy error level {level:.4g}: a scan reconstructed worse has its map divided by the ratio" \
        if level else ""
    return f"{threshold} ({how or 'calibration details not recorded'}){level_text}"


def run_calibrate(args: argparse.Namespace) -> int:
    from MedAutoencoderLib.api import DEFAULT_MODEL, calibrate_model

    calibrate_model(args.model or DEFAULT_MODEL, args.healthy, args.out, target_fpr=args.target_fpr,
                    min_component_ml=args.min_component_ml, foreground=args.foreground, device=args.device, overwrite=args.overwrite,
                    progress=make_reporter(args.progress))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from MedAutoencoderLib.cli.demo import run_demo as demo

    result = demo(args.output_dir, model_path=args.model, kind=args.lesion, seed=args.seed, device=args.device,
                  overwrite=args.overwrite, progress=make_reporter(args.progress))
    summary = result["summary"]
    print(f"{summary['lesion_kind']} lesion of {summary['lesion_ml']} mL: {summary['anomalous_volume_ml']} mL "
          f"flagged in {summary['n_components']} component(s), Dice {summary['dice_vs_truth']}; "
          f"overlay {result['outputs']['overlay']}")
    return 0


def run_features(args: argparse.Namespace) -> int:
    from MedAutoencoderLib.analysis.features import extract_features, feature_format, write_features
    from MedAutoencoderLib.api import DEFAULT_MODEL, load_model
    from MedAutoencoderLib.io.volumes import find_volumes, require_new_file

    inputs = find_volumes(args.inputs)
    feature_format(args.out, args.format)  # all checked before the volumes are encoded
    require_new_file(args.out, "features.csv", overwrite=args.overwrite,
                     protected=[*inputs, Path(args.model or DEFAULT_MODEL)])
    model = load_model(args.model, device=args.device)
    table = extract_features(model, inputs, per_slice=args.per_slice)
    path = write_features(table, args.out, args.format)
    print(f"wrote {len(table.files)} row(s) of {table.values.shape[1]} features to {path}")
    return 0


def run_classify(args: argparse.Namespace) -> int:
    from MedAutoencoderLib.analysis.classification import ClassifyConfig, cross_validate, labelled_features, read_labels
    from MedAutoencoderLib.analysis.features import read_features
    from MedAutoencoderLib.io.volumes import require_new_file

    if args.plot:  # checked before the cross-validation; the tables given are never replaced
        require_new_file(args.plot, "latent_space.png", overwrite=args.overwrite,
                         protected=[Path(args.features), Path(args.labels)])
    features, labels, _ = labelled_features(read_features(args.features), read_labels(args.labels))
    config = ClassifyConfig(classifier=args.classifier, folds=args.folds, bootstrap_resamples=args.bootstrap,
                            seed=args.seed)
    print(cross_validate(features, labels, config).format())
    if args.plot:
        from MedAutoencoderLib.analysis.latent_plot import plot_latent_pca

        print(f"latent space plot: {plot_latent_pca(features, labels, args.plot)}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from MedAutoencoderLib.analysis.generation import sample_prior, write_generated
    from MedAutoencoderLib.api import load_model

    model = load_model(args.model, device=args.device)
    images = sample_prior(model, args.n, args.seed)
    written = write_generated(images, model, args.output_dir, "samples", min(args.n, 8), args.overwrite)
    print(f"wrote {args.n} sample(s): {written['volume']}, {written['picture']}")
    return 0


def run_interpolate(args: argparse.Namespace) -> int:
    from MedAutoencoderLib.analysis.generation import interpolate, write_generated
    from MedAutoencoderLib.api import load_model
    from MedAutoencoderLib.io.volumes import read_image

    model = load_model(args.model, device=args.device)
    first, second = (read_image(path) for path in args.inputs)
    images = interpolate(model, first, second, args.steps, names=tuple(args.inputs))
    written = write_generated(images, model, args.output_dir, "interpolation", min(args.steps, 8), args.overwrite,
                              protected=[Path(p) for p in args.inputs])
    print(f"wrote {args.steps} interpolation step(s): {written['volume']}, {written['picture']}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from MedAutoencoderLib.api import load_model
    from MedAutoencoderLib.io.export import export_model

    written = export_model(load_model(args.model, device="cpu"), args.out, args.format, args.overwrite)
    print(f"wrote {written['module']} ({written['format']}) and {written['sidecar']}")
    return 0


def run_segment_train(args: argparse.Namespace) -> int:
    stop = StopOnSignal()  # before the slow imports: a Ctrl-C during them is a stop request too
    from MedAutoencoderLib.api import segment_train

    segment_train(from_options(SegmentTrainConfig, vars(args), device=args.device),
                  progress=make_reporter(args.progress), should_stop=stop)
    return 0


def run_segment(args: argparse.Namespace) -> int:
    from MedAutoencoderLib.api import segment

    with sigterm_cancels():
        segment(args.images, args.out, args.model, device=args.device, output_format=args.format,
                overwrite=args.overwrite, progress=make_reporter(args.progress))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from MedAutoencoderLib.worker.serve import serve

    return serve(sys.stdin, run=main)


COMMANDS = {"train": run_train, "detect": _run_shard, "evaluate": run_evaluate, "info": run_info,
            "demo": run_demo, "calibrate": run_calibrate,
            "features": run_features, "classify": run_classify, "sample": run_sample,
            "interpolate": run_interpolate, "export": run_export, "segment-train": run_segment_train,
            "segment": run_segment, "serve": run_serve}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    json_progress = getattr(args, "progress", None) == "json"
    try:
        return COMMANDS[args.command](args)
    except Cancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:  # Ctrl-C: what it interrupted has cleaned up on the way here; no traceback
        print("cancelled: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_CANCELLED
    except MedAutoencoderError as exc:
        return _report_error(str(exc), json_progress)
    except OSError as exc:  # unwritable output folder, a file where a folder should be, disk full...
        where = f"{exc.filename}: " if exc.filename else ""
        return _report_error(f"{where}{exc.strerror or exc}", json_progress)
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise  # a defect: its traceback is what a report needs
        return _report_error(f"this machine ran out of memory during {args.command}; {OUT_OF_MEMORY_ADVICE}",
                             json_progress)


def _report_error(message: str, json_progress: bool) -> int:
    if json_progress:
        print(json.dumps({"event": "error", "message": message}), flush=True)
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR
