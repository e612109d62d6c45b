"""A detection worker kept ready between detections: the client of ``python -m MedAutoencoderLib serve``.

Why: each detection in a process of its own paid for starting it (torch, MONAI, the brain template: more than
half of a Detect click; :mod:`MedAutoencoderLib.worker.serve`). The Slicer module starts one standby worker when it is
opened and sends it each detection; the worker runs it exactly as the command line would and stays up. Closed
after some idle minutes (its memory goes back) and started again on the next detection; a cancelled detection
kills it, as it kills a worker of its own.

Like :class:`MedAutoencoderLib.worker.jobs.WorkerJob`, nothing here touches Qt: output is read on a thread and the
module drains each job's events from a timer on the main thread.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from typing import Dict, Optional, Sequence

from MedAutoencoderLib.worker.jobs import FollowedJob, cli_command, kill_process_tree
from MedAutoencoderLib.worker.serve import SERVED_EVENT

_LOG = logging.getLogger(__name__)
#: A standby worker idle this long is closed, giving its memory (about 0.5-1 GB) back.
DEFAULT_IDLE_SECONDS = 600.0
_CLOSE_GRACE_SECONDS = 10.0


def _served_code(line: str) -> Optional[int]:
    """The exit code of a ``served`` line, None for any other line."""
    if SERVED_EVENT not in line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if isinstance(event, dict) and event.get("event") == SERVED_EVENT and isinstance(event.get("exit_code"), int):
        return event["exit_code"]
    return None


def _close_input(process: subprocess.Popen) -> None:
    """Close the worker's standard input (it ends when idle; a killed one leaves the pipe to close)."""
    try:
        process.stdin.close()
    except OSError:
        pass


def _end_within(process: subprocess.Popen, seconds: float) -> None:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        kill_process_tree(process)


class ServedJob(FollowedJob):
    """One detection sent to a :class:`StandbyWorker`: the events of a worker of its own, ended by the worker's
    ``served`` line (or by the worker's end, when it died or was killed meanwhile)."""

    def __init__(self, worker: "StandbyWorker", process: subprocess.Popen):
        super().__init__()
        self._worker = worker
        self._process = process
        self._code: Optional[int] = None
        self._ended = threading.Event()

    def _served(self, code: int) -> None:
        self._code = code
        self._ended.set()

    def _worker_ended(self) -> None:
        if not self._ended.is_set():
            self._code = self._process.wait()
            self._ended.set()

    @property
    def finished(self) -> bool:
        """True once the detection was answered (or the worker ended) and all its output handed over."""
        return self._ended.is_set() and self._lines.empty()

    @property
    def returncode(self) -> Optional[int]:
        return self._code if self._ended.is_set() else None

    @property
    def worker_pid(self) -> int:
        """The standby worker's process id (one process serves many detections)."""
        return self._process.pid

    def cancel(self, grace_seconds: float = 0.0) -> None:
        """Stop the detection by killing the standby worker (the next detection starts a new one); nothing when
        the detection has ended (the worker may be running another one by now)."""
        if self._ended.is_set():
            return
        self.request_stop()
        self._worker.stop(only_for=self)


