"""Model files: everything needed to use a model, stored as plain data plus tensors.

A model file carries the architecture and its config, the preprocessing, the detection settings with the
threshold calibrated on healthy data, a summary of the training data and metrics, and the library version.
It loads with ``torch.load(weights_only=True)``: no pickled code runs when a user opens a model they were sent.
Files are written through a temporary name so that an interrupted save never leaves a broken model behind.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from MedAutoencoderLib import __version__
from MedAutoencoderLib.config import DetectionConfig, ModelConfig, PreprocessConfig, from_plain, to_plain
from MedAutoencoderLib.errors import ConfigurationError, ModelFileError, OutputLocationError
from MedAutoencoderLib.io.volumes import replacing, volume_suffix
from MedAutoencoderLib.networks.autoencoders import build_network

FORMAT = "MedAutoencoder-model"
FORMAT_VERSION = 1
#: The marker of a segmentation model file (:mod:`MedAutoencoderLib.segmentation.model_file`).
SEGMENTATION_FORMAT = "MedAutoencoder-segmentation"


@dataclass
class ModelRecord:
    """The content of a model file apart from the weights, as config objects."""

    model: ModelConfig
    preprocess: PreprocessConfig
    detection: DetectionConfig
    # threshold, target_fpr, volumes, voxels, error_level (the healthy scans' median residual); optionally
    # "by_foreground" and "error_level_by_foreground": those calibrated with each brain mask, and "by_contrast" and
    # "error_level_by_contrast": one per MRI contrast of a model made for several
    calibration: Dict[str, Any] = field(default_factory=dict)
    training: Dict[str, Any] = field(default_factory=dict)  # data summary, epochs, losses, time, device
    library_version: str = __version__
    # the MRI contrasts (brain.contrast.CONTRASTS) the model is made for; None: not recorded (older files)
    contrasts: Optional[List[str]] = None

    @property
    def threshold(self) -> Optional[float]:
        """The calibrated threshold; for a model calibrated with several brain masks, the one of the brain mask in
        use (``preprocess.foreground``): the masks differ at the brain's edge, where residuals are largest."""
        by_foreground = self.calibration.get("by_foreground") or {}
        return by_foreground.get(self.preprocess.foreground, self.calibration.get("threshold"))

    def threshold_for(self, contrast: Optional[str]) -> Optional[float]:
        """The calibrated threshold for an input of ``contrast``: a model made for several contrasts is
        calibrated on each (their residuals differ), else :attr:`threshold`."""
        by_contrast = self.calibration.get("by_contrast") or {}
        return by_contrast.get(contrast, self.threshold) if contrast else self.threshold

    def error_level_for(self, contrast: Optional[str]) -> Optional[float]:
        """The healthy calibration scans' error level (``detection.scoring.error_level``) for an input of
        ``contrast``; None for a model calibrated before error levels were recorded (its maps are not scaled)."""
        by_contrast = self.calibration.get("error_level_by_contrast") or {}
        level = by_contrast.get(contrast) if contrast else None
        if level is None:  # the level measured with the brain mask in use, as its threshold was
            level = (self.calibration.get("error_level_by_foreground") or {}).get(self.preprocess.foreground)
        return level if level is not None else self.calibration.get("error_level")


def save_model(path: Path, network: nn.Module, record: ModelRecord,
               training_state: Optional[Dict[str, Any]] = None) -> Path:
    """Write a model file atomically; ``training_state`` (optimizer, epoch...) makes it resumable."""
    payload: Dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": record.library_version,
        "model": to_plain(record.model),
        "preprocess": to_plain(record.preprocess),
        "detection": to_plain(record.detection),
        "calibration": dict(record.calibration),
        "training": dict(record.training),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
    }
    if record.contrasts is not None:
        payload["contrasts"] = list(record.contrasts)
    if training_state is not None:
        payload["training_state"] = training_state
    path = Path(path)
    with replacing(path) as temporary:
        try:
            torch.save(payload, temporary)
        except (RuntimeError, OSError) as exc:  # torch reports a failed write as RuntimeError (enforce fail...)
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise OutputLocationError(f"{path}: the model file cannot be written ({reason[:200]})") from None
    return path


