"""A model file loaded for inference: the network on its device with the configuration it was trained with."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import nn

from MedAutoencoderLib.config import BRAIN_FOREGROUNDS
from MedAutoencoderLib.errors import ConfigurationError, ModelFileError
from MedAutoencoderLib.io.checkpoint import ModelRecord, network_from_payload, read_model_file, record_from_payload
from MedAutoencoderLib.runtime.device import configure_for_speed, resolve_device

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default_brain_t1.pt"
#: The bundled models of the contrasts the default (T1) model is not made for: without --model, detection runs
#: an input of one of these contrasts through its model instead of refusing it.
CONTRAST_MODELS = {name: DEFAULT_MODEL.parent / "brain_t2_flair_pd.pt" for name in ("T2", "FLAIR", "PD")}


def bundled_contrasts() -> list:
    """The MRI contrasts the bundled models here are made for: T1 (the default model) and those of
    :data:`CONTRAST_MODELS` whose file is present."""
    return ["T1", *(name for name, path in CONTRAST_MODELS.items() if path.is_file())]


@dataclass
class LoadedModel:
    """A network ready for inference with the configuration it was trained with."""

    network: nn.Module
    record: ModelRecord
    device: torch.device
    path: Optional[Path] = None
    # the bundled set (loaded without a model file named): the bundled model of each other contrast, loaded
    # when an input of that contrast comes (:meth:`for_contrast`)
    bundled_set: bool = False
    foreground_asked: Optional[str] = None
    _others: Dict[Path, "LoadedModel"] = field(default_factory=dict, repr=False)

    def for_contrast(self, contrast: Optional[str]) -> "LoadedModel":
        """The model to run on an input of ``contrast``: this one, or for the bundled set the bundled model made
        for that contrast (loaded once, on the same device and with the same brain mask)."""
        path = CONTRAST_MODELS.get(contrast or "") if self.bundled_set else None
        if path is None or not path.is_file() or path == self.path:
            return self
        if path not in self._others:
            other = load_model(path, device=str(self.device), foreground=self.foreground_asked)
            self._others[path] = other
        return self._others[path]


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
    """Load a model file (``None``: the bundled set: the default brain T1 model, and the bundled model of another
    contrast for inputs of that contrast, :meth:`LoadedModel.for_contrast`) onto ``device``.

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
    return LoadedModel(network=network, record=record, device=torch_device, path=model_path,
                       bundled_set=path is None, foreground_asked=foreground)
