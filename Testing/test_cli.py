"""The command line as users run it: real ``python -m MedAutoencoderLib`` subprocesses."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

TINY = ["--size", "32", "32", "32", "--spacing", "1.5", "1.5", "1.5", "--batch-size", "16", "--device", "cpu",
        "--no-augment"]

pytestmark = pytest.mark.slow  # every test runs the command line in a process of its own


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "MedAutoencoderLib", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_train_with_json_progress(toy_cohort, tmp_path):
    out = tmp_path / "cli.pt"
    done = cli("train", "--data", toy_cohort, "--out", out, "--model", "ae", "--channels", "8", "16",
               "--epochs", "1", "--progress", "json", *TINY)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    events = [json.loads(line) for line in lines]
    assert all("event" in e for e in events)
    assert events[0]["event"] == "start"
    assert events[-1]["event"] == "done" and events[-1]["outputs"]["model"] == str(out)
    assert any(e["event"] == "progress" for e in events)
    payload = torch.load(out, weights_only=True)
    assert payload["model"]["name"] == "ae" and "threshold" in payload["calibration"]


def test_info_text_and_json(dae_model_path):
    text = cli("info", dae_model_path)
    assert text.returncode == 0, text.stderr
    assert "type: dae 2D" in text.stdout and "threshold:" in text.stdout and "not calibrated" not in text.stdout
    as_json = cli("info", dae_model_path, "--json")
    assert as_json.returncode == 0, as_json.stderr
    card = json.loads(as_json.stdout)
    assert card["model"]["name"] == "dae" and card["calibration"]["threshold"] > 0
    assert card["parameters"] > 0 and card["training"]["epochs"] == 6


def test_detect_writes_outputs_and_refuses_to_overwrite(dae_model_path, lesion_case, tmp_path):
    outputs = tmp_path / "out"
    inputs = [lesion_case["image_path"], lesion_case["healthy_path"]]
    done = cli("detect", *inputs, "--model", dae_model_path, "--output-dir", outputs, "--progress", "none",
               "--device", "cpu")
    assert done.returncode == 0, done.stderr
    for stem in ("case_000", "control_000"):
        for kind in ("reconstruction", "anomaly_map", "anomaly_mask"):
            image = sitk.ReadImage(str(outputs / f"{stem}_{kind}.nii.gz"))
            assert image.GetSize() == lesion_case["image"].GetSize()
            assert np.allclose(image.GetDirection(), lesion_case["image"].GetDirection())
        summary = json.loads((outputs / f"{stem}_summary.json").read_text())
        assert {"anomaly_score", "threshold", "components", "n_components"} <= set(summary)
    assert len(list(outputs.iterdir())) == 8
    before = {p.name: p.read_bytes() for p in outputs.iterdir()}

    again = cli("detect", lesion_case["image_path"], "--model", dae_model_path, "--output-dir", outputs,
                "--progress", "none", "--device", "cpu")
    assert again.returncode == 1
    assert "error:" in again.stderr and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert {p.name: p.read_bytes() for p in outputs.iterdir()} == before


def nrrd_encoding(path) -> str:
    with open(path, "rb") as nrrd:
        header = nrrd.read(4096).split(b"\n\n")[0].decode("ascii")
    return next(line.split(":")[1].strip() for line in header.splitlines() if line.startswith("encoding:"))


def test_detect_uncompressed_writes_the_same_volumes_raw(dae_model_path, lesion_case, tmp_path):
    runs = {}
    for name, extra in (("compressed", []), ("raw", ["--uncompressed"])):
        done = cli("detect", lesion_case["image_path"], "--model", dae_model_path, "--output-dir", tmp_path / name,
                   "--format", "nrrd", "--progress", "none", "--device", "cpu", *extra)
        assert done.returncode == 0, done.stderr
        runs[name] = tmp_path / name
    for kind in ("reconstruction", "anomaly_map", "anomaly_mask"):
        compressed, raw = (runs[name] / f"case_000_{kind}.nrrd" for name in ("compressed", "raw"))
        assert nrrd_encoding(compressed) == "gzip" and nrrd_encoding(raw) == "raw"
        a, b = sitk.ReadImage(str(compressed)), sitk.ReadImage(str(raw))
        assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
        assert (a.GetOrigin(), a.GetSpacing(), a.GetDirection()) == (b.GetOrigin(), b.GetSpacing(), b.GetDirection())

    refused = cli("detect", lesion_case["image_path"], "--model", dae_model_path, "--output-dir", tmp_path / "nii",
                  "--uncompressed", "--progress", "none", "--device", "cpu")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "always compressed" in refused.stderr and "--format nii" in refused.stderr
    assert list(tmp_path.glob("nii/*")) == []


@pytest.mark.skipif(sys.platform == "win32", reason="Windows sends no SIGTERM: it ends the process")
@pytest.mark.parametrize("stop, said, read_ahead", [
    (signal.SIGTERM, "cancelled: stopped by SIGTERM", []),
    (signal.SIGTERM, "cancelled: stopped by SIGTERM", ["--prepare-ahead", "2"]),
    (signal.SIGINT, "cancelled: interrupted (Ctrl-C)", []),
], ids=["sigterm", "sigterm-read-ahead", "ctrl-c"])
def test_stopped_mid_batch_keeps_the_volumes_done_and_removes_the_one_in_progress(tmp_path, stop, said, read_ahead):
    """SIGTERM (kill, a cluster's time limit) used to end the process at once: the volume in progress left hidden
    temporary files, and the one finished before it, still being written, lost its outputs. With read-ahead, the
    volumes being prepared at that moment are waited for and give no outputs. Ctrl-C cleaned up alike but ended
    in a traceback from wherever it landed (inside torch, mostly)."""
    from conftest import brain_scans

    scans = brain_scans(tmp_path / "scans", "abcd", ".nii.gz")
    out = tmp_path / "out"
    # as from a terminal: a test run started in the background (CI under nohup) ignores SIGINT, and its children
    # would inherit that
    process = subprocess.Popen([sys.executable, "-m", "MedAutoencoderLib", "detect", str(scans), "--output-dir",
                                str(out), "--device", "cpu", "--progress", "json", *read_ahead],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in process.stdout:  # each volume takes about a second on two cores: the next one is under way
        if "mL flagged" in line:
            process.send_signal(stop)
            break
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert said in err and "Traceback" not in err
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.startswith("a_")] == ["a_anomaly_map.nii.gz", "a_anomaly_mask.nii.gz",
                                                        "a_reconstruction.nii.gz", "a_summary.json"]
    assert not [n for n in names if n.startswith(".")] and not [n for n in names if n.startswith("d_")]


def test_detect_takes_folders_and_never_replaces_an_input_even_with_overwrite(dae_model_path, lesion_case, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "a.nii.gz").write_bytes(open(lesion_case["image_path"], "rb").read())
    done = cli("detect", scans, "--model", dae_model_path, "--output-dir", tmp_path / "out", "--progress", "none",
               "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_anomaly_map.nii.gz", "a_anomaly_mask.nii.gz", "a_reconstruction.nii.gz", "a_summary.json"]

    users_file = scans / "a_reconstruction.nii.gz"  # the user's own scan, also an input of the folder
    users_file.write_bytes(open(lesion_case["healthy_path"], "rb").read())
    before = users_file.read_bytes()
    refused = cli("detect", scans, "--model", dae_model_path, "--output-dir", scans, "--overwrite", "--progress",
                  "none", "--device", "cpu")
    assert refused.returncode == 1
    assert "overwrite an input" in refused.stderr and "Traceback" not in refused.stderr
    assert users_file.read_bytes() == before and len(list(scans.iterdir())) == 2


@pytest.mark.skipif(sys.platform == "win32", reason="Windows file names are Unicode: none is invalid UTF-8")
def test_a_file_or_folder_name_that_is_not_utf8_is_a_clean_error(dae_model_path, lesion_case, tmp_path):
    """ITK cannot be given such a name: the process aborted in C++ (exit 134), having made the output folder."""
    scans = tmp_path / "scans"
    scans.mkdir()
    latin1 = os.fsdecode(b"caf\xe9")  # "cafe" with its e-acute in Latin-1, as an old Linux system names files
    shutil.copy(lesion_case["image_path"], scans / f"{latin1}.nii.gz")
    done = cli("detect", scans, "--model", dae_model_path, "--output-dir", tmp_path / "out", "--device", "cpu")
    assert done.returncode == 1 and "caf\\xe9.nii.gz: its name is not valid UTF-8" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
    (scans / f"{latin1}.nii.gz").rename(scans / "cafe.nii.gz")
    done = cli("detect", scans, "--model", dae_model_path, "--output-dir", tmp_path / latin1, "--device", "cpu")
    assert done.returncode == 1 and "its name is not valid UTF-8" in done.stderr, done.stderr
    assert not (tmp_path / latin1).exists()


def test_a_nifti_whose_sform_disagrees_with_itk_is_detected_with_a_warning_in_the_log_and_summary(
        dae_model_path, lesion_case, tmp_path):
    from test_io import _with_sform_moved

    scan = tmp_path / "scan.nii"
    sitk.WriteImage(lesion_case["image"], str(scan))
    _with_sform_moved(scan, 10.0)
    done = cli("detect", scan, "--model", dae_model_path, "--output-dir", tmp_path / "out", "--device", "cpu",
               "--progress", "json")
    assert done.returncode == 0, done.stderr
    logs = [json.loads(line)["message"] for line in done.stdout.splitlines() if '"log"' in line]
    assert any(m.startswith("warning: ") and "sform places the volume up to 10.0 mm" in m for m in logs), logs
    summary = json.loads((tmp_path / "out" / "scan_summary.json").read_text())
    assert "FSL and nibabel use the sform" in summary["warnings"][0]


def test_detect_bad_input_is_a_clean_error(dae_model_path, tmp_path):
    flat = tmp_path / "flat_slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((20, 20)).astype(np.float32)), str(flat))
    done = cli("detect", flat, "--model", dae_model_path, "--output-dir", tmp_path / "out", "--device", "cpu")
    assert done.returncode == 1
    assert "flat_slice.nii.gz" in done.stderr and "2D" in done.stderr
    assert "error:" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_during_training_saves_a_model_and_exits_130(toy_cohort, tmp_path):
    out = tmp_path / "interrupted.pt"
    process = subprocess.Popen(
        [sys.executable, "-m", "MedAutoencoderLib", "train", "--data", str(toy_cohort), "--out", str(out),
         "--model", "ae", "--channels", "8", "16", "--epochs", "10000", "--patience", "10000",
         "--progress", "json", *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        events = []
        deadline = time.monotonic() + 180
        for line in process.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] == "progress" or time.monotonic() > deadline:
                break
        assert events and events[-1]["event"] == "progress", events
        process.send_signal(signal.SIGTERM)
        rest, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "cancelled" in stderr and "Traceback" not in stderr
    last = json.loads(rest.strip().splitlines()[-1])
    assert last["event"] == "cancelled" and last["outputs"]["model"] == str(out)
    payload = torch.load(out, weights_only=True)
    assert payload["training"]["stop_reason"] == "cancelled" and payload["training"]["epochs"] < 10000
    assert np.isfinite(payload["calibration"]["threshold"])
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_sigint_during_data_preparation_stops_at_once_and_keeps_the_existing_model(toy_cohort, ae_model_path,
                                                                                  tmp_path):
    out = tmp_path / "existing.pt"
    shutil.copy(ae_model_path, out)
    original = out.read_bytes()
    cohort = tmp_path / "cohort"  # 40 volumes: preparing them takes seconds, so the signal lands in preparation
    cohort.mkdir()
    for copy in range(8):
        for source in toy_cohort.iterdir():
            shutil.copy(source, cohort / f"{copy}_{source.name}")
    process = subprocess.Popen(
        [sys.executable, "-m", "MedAutoencoderLib", "train", "--data", str(cohort), "--out", str(out),
         "--overwrite", "--model", "ae", "--channels", "8", "16", "--epochs", "10000", "--progress", "json", *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        events = []
        for line in process.stdout:
            events.append(json.loads(line))
            if events[-1]["message"].startswith("preparing"):
                break
        process.send_signal(signal.SIGINT)
        rest, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    events += [json.loads(line) for line in rest.strip().splitlines()]
    assert process.returncode == 130, stderr
    assert "cancelled before it began" in stderr and "Traceback" not in stderr
    assert events[-1]["event"] == "cancelled" and not any(e["event"] == "progress" for e in events)
    assert out.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort", "existing.pt"]


def test_evaluate_prints_model_and_baseline_columns(dae_model_path, lesion_case, tmp_path):
    report_file = tmp_path / "report.json"
    done = cli("evaluate", "--model", dae_model_path, "--images", lesion_case["root"] / "images",
               "--masks", lesion_case["root"] / "masks", "--healthy", lesion_case["healthy_path"],
               "--json", report_file, "--progress", "none", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("1 lesioned, 1 healthy")
    header = lines[1].split()
    assert header[:2] == ["metric", "model"] and "baseline" in lines[1]
    auroc_row = next(line for line in lines if line.startswith("voxel AUROC"))
    model_value, baseline_value = (float(v) for v in auroc_row.split()[-2:])
    report = json.loads(report_file.read_text())
    assert model_value == pytest.approx(report["model"]["auroc"], abs=1e-4)
    assert baseline_value == pytest.approx(report["baseline_robust_z"]["auroc"], abs=1e-4)


def test_evaluate_never_writes_its_report_over_a_scan_even_with_overwrite(dae_model_path, lesion_case, tmp_path):
    scan = tmp_path / "case_000.nii.gz"
    shutil.copy(lesion_case["image_path"], scan)
    before = scan.read_bytes()
    done = cli("evaluate", "--model", dae_model_path, "--images", scan, "--masks", lesion_case["mask_path"],
               "--json", scan, "--overwrite", "--progress", "none", "--device", "cpu")
    assert done.returncode == 1 and "overwrite an input" in done.stderr and "Traceback" not in done.stderr
    assert scan.read_bytes() == before


def test_evaluate_passes_its_foreground_to_the_model(dae_model_path, lesion_case):
    """--foreground reaches the model: a brain foreground for a model not trained on brains is refused, not ignored."""
    done = cli("evaluate", "--model", dae_model_path, "--images", lesion_case["image_path"],
               "--masks", lesion_case["mask_path"], "--foreground", "brain", "--progress", "none", "--device", "cpu")
    assert done.returncode == 1 and "applies to brain models only" in done.stderr and "Traceback" not in done.stderr


def test_evaluate_refuses_an_existing_json_report_before_evaluating(dae_model_path, lesion_case, tmp_path):
    report_file = tmp_path / "report.json"
    report_file.write_text("mine")
    done = cli("evaluate", "--model", dae_model_path, "--images", lesion_case["image_path"],
               "--masks", lesion_case["mask_path"], "--json", report_file, "--progress", "json", "--device", "cpu")
    assert done.returncode == 1 and "report.json: already exists" in done.stderr and "Traceback" not in done.stderr
    assert [json.loads(line)["event"] for line in done.stdout.strip().splitlines()] == ["error"]  # no evaluation
    assert report_file.read_text() == "mine"


def test_evaluate_keep_going_leaves_out_a_refused_volume_and_lists_it(dae_model_path, lesion_case, tmp_path):
    """A cohort of real scans with one the model refuses: without --keep-going the evaluation stops naming it;
    with it the others are evaluated and the refused one is listed with the report (exit code 1)."""
    controls = tmp_path / "controls"
    controls.mkdir()
    shutil.copy(lesion_case["healthy_path"], controls / "control_000.nii.gz")
    broken = sitk.Cast(lesion_case["healthy"], sitk.sitkFloat32)
    broken[0, 0, 0] = float("nan")
    sitk.WriteImage(broken, str(controls / "control_nan.nii.gz"))
    command = ["evaluate", "--model", dae_model_path, "--images", lesion_case["image_path"], "--masks",
               lesion_case["mask_path"], "--healthy", controls, "--progress", "none", "--device", "cpu"]
    stopped = cli(*command)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    assert "control_nan.nii.gz:" in stopped.stderr and not stopped.stdout.strip()
    report_file = tmp_path / "report.json"
    done = cli(*command, "--keep-going", "--json", report_file)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("1 lesioned, 1 healthy")
    assert lines[-2] == "skipped 1 volume(s), not in the figures above:" and "control_nan.nii.gz:" in lines[-1]
    report = json.loads(report_file.read_text())
    assert [(c["image"], c["lesioned"]) for c in report["skipped"]] == [("control_nan.nii.gz", False)]
    assert report["n_healthy"] == 1 and report["skipped"][0]["reason"] == lines[-1].strip()
