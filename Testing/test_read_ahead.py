"""Volumes of a batch prepared ahead of the network in worker threads: order, failures, bounds, shutdown, and a
batch that stops at a failed volume while later volumes were already being prepared."""
from __future__ import annotations

import shutil
import signal
import threading
import time
import weakref
from pathlib import Path

import pytest
import SimpleITK as sitk
from test_user_errors import run_cli

from MedAutoencoderLib.api import detect_files
from MedAutoencoderLib.detection import pipeline
from MedAutoencoderLib.detection.read_ahead import prepared_in_order


def slow_square(item: int) -> int:
    """Earlier items take longer, so that later ones finish first; item 3 fails."""
    time.sleep(0.02 * (5 - item))
    if item == 3:
        raise ValueError("item 3 is bad")
    return item * item


def test_results_come_back_in_input_order_with_each_failure_at_its_own_place():
    with prepared_in_order(range(6), slow_square, depth=3) as futures:
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except ValueError as exc:
                outcomes.append(str(exc))
    assert outcomes == [0, 1, 4, "item 3 is bad", 16, 25]


def test_no_more_than_depth_items_are_prepared_ahead_of_the_one_taken():
    started = []

    def prepare(item: int) -> int:
        started.append(item)
        return item

    with prepared_in_order(range(10), prepare, depth=2) as futures:
        for taken, future in enumerate(futures):
            assert future.result() == taken
            time.sleep(0.01)  # time for the workers to start whatever they may
            assert max(started) <= taken + 2


def test_stopping_early_cancels_what_has_not_started_and_waits_for_what_runs():
    """Three workers blocked on items 0-2, item 3 queued behind them: a failure in the caller cancels item 3, and
    the with-block ends only once items 0-2 have finished, leaving no worker thread."""
    started, finished = [], []

    def prepare(item: int) -> int:
        started.append(item)
        time.sleep(0.3)
        finished.append(item)
        return item

    with pytest.raises(RuntimeError, match="the caller failed"):
        with prepared_in_order(range(20), prepare, depth=3) as futures:
            next(futures)
            time.sleep(0.05)  # the workers take items 0-2
            raise RuntimeError("the caller failed")
    assert sorted(started) == sorted(finished) == [0, 1, 2]
    assert not [t for t in threading.enumerate() if t.name.startswith("prepare")]


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="Windows has no pthread_kill")
def test_a_second_interrupt_while_waiting_for_the_workers_still_waits_for_them():
    """Ctrl-C pressed again while a stopped batch waits for its running preparations: the wait goes on (no
    thread outlives the batch), then the interrupt is raised."""
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores SIGINT
    both_started, finished = threading.Barrier(3), []

    def prepare(item: int) -> int:
        both_started.wait(timeout=5)
        time.sleep(0.6)
        finished.append(item)
        return item

    # to the main thread, as a terminal's Ctrl-C: a signal raised in another thread would not wake its wait
    second_interrupt = threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    try:
        with pytest.raises(KeyboardInterrupt):
            with prepared_in_order(range(5), prepare, depth=2) as futures:
                next(futures)
                both_started.wait(timeout=5)  # items 0 and 1 are being prepared
                second_interrupt.start()
                raise RuntimeError("the first interrupt")  # the wait for items 0 and 1 begins at once
    finally:
        second_interrupt.cancel()
        signal.signal(signal.SIGINT, previous_handler)
    assert sorted(finished) == [0, 1]
    assert not [t for t in threading.enumerate() if t.name.startswith("prepare")]


def test_depth_zero_prepares_each_item_in_the_callers_thread_when_it_is_taken():
    threads = []

    def prepare(item: int) -> int:
        threads.append(threading.current_thread())
        return item

    with prepared_in_order(range(3), prepare, depth=0) as futures:
        assert [f.result() for f in futures] == [0, 1, 2]
    assert threads == [threading.current_thread()] * 3


