"""The standby detection worker (``python -m MedAutoencoderLib serve`` and its client), with real processes."""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from MedAutoencoderLib.data.synthetic import toy_volume
from MedAutoencoderLib.slicer import bridge as slicer_bridge
from MedAutoencoderLib.worker import jobs
from MedAutoencoderLib.worker.serve import request_arguments
from MedAutoencoderLib.worker.standby import StandbyWorker

pytestmark = pytest.mark.slow  # every test starts standby worker processes


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from worker_helpers import tiny_model

    return tiny_model(tmp_path_factory)


def cpu_environment() -> dict:
    return dict(os.environ, **jobs.worker_environment("cpu"))


def write_case(folder, seed: int):
    """A toy volume with an oblique direction and anisotropic spacing, as a file a detection reads."""
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    image = toy_volume(np.random.default_rng(seed), shape=(30, 28, 20), spacing=(1.1, 0.9, 2.2), direction=direction)
    path = folder / f"case{seed}.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def detect_arguments(input_path, output_dir, model_path) -> list:
    return jobs.detect_arguments([str(input_path)], str(output_dir), model_path=str(model_path), device="cpu")


def finished_within(job, seconds: float = 120.0) -> bool:
    deadline = time.monotonic() + seconds
    while not job.finished and time.monotonic() < deadline:
        job.poll_events()
        time.sleep(0.05)
    return job.finished


@pytest.fixture(scope="module")
def standby():
    worker = StandbyWorker(sys.executable, cpu_environment())
    yield worker
    worker.stop()


def test_one_worker_runs_detections_one_after_another_like_a_worker_of_its_own(standby, tmp_path, tiny_model_path):
    first_case, second_case = write_case(tmp_path, 1), write_case(tmp_path, 2)
    first = standby.run(detect_arguments(first_case, tmp_path / "served", tiny_model_path))
    events = []
    assert first.wait(on_event=events.append) == 0, first.recent_output()
    kinds = [e["event"] for e in events if e["event"] != jobs.OUTPUT_EVENT]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds
    second = standby.run(detect_arguments(second_case, tmp_path / "served", tiny_model_path))
    assert second.wait() == 0, second.recent_output()
    assert second.worker_pid == first.worker_pid and standby.running

    own = jobs.start_worker(jobs.detect_command(sys.executable, [str(first_case)], str(tmp_path / "own"),
                                                model_path=str(tiny_model_path), device="cpu"),
                            jobs.worker_environment("cpu"))
    assert own.wait() == 0, own.recent_output()
    served = slicer_bridge.read_worker_outputs(first.outputs[str(first_case)])
    alone = slicer_bridge.read_worker_outputs(own.outputs[str(first_case)])
    image = sitk.ReadImage(str(first_case))
    for kind in ("reconstruction", "anomaly_map", "anomaly_mask"):
        mine, theirs = getattr(served, kind), getattr(alone, kind)
        assert mine.GetSize() == image.GetSize() and mine.GetDirection() == image.GetDirection()
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(mine), sitk.GetArrayViewFromImage(theirs))
    assert served.summary == {**alone.summary, "input": served.summary["input"]}


def test_a_failed_detection_is_reported_and_the_worker_runs_the_next(standby, tmp_path, tiny_model_path):
    failed = standby.run(detect_arguments(tmp_path / "missing.nrrd", tmp_path / "out", tiny_model_path))
    assert failed.wait() == 1 and not failed.succeeded
    assert "missing.nrrd" in (failed.error_message or "")
    assert "Traceback" not in failed.recent_output()
    good = standby.run(detect_arguments(write_case(tmp_path, 3), tmp_path / "out", tiny_model_path))
    assert good.wait() == 0, good.recent_output()
    assert good.worker_pid == failed.worker_pid


