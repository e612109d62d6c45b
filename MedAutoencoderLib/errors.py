"""User-facing errors.

Everything the library raises on purpose derives from :class:`MedAutoencoderError`; its message is written
for the person who runs the tool (it names the file or node and says what is wrong), so the command line and
the Slicer module show it as it is instead of a traceback.
"""
from __future__ import annotations

import re


class MedAutoencoderError(Exception):
    """Base class of errors whose message is meant for the user."""


class InputImageError(MedAutoencoderError):
    """An input volume cannot be used (unreadable, not 3D scalar, empty, NaN, constant...)."""


class BatchDetectionError(InputImageError):
    """Some volumes of a batch detected with ``keep_going`` failed; the others have their outputs.

    ``written`` maps each input that succeeded to its output files, ``failures`` each one that failed to why.
    """

    def __init__(self, written: dict, failures: dict, total: int):
        self.written, self.failures = written, failures
        reasons = "".join(f"\n  {reason}" for reason in failures.values())
        super().__init__(f"{len(failures)} of {total} volumes failed (the other {total - len(failures)} have their "
                         f"outputs):{reasons}")


class TableFileError(MedAutoencoderError):
    """A table the user gave (features, labels) is missing, malformed or does not match another one."""


class ModelFileError(MedAutoencoderError):
    """A model file is missing, corrupt, not one of ours, or incompatible with this library."""


class ConfigurationError(MedAutoencoderError):
    """An option or combination of options is invalid."""


class OutputExistsError(MedAutoencoderError):
    """Writing would overwrite a file the user already has."""


class OutputLocationError(MedAutoencoderError):
    """An output cannot be written where the user asked (an existing folder, a read-only folder...)."""


class DeviceError(MedAutoencoderError):
    """The requested compute device is unavailable or ran out of memory."""


class OutOfMemoryError(DeviceError):
    """The GPU's or the machine's memory ran out for one volume (a smaller one may still fit)."""


#: What to say when the machine's own memory (RAM) runs out, wherever it happens.
OUT_OF_MEMORY_ADVICE = ("close other programs, give fewer or smaller volumes at once (a smaller --batch-size for "
                        "training), or use a machine with more memory")
# How torch's CPU allocator and ITK's image buffers say that the machine's memory ran out (numpy raises
# MemoryError), and Python when no memory is left for a new thread's stack.
_OUT_OF_MEMORY_TEXTS = ("can't allocate memory", "Failed to allocate memory", "can't start new thread")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says that the machine's own memory ran out (not a GPU's: see ``device.py``)."""
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and any(text in str(error) for text in _OUT_OF_MEMORY_TEXTS))


def detection_out_of_memory_reason(path: object) -> str:
    """How a batch or an evaluation says that a volume's detection ran out of the machine's memory."""
    return f"{path}: this machine ran out of memory detecting anomalies in it; {OUT_OF_MEMORY_ADVICE}"


def is_cuda_failure(error: BaseException) -> bool:
    """Whether ``error`` comes from CUDA itself (an illegal access, a launch failure): the process's GPU context
    is unusable from then on, so nothing more may run in it."""
    return "CUDA" in str(error)


class Cancelled(MedAutoencoderError):
    """The user asked the job to stop (signal or stop file)."""


_ITK_ERROR_PREFIX = re.compile(r"^.*ITK ERROR: \w+\(0x[0-9a-fA-F]+\): ", re.DOTALL)


def itk_reason(error: RuntimeError) -> str:
    """What ITK said went wrong, without SimpleITK's source location and ITK's object address (``ITK ERROR:
    MetaImageIO(0x55e2...): File cannot be read...``): the part of the message a user can act on."""
    text = str(error).strip()
    reason = _ITK_ERROR_PREFIX.sub("", text) if "ITK ERROR: " in text else (text.splitlines() or ["unknown reason"])[-1]
    return " ".join(reason.split()) or "unknown reason"
