"""Segmentation model files: the network's weights with the architecture, preprocessing and label values it was
trained with, as plain data and tensors (``torch.load(weights_only=True)``, like the autoencoders' files).

A segmentation model is always used with the preprocessing it was trained with (grid, spacing, normalisation,
foreground) and writes the label values it was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from MedAutoencoderLib import __version__
from MedAutoencoderLib.config import ModelConfig, PreprocessConfig, from_plain, to_plain
from MedAutoencoderLib.errors import ConfigurationError, ModelFileError, OutputLocationError
from MedAutoencoderLib.io.checkpoint import FORMAT_VERSION, SEGMENTATION_FORMAT, read_model_file
from MedAutoencoderLib.io.volumes import replacing
from MedAutoencoderLib.runtime.device import resolve_device
from MedAutoencoderLib.segmentation.labels import LabelSet
from MedAutoencoderLib.segmentation.networks import build_segmentation_network


@dataclass
class SegmentationRecord:
    """A segmentation model file apart from its weights."""

    model: ModelConfig  # the architecture of the autoencoder the network is made from
    preprocess: PreprocessConfig
    labels: LabelSet
    training: Dict[str, Any] = field(default_factory=dict)  # data, init, steps, losses, time, device
    library_version: str = __version__
    contrasts: Optional[List[str]] = None  # the MRI contrasts it is made for (None: not checked)


@dataclass
class LoadedSegmentationModel:
    """A segmentation network ready for inference, with its record."""

    network: nn.Module
    record: SegmentationRecord
    device: torch.device
    path: Optional[Path] = None


def save_segmentation_model(path: Union[str, Path], network: nn.Module, record: SegmentationRecord) -> Path:
    """Write a segmentation model file through a temporary name (an interrupted save leaves no broken file).

    Args:
        path: the file to write.
        network: the trained network.
        record: what it was trained with.

    Returns:
        ``path``.

    Raises:
        OutputLocationError: the file cannot be written.
    """
    payload: Dict[str, Any] = {
        "format": SEGMENTATION_FORMAT, "format_version": FORMAT_VERSION, "library_version": record.library_version,
        "model": to_plain(record.model), "preprocess": to_plain(record.preprocess),
        "labels": record.labels.to_plain(), "training": dict(record.training),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
    }
    if record.contrasts is not None:
        payload["contrasts"] = list(record.contrasts)
    target = Path(path)
    with replacing(target) as temporary:
        try:
            torch.save(payload, temporary)
        except (RuntimeError, OSError) as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise OutputLocationError(f"{target}: the model file cannot be written ({reason[:200]})") from None
    return target


def load_segmentation_model(path: Union[str, Path], device: str = "auto") -> LoadedSegmentationModel:
    """Load a segmentation model file written by ``segment-train``.

    Args:
        path: the file.
        device: auto, cpu, cuda or cuda:N.

    Returns:
        The network in eval mode on ``device`` with its record.

    Raises:
        ModelFileError: missing, unreadable, an autoencoder model, damaged, or made by a newer library.
    """
    model_path = Path(path)
    payload = read_model_file(model_path, expected=SEGMENTATION_FORMAT)
    version = payload.get("library_version", "unknown")
    try:
        model = from_plain(ModelConfig, payload["model"], str(model_path))
        preprocess = from_plain(PreprocessConfig, payload["preprocess"], str(model_path))
        model.validate()
        preprocess.validate()
        labels = LabelSet.from_plain(payload["labels"])
        state = payload["state_dict"]
    except (KeyError, TypeError, ValueError, ConfigurationError) as exc:
        raise ModelFileError(f"{model_path}: damaged segmentation model file ({str(exc)[:200]}; made by "
                             f"MedAutoencoderLib {version}, this is {__version__})") from None
    record = SegmentationRecord(model=model, preprocess=preprocess, labels=labels,
                                training=payload.get("training", {}), library_version=version,
                                contrasts=payload.get("contrasts"))
    network = build_segmentation_network(model, labels.n_classes)
    try:
        network.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise ModelFileError(f"{model_path}: weights do not match the stored architecture ({str(exc)[:200]})") from None
    torch_device = resolve_device(device)
    return LoadedSegmentationModel(network=network.to(torch_device).eval(), record=record, device=torch_device,
                                   path=model_path)


def describe_segmentation_model(path: Union[str, Path]) -> Dict[str, Any]:
    """The model card of a segmentation model file, as plain data (checked as :func:`load_segmentation_model`
    checks it).

    Args:
        path: the file.

    Returns:
        ``kind`` ("segmentation"), file, library version, architecture, preprocessing, labels, contrasts,
        training (without the loss history), parameters.

    Raises:
        ModelFileError: as :func:`load_segmentation_model`.
    """
    model = load_segmentation_model(path, device="cpu")
    record = model.record
    return {"kind": "segmentation", "file": str(path), "library_version": record.library_version,
            "model": to_plain(record.model), "preprocess": to_plain(record.preprocess),
            "labels": record.labels.to_plain(), "contrasts": record.contrasts,
            "training": {k: v for k, v in record.training.items() if k != "history"},
            "parameters": sum(t.numel() for t in model.network.state_dict().values())}
