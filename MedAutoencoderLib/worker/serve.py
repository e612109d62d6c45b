"""A detection worker that stays up between detections: ``python -m MedAutoencoderLib serve``.

Why: a worker process of its own for each detection spends most of its time starting, not detecting. On two
cores a Detect click took about 7 s in a fresh process, of which importing torch and MONAI took 2-4 s and
loading what the brain mask needs (the extractor's network; for the template registration, the smoothed template:
0.5 s) more; the detection itself about 2 s. The Slicer module keeps one such worker (:mod:`MedAutoencoderLib.worker.standby`) and sends it each detection.

Requests are JSON lines on standard input, ``{"argv": ["detect", ...]}``. Each is run by the command line's own
``main`` (the same options, checks, progress events and errors as a process of its own) and answered, after
its events, by the line ``{"event": "served", "exit_code": N}``. The worker exits when its input closes: its
client closes it when idle, and Slicer's end closes it too.
"""
from __future__ import annotations

import importlib
import json
import queue
import sys
import threading
import traceback
from typing import Callable, List, Optional, Sequence, TextIO, Tuple

from MedAutoencoderLib.cli.exit_codes import EXIT_BAD_REQUEST, EXIT_CANCELLED
from MedAutoencoderLib.errors import is_cuda_failure
from MedAutoencoderLib.runtime.allocator import give_freed_memory_back

SERVED_EVENT = "served"
#: Commands a standby worker runs. Training runs in a process of its own: it is stopped through its stop file
#: and must give its GPU memory back when it ends.
SERVED_COMMANDS = ("detect",)
# Idle this long, the worker gives the heap it keeps for reuse back to the system (0.15-0.2 GB after a detection
# on two cores; it then holds about 0.6 GB). Not after every request: the next one would page it all in again.
_TRIM_AFTER_IDLE_SECONDS = 2.0


def _warm_up() -> None:
    """What every detection with the default model needs, loaded before the first request arrives. Best effort:
    a detection that needs what failed here reports it itself, one that does not (a model of one's own) runs."""
    try:
        importlib.import_module("MedAutoencoderLib.api")  # torch, MONAI, SimpleITK
        from MedAutoencoderLib.brain.extractor import load_extractor

        load_extractor()  # the brain mask of brain models (the template registration only on request)
    except Exception as exc:  # noqa: BLE001 - reported, and the worker serves on
        print(f"warning: the standby worker could not load everything beforehand: {exc}", flush=True)


def _release_idle_memory() -> None:
    """Give back what the last detection kept for reuse: host memory, and the GPU blocks PyTorch caches (a
    training started meanwhile, in a process of its own, needs them)."""
    give_freed_memory_back()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def request_arguments(line: str) -> List[str]:
    """The command line of one request line; ValueError saying what is wrong with it."""
    try:
        request = json.loads(line)
    except ValueError:
        raise ValueError(f"a request must be a JSON object, got {line.strip()[:80]!r}") from None
    argv = request.get("argv") if isinstance(request, dict) else None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError('a request must be {"argv": ["detect", ...]}')
    if argv[0] not in SERVED_COMMANDS:
        raise ValueError(f"a standby worker runs {', '.join(SERVED_COMMANDS)}, not {argv[0]!r}")
    return argv


def _serve_one(line: str, run: Callable[[Sequence[str]], int]) -> Tuple[int, bool]:
    """Run one request; returns its exit code and whether the worker can serve on (not after a CUDA error,
    which leaves the process's GPU context unusable: the next detection gets a new worker; nor after a SIGTERM,
    which cancels the detection under way and then ends the worker, as it would when idle)."""
    try:
        argv = request_arguments(line)
    except ValueError as exc:
        print(json.dumps({"event": "error", "message": str(exc)}), flush=True)
        return EXIT_BAD_REQUEST, True
    try:
        code = run(argv)
        return code, code != EXIT_CANCELLED  # a SIGTERM cancelled it: the worker was asked to end
    except SystemExit as exc:  # argparse on bad options (its message is on stderr); as Python exits on it
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0, True
        print(exc.code, file=sys.stderr)
        return 1, True
    except Exception as exc:  # a defect: reported like a process of its own would, and the worker serves on
        traceback.print_exc()
        return 1, not is_cuda_failure(exc)


def _lines_of(requests: TextIO) -> "queue.Queue[Optional[str]]":
    """The request lines, read on a thread (so that the worker can notice it is idle); None when input ends."""
    lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def read() -> None:
        for line in iter(requests.readline, ""):
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, name="MedAutoencoder requests", daemon=True).start()
    return lines


def serve(requests: TextIO, run: Callable[[Sequence[str]], int]) -> int:
    """Answer each request line of ``requests`` with ``run(argv)`` until the input closes."""
    _warm_up()
    lines = _lines_of(requests)
    while True:
        try:
            line = lines.get(timeout=_TRIM_AFTER_IDLE_SECONDS)
        except queue.Empty:
            _release_idle_memory()
            line = lines.get()
        if line is None:
            return 0
        if not line.strip():
            continue
        code, usable = _serve_one(line, run)
        sys.stderr.flush()
        print(json.dumps({"event": SERVED_EVENT, "exit_code": code}), flush=True)
        if not usable:
            return 1
