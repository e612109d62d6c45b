"""The library's public entry points: load a model, detect anomalies, train.

These are what the command line, the Slicer module and console scripts call; each is one call. Detection itself
lives in :mod:`MedAutoencoderLib.detection.pipeline` and model loading in :mod:`MedAutoencoderLib.io.loaded_model`;
they are re-exported here so that one import serves every use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from MedAutoencoderLib.config import SegmentTrainConfig, TrainConfig, to_plain
from MedAutoencoderLib.detection.pipeline import (
    DetectionRun,
    OutputCallback,
    detect_files,
    detect_image,
    detect_prepared,
    detection_targets,
    run_detection,
)
from MedAutoencoderLib.detection.scoring import calibrate_threshold, reconstruct_and_score, require_scoring_region
from MedAutoencoderLib.io.checkpoint import (
    FORMAT,
    SEGMENTATION_FORMAT,
    ModelRecord,
    network_from_payload,
    read_model_file,
    record_from_payload,
    save_model,
)
from MedAutoencoderLib.io.loaded_model import DEFAULT_MODEL, LoadedModel, load_model
from MedAutoencoderLib.io.volumes import OUTPUT_KINDS, find_volumes, read_image, require_new_file
from MedAutoencoderLib.preprocessing.prepare import prepare_volume
from MedAutoencoderLib.runtime.progress import ProgressCallback, ProgressTracker
from MedAutoencoderLib.training.trainer import StopRequest, Trainer

__all__ = [
    "DEFAULT_MODEL",
    "OUTPUT_KINDS",
    "DetectionRun",
    "LoadedModel",
    "OutputCallback",
    "calibrate_model",
    "describe_model",
    "detect_files",
    "detect_image",
    "detect_prepared",
    "detection_targets",
    "load_model",
    "run_detection",
    "segment",
    "segment_train",
    "train_model",
]


def train_model(config: TrainConfig, progress: Optional[ProgressCallback] = None,
                should_stop: Optional[StopRequest] = None) -> Path:
    """Train a model as ``config`` says and return the path of the written model file."""
    return Trainer(config, progress=progress, should_stop=should_stop).run()


def calibrate_model(model_path: Union[str, Path], healthy: Sequence[Union[str, Path]], out: Union[str, Path],
                    target_fpr: Optional[float] = None, foreground: Optional[str] = None, device: str = "auto",
                    overwrite: bool = False, progress: Optional[ProgressCallback] = None,
                    min_component_ml: Optional[float] = None) -> Path:
    """Re-estimate a model's threshold on the user's own healthy scans (thresholds do not transfer between
    scanners and protocols) and write the model with it to ``out``; optionally change the target false-positive
    rate, the smallest component kept, or the foreground method (``"template"`` adds brain extraction by
    registration)."""
    source, target = Path(model_path), Path(out)
    paths = find_volumes(healthy)
    require_new_file(target, "calibrated.pt", overwrite=overwrite, protected=[*paths, source])
    model = load_model(source, device=device)
    record = model.record
    if target_fpr is not None:
        record.detection.target_fpr = target_fpr
    if min_component_ml is not None:
        record.detection.min_component_ml = min_component_ml
    if foreground is not None:
        record.preprocess.foreground = foreground
    record.preprocess.validate()
    record.detection.validate()
    tracker = ProgressTracker(progress, total=len(paths))
    tracker.emit("start", 0, f"calibrating on {len(paths)} healthy volume(s)")
    scored = []
    for i, path in enumerate(paths):
        prepared = prepare_volume(read_image(path), record.preprocess, name=str(path))
        require_scoring_region(prepared, record.detection)
        scored.append(reconstruct_and_score(model.network, prepared, record.model, record.detection,
                                            model.device)[1])
        tracker.emit("progress", i + 1, f"{path.name} ({i + 1}/{len(paths)})")
    record.calibration = {**calibrate_threshold(scored, record.detection.target_fpr),
                          "calibrated_on": [p.name for p in paths]}
    save_model(target, model.network, record)
    tracker.emit("done", len(paths), f"threshold {record.threshold:.5f}; model saved to {target}",
                 outputs={"model": str(target)})
    return target


def describe_model(model_path: Union[str, Path, None] = None) -> Dict[str, object]:
    """The model card of a file (``None``: the bundled default model): type, data, preprocessing, threshold and
    metrics, as plain data (a segmentation model's card has ``kind`` "segmentation", its labels and training). The file is checked as :func:`load_model` checks it (weights included), so a damaged
    one gives the same error."""
    path = Path(model_path) if model_path is not None else DEFAULT_MODEL
    payload = read_model_file(path, expected=(FORMAT, SEGMENTATION_FORMAT))
    if payload["format"] == SEGMENTATION_FORMAT:
        from MedAutoencoderLib.segmentation.model_file import describe_segmentation_model

        return describe_segmentation_model(path)
    record = record_from_payload(payload, path)
    network = network_from_payload(payload, record, path)
    training = {k: v for k, v in record.training.items() if k != "history"}
    history: List[dict] = record.training.get("history", [])
    return {"file": str(path), "library_version": record.library_version, "model": to_plain(record.model),
            "preprocess": to_plain(record.preprocess), "detection": to_plain(record.detection),
            "calibration": record.calibration, "training": training,
            "last_epoch": history[-1] if history else None,
            "parameters": sum(t.numel() for t in network.state_dict().values()),
            **_contrasts_card(record)}


def _contrasts_card(record: ModelRecord) -> Dict[str, object]:
    """The model card's contrasts: those recorded, or those assumed for an older file, with a note."""
    from MedAutoencoderLib.brain.contrast import model_contrasts

    contrasts, note = model_contrasts(record.contrasts, record.preprocess.foreground)
    return {"contrasts": contrasts, **({"contrasts_note": note} if note else {})}

def segment_train(config: SegmentTrainConfig, progress: Optional[ProgressCallback] = None,
                  should_stop: Optional[StopRequest] = None) -> Path:
    """Train a segmentation network from a trained autoencoder on labelled volumes.

    Args:
        config: images, label maps, the autoencoder to start from (``init``: a model file, ``"default"`` for the
            bundled one, ``None``/``"none"`` from scratch), the budget in optimiser steps, the output file.
        progress: progress events (``done`` carries ``outputs={"model": path}``).
        should_stop: a cooperative stop: the model is saved as it is then and ``Cancelled`` raised.

    Returns:
        The path of the written segmentation model file.

    Raises:
        MedAutoencoderError: unusable inputs, options or autoencoder (the message names which); nothing is
            written then.
    """
    from MedAutoencoderLib.segmentation.trainer import train_segmentation

    return train_segmentation(config, progress=progress, should_stop=should_stop)


def segment(images: Sequence[Union[str, Path]], output_dir: Union[str, Path], model_path: Union[str, Path],
            device: str = "auto", output_format: Optional[str] = None, overwrite: bool = False,
            progress: Optional[ProgressCallback] = None) -> Dict[str, Dict[str, str]]:
    """Segment volumes with a segmentation model: ``<stem>_segmentation`` (a labelmap of the model's label values
    on the input's exact grid) and ``<stem>_segmentation.json`` per input.

    Args:
        images: volume files, folders or glob patterns.
        output_dir: the output folder (made when missing).
        model_path: a model file written by :func:`segment_train`.
        device: auto, cpu, cuda or cuda:N.
        output_format: nii.gz, nii, nrrd or mha (default: the input's).
        overwrite: replace earlier outputs (an input is never replaced).
        progress: progress events.

    Returns:
        Input path -> its output files.

    Raises:
        MedAutoencoderError: an unusable input or model file, or outputs that exist (the message names which).
    """
    from MedAutoencoderLib.segmentation.inference import segment_files
    from MedAutoencoderLib.segmentation.model_file import load_segmentation_model

    return segment_files(images, output_dir, load_segmentation_model(model_path, device=device),
                         output_format=output_format, overwrite=overwrite, progress=progress)
