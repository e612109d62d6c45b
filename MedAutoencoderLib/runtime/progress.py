"""Progress reporting shared by training and detection.

Jobs emit plain dict events (``event``, ``fraction``, ``message``, ``elapsed_s``, ``eta_s`` and extras). The
command line renders them as a progress bar for people or as JSON lines (``--progress json``) for programs;
the Slicer module reads the JSON lines of a background process.
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


def make_reporter(kind: str) -> Optional[ProgressCallback]:
    """The reporter for ``--progress bar|json|none``."""
    return {"bar": progress_bar, "json": json_lines}.get(kind, lambda: None)()