def read_model_file(path: Path, expected: Union[str, Tuple[str, ...]] = FORMAT) -> Dict[str, Any]:
    """The raw payload of a model file, with clear errors for missing, corrupt or foreign files.

    Args:
        path: the file.
        expected: the marker it must carry: :data:`FORMAT` (an autoencoder) or :data:`SEGMENTATION_FORMAT`, or a
            tuple of those accepted.

    Returns:
        The payload (plain data and tensors).

    Raises:
        ModelFileError: missing, unreadable, foreign, the other kind of model, or newer than this library.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder; give the model file in it (a .pt file)")
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        with warnings.catch_warnings():  # a TorchScript export is explained below, without torch's advice
            warnings.filterwarnings("ignore", message=".*TorchScript archive", category=UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler fails on foreign bytes in many ways (IndexError, KeyError...)
        raise ModelFileError(f"{path}: not a readable MedAutoencoder model file ({_unreadable_because(path, exc)})"
                             ) from None
    accepted = (expected,) if isinstance(expected, str) else tuple(expected)
    if not isinstance(payload, dict) or payload.get("format") not in accepted:
        raise ModelFileError(_other_kind(path, payload.get("format") if isinstance(payload, dict) else None,
                                         accepted[0]))
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: made by MedAutoencoderLib {payload.get('library_version')} (format "
            f"{payload['format_version']}); this is {__version__}, which reads format {FORMAT_VERSION}: upgrade"
        )
    return payload


def _other_kind(path: Path, found: Any, expected: str) -> str:
    """Why a readable PyTorch file is not the model asked for: the other kind of ours, or a foreign file."""
    if found == SEGMENTATION_FORMAT:
        return f"{path}: is a segmentation model (written by segment-train); this needs an autoencoder (written by train)"
    if found == FORMAT and expected == SEGMENTATION_FORMAT:
        return f"{path}: is an autoencoder model (written by train), not a segmentation model; make one from it " \
               f"with segment-train --init {path}"
    return f"{path}: is a PyTorch file but not a MedAutoencoder model (no '{expected}' marker)"


def _unreadable_because(path: Path, error: Exception) -> str:
    """Why ``torch.load`` refused a file, in the user's terms: never torch's advice to load it with
    ``weights_only=False``, which would run whatever code a foreign file carries."""
    if volume_suffix(path):
        return "it is an image volume; the model file is a .pt written by train or calibrate"
    try:
        with open(path, "rb") as stream:
            start = stream.read(4)
    except OSError as exc:  # no permission to read it, say
        return exc.strerror or str(exc)
    if not (start == b"PK\x03\x04" or start[:1] == b"\x80"):  # a PyTorch zip archive or a (legacy) pickle
        return "its bytes are not a PyTorch file"
    export = _export_kind(path) if start == b"PK\x03\x04" else None
    if export:
        return f"it is a {export} export for deployment, written by export; the model file is the .pt written by " \
               "train or calibrate"
    if isinstance(error, pickle.UnpicklingError):
        return "it holds Python objects, not a model's plain data and tensors; such files are not opened, for safety"
    return "it is damaged or truncated"


def _export_kind(path: Path) -> Optional[str]:
    """Which export a zip archive is, if any: TorchScript (``torch.jit.save``) archives hold a constants.pkl record,
    ``torch.export`` programs (``.pt2``) an archive_format record; files written by ``torch.save`` have neither."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    if any(name.endswith("/constants.pkl") for name in names):
        return "TorchScript"
    if any(name.endswith("/archive_format") for name in names):
        return "torch.export (pt2)"
    return None


def record_from_payload(payload: Dict[str, Any], path: Path) -> ModelRecord:
    """Config objects of a model file, checked; a missing section or unknown setting names the file."""
    version = payload.get("library_version", "unknown")
    sections = {"model": ModelConfig, "preprocess": PreprocessConfig, "detection": DetectionConfig}
    configs = {}
    for section, cls in sections.items():
        if not isinstance(payload.get(section), dict):
            raise ModelFileError(f"{path}: incomplete model file (no '{section}' section)")
        try:
            configs[section] = from_plain(cls, payload[section], str(path))
            configs[section].validate()
        except ConfigurationError as exc:
            message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            raise ModelFileError(f"{message} (made by MedAutoencoderLib {version}; this is {__version__})") from None
    for optional in ("calibration", "training"):
        if not isinstance(payload.get(optional, {}), dict):
            raise ModelFileError(f"{path}: damaged model file (its '{optional}' section is not a table)")
    contrasts = payload.get("contrasts")
    if contrasts is not None and not (isinstance(contrasts, list) and all(isinstance(c, str) for c in contrasts)):
        raise ModelFileError(f"{path}: damaged model file (its 'contrasts' are not a list of names)")
    return ModelRecord(calibration=payload.get("calibration", {}), training=payload.get("training", {}),
                       library_version=version, contrasts=contrasts, **configs)


def network_from_payload(payload: Dict[str, Any], record: ModelRecord, path: Path) -> nn.Module:
    """Rebuild the network and load its weights; a mismatch is reported as a corrupt model file."""
    if not isinstance(payload.get("state_dict"), dict):
        raise ModelFileError(f"{path}: incomplete model file (no 'state_dict' section: it holds no weights)")
    network = build_network(record.model)
    try:
        network.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise ModelFileError(f"{path}: weights do not match the stored architecture ({str(exc)[:200]})") from None
    return network
