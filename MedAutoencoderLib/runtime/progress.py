"""Progress reporting shared by training and detection.

Jobs emit plain dict events (``event``, ``fraction``, ``message``, ``elapsed_s``, ``eta_s`` and extras). The
command line renders them as a progress bar on a terminal, as plain lines where its output is not one (a log
file, CI, a cluster job: one line per epoch or volume, no carriage returns), or as JSON lines (``--progress
json``) for programs; the Slicer module reads the JSON lines of a background process.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Dict, Optional, TextIO

ProgressCallback = Callable[[Dict[str, Any]], None]


class ProgressTracker:
    """Turns "done x of n" into events with elapsed time and an estimate of the time left."""

    def __init__(self, callback: Optional[ProgressCallback], total: float) -> None:
        self.callback = callback
        self.total = max(float(total), 1e-9)
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def emit(self, event: str, done: float = 0.0, message: str = "", **extra: Any) -> None:
        if self.callback is None:
            return
        fraction = min(max(done / self.total, 0.0), 1.0)
        eta = self.elapsed * (1 - fraction) / fraction if 0 < fraction < 1 else (0.0 if fraction >= 1 else None)
        self.callback({"event": event, "fraction": round(fraction, 4), "message": message,
                       "elapsed_s": round(self.elapsed, 2), "eta_s": None if eta is None else round(eta, 1),
                       **extra})


def json_lines(stream: Optional[TextIO] = None) -> ProgressCallback:
    """One JSON object per line, flushed at once so that a reading process sees it immediately; by default to
    ``sys.stdout`` as it is when each event is written (a redirection made later, as by a console or a test
    harness, is followed)."""
    def write(event: Dict[str, Any]) -> None:
        out = stream or sys.stdout
        out.write(json.dumps(event, default=str) + "\n")
        out.flush()
    return write


def progress_bar(stream: Optional[TextIO] = None, width: int = 30) -> ProgressCallback:
    """A one-line text bar with the latest message and the time left, by default on ``sys.stderr`` as it is
    when each event is drawn."""
    def draw(event: Dict[str, Any]) -> None:
        out = stream or sys.stderr
        if event["event"] in ("log", "error"):
            out.write(f"\n{event['message']}\n")
            return
        filled = int(round(width * event["fraction"]))
        eta = event.get("eta_s")
        left = f" {int(eta // 60)}:{int(eta % 60):02d} left" if eta else ""
        out.write(f"\r[{'#' * filled}{'-' * (width - filled)}] {event['fraction'] * 100:5.1f}%{left} "
                  f"{event['message'][:60]:<60}")
        if event["event"] in ("done", "cancelled"):
            out.write("\n")
        out.flush()
    return draw


def _time(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def plain_lines(stream: Optional[TextIO] = None, step_interval_s: float = 60.0) -> ProgressCallback:
    """One plain line per event for logs that are not read on a terminal, by default on ``sys.stderr`` as it is
    when each event is written: every event but the steps inside a training epoch (a line at most every
    ``step_interval_s`` seconds, so that a long epoch still shows it is alive), which the epoch's own line
    follows.

    Args:
        stream: where to write; None for ``sys.stderr`` at each event.
        step_interval_s: the least time between two lines of steps within an epoch.

    Returns:
        The progress callback.
    """
    last_line = [float("-inf")]

    def write(event: Dict[str, Any]) -> None:
        now = time.monotonic()
        if "step" in event and event["event"] == "progress" and now - last_line[0] < step_interval_s:
            return
        last_line[0] = now
        out = stream or sys.stderr
        if event["event"] in ("log", "error"):
            out.write(f"{event['message']}\n")
        else:
            eta = event.get("eta_s")
            left = f", {_time(eta)} left" if eta else ""
            out.write(f"[{event['fraction'] * 100:5.1f}% {_time(event.get('elapsed_s') or 0.0)}{left}] "
                      f"{event['message']}\n")
        out.flush()
    return write


def _is_terminal(stream: Optional[TextIO]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def terminal_or_lines() -> ProgressCallback:
    """A bar while ``sys.stderr`` is a terminal, plain lines (:func:`plain_lines`) while it is not (a file, a
    pipe, a cluster job's log); decided at each event, so that a redirection made later is followed."""
    bar, lines = progress_bar(), plain_lines()

    def report(event: Dict[str, Any]) -> None:
        (bar if _is_terminal(sys.stderr) else lines)(event)
    return report


#: Choices of ``--progress``: auto (a bar on a terminal, plain lines elsewhere), bar, lines, json, none.
PROGRESS_KINDS = ("auto", "bar", "lines", "json", "none")


def make_reporter(kind: str) -> Optional[ProgressCallback]:
    """The reporter for ``--progress auto|bar|lines|json|none``."""
    return {"auto": terminal_or_lines, "bar": progress_bar, "lines": plain_lines,
            "json": json_lines}.get(kind, lambda: None)()
