"""The Slicer module's job logic (``MedAutoencoderLib.slicer.job``) on slicer-core's real MRML scene.

The process runner is the one thing replaced, as SlicerNNUnet's tests give ``SegmentationLogic`` their own
``process``: it records the command line the module would start and answers with what the command line prints.
The timers of Slicer's main thread are a recording event loop that the test drives. One slow test runs the real
command line through the standby worker.
"""
from __future__ import annotations

import json
import os
import queue
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not available for this Python")
slicer_util = pytest.importorskip("slicer.util")

from test_slicer_bridge import node_ijk_to_ras, organ_node, scene  # noqa: E402,F401

from MedAutoencoderLib.errors import MedAutoencoderError  # noqa: E402
from MedAutoencoderLib.slicer import job as slicer_job  # noqa: E402


class RecordingLoop(slicer_job.EventLoop):
    """Slicer's main-thread timers as a record: what polls, what runs later, whether polling stopped."""

    def __init__(self) -> None:
        self.polls, self.delayed, self.stopped = [], [], 0

    def every(self, milliseconds, callback):
        self.polls.append((milliseconds, callback))
        return self._stop

    def _stop(self) -> None:
        self.stopped += 1

    def later(self, milliseconds, callback) -> None:
        self.delayed.append((milliseconds, callback))


class AnsweringProcess:
    """The ``subprocess.Popen`` a runner returns, playing a command line that printed ``lines`` and exited with
    ``code``; with ``code`` None it runs until it is killed."""

    pid = 2 ** 31 - 1  # no process has it: killing the tree finds no children

    def __init__(self, lines, code):
        self.returncode = code
        self._lines = queue.Queue()
        for line in lines:
            self._lines.put(line + "\n")
        if code is not None:
            self._lines.put("")
        self.stdout = self

    def readline(self) -> str:
        return self._lines.get()

    def close(self) -> None:
        pass

    def poll(self):
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9
        self._lines.put("")

    def wait(self, timeout=None):
        return self.returncode


class AnsweringRunner:
    """A process runner with ``slicer.util.launchConsoleProcess``'s signature: it records each command line and
    environment and answers with ``answer(command) -> (lines, exit code)``."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.commands, self.environments = [], []

    def __call__(self, command, useStartupEnvironment=False, updateEnvironment=None):
        self.commands.append(list(command))
        self.environments.append(dict(updateEnvironment or {}))
        return AnsweringProcess(*self.answer(list(command)))


def value_after(command, flag):
    return command[command.index(flag) + 1]


def train_like_the_cli(command):
    out = value_after(command, "--out")
    Path(out).write_text("model")
    return [json.dumps({"event": "done", "fraction": 1.0, "outputs": {"model": out}})], 0


@pytest.fixture()
def healthy_node(scene):
    voxels = np.random.default_rng(3).normal(100.0, 10.0, (6, 7, 8)).astype(np.float32)
    return slicer_util.addVolumeFromArray(voxels, np.diag([1.0, 1.2, 2.0, 1.0]), "healthy 1")


def test_training_job_starts_the_cli_on_copies_and_returns_the_model(tmp_path, healthy_node):
    launch, loop = AnsweringRunner(train_like_the_cli), RecordingLoop()
    starter = slicer_job.WorkerJobs(str(tmp_path / "temp"), launch=launch, loop=loop)
    out = tmp_path / "new.pt"
    job = starter.startTraining([healthy_node, str(tmp_path / "folder")], str(out), modelType="vae", epochs=3,
                                device="cpu")
    command = launch.commands[0]
    assert command[1:4] == ["-m", "MedAutoencoderLib", "train"]
    copy = value_after(command, "--data")
    assert Path(copy).parent.parent == tmp_path / "temp" / "MedAutoencoder" and copy.endswith(".nrrd")
    assert command[command.index("--data") + 2] == str(tmp_path / "folder")
    assert (value_after(command, "--model"), value_after(command, "--epochs"), value_after(command, "--out")) == \
        ("vae", "3", str(out))
    assert Path(value_after(command, "--stop-file")).parent == Path(copy).parent
    assert launch.environments[0]["CUDA_VISIBLE_DEVICES"] == "-1"  # device cpu: the worker sees no GPU
    assert loop.polls[0][0] == slicer_job.POLL_INTERVAL_MS

    job.wait()
    assert (job.result, job.error, job.cancelled) == (str(out), None, False)
    assert not Path(copy).parent.exists(), "the job's copies of scene volumes are removed when it ends"
    assert loop.stopped == 1


def test_a_failed_worker_is_reported_with_node_names_not_file_names(tmp_path, healthy_node):
    launch = AnsweringRunner(lambda command: (
        [json.dumps({"event": "error", "message": f"{value_after(command, '--data')}: has no foreground"})], 1))
    starter = slicer_job.WorkerJobs(str(tmp_path), launch=launch, loop=RecordingLoop())
    finished = []
    job = starter.startTraining([healthy_node], str(tmp_path / "new.pt"), device="cpu")
    job.onFinished = finished.append
    job.wait()
    assert job.error == "'healthy 1': has no foreground"
    assert job.result is None and finished == [job]


def test_cancelling_training_gives_it_time_to_save_then_kills_it(tmp_path, healthy_node):
    launch = AnsweringRunner(lambda command: (["epoch 1/50"], None))
    loop = RecordingLoop()
    job = slicer_job.WorkerJobs(str(tmp_path), launch=launch, loop=loop).startTraining(
        [healthy_node], str(tmp_path / "new.pt"), device="cpu")
    job.cancel()
    assert os.path.exists(job.worker.stop_file), "the worker is asked through its stop file first"
    assert [delay for delay, _ in loop.delayed] == [slicer_job.TRAINING_STOP_GRACE_MS]
    loop.delayed[0][1]()  # the grace period is over
    job.wait()
    assert job.cancelled and job.result is None and job.error is None


def test_a_refused_volume_leaves_no_copy_of_the_others_behind(tmp_path, scene, healthy_node):
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "segmentation")
    labelmap.SetAndObserveImageData(healthy_node.GetImageData())
    launch = AnsweringRunner(train_like_the_cli)
    with pytest.raises(MedAutoencoderError, match="segmentation"):
        slicer_job.WorkerJobs(str(tmp_path), launch=launch).startTraining([healthy_node, labelmap],
                                                                         str(tmp_path / "new.pt"))
    assert launch.commands == [] and os.listdir(tmp_path / "MedAutoencoder") == []


@pytest.mark.slow
def test_detection_through_the_standby_worker_lands_on_the_input_grid(tmp_path, scene, organ_node,
                                                                       tiny_model_path):
    starter = slicer_job.WorkerJobs(str(tmp_path))
    try:
        job = starter.startDetection(organ_node, modelPath=str(tiny_model_path), device="cpu")
        events = []
        job.onEvent = events.append
        job.wait()
        assert job.error is None, job.recentOutput
        assert set(job.result) == {"reconstruction", "anomaly_map", "anomaly_mask", "anomaly_segmentation",
                                   "findings_table"}
        for role in ("reconstruction", "anomaly_map", "anomaly_mask"):
            np.testing.assert_array_equal(node_ijk_to_ras(job.result[role]), node_ijk_to_ras(organ_node))
        assert events and events[-1]["event"] == "done"
        assert json.loads(json.dumps(events[-1]))["outputs"]
    finally:
        starter.stopDetectionWorker()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from worker_helpers import tiny_model

    return tiny_model(tmp_path_factory)
