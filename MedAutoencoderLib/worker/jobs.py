"""Running the library's command line as a background worker process and following its progress.

The Slicer module starts ``python -m MedAutoencoderLib detect|train ... --progress json`` so that long jobs
never block Slicer's main thread. This file holds the parts of that which need no Slicer: building the
command line and environment, reading the worker's output on a thread, parsing its JSON progress lines,
cooperative stop and killing the worker's whole process tree. The module only adds a ``qt.QTimer`` that calls
:meth:`WorkerJob.poll_events` on the main thread.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from MedAutoencoderLib.cli.exit_codes import EXIT_CANCELLED
from MedAutoencoderLib.config import ModelConfig, TrainConfig

#: Events the CLI writes with ``--progress json``.
PROGRESS_EVENTS = ("start", "progress", "log", "done", "error", "cancelled")
#: Pseudo-event for any other line the worker prints (warnings, tracebacks, ``error: ...`` on stderr).
OUTPUT_EVENT = "output"
#: Device names offered to the user, mapped to the CLI's ``--device`` values.
DEVICE_CHOICES = {"auto": "auto", "cpu": "cpu", "gpu": "cuda"}


def parse_progress_line(line: str) -> Optional[dict]:
    """The progress event on ``line``, or None when the line is not one (any other output is allowed)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") not in PROGRESS_EVENTS:
        return None
    return event


def format_duration(seconds: Optional[float]) -> str:
    """Short human-readable duration for elapsed / remaining time labels ("" when unknown)."""
    if seconds is None or seconds != seconds or seconds < 0:  # None, NaN or nonsense
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def cli_device(device: str) -> str:
    """Translate the module's device choice (auto / cpu / gpu) into the CLI's ``--device`` value."""
    try:
        return DEVICE_CHOICES[device]
    except KeyError:
        raise ValueError(f"Unknown device '{device}', expected one of {', '.join(DEVICE_CHOICES)}") from None


# --------------------------------------------------------------------------------------------------
# Command lines and environment


def library_parent_dir() -> str:
    """Folder that contains the ``MedAutoencoderLib`` package; the worker needs it on its PYTHONPATH."""
    return str(Path(__file__).resolve().parents[2])


def python_launcher(which: Callable[[str], Optional[str]] = shutil.which,
                    executable: str = sys.executable) -> Tuple[str, bool]:
    """The Python to run the worker with, and whether it needs Slicer's startup environment.

    Inside Slicer ``PythonSlicer`` sets up Slicer's Python (and must get the startup environment, not the
    application's); elsewhere the current interpreter is used as it is.
    """
    python_slicer = which("PythonSlicer")
    if python_slicer:
        return python_slicer, True
    return executable, False


def worker_environment(device: str, base_pythonpath: str = "") -> Dict[str, str]:
    """Environment additions for the worker: unbuffered output, the library on the path, GPU hidden for CPU."""
    paths = [library_parent_dir()] + [p for p in base_pythonpath.split(os.pathsep) if p]
    environment = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}
    if cli_device(device) == "cpu":
        environment["CUDA_VISIBLE_DEVICES"] = "-1"
    return environment


def cli_command(python: str, arguments: Sequence[str]) -> List[str]:
    """``python -m MedAutoencoderLib <arguments>``: the library's command line run by ``python``."""
    return [python, "-m", "MedAutoencoderLib", *arguments]


def detect_command(python: str, input_paths: Sequence[str], output_dir: str, model_path: Optional[str] = None,
                   threshold: Optional[float] = None, device: str = "auto", file_format: str = "nrrd") -> List[str]:
    """``python -m MedAutoencoderLib detect`` with JSON progress (None threshold = calibrated)."""
    return cli_command(python, detect_arguments(input_paths, output_dir, model_path, threshold, device, file_format))


