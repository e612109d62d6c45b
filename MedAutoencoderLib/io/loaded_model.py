"""A model file loaded for inference: the network on its device with the configuration it was trained with."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from MedAutoencoderLib.config import BRAIN_FOREGROUNDS
from MedAutoencoderLib.errors import ConfigurationError, ModelFileError
from MedAutoencoderLib.io.checkpoint import ModelRecord, network_from_payload, read_model_file, record_from_payload
from MedAutoencoderLib.runtime.device import configure_for_speed, resolve_device

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default_brain_t1.pt"


@dataclass
class LoadedModel:
    """A network ready for inference with the configuration it was trained with."""

    network: nn.Module
    record: ModelRecord
    device: torch.device
    path: Optional[Path] = None


def brain_foreground(trained_with: str, requested: Optional[str], model_path: Path) -> str:
    """How a model finds its foreground here: a brain model (trained with the "brain" or "template" foreground)
    uses ``requested`` ("brain": the learned extractor, "template": the registration) or, by default, the learned
    extractor, whichever it was trained with; another model keeps its own.

    Raises:
        ConfigurationError: a brain foreground was requested for a model that was not trained on brains.
    """
    if trained_with not in BRAIN_FOREGROUNDS:
        if requested is not None and requested != trained_with:
            raise ConfigurationError(f"{model_path.name} was trained with the {trained_with!r} foreground, not on "
                                     f"brains: --foreground {requested} applies to brain models only")
        return trained_with
    return requested or "brain"


def load_model(path: Union[str, Path, None] = None, device: str = "auto",
               foreground: Optional[str] = None) -> LoadedModel:
    """Load a model file (``None``: the bundled default brain T1 model) onto ``device``.

    ``foreground``: how a brain model finds the brain (:func:`brain_foreground`): ``None`` or ``"brain"`` the
    learned extractor, ``"template"`` the registration of the MNI template.
    """
    model_path = Path(path) if path is not None else DEFAULT_MODEL
    if path is None and not model_path.is_file():
        raise ModelFileError(f"no bundled default model at {model_path}; pass a model file (--model)")
    payload = read_model_file(model_path)
    record = record_from_payload(payload, model_path)
    record.preprocess.foreground = brain_foreground(record.preprocess.foreground, foreground, model_path)
    torch_device = resolve_device(device)
    configure_for_speed(torch_device)
    network = network_from_payload(payload, record, model_path).to(torch_device).eval()
    return LoadedModel(network=network, record=record, device=torch_device, path=model_path)
