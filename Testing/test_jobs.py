"""Background worker plumbing of the Slicer module, with real subprocesses (no Slicer needed)."""
from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from MedAutoencoderLib.worker import jobs


def python_script(code: str) -> list:
    return [sys.executable, "-c", textwrap.dedent(code)]


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    if os.path.exists(f"/proc/{pid}/stat"):
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# ---- pure functions


@pytest.mark.parametrize("line", ["", "hello", "{not json", "[1, 2]", '{"event": "unknown"}', '{"fraction": 0.5}',
                                  "error: file not found"])
def test_lines_that_are_not_progress_events_are_ignored(line):
    assert jobs.parse_progress_line(line) is None


def test_progress_line_is_parsed():
    event = jobs.parse_progress_line(' {"event": "progress", "fraction": 0.25, "message": "epoch 1", '
                                     '"elapsed_s": 3.0, "eta_s": null}\n')
    assert event == {"event": "progress", "fraction": 0.25, "message": "epoch 1", "elapsed_s": 3.0, "eta_s": None}


@pytest.mark.parametrize("seconds, text", [(None, ""), (float("nan"), ""), (-1, ""), (0, "0 s"), (59.4, "59 s"),
                                           (61, "1 min 01 s"), (3725, "1 h 02 min")])
def test_format_duration(seconds, text):
    assert jobs.format_duration(seconds) == text


def test_detect_command_has_json_progress_and_all_options():
    command = jobs.detect_command("py", ["/tmp/in put.nrrd"], "/tmp/out", model_path="/m.pt", threshold=0.25,
                                  device="gpu")
    assert command[:4] == ["py", "-m", "MedAutoencoderLib", "detect"]
    assert command[command.index("--model") + 1] == "/m.pt"
    assert "/tmp/in put.nrrd" in command
    assert command[command.index("--threshold") + 1] == "0.25"
    assert command[command.index("--device") + 1] == "cuda"
    assert command[command.index("--progress") + 1] == "json"
    assert command[command.index("--format") + 1] == "nrrd"
    assert "--uncompressed" in command  # read back at once and deleted: compressing them is wasted time


def test_detect_command_defaults_to_bundled_model_and_calibrated_threshold():
    command = jobs.detect_command("py", ["in.nrrd"], "out")
    assert "--model" not in command
    assert command[command.index("--threshold") + 1] == "auto"
    assert command[command.index("--device") + 1] == "auto"


def test_train_command():
    command = jobs.train_command("py", ["a.nrrd", "b.nrrd"], "vae", "m.pt", epochs=3, max_minutes=1.5, device="cpu",
                                 stop_file="stop")
    assert command[:4] == ["py", "-m", "MedAutoencoderLib", "train"]
    assert command[command.index("--data") + 1:command.index("--data") + 3] == ["a.nrrd", "b.nrrd"]
    for option, value in {"--model": "vae", "--out": "m.pt", "--epochs": "3", "--max-minutes": "1.5",
                          "--device": "cpu", "--progress": "json", "--stop-file": "stop"}.items():
        assert command[command.index(option) + 1] == value


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="tpu"):
        jobs.cli_device("tpu")


def test_worker_environment():
    environment = jobs.worker_environment("cpu", base_pythonpath="/x")
    assert environment["PYTHONUNBUFFERED"] == "1"
    assert environment["PYTHONPATH"].split(os.pathsep) == [jobs.library_parent_dir(), "/x"]
    assert environment["CUDA_VISIBLE_DEVICES"] == "-1"
    assert "CUDA_VISIBLE_DEVICES" not in jobs.worker_environment("auto")


def test_python_launcher_prefers_python_slicer():
    assert jobs.python_launcher(lambda name: "/slicer/bin/PythonSlicer", "/py") == ("/slicer/bin/PythonSlicer", True)
    assert jobs.python_launcher(lambda name: None, "/py") == ("/py", False)


# ---- real worker processes


@pytest.mark.slow
def test_worker_events_and_other_output_arrive_in_order():
    job = jobs.start_worker(python_script("""
        import json, sys
        print("some library warning")
        for i in range(3):
            print(json.dumps({"event": "progress", "fraction": i / 3, "message": f"step {i}"}), flush=True)
        print("error: printed on stderr", file=sys.stderr, flush=True)
        print(json.dumps({"event": "done", "fraction": 1.0, "outputs": {"model": "m.pt"}}), flush=True)
        """), {})
    events = []
    assert job.wait(on_event=events.append) == 0
    assert [e["event"] for e in events] == ["output", "progress", "progress", "progress", "output", "done"]
    assert events[0]["message"] == "some library warning"
    assert job.outputs == {"model": "m.pt"}
    assert job.succeeded and not job.was_cancelled
    assert "error: printed on stderr" in job.recent_output()


@pytest.mark.slow
def test_failed_worker_keeps_error_and_last_lines():
    job = jobs.start_worker(python_script("""
        import json, sys
        print(json.dumps({"event": "error", "message": "model file is corrupt"}), flush=True)
        print("error: model file is corrupt", file=sys.stderr)
        sys.exit(1)
        """), {})
    assert job.wait() == 1
    assert not job.succeeded
    assert job.error_message == "model file is corrupt"
    assert job.recent_output(1) == "error: model file is corrupt"