def test_a_worker_runs_detections_only(standby, tmp_path):
    job = standby.run(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt")])
    assert job.wait() == 2
    assert job.error_message == "a standby worker runs detect, not 'train'"
    assert not (tmp_path / "m.pt").exists()
    with pytest.raises(ValueError, match="JSON object"):
        request_arguments("detect case.nrrd")
    with pytest.raises(ValueError, match='"argv"'):
        request_arguments('{"argv": []}')


def test_a_second_detection_while_one_runs_is_refused(tmp_path, tiny_model_path):
    worker = StandbyWorker(sys.executable, cpu_environment())
    try:
        worker.run(detect_arguments(write_case(tmp_path, 4), tmp_path / "out", tiny_model_path))
        with pytest.raises(RuntimeError, match="still running"):
            worker.run(detect_arguments(write_case(tmp_path, 5), tmp_path / "out", tiny_model_path))
    finally:
        worker.stop()


def test_cancel_kills_the_worker_and_the_next_detection_starts_a_new_one(tmp_path, tiny_model_path):
    worker = StandbyWorker(sys.executable, cpu_environment())
    try:
        cancelled = worker.run(detect_arguments(write_case(tmp_path, 6), tmp_path / "out", tiny_model_path))
        cancelled.cancel()
        assert finished_within(cancelled, 10) and cancelled.was_cancelled and not cancelled.succeeded
        assert not worker.running
        again = worker.run(detect_arguments(write_case(tmp_path, 7), tmp_path / "out", tiny_model_path))
        assert again.wait() == 0, again.recent_output()
        assert again.worker_pid != cancelled.worker_pid
    finally:
        worker.stop()


def test_an_idle_worker_ends_and_the_next_detection_starts_a_new_one(tmp_path, tiny_model_path):
    worker = StandbyWorker(sys.executable, cpu_environment(), idle_seconds=0.5)
    try:
        first = worker.run(detect_arguments(write_case(tmp_path, 8), tmp_path / "out", tiny_model_path))
        assert first.wait() == 0, first.recent_output()
        deadline = time.monotonic() + 20
        while worker.running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not worker.running  # its input closed: it ended by itself
        second = worker.run(detect_arguments(write_case(tmp_path, 9), tmp_path / "out", tiny_model_path))
        assert second.wait() == 0, second.recent_output()
        assert second.worker_pid != first.worker_pid
    finally:
        worker.stop()


def test_cancelling_a_finished_detection_leaves_the_next_one_running(standby, tmp_path, tiny_model_path):
    first = standby.run(detect_arguments(write_case(tmp_path, 10), tmp_path / "out", tiny_model_path))
    assert first.wait() == 0, first.recent_output()
    second = standby.run(detect_arguments(write_case(tmp_path, 11), tmp_path / "out", tiny_model_path))
    first.cancel()
    assert second.wait() == 0, second.recent_output()
    assert second.worker_pid == first.worker_pid and standby.running


def test_a_retired_worker_answers_its_detection_and_then_ends(tmp_path, tiny_model_path):
    """Another device choice starts another worker; the old one must not kill the detection it runs."""
    worker = StandbyWorker(sys.executable, cpu_environment())
    try:
        job = worker.run(detect_arguments(write_case(tmp_path, 12), tmp_path / "out", tiny_model_path))
        worker.retire()
        assert job.wait() == 0, job.recent_output()
        deadline = time.monotonic() + 20
        while worker.running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not worker.running
    finally:
        worker.stop()


def test_output_that_is_not_utf8_still_ends_the_detection(tmp_path):
    """A worker printing bytes its reader cannot decode (a native library's message in another encoding) must
    not leave the detection running for ever."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys\n"
        "for line in sys.stdin:\n"
        "    sys.stdout.buffer.write(b'caf\\xe9 \\x81\\xff\\n')\n"
        "    sys.stdout.buffer.write(b'{\"event\": \"served\", \"exit_code\": 0}\\n')\n"
        "    sys.stdout.flush()\n")
    worker = StandbyWorker(sys.executable, cpu_environment())
    worker.command = [sys.executable, str(script)]
    try:
        job = worker.run(["detect"])
        assert finished_within(job, 20) and job.returncode == 0
        assert "caf" in job.recent_output() and not worker.busy
    finally:
        worker.stop()


@pytest.mark.skipif(sys.platform == "win32", reason="Windows sends no SIGTERM: it ends the process")
def test_sigterm_cancels_the_detection_under_way_then_ends_the_worker(tmp_path):
    """An outside SIGTERM (a logout) to a worker that is detecting: the detection is cancelled as in a process
    of its own (the volumes done keep their files, nothing hidden is left) and answered, then the worker ends."""
    import json
    import signal
    import subprocess

    from conftest import brain_scans

    scans = brain_scans(tmp_path / "scans", "abcd", ".nrrd")
    out = tmp_path / "out"
    worker = subprocess.Popen(jobs.cli_command(sys.executable, ["serve"]), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cpu_environment())
    worker.stdin.write(json.dumps({"argv": jobs.detect_arguments([str(scans)], str(out), device="cpu")}) + "\n")
    worker.stdin.flush()
    for line in worker.stdout:
        if "mL flagged" in line:  # the first volume is done, the second under way
            worker.send_signal(signal.SIGTERM)
            break
    try:
        worker.wait(timeout=60)  # it ends by itself: its input is still open
    finally:
        worker.kill()
    answers = worker.stdout.read().splitlines()
    assert json.loads(answers[-1]) == {"event": "served", "exit_code": 130}
    names = sorted(p.name for p in out.iterdir())
    assert "a_summary.json" in names and "d_summary.json" not in names
    assert not [n for n in names if n.startswith(".")]