def detect_arguments(input_paths: Sequence[str], output_dir: str, model_path: Optional[str] = None,
                     threshold: Optional[float] = None, device: str = "auto", file_format: str = "nrrd") -> List[str]:
    """The command line's arguments for :func:`detect_command`, as a standby worker takes them. The outputs are
    uncompressed: the module reads them back at once and deletes them (compressing them took the worker about
    0.5 s of CPU per detection on two cores)."""
    command = ["detect"]
    if model_path:
        command += ["--model", str(model_path)]
    command += [str(p) for p in input_paths]
    command += ["--output-dir", str(output_dir),
                "--threshold", "auto" if threshold is None else repr(float(threshold)),
                "--device", cli_device(device), "--format", file_format, "--uncompressed",
                "--progress", "json", "--overwrite"]
    return command


def train_command(python: str, data: Sequence[str], model_type: str, out: str, epochs: Optional[int] = None,
                  max_minutes: Optional[float] = None, device: str = "auto", stop_file: Optional[str] = None,
                  overwrite: bool = False, extra_arguments: Sequence[str] = ()) -> List[str]:
    """Arguments of ``python -m MedAutoencoderLib train`` with JSON progress and an optional stop file, built
    from the :class:`~MedAutoencoderLib.config.TrainConfig` they give (``epochs`` None: the default).

    ``extra_arguments`` passes further ``train`` options through (e.g. a small ``--size`` for quick tests).
    """
    config = TrainConfig(data=[str(p) for p in data], out=str(out), model=ModelConfig(name=model_type),
                         max_minutes=float(max_minutes) if max_minutes else None, overwrite=overwrite,
                         stop_file=str(stop_file) if stop_file else None)
    if epochs:
        config.epochs = int(epochs)
    return cli_command(python, ["train", *config.as_arguments(), "--device", cli_device(device), "--progress", "json",
                                *[str(a) for a in extra_arguments]])


# --------------------------------------------------------------------------------------------------
# Process tree