@pytest.mark.slow
def test_each_volume_is_announced_before_it_is_read_and_prepared(monkeypatch, tmp_path, lesion_case, dae_model):
    """A user watching the progress sees the volume being worked on, not the previous one's score, while the
    slow preparation (registration) of the next one runs."""
    log = []
    real_prepared_input = pipeline._prepared_input

    def prepared_input(path, preprocess):
        log.append(f"prepare {Path(path).name}")
        return real_prepared_input(path, preprocess)

    monkeypatch.setattr(pipeline, "_prepared_input", prepared_input)
    inputs = []
    for name in ("a.nii.gz", "b.nii.gz"):
        shutil.copy(lesion_case["image_path"], tmp_path / name)
        inputs.append(tmp_path / name)
    detect_files(inputs, tmp_path / "out", dae_model,
                 progress=lambda e: log.append(e["message"]) if e["event"] == "progress" else None)
    assert [entry for entry in log if entry.startswith(("prepare", "a.nii.gz (", "b.nii.gz ("))] == [
        "a.nii.gz (1/2)", "prepare a.nii.gz", "b.nii.gz (2/2)", "prepare b.nii.gz"]


@pytest.mark.slow
def test_a_volume_is_freed_before_the_next_one_is_prepared(monkeypatch, tmp_path, lesion_case, dae_model):
    """One after the other, a batch holds one prepared volume (the input and its model-grid arrays) at a time."""
    volumes, alive_when_preparing = [], []
    real_prepared_input = pipeline._prepared_input

    def prepared_input(path, preprocess):
        alive_when_preparing.append(sum(ref() is not None for ref in volumes))
        volume = real_prepared_input(path, preprocess)
        volumes.append(weakref.ref(volume))
        return volume

    monkeypatch.setattr(pipeline, "_prepared_input", prepared_input)
    inputs = [lesion_case["image_path"], lesion_case["healthy_path"], tmp_path / "third.nii.gz"]
    shutil.copy(lesion_case["image_path"], inputs[2])
    detect_files(inputs, tmp_path / "out", dae_model)
    assert alive_when_preparing == [0, 0, 0]


@pytest.fixture
def batch_with_a_bad_middle_volume(tmp_path, lesion_case):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a.nii.gz", "c.nii.gz", "d.nii.gz"):
        shutil.copy(lesion_case["image_path"], inputs / name)
    sitk.WriteImage(sitk.Image([32, 32, 16], sitk.sitkFloat32) + 5.0, str(inputs / "b.nii.gz"))  # constant
    return inputs


def test_a_batch_prepared_ahead_stops_at_the_failed_volume_and_writes_nothing_for_those_prepared_after_it(
        capsys, tmp_path, batch_with_a_bad_middle_volume, dae_model_path):
    inputs, out = batch_with_a_bad_middle_volume, tmp_path / "out"
    code, _, err = run_cli(capsys, "detect", str(inputs), "--model", str(dae_model_path), "--output-dir", str(out),
                           "--prepare-ahead", "3", "--progress", "none")
    assert code == 1 and "Traceback" not in err
    assert f"{inputs / 'b.nii.gz'}: every voxel has the same value" in err
    assert "(volume 2 of 4: outputs written for 1 volume(s) before it, 2 after it not run)" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"a_{kind}" for kind in ("reconstruction.nii.gz", "anomaly_map.nii.gz", "anomaly_mask.nii.gz",
                                 "summary.json"))
    assert not [t for t in threading.enumerate() if t.name.startswith("prepare")]


@pytest.mark.slow
def test_a_batch_prepared_ahead_with_keep_going_skips_the_failed_volume_and_finishes_the_others(
        capsys, tmp_path, batch_with_a_bad_middle_volume, dae_model_path):
    inputs, out = batch_with_a_bad_middle_volume, tmp_path / "out"
    code, _, err = run_cli(capsys, "detect", str(inputs), "--model", str(dae_model_path), "--output-dir", str(out),
                           "--prepare-ahead", "2", "--keep-going", "--progress", "none")
    assert code == 1
    assert "1 of 4 volumes failed (the other 3 have their outputs)" in err
    assert sorted(p.name for p in out.iterdir() if p.name.endswith("_summary.json")) == [
        "a_summary.json", "c_summary.json", "d_summary.json"]


def test_a_negative_read_ahead_is_a_clear_error(capsys, tmp_path, lesion_case, dae_model_path):
    code, _, err = run_cli(capsys, "detect", str(lesion_case["image_path"]), "--model", str(dae_model_path),
                           "--output-dir", str(tmp_path / "out"), "--prepare-ahead", "-1", "--progress", "none")
    assert code == 1 and "Traceback" not in err
    assert "prepare_ahead must be a whole number >= 0, not -1" in err
