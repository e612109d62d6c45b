"""Progress for people and for programs: a bar on a terminal, plain lines in a log, never carriage returns there."""
from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys

import pytest

from MedAutoencoderLib.runtime.progress import ProgressTracker, make_reporter, plain_lines

TINY = ["--size", "32", "32", "32", "--spacing", "1.5", "1.5", "1.5", "--batch-size", "16", "--device", "cpu",
        "--no-augment"]


def training_events(reporter, epochs: int = 3, steps: int = 4) -> None:
    """The events a training run emits: start, a log line, steps within each epoch, each epoch's end, done."""
    tracker = ProgressTracker(reporter, total=epochs)
    tracker.emit("start", 0, "training ae on cpu")
    tracker.emit("log", 0, "preparing a.nii.gz (1/1)")
    for epoch in range(epochs):
        for step in range(steps):
            tracker.emit("progress", epoch + (step + 1) / steps, f"epoch {epoch + 1}/{epochs} loss 0.1",
                         epoch=epoch + 1, step=step + 1, steps=steps)
        tracker.emit("progress", epoch + 1, f"epoch {epoch + 1}/{epochs} train 0.1 val 0.2", epoch=epoch + 1)
    tracker.emit("done", epochs, "model saved to m.pt (epochs)")


def test_plain_lines_are_one_per_epoch_without_carriage_returns():
    out = io.StringIO()
    training_events(plain_lines(out))
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line for line in lines if re.search(r"\bepoch \d", line)] == [
        line for line in lines if re.search(r"epoch \d/3 train", line)]
    assert len(lines) == 2 + 3 + 1
    assert lines[0].endswith("training ae on cpu") and lines[1] == "preparing a.nii.gz (1/1)"
    assert lines[-1].startswith("[100.0% ") and lines[-1].endswith("model saved to m.pt (epochs)")


def test_plain_lines_show_steps_of_a_long_epoch_now_and_then():
    out = io.StringIO()
    training_events(plain_lines(out, step_interval_s=0.0), epochs=1, steps=3)
    assert len([line for line in out.getvalue().splitlines() if "loss" in line]) == 3


def read_all(fd: int) -> str:
    """Everything written to a pty so far (a single read may return only part of it)."""
    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        chunks.append(os.read(fd, 65536))
    return b"".join(chunks).decode()


def test_auto_draws_a_bar_on_a_terminal_and_lines_elsewhere(monkeypatch):
    master, replica = pty.openpty()
    try:
        with os.fdopen(replica, "w", closefd=False) as terminal:
            monkeypatch.setattr(sys, "stderr", terminal)
            training_events(make_reporter("auto"), epochs=1, steps=2)
        drawn = read_all(master)
    finally:
        os.close(master)
        os.close(replica)
    assert "\r[" in drawn and "#" in drawn
    logged = io.StringIO()
    monkeypatch.setattr(sys, "stderr", logged)
    training_events(make_reporter("auto"), epochs=1, steps=2)
    assert "\r" not in logged.getvalue() and "#" not in logged.getvalue()


@pytest.mark.slow
def test_training_logged_to_a_file_is_one_plain_line_per_epoch(toy_cohort, tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as stream:  # stdout and stderr into one file, as a cluster job's log
        done = subprocess.run([sys.executable, "-m", "MedAutoencoderLib", "train", "--data", str(toy_cohort),
                               "--out", str(tmp_path / "m.pt"), "--model", "ae", "--channels", "8", "16",
                               "--epochs", "3", "--patience", "10", *TINY],
                              stdout=stream, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    epoch_lines = [line for line in text.splitlines() if re.search(r"\bepoch \d+/3\b", line)]
    assert [re.search(r"epoch (\d)/3 train \S+ val \S+$", line).group(1) for line in epoch_lines] == ["1", "2", "3"]
    assert text.splitlines()[-1].endswith(f"model saved to {tmp_path / 'm.pt'} (epochs)")
