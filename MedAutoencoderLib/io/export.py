"""Exporting a model for deployment without this library's Python code: TorchScript, a ``torch.export`` program
(``.pt2``: TorchScript is deprecated from torch 2.13 on, ``torch.export`` is its successor) or ONNX, plus a JSON
sidecar.

The exported module maps a batch of model-grid input ``(B, 1, y, x)`` (2D) or ``(B, 1, z, y, x)`` patches (3D) to
the network's reconstruction output of the same shape (logits for models trained with the BCE loss: the sidecar
says ``"activation": "sigmoid"``). Everything else a deployment must reproduce - resampling onto the model grid,
normalisation, residual and filtering, erosion, the calibrated threshold - is not a network operation, so it is
written beside the module as ``<file>.json`` in the same plain form as the model file. :func:`load_exported`
reads both back into a :class:`LoadedModel`, so the library's own detection runs on the exported module (which
is how the export is verified).
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from MedAutoencoderLib import __version__
from MedAutoencoderLib.config import EXPORT_FORMATS, to_plain
from MedAutoencoderLib.detection.inference import WINDOW_BLEND, WINDOW_OVERLAP
from MedAutoencoderLib.errors import ConfigurationError, ModelFileError
from MedAutoencoderLib.io.checkpoint import ModelRecord, record_from_payload
from MedAutoencoderLib.io.loaded_model import LoadedModel
from MedAutoencoderLib.io.volumes import refuse_overwrite, replacing, require_new_file, write_text
from MedAutoencoderLib.runtime.device import resolve_device

_EXAMPLE_NAMES = {"torchscript": "model.ts", "pt2": "model.pt2", "onnx": "model.onnx"}
# The names each format's files usually have: a name of one format's is refused for another's (an ONNX export
# named .ts, a TorchScript one named .onnx, opened by onnxruntime: "INVALID_PROTOBUF").
_FORMAT_SUFFIXES = {"torchscript": (".ts", ".pt", ".pth", ".torchscript"), "pt2": (".pt2",), "onnx": (".onnx",)}
_LOADABLE_FORMATS = ("torchscript", "pt2")
SIDECAR_FORMAT = "MedAutoencoder-export"


class ReconstructionOnly(nn.Module):
    """The network with a tensor-in, tensor-out signature (tracing and ONNX want tensors, not dicts)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)["reconstruction"]