@pytest.mark.slow
def test_environment_update_reaches_worker():
    job = jobs.start_worker(python_script("import os; print(os.environ['MEDAE_TEST'])"), {"MEDAE_TEST": "42"})
    events = []
    job.wait(on_event=events.append)
    assert events == [{"event": "output", "message": "42"}]


@pytest.mark.slow
def test_poll_does_not_block_while_worker_runs():
    job = jobs.start_worker(python_script("import time; time.sleep(30)"), {})
    try:
        started = time.monotonic()
        assert job.poll_events() == []
        assert not job.finished
        assert time.monotonic() - started < 0.5
    finally:
        job.cancel()
    assert wait_until(lambda: job.finished) and job.was_cancelled


@pytest.mark.slow
def test_cancel_kills_the_whole_process_tree():
    job = jobs.start_worker(python_script("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
        """), {})
    events = []
    assert wait_until(lambda: events.extend(job.poll_events()) or events)
    child_pid = int(events[0]["message"])
    assert process_alive(child_pid)
    job.cancel()
    assert not process_alive(job.process.pid)
    assert wait_until(lambda: not process_alive(child_pid))
    assert job.was_cancelled and not job.succeeded


@pytest.mark.slow
def test_cancel_uses_stop_file_first(tmp_path):
    stop_file = tmp_path / "stop"
    stop_file.write_text("stale")
    job = jobs.start_worker(python_script(f"""
        import json, os, sys, time
        while not os.path.exists({str(stop_file)!r}):
            time.sleep(0.05)
        print(json.dumps({{"event": "cancelled", "message": "stopped, model kept"}}), flush=True)
        sys.exit(130)
        """), {}, stop_file=str(stop_file))
    time.sleep(0.3)
    assert job.process.poll() is None, "a stale stop file must be removed before the job starts"
    job.cancel(grace_seconds=20)
    events = []
    assert job.wait(on_event=events.append) == jobs.EXIT_CANCELLED
    assert events[-1]["event"] == "cancelled"
    assert job.was_cancelled


# ---- the library's real command line as the worker


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from worker_helpers import tiny_model

    return tiny_model(tmp_path_factory)


@pytest.mark.slow
def test_real_training_worker_reports_progress_and_model(tiny_model_path):
    assert tiny_model_path.is_file() and tiny_model_path.stat().st_size > 0


@pytest.mark.slow
def test_real_detection_worker_writes_outputs_on_input_grid(tmp_path, tiny_model_path):
    import numpy as np
    import SimpleITK as sitk

    from MedAutoencoderLib.data.synthetic import toy_volume
    from MedAutoencoderLib.slicer import bridge as slicer_bridge

    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    image = toy_volume(np.random.default_rng(11), shape=(30, 28, 20), spacing=(1.1, 0.9, 2.2), direction=direction)
    input_path = tmp_path / "case.nrrd"
    sitk.WriteImage(image, str(input_path))
    command = jobs.detect_command(sys.executable, [str(input_path)], str(tmp_path / "out"),
                                  model_path=str(tiny_model_path), device="cpu")
    job = jobs.start_worker(command, jobs.worker_environment("cpu"))
    events = []
    assert job.wait(on_event=events.append) == 0, job.recent_output()
    kinds = [e["event"] for e in events if e["event"] != jobs.OUTPUT_EVENT]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds
    assert all(0.0 <= e["fraction"] <= 1.0 for e in events if "fraction" in e)
    result = slicer_bridge.read_worker_outputs(job.outputs[str(input_path)])
    for output in (result.reconstruction, result.anomaly_map, result.anomaly_mask):
        assert output.GetSize() == image.GetSize()
        np.testing.assert_allclose(output.GetOrigin(), image.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(output.GetDirection(), image.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(output.GetSpacing(), image.GetSpacing(), atol=1e-6)
    assert result.anomaly_mask.GetPixelID() == sitk.sitkUInt8
    assert "threshold" in result.summary


@pytest.mark.slow
def test_real_worker_error_is_reported(tmp_path):
    command = jobs.detect_command(sys.executable, [str(tmp_path / "missing.nrrd")], str(tmp_path / "out"),
                                  model_path=str(tmp_path / "missing.pt"), device="cpu")
    job = jobs.start_worker(command, jobs.worker_environment("cpu"))
    assert job.wait() == 1
    assert not job.succeeded
    assert "missing" in (job.error_message or "") + job.recent_output()


@pytest.mark.slow
def test_real_training_stops_on_stop_file(tmp_path):
    from worker_helpers import TINY_TRAIN_ARGUMENTS, write_toy_volumes

    data = write_toy_volumes(tmp_path / "healthy")
    stop_file = tmp_path / "stop"
    model = tmp_path / "stopped.pt"
    command = jobs.train_command(sys.executable, [str(data)], "dae", str(model), epochs=500, device="cpu",
                                 stop_file=str(stop_file), extra_arguments=TINY_TRAIN_ARGUMENTS)
    job = jobs.start_worker(command, jobs.worker_environment("cpu"), stop_file=str(stop_file))
    events = []
    assert wait_until(lambda: events.extend(job.poll_events()) or any(e["event"] == "progress" for e in events),
                      seconds=120), job.recent_output()
    job.cancel(grace_seconds=60)
    job.wait(on_event=events.append)
    assert job.returncode == jobs.EXIT_CANCELLED, job.recent_output()
    assert job.was_cancelled
    assert events[-1]["event"] in ("cancelled", "done", jobs.OUTPUT_EVENT)
