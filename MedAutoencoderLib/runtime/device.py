"""Choosing the compute device and turning GPU failures into advice.

``auto`` takes the first CUDA GPU when there is one. Out-of-memory on the GPU becomes an :class:`OutOfMemoryError`
that says what to lower, instead of a raw CUDA trace.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from MedAutoencoderLib.errors import DeviceError, OutOfMemoryError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a torch device, checked to exist."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "gpu":
        name = "cuda"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("a CUDA GPU was requested but torch sees none (CPU build of torch, or no driver); "
                              "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{name} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type != "cpu":
        raise DeviceError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def configure_for_speed(device: torch.device) -> None:
    """cuDNN autotuning for fixed-size slice batches; TF32 matmuls on GPUs that have them."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bfloat16 where supported, else float16); plain float32 on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def inference_autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Precision of reconstruction (detection and threshold calibration alike).

    ``"auto"``: mixed precision on GPUs (as :func:`autocast`), float32 on CPUs; ``"float32"``: float32 everywhere;
    ``"bfloat16"``: bfloat16 on any device. On CPUs with AVX512-BF16 or AMX, bfloat16 halves the network time,
    but it moved the real-scan results slightly (benchmarks/results/precision_check.txt), so it is a choice,
    not the CPU default.
    """
    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "auto":
        return autocast(device)  # float32 on CPUs
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("this GPU has no bfloat16 support; use --precision auto (float16) or float32")
    return torch.autocast(device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def explain_out_of_memory(task: str, batch_size: int) -> Iterator[None]:
    """Re-raise a CUDA out-of-memory error as advice naming the settings to lower."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise OutOfMemoryError(
            f"the GPU ran out of memory during {task} with batch size {batch_size}; lower --batch-size "
            "(or the patch size of a 3D model), close other GPU programs, or run with --device cpu"
        ) from None