class StandbyWorker:
    """One ``serve`` process, started on demand, that runs one detection at a time."""

    def __init__(self, python: str, environment: Optional[Dict[str, str]] = None,
                 idle_seconds: float = DEFAULT_IDLE_SECONDS):
        self.command = cli_command(python, ["serve"])
        self.environment = environment
        self.idle_seconds = idle_seconds
        self._lock = threading.RLock()
        self._process: Optional[subprocess.Popen] = None
        self._job: Optional[ServedJob] = None
        self._idle_timer: Optional[threading.Timer] = None

    @property
    def running(self) -> bool:
        with self._lock:
            return self._process is not None and self._process.poll() is None

    @property
    def busy(self) -> bool:
        """A detection was sent and is not answered yet."""
        with self._lock:
            return self._job is not None and not self._job._ended.is_set()

    def start(self) -> None:
        """Start the worker now (it imports and loads while the user is still choosing), if it is not up."""
        with self._lock:
            if not self.running:
                self._start_process()
            if not self.busy:
                self._close_when_idle()

    def run(self, arguments: Sequence[str]) -> ServedJob:
        """Send one detection (the command line's arguments, ``["detect", ...]``) and return its job at once."""
        request = json.dumps({"argv": [str(a) for a in arguments]}) + "\n"
        with self._lock:
            if self.busy:
                raise RuntimeError("the standby worker is still running a detection")
            self._cancel_idle_timer()
            if not self.running:
                self._start_process()
            try:
                return self._send(request)
            except OSError:  # its input is closed, it ended (killed, out of memory): once more with a new one
                self._start_process()
                return self._send(request)

    def stop(self, only_for: Optional[ServedJob] = None) -> None:
        """Kill the worker (and a detection it runs; with ``only_for``, only while it runs that one); the next
        :meth:`run` starts a new one."""
        with self._lock:
            if only_for is not None and (self._job is not only_for or only_for._ended.is_set()):
                return
            self._cancel_idle_timer()
            process, self._process = self._process, None
        if process is None:
            return
        kill_process_tree(process)
        _close_input(process)
        with self._lock:
            if self._job is not None and self._job._process is process:
                self._job._worker_ended()

    def retire(self) -> None:
        """End the worker as soon as it is idle (now, or when its current detection is answered)."""
        with self._lock:
            self.idle_seconds = 0.0
            if not self.busy:
                self._close_when_idle()

    def close(self) -> None:
        """End the worker politely (its input closes) unless it is running a detection; returns at once (a
        worker that has not ended after a few seconds is killed from a thread)."""
        with self._lock:
            if self.busy or self._process is None:
                return
            self._cancel_idle_timer()
            process, self._process = self._process, None  # the next run starts a new one at once
            _close_input(process)
        threading.Thread(target=_end_within, args=(process, _CLOSE_GRACE_SECONDS), daemon=True,
                         name="MedAutoencoder standby close").start()

    # ---- inside

    def _send(self, request: str) -> ServedJob:
        job = ServedJob(self, self._process)
        self._job = job
        self._process.stdin.write(request)
        self._process.stdin.flush()
        return job

    def _start_process(self) -> None:
        startup = None
        if os.name == "nt":  # no console window for the worker, as Slicer's own launcher does
            startup = subprocess.STARTUPINFO()
            startup.dwFlags |= subprocess.STARTF_USESHOWWINDOW
            startup.wShowWindow = 0
        environment = dict(self.environment if self.environment is not None else os.environ, PYTHONIOENCODING="utf-8")
        process = subprocess.Popen(self.command, env=environment, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, encoding="utf-8", errors="replace", bufsize=1,
                                   startupinfo=startup)
        self._process = process
        threading.Thread(target=self._read_output, args=(process,), name="MedAutoencoder standby output",
                         daemon=True).start()

    def _read_output(self, process: subprocess.Popen) -> None:
        """Thread body: hand each line to the detection it belongs to, until the worker ends (or its output
        cannot be read: the detection must end all the same, not wait for ever)."""
        try:
            for raw in iter(process.stdout.readline, ""):
                self._hand_over(process, raw.rstrip("\r\n"))
        except (OSError, ValueError) as exc:
            self._hand_over(process, f"error: the standby worker's output could not be read ({exc})")
            kill_process_tree(process)
        finally:
            self._worker_gone(process)

    def _hand_over(self, process: subprocess.Popen, line: str) -> None:
        with self._lock:
            job = self._job if self._job is not None and self._job._process is process else None
            code = _served_code(line)
            if job is None:  # between detections: warnings of its start, or why it could not start
                _LOG.info("standby worker: %s", line)
            elif code is None:
                job._lines.put(line)
            else:
                job._served(code)
                self._close_when_idle()

    def _worker_gone(self, process: subprocess.Popen) -> None:
        process.stdout.close()
        with self._lock:
            if self._job is not None and self._job._process is process:
                self._job._worker_ended()
            if self._process is process:
                self._process = None
                self._cancel_idle_timer()
        process.wait()

    def _close_when_idle(self) -> None:
        self._cancel_idle_timer()
        self._idle_timer = threading.Timer(self.idle_seconds, self.close)
        self._idle_timer.daemon = True
        self._idle_timer.start()

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