class ExportedNetwork(nn.Module):
    """A loaded TorchScript module or ``torch.export`` program behind the library's network interface (a dict
    with ``reconstruction``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"reconstruction": self.module(x)}

    def train(self, mode: bool = True) -> "ExportedNetwork":
        """The module was recorded in inference mode at export and stays so (a ``torch.export`` program refuses
        ``train()``, also as ``eval()``)."""
        self.training = mode
        return self


def input_shape(record: ModelRecord, batch: int = 2) -> Tuple[int, ...]:
    """Shape of an example input batch: axial slices of the model grid (2D) or patches (3D), (z, y, x) order."""
    if record.model.spatial_dims == 2:
        size_x, size_y, _ = record.preprocess.size
        return (batch, 1, size_y, size_x)
    return (batch, 1, *reversed(record.model.patch_size))


def sidecar(record: ModelRecord, source: Path, fmt: str) -> Dict[str, Any]:
    """Everything besides the network that detection needs, as plain data (readable by ``record_from_payload``)."""
    shape = input_shape(record)
    axes = "batch, channel, y, x" if record.model.spatial_dims == 2 else "batch, channel, z, y, x"
    return {
        "format": SIDECAR_FORMAT,
        "library_version": __version__,
        "source_model": str(source),
        "export": {
            "format": fmt,
            "input": {"name": "image", "axes": axes, "shape": ["batch", *shape[1:]], "dtype": "float32",
                      "what": "model-grid input after the 'preprocess' resampling and normalisation"},
            "output": {"name": "reconstruction", "shape": "as the input",
                       "activation": "sigmoid" if record.model.reconstruction_loss == "bce" else "none"},
            "threshold": record.threshold,
            "applied_as": _how_applied(record),
        },
        "model": to_plain(record.model),
        "preprocess": to_plain(record.preprocess),
        "detection": to_plain(record.detection),
        "calibration": dict(record.calibration),
        "training": {k: v for k, v in record.training.items() if k != "history"},
    }


def _how_applied(record: ModelRecord) -> Dict[str, Any]:
    """How the library runs the network over a model-grid volume, for a deployment to reproduce its result."""
    if record.model.spatial_dims == 2:
        return {"over": "each axial slice of the model grid that holds foreground"}
    return {"over": "overlapping 3D windows (MONAI sliding_window_inference)",
            "window_zyx": list(reversed(record.model.patch_size)), "overlap": WINDOW_OVERLAP, "blend": WINDOW_BLEND}


def sidecar_path(path: Union[str, Path]) -> Path:
    return Path(f"{path}.json")


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, out: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it; fail with advice rather than deep inside torch)
    except ImportError:
        raise ConfigurationError("ONNX export needs the onnx package: pip install 'MedAutoencoderLib[onnx]'") from None
    try:  # written under a temporary name: a failed export leaves an existing file (--overwrite) as it was
        with replacing(out, suffix=".onnx") as temporary:
            torch.onnx.export(wrapper, (example,), str(temporary), input_names=["image"],
                              output_names=["reconstruction"],
                              dynamic_axes={"image": {0: "batch"}, "reconstruction": {0: "batch"}}, dynamo=False)
    except OSError:
        raise
    except Exception as exc:  # the exporter fails in many ways for unsupported operators
        raise ConfigurationError(f"ONNX export of this model failed ({str(exc).splitlines()[0][:200]}); "
                                 "use --format torchscript") from None


def _program_on(program: "torch.export.ExportedProgram", device: torch.device) -> "torch.export.ExportedProgram":
    """The program with its weights, constants and the devices written into its graph on ``device`` (a program's
    ``module().to(device)`` moves parameters and buffers only)."""
    try:
        from torch.export.passes import move_to_device_pass
    except ImportError:
        raise ConfigurationError(f"pt2 exports need torch 2.3 or newer (this is torch {torch.__version__}); "
                                 "use --format torchscript") from None
    return move_to_device_pass(program, device)


def _export_program(wrapper: nn.Module, example: torch.Tensor, out: Path) -> None:
    """``torch.export`` with any batch size (the example's batch of 2 would otherwise be fixed in the program),
    saved on the CPU so that it loads on a machine without the exporting GPU."""
    program = torch.export.export(wrapper, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    archive = io.BytesIO()  # saved whole before it gets the user's name (a file would carry its temporary name
    # inside the archive)
    torch.export.save(_program_on(program, torch.device("cpu")), archive)
    with replacing(out) as temporary:
        temporary.write_bytes(archive.getvalue())


def export_format(out: Union[str, Path], fmt: Optional[str] = None) -> str:
    """The format to export to ``out`` in: ``fmt``, or the one its name says (``.pt2``, ``.onnx``; else
    TorchScript). A name that says another format than ``fmt`` is refused, as is a pt2 export not named
    ``.pt2`` (``torch.export.load`` refuses other names)."""
    suffix = Path(out).suffix.lower()
    named = next((name for name, suffixes in _FORMAT_SUFFIXES.items() if suffix in suffixes), None)
    chosen = fmt or (named if named in ("pt2", "onnx") else "torchscript")
    if chosen not in EXPORT_FORMATS:
        raise ConfigurationError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, not {chosen!r}")
    if named is not None and named != chosen:
        raise ConfigurationError(f"{out}: the name says {named} ({suffix}) but the format asked for is {chosen}; "
                                 f"name it e.g. {_EXAMPLE_NAMES[chosen]}")
    if chosen == "pt2" and Path(out).suffix != ".pt2":  # (case included: torch.export.load refuses ".PT2")
        raise ConfigurationError(f"{out}: a pt2 export's name must end in .pt2 (torch.export.load refuses other "
                                 "names), e.g. model.pt2")
    return chosen


def export_model(model: LoadedModel, out: Union[str, Path], fmt: Optional[str] = None,
                 overwrite: bool = False) -> Dict[str, str]:
    """Write the exported network to ``out`` and its sidecar to ``out.json`` in ``fmt`` (by default the format
    the name says, :func:`export_format`); returns both paths and the format."""
    fmt = export_format(out, fmt)
    protected = [model.path] if model.path else []
    require_new_file(out, _EXAMPLE_NAMES[fmt], overwrite, protected)  # (as given: "new/" names a folder)
    out = Path(out)
    meta = sidecar_path(out)
    refuse_overwrite([meta], protected=protected, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ReconstructionOnly(model.network).eval()
    example = torch.rand(input_shape(model.record), device=model.device)
    # tracer and exporter warnings concern shape-dependent Python branches and the exporter's own roadmap; the
    # export's equivalence with the Python model is what the tests check, so users are not shown them
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            with replacing(out) as temporary:
                torch.jit.save(torch.jit.trace(wrapper, example), str(temporary))
        elif fmt == "pt2":
            _export_program(wrapper, example, out)
        else:
            _export_onnx(wrapper, example, out)
    write_text(meta, json.dumps(sidecar(model.record, model.path, fmt), indent=2), overwrite=True)
    return {"module": str(out), "sidecar": str(meta), "format": fmt}


def load_exported(path: Union[str, Path], device: str = "cpu") -> LoadedModel:
    """A TorchScript or ``torch.export`` export and its sidecar as a :class:`LoadedModel` that the library's
    detection accepts."""
    path = Path(path)
    meta = sidecar_path(path)
    if not path.is_file() or not meta.is_file():
        raise ModelFileError(f"{path}: an exported model needs both the module and its sidecar {meta.name}")
    payload = json.loads(meta.read_text())
    fmt = payload.get("export", {}).get("format")
    if payload.get("format") != SIDECAR_FORMAT or fmt not in _LOADABLE_FORMATS:
        raise ModelFileError(f"{meta}: not the sidecar of a TorchScript or pt2 export of this library")
    torch_device = resolve_device(device)
    if fmt == "pt2":
        with open(path, "rb") as stream:
            module = _program_on(torch.export.load(stream), torch_device).module()
    else:
        module = torch.jit.load(str(path), map_location=torch_device)
    return LoadedModel(network=ExportedNetwork(module).eval(), record=record_from_payload(payload, meta),
                       device=torch_device, path=path)