def _child_pids_linux(pid: int) -> List[int]:
    """Direct children of ``pid`` from /proc (no external tools needed)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stat_file:
                fields = stat_file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


def _child_pids_pgrep(pid: int) -> List[int]:
    """Direct children of ``pid`` using ``pgrep -P`` (macOS and other POSIX systems without /proc)."""
    completed = subprocess.run(["pgrep", "-P", str(pid)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               universal_newlines=True, check=False)
    return [int(token) for token in completed.stdout.split()]


def descendant_pids(pid: int) -> List[int]:
    """All processes below ``pid`` (children first found, deepest last)."""
    child_pids = _child_pids_linux if os.path.isdir("/proc/self") else _child_pids_pgrep
    found: List[int] = []
    pending = [pid]
    while pending:
        for child in child_pids(pending.pop()):
            if child not in found:
                found.append(child)
                pending.append(child)
    return found


def kill_process_tree(process: subprocess.Popen) -> None:
    """Kill the worker and everything it started.

    The process Slicer starts is a launcher (``PythonSlicer``) and the worker may start its own helpers
    (data-loader processes), so killing only ``process`` could leave the real work running.
    """
    if process.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    else:
        descendants = descendant_pids(process.pid)
        process.kill()
        for pid in descendants:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass  # already gone
    process.wait()


# --------------------------------------------------------------------------------------------------
# A running worker


class FollowedJob:
    """The events of a job's output lines and what they tell (outputs, error message, the last lines).

    Lines are put from a reader thread; the GUI calls :meth:`poll_events` from a timer on the main thread, so
    Qt objects are only touched there. Subclasses say when the job has ended and with which code.
    """

    stop_file: Optional[str] = None

    def __init__(self, kept_lines: int = 200):
        self.outputs: Optional[dict] = None
        self.error_message: Optional[str] = None
        self.cancel_requested = False
        self.last_event: Optional[dict] = None
        self._recent_lines: deque = deque(maxlen=kept_lines)
        self._lines: queue.Queue = queue.Queue()

    def poll_events(self) -> List[dict]:
        """Events received since the last call; lines that are not progress events come as ``output`` events."""
        events = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return events
            if not line.strip():
                continue
            self._recent_lines.append(line)
            event = parse_progress_line(line) or {"event": OUTPUT_EVENT, "message": line}
            self._remember(event)
            events.append(event)

    def _remember(self, event: dict) -> None:
        if event["event"] == OUTPUT_EVENT:
            return
        self.last_event = event
        if event["event"] == "done":
            self.outputs = event.get("outputs")
        elif event["event"] == "error":
            self.error_message = event.get("message")

    @property
    def finished(self) -> bool:
        raise NotImplementedError

    @property
    def returncode(self) -> Optional[int]:
        raise NotImplementedError

    @property
    def succeeded(self) -> bool:
        return self.finished and self.returncode == 0 and not self.cancel_requested

    @property
    def was_cancelled(self) -> bool:
        return self.cancel_requested or self.returncode == EXIT_CANCELLED

    def recent_output(self, count: int = 20) -> str:
        """The last ``count`` lines of output, for error messages."""
        return "\n".join(list(self._recent_lines)[-count:])

    def request_stop(self) -> None:
        """Ask the job to stop at its next checkpoint (training keeps its last good model)."""
        self.cancel_requested = True
        if self.stop_file:
            Path(self.stop_file).touch()

    def wait(self, on_event: Optional[Callable[[dict], None]] = None,
             idle: Optional[Callable[[], None]] = None, poll_seconds: float = 0.05) -> int:
        """Block until the job ends, passing each event to ``on_event`` and calling ``idle`` in between.

        Used for console scripting; ``idle`` lets Slicer process GUI events meanwhile.
        """
        while True:
            finished = self.finished  # read before draining so no line arriving meanwhile is lost
            for event in self.poll_events():
                if on_event:
                    on_event(event)
            if finished:
                return self.returncode
            if idle:
                idle()
            time.sleep(poll_seconds)


class WorkerJob(FollowedJob):
    """A worker process of its own: its output read on a thread, ended when the process exits."""

    def __init__(self, process: subprocess.Popen, stop_file: Optional[str] = None, kept_lines: int = 200):
        super().__init__(kept_lines)
        self.process = process
        self.stop_file = stop_file
        self._reader = threading.Thread(target=self._read_output, name="MedAutoencoder worker output", daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        """Thread body: move every output line into the queue until the worker closes its output."""
        for line in iter(self.process.stdout.readline, ""):
            self._lines.put(line.rstrip("\r\n"))
        self.process.stdout.close()

    @property
    def finished(self) -> bool:
        """True once the worker has exited and all its output has been handed over."""
        return self.process.poll() is not None and not self._reader.is_alive() and self._lines.empty()

    @property
    def returncode(self) -> Optional[int]:
        return self.process.poll()

    def cancel(self, grace_seconds: float = 0.0) -> None:
        """Stop the worker: politely through the stop file first if there is one, then kill the whole tree."""
        self.request_stop()
        deadline = time.monotonic() + (grace_seconds if self.stop_file else 0.0)
        while self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        kill_process_tree(self.process)


def start_worker(command: Sequence[str], environment_update: Dict[str, str], stop_file: Optional[str] = None,
                 launch: Optional[Callable[..., subprocess.Popen]] = None,
                 use_startup_environment: bool = False) -> WorkerJob:
    """Start ``command`` and follow it. ``launch`` is ``slicer.util.launchConsoleProcess`` inside Slicer.

    Without ``launch`` the process is started like Slicer's launcher does it: text mode, stderr merged into
    stdout, the given variables added to this process's environment.
    """
    if stop_file and os.path.exists(stop_file):
        os.remove(stop_file)  # a stale stop file would end the new job at once
    if launch is not None:
        process = launch(list(command), useStartupEnvironment=use_startup_environment,
                         updateEnvironment=environment_update)
    else:
        environment = dict(os.environ, **environment_update)
        process = subprocess.Popen(list(command), env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   universal_newlines=True)
    return WorkerJob(process, stop_file=stop_file)
