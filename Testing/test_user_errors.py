"""User mistakes found in review get one clear ``error:`` line (exit 1), never a traceback, and lose no file.

The command line runs in-process through ``cli.main`` (the same code path as ``python -m MedAutoencoderLib``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import TOY_SPACING, tiny_train_config

from MedAutoencoderLib.api import detect_image, load_model
from MedAutoencoderLib.cli import commands as cli
from MedAutoencoderLib.config import DetectOptions, ModelConfig, PreprocessConfig
from MedAutoencoderLib.data import synthetic
from MedAutoencoderLib.detection import pipeline
from MedAutoencoderLib.errors import ConfigurationError, ModelFileError, OutputLocationError
from MedAutoencoderLib.io.checkpoint import save_model
from MedAutoencoderLib.io.loaded_model import CONTRAST_MODELS

TINY_TRAIN = ["--model", "ae", "--channels", "8", "16", "--epochs", "1", "--device", "cpu"]
TINY_GRID = ["--size", "32", "32", "32"]


def run_cli(capsys, *args: str):
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_two_inputs_with_the_same_name_are_refused_before_anything_is_written(capsys, tmp_path, lesion_case,
                                                                             dae_model_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(lesion_case["image_path"], tmp_path / folder / "x.nii.gz")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "detect", str(tmp_path / "a" / "x.nii.gz"), str(tmp_path / "b" / "x.nii.gz"),
                           "--model", str(dae_model_path), "--output-dir", str(out), "--progress", "none")
    assert code == 1 and "would write the same outputs" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_a_file_that_is_no_volume_among_many_is_named_before_any_is_processed(capsys, tmp_path, lesion_case,
                                                                              dae_model_path):
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image([32, 32], sitk.sitkFloat32) + 1.0, str(flat))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "detect", str(lesion_case["image_path"]), str(flat), "--model", str(dae_model_path),
                           "--output-dir", str(out), "--progress", "none")
    assert code == 1 and f"{flat}: is 2D" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_a_volume_that_fails_in_a_batch_says_which_were_done_and_which_not(capsys, tmp_path, lesion_case,
                                                                           dae_model_path):
    """Its voxels are only known when it is read: the volumes before it keep their outputs."""
    constant = tmp_path / "constant.nii.gz"
    sitk.WriteImage(sitk.Image([32, 32, 16], sitk.sitkFloat32) + 5.0, str(constant))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "detect", str(lesion_case["image_path"]), str(constant),
                           "--model", str(dae_model_path), "--output-dir", str(out), "--progress", "none")
    assert code == 1 and "Traceback" not in err
    assert "volume 2 of 2: outputs written for 1 volume(s) before it, 0 after it not run" in err
    assert (out / "case_000_anomaly_mask.nii.gz").is_file()


def test_keep_going_skips_a_failing_volume_lists_it_and_finishes_the_batch(capsys, tmp_path, lesion_case,
                                                                          dae_model_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a.nii.gz", "c.nii.gz"):
        shutil.copy(lesion_case["image_path"], inputs / name)
    sitk.WriteImage(sitk.Image([32, 32, 16], sitk.sitkFloat32) + 5.0, str(inputs / "b.nii.gz"))  # constant
    sitk.WriteImage(sitk.Image([32, 32], sitk.sitkFloat32) + 1.0, str(inputs / "d.nrrd"))  # fails its header check
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "detect", str(inputs), "--model", str(dae_model_path), "--output-dir",
                                str(out), "--keep-going", "--progress", "json")
    assert code == 1 and "Traceback" not in err
    assert "2 of 4 volumes failed (the other 2 have their outputs)" in err
    assert f"{inputs / 'b.nii.gz'}: every voxel has the same value" in err and f"{inputs / 'd.nrrd'}: is 2D" in err
    assert sorted(p.name for p in out.iterdir() if p.name.endswith("_summary.json")) == ["a_summary.json",
                                                                                         "c_summary.json"]
    assert not any(p.name.startswith(("b_", "d_")) for p in out.iterdir())
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert any(e["event"] == "log" and "b.nii.gz" in e["message"] for e in events)
    assert events[-1]["event"] == "error"


def fail_scoring_of(monkeypatch, name: str) -> None:
    """A defect in scoring one volume (after its reconstruction was handed to the writers): no real input
    triggers one, so it is injected."""
    real_score_volume = pipeline.score_volume

    def score_volume(prepared, *args):
        if Path(prepared.name).name == name:
            raise ValueError("injected defect")
        return real_score_volume(prepared, *args)

    monkeypatch.setattr(pipeline, "score_volume", score_volume)


@pytest.mark.slow
def test_a_defect_in_a_batch_says_where_it_stopped_and_leaves_the_earlier_run_of_that_volume_whole(
        capsys, monkeypatch, tmp_path, lesion_case, dae_model_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(lesion_case["healthy_path"], inputs / "b.nii.gz")  # an earlier version of b
    out = tmp_path / "out"
    assert run_cli(capsys, "detect", str(inputs / "b.nii.gz"), "--model", str(dae_model_path), "--output-dir",
                   str(out), "--progress", "none")[0] == 0
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    for name in ("a.nii.gz", "b.nii.gz"):
        shutil.copy(lesion_case["image_path"], inputs / name)
    fail_scoring_of(monkeypatch, "b.nii.gz")
    with pytest.raises(ValueError, match="injected defect"):  # a defect keeps its traceback
        cli.main(["detect", str(inputs), "--model", str(dae_model_path), "--output-dir", str(out), "--overwrite",
                  "--progress", "json"])
    captured = capsys.readouterr()
    where = f"detection stopped at {inputs / 'b.nii.gz'} (volume 2 of 2: outputs written for 1 volume(s) before it"
    assert where in captured.err  # also with --progress none
    events = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert any(e["event"] == "log" and where in e["message"] for e in events)
    assert (out / "a_summary.json").is_file()
    # b's new reconstruction was written before its scoring failed: not given its name, and no hidden leftovers
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith("b_")} == earlier
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_keep_going_skips_a_volume_that_meets_a_defect_and_prints_its_traceback(capsys, monkeypatch, tmp_path,
                                                                                lesion_case, dae_model_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz"):
        shutil.copy(lesion_case["image_path"], inputs / name)
    fail_scoring_of(monkeypatch, "b.nii.gz")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "detect", str(inputs), "--model", str(dae_model_path), "--output-dir", str(out),
                           "--keep-going", "--progress", "none")
    assert code == 1
    assert "Traceback" in err and "ValueError: injected defect" in err  # for the report it asks for
    assert "1 of 3 volumes failed (the other 2 have their outputs)" in err
    assert f"{inputs / 'b.nii.gz'}: failed with an unexpected error (ValueError: injected defect); this is a " \
           "defect of MedAutoencoder" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}_{kind}" for stem in "ac" for kind in ("reconstruction.nii.gz", "anomaly_map.nii.gz",
                                                       "anomaly_mask.nii.gz", "summary.json"))


def test_a_folder_with_an_outputs_name_is_refused_before_any_work_even_with_overwrite(capsys, tmp_path, lesion_case,
                                                                                     dae_model_path):
    out = tmp_path / "out"
    (out / "case_000_anomaly_mask.nii.gz").mkdir(parents=True)
    code, _, err = run_cli(capsys, "detect", str(lesion_case["image_path"]), "--model", str(dae_model_path),
                           "--output-dir", str(out), "--overwrite", "--progress", "none")
    assert code == 1 and "Traceback" not in err
    assert "case_000_anomaly_mask.nii.gz: a folder has this output's name" in err
    assert sorted(p.name for p in out.iterdir()) == ["case_000_anomaly_mask.nii.gz"]


def test_an_output_folder_that_is_a_file_is_a_clean_error_also_in_the_json_stream(capsys, tmp_path, lesion_case,
                                                                                 dae_model_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("mine")
    code, out, err = run_cli(capsys, "detect", str(lesion_case["image_path"]), "--model", str(dae_model_path),
                             "--output-dir", str(blocker), "--progress", "json")
    assert code == 1 and err.startswith("error:") and "Traceback" not in err
    assert "is a file, not a folder" in err  # said before the detection runs, not when writing after it
    assert json.loads(out.strip().splitlines()[-1])["event"] == "error"
    assert blocker.read_text() == "mine"


def test_non_finite_threshold_is_rejected_by_the_parser(capsys, lesion_case, dae_model_path, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["detect", str(lesion_case["image_path"]), "--model", str(dae_model_path),
                  "--output-dir", str(tmp_path), "--threshold", "nan"])
    assert exit_info.value.code == 2 and "finite number" in capsys.readouterr().err


def test_a_negative_threshold_is_refused_on_the_command_line_and_in_the_api(capsys, lesion_case, dae_model,
                                                                            dae_model_path, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["detect", str(lesion_case["image_path"]), "--model", str(dae_model_path),
                  "--output-dir", str(tmp_path / "out"), "--threshold", "-0.1"])
    assert exit_info.value.code == 2 and "threshold must be a finite number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigurationError, match="threshold must be a finite number >= 0, not -0.1"):
        detect_image(lesion_case["image"], dae_model, DetectOptions(threshold=-0.1))


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 0}, "batch size must be at least 1"),
    ({"num_workers": -1}, "workers must be at least 0"),
    ({"learning_rate": 0.0}, "learning rate must be a positive finite number"),
    # NaN and infinity passed the checks: a time budget silently off, "training diverged; lower --learning-rate",
    # or a traceback from numpy or ITK
    ({"learning_rate": math.inf}, "learning rate must be a positive finite number, got inf"),
    ({"max_minutes": math.nan}, "max_minutes must be a positive finite number, got nan"),
    ({"seed": -1}, r"seed must be in 0..4294967295, got -1"),
    ({"seed": 2 ** 32}, r"seed must be in 0..4294967295"),
    ({"preprocess": PreprocessConfig(size=(32, 32, 32), spacing=(math.nan, 2.0, 2.0))},
     "spacing must be three positive finite numbers"),
    ({"model": ModelConfig(name="vae", channels=(8, 16), kl_weight=math.nan)},
     "kl_weight must be finite and >= 0, got nan"),
    ({"model": ModelConfig(name="dae", channels=(8, 16), noise_std=math.inf)},
     "noise_std must be finite and >= 0, got inf"),
    ({"model": ModelConfig(name="ae", channels=(8, 16), latent_channels=0)}, "latent channels must be at least 1"),
    ({"model": ModelConfig(name="vae", channels=(8, 16), kl_weight=-1.0)},
     "kl_weight must be finite and >= 0, got -1.0"),
    ({"model": ModelConfig(name="ae", spatial_dims=3, channels=(8, 16), patch_size=(64, 64, 64))},
     "exceeds the model grid"),
    ({"model": ModelConfig(name="ae", spatial_dims=3, patch_size=(16, 16, 16))},
     r"patch size \(16, 16, 16\) leaves a bottleneck of a single voxel.*raise --patch-size to 32"),
    ({"model": ModelConfig(name="ae", channels=(8, 8, 8, 8, 8))},
     r"grid size \(32, 32\) leaves a bottleneck of a single voxel after 5 halvings.*raise --size to 64"),
    ({"preprocess": PreprocessConfig(size=(40, 40, 40))},
     r"multiple of 16 for the DAE's U-Net, which always has 4 levels"),
    ({"model": ModelConfig(name="ae", channels=(8, 16), reconstruction_loss="bce"),
      "preprocess": PreprocessConfig(size=(32, 32, 32), normalization="zscore")},
     "loss bce .* zscore .* use --normalization percentile"),
])
def test_invalid_training_settings_are_refused_before_any_work(tmp_path, toy_cohort, overrides, message):
    config = dataclasses.replace(tiny_train_config([toy_cohort], tmp_path / "m.pt"), **overrides)
    with pytest.raises(ConfigurationError, match=message):
        config.validate()


@pytest.mark.slow
def test_options_the_chosen_model_does_not_use_are_named_in_a_warning(capsys, tmp_path, toy_cohort):
    """They were stored in the model file and silently ignored (--kl-weight on an ae, widths after the first on
    a dae)."""
    assert ModelConfig(name="ae", kl_weight=5.0, noise="gaussian", adversarial_weight=3.0).ignored_settings() == [
        "--kl-weight (used by vae models only)", "--adversarial-weight (used by aae models only)",
        "--noise (used by dae models only)"]
    assert ModelConfig(name="dae", channels=(8, 16, 32)).ignored_settings() == []  # the widths it uses
    assert ModelConfig(name="dae", channels=(16, 16, 32, 64, 128)).ignored_settings() == []  # exactly them
    assert "--latent-channels" in ModelConfig(name="dae", latent_channels=64).ignored_settings()[0]
    assert ModelConfig().ignored_settings() == [] and ModelConfig(name="vae", spatial_dims=3).ignored_settings() == []
    code, out, err = run_cli(capsys, "train", "--data", str(toy_cohort), "--out", str(tmp_path / "m.pt"),
                             *TINY_TRAIN, *TINY_GRID, "--model", "dae", "--channels", "8", "16", "64",
                             "--kl-weight", "5", "--progress", "json")  # (given last, they win)
    assert code == 0, err
    logs = [json.loads(line)["message"] for line in out.splitlines() if json.loads(line)["event"] == "log"]
    assert "warning: --kl-weight (used by vae models only): this dae model ignores it" in logs
    assert any(m.startswith("warning: --channels after the first (the DAE's U-Net widths are 8, 8, 16, 32, 64")
               for m in logs)


@pytest.mark.slow
def test_a_bottleneck_thin_along_one_axis_only_is_accepted_and_trains(tmp_path, toy_cohort):
    """Instance norm fails on a single voxel, not on a 2x2x1 bottleneck."""
    model = ModelConfig(name="ae", spatial_dims=3, channels=(8, 16), patch_size=(8, 8, 4))
    config = tiny_train_config([toy_cohort], tmp_path / "m.pt", epochs=1, model=model)
    config.validate()
    from MedAutoencoderLib.api import train_model

    assert train_model(config).is_file()


def test_a_model_file_without_a_section_names_the_file(tmp_path, dae_model_path):
    payload = torch.load(dae_model_path, weights_only=True)
    del payload["preprocess"]
    broken = tmp_path / "broken.pt"
    torch.save(payload, broken)
    with pytest.raises(ModelFileError, match=r"broken\.pt: incomplete model file \(no 'preprocess' section\)"):
        load_model(broken, device="cpu")


def test_an_invalid_stored_setting_names_the_file_and_the_versions(tmp_path, dae_model_path):
    payload = torch.load(dae_model_path, weights_only=True)
    payload["model"]["spatial_dims"] = 5
    broken = tmp_path / "odd.pt"
    torch.save(payload, broken)
    with pytest.raises(ModelFileError, match=r"odd\.pt: spatial_dims must be 2 or 3.*made by MedAutoencoderLib"):
        load_model(broken, device="cpu")


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "seed must be 0 or more, not -1"),
    (["--model", "{junk}"], "junk.pt: not a readable MedAutoencoder model file"),
])
def test_demo_refuses_a_bad_request_before_writing_anything(capsys, tmp_path, args, message):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    out = tmp_path / "demo"
    code, _, err = run_cli(capsys, "demo", "--output-dir", str(out), "--device", "cpu", "--progress", "none",
                           *(a.format(junk=junk) for a in args))
    assert code == 1 and message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_demo_keeps_existing_files_unless_told_to_overwrite(capsys, tmp_path, dae_model_path):
    overlay = tmp_path / "demo_overlay.png"
    overlay.write_text("mine")
    demo = ["demo", "--output-dir", str(tmp_path), "--model", str(dae_model_path), "--device", "cpu",
            "--progress", "none"]
    code, _, err = run_cli(capsys, *demo)
    assert code == 1 and "demo_overlay.png: already exists" in err
    assert overlay.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["demo_overlay.png"]
    code, out, err = run_cli(capsys, *demo, "--overwrite")
    assert code == 0, err
    assert overlay.read_bytes().startswith(b"\x89PNG") and "Dice" in out


@pytest.mark.parametrize("damage, message", [
    (lambda payload: payload.pop("state_dict"), "incomplete model file (no 'state_dict' section"),
    (lambda payload: payload.update(calibration=[0.1]),
     "damaged model file (its 'calibration' section is not a table)"),
])
def test_info_reports_a_damaged_model_file_like_loading_does(capsys, tmp_path, dae_model_path, damage, message):
    payload = torch.load(dae_model_path, weights_only=True)
    damage(payload)
    broken = tmp_path / "damaged.pt"
    torch.save(payload, broken)
    with pytest.raises(ModelFileError, match=f"damaged.pt: {re.escape(message)}"):
        load_model(broken, device="cpu")
    code, _, err = run_cli(capsys, "info", str(broken))
    assert code == 1 and f"damaged.pt: {message}" in err and "Traceback" not in err


def test_info_without_a_model_describes_the_bundled_one(capsys):
    code, out, err = run_cli(capsys, "info")  # the README said so; it required a path
    assert code == 0, err
    # the threshold of its default brain mask, the learned extractor (calibrated on the IXI calibration heads; the
    # registration's is 0.132), its healthy error level, and where the model comes from
    assert "default_brain_t1.pt" in out and "threshold: 0.13346" in out and "made for contrasts: T1" in out
    assert "healthy error level 0.0233" in out
    assert "source: IXI T1 heads of the training split" in out and "CC BY-SA 3.0" in out
    bundled = CONTRAST_MODELS["FLAIR"]
    assert out.rstrip().endswith(f"bundled with it, for T2, FLAIR, PD: {bundled} (info prints its card)")
    code, out, err = run_cli(capsys, "info", str(bundled))
    assert code == 0, err  # the levels detection divides by, per contrast, beside the thresholds
    assert "threshold per contrast: T2 0.15304" in out and "healthy error level per contrast: T2 0.03519" in out


def test_a_folder_given_as_the_model_is_named_as_a_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", str(tmp_path))
    assert code == 1 and f"{tmp_path}: is a folder; give the model file in it" in err  # was "model file not found"


def test_info_prints_a_threshold_without_its_calibration_details(capsys, tmp_path, dae_model_path):
    payload = torch.load(dae_model_path, weights_only=True)
    payload["calibration"] = {"threshold": 0.25}
    del payload["training"]
    partial = tmp_path / "partial.pt"
    torch.save(payload, partial)
    code, out, err = run_cli(capsys, "info", str(partial))
    assert code == 0, err
    assert "threshold: 0.25 (calibration details not recorded)" in out and "training: not recorded" in out


@pytest.fixture
def own_scans(tmp_path, toy_cohort):
    """Copies of two healthy toy volumes that a test may put at risk (the session's cohort stays safe)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for source in sorted(toy_cohort.iterdir())[:2]:
        shutil.copy(source, folder / source.name)
    return folder


def test_train_never_writes_its_model_over_an_input_volume_even_with_overwrite(capsys, own_scans):
    volume = sorted(own_scans.iterdir())[0]
    before = volume.read_bytes()
    code, _, err = run_cli(capsys, "train", "--data", str(own_scans), "--out", str(volume), "--overwrite",
                           *TINY_TRAIN, *TINY_GRID, "--progress", "none")
    assert code == 1 and "overwrite an input" in err and str(volume) in err and "Traceback" not in err
    assert volume.read_bytes() == before and len(list(own_scans.iterdir())) == 2


def test_calibrate_never_writes_its_model_over_a_healthy_volume_even_with_overwrite(capsys, own_scans,
                                                                                   ae_model_path):
    volume = sorted(own_scans.iterdir())[1]
    before = volume.read_bytes()
    code, _, err = run_cli(capsys, "calibrate", "--model", str(ae_model_path), "--healthy", str(own_scans),
                           "--out", str(volume), "--overwrite", "--device", "cpu", "--progress", "none")
    assert code == 1 and "overwrite an input" in err and str(volume) in err and "Traceback" not in err
    assert volume.read_bytes() == before and len(list(own_scans.iterdir())) == 2


def test_calibrate_never_writes_over_the_model_it_calibrates_even_with_overwrite(capsys, own_scans, tmp_path,
                                                                                ae_model_path):
    """Calibrated on other scans, a model's threshold is another model's: the one the user had stays."""
    model = tmp_path / "mine.pt"
    shutil.copyfile(ae_model_path, model)
    before = model.read_bytes()
    code, _, err = run_cli(capsys, "calibrate", "--model", str(model), "--healthy", str(own_scans),
                           "--out", str(model), "--overwrite", "--device", "cpu", "--progress", "none")
    assert code == 1 and "overwrite an input" in err and str(model) in err and "Traceback" not in err
    assert model.read_bytes() == before


def test_a_small_object_on_a_large_grid_names_the_files_and_the_options_before_training(capsys, tmp_path,
                                                                                       toy_cohort):
    out = tmp_path / "m.pt"
    code, _, err = run_cli(capsys, "train", "--data", str(toy_cohort), "--out", str(out), *TINY_TRAIN, *TINY_GRID,
                           "--spacing", "20", "20", "20", "--progress", "none")
    assert code == 1 and "Traceback" not in err and "num_samples" not in err
    assert "no training samples in" in err and "healthy_000.nii.gz" in err and "--size or --spacing" in err
    assert not out.exists()


def thin_scans(folder, slices: int):
    """Two healthy toy volumes of only ``slices`` axial slices (a slab, not a volume the models can use)."""
    folder.mkdir()
    for seed in range(2):
        image = synthetic.toy_volume(np.random.default_rng(seed), shape=(40, 40, slices), spacing=TOY_SPACING)
        sitk.WriteImage(image, str(folder / f"thin_{seed}.nii.gz"))
    return folder


def test_three_slices_are_too_few_for_the_smoothing_named_with_the_file(capsys, tmp_path, ae_model_path):
    scans = thin_scans(tmp_path / "thin3", 3)
    out = tmp_path / "m.pt"
    code, _, err = run_cli(capsys, "train", "--data", str(scans), "--out", str(out), *TINY_TRAIN, *TINY_GRID,
                           "--progress", "none")
    assert code == 1 and "Traceback" not in err and "ITK ERROR" not in err
    assert "thin_" in err and "only 3 voxels along z" in err and not out.exists()
    table = tmp_path / "features.csv"
    code, _, err = run_cli(capsys, "features", str(scans), "--model", str(ae_model_path), "--out", str(table),
                           "--device", "cpu")
    assert code == 1 and "thin_0.nii.gz: has only 3 voxels along z" in err and not table.exists()


def test_a_slab_thinner_than_the_scoring_border_is_refused_before_training_and_calibration(capsys, tmp_path,
                                                                                          ae_model_path):
    scans = thin_scans(tmp_path / "thin4", 4)
    out = tmp_path / "m.pt"
    code, out_text, err = run_cli(capsys, "train", "--data", str(scans), "--out", str(out), *TINY_TRAIN,
                                  *TINY_GRID, "--progress", "json")
    assert code == 1 and "Traceback" not in err and "nothing is left to score" in err and "thin_" in err
    assert not out.exists() and '"event": "progress"' not in out_text  # refused before the first training step
    calibrated = tmp_path / "calibrated.pt"
    code, _, err = run_cli(capsys, "calibrate", "--model", str(ae_model_path), "--healthy", str(scans), "--out",
                           str(calibrated), "--device", "cpu", "--progress", "none")
    assert code == 1 and "thin_0.nii.gz: nothing is left to score" in err and not calibrated.exists()


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder no file can be created in: read-only for an ordinary user; for root, who writes anywhere
    permissions allow, sysfs."""
    if os.geteuid() == 0:
        if not os.path.isdir("/sys/kernel"):
            pytest.skip("running as root without sysfs: no folder is read-only")
        yield Path("/sys")
        return
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("where, message", [
    ("existing folder", "is an existing folder; give the name of the file to write"),
    ("unwritable folder", "cannot write into"),
    ("under a file", "is a file, not a folder"),
    ("new folder", "ends in a slash, so it names a folder"),  # was written as a file named "new"
    pytest.param("pipe", "is not a regular file", marks=pytest.mark.skipif(not hasattr(os, "mkfifo"),
                                                                           reason="no named pipes")),
])
def test_an_out_that_cannot_be_written_is_refused_before_any_work(capsys, tmp_path, toy_cohort, unwritable_folder,
                                                                  where, message):
    """A pipe or device (as root, /dev/null) was replaced by a regular file with --overwrite."""
    (tmp_path / "existing").mkdir()
    (tmp_path / "a_file").write_text("mine")
    if where == "pipe":
        os.mkfifo(tmp_path / "fifo")
    out = {"existing folder": tmp_path / "existing", "unwritable folder": unwritable_folder / "m.pt",
           "under a file": tmp_path / "a_file" / "m.pt", "new folder": f"{tmp_path / 'new'}{os.sep}",
           "pipe": tmp_path / "fifo"}[where]
    code, out_text, err = run_cli(capsys, "train", "--data", str(toy_cohort), "--out", str(out), "--overwrite",
                                  *TINY_TRAIN, *TINY_GRID, "--progress", "json")
    assert code == 1 and err.startswith(f"error: {out}: ") and message in err and "Traceback" not in err
    assert [json.loads(line)["event"] for line in out_text.strip().splitlines()] == ["error"]
    assert (tmp_path / "a_file").read_text() == "mine" and not any((tmp_path / "existing").iterdir())
    assert not (tmp_path / "new").exists()
    if where == "pipe":
        assert stat.S_ISFIFO((tmp_path / "fifo").stat().st_mode)


def test_a_model_file_that_cannot_be_saved_is_a_clear_error_naming_it(unwritable_folder, ae_model_path):
    model = load_model(ae_model_path, device="cpu")
    target = unwritable_folder / "m.pt"
    with pytest.raises(OutputLocationError, match=f"{target}: the model file cannot be written"):
        save_model(target, model.network, model.record)


def test_export_and_interpolate_never_replace_the_model_or_an_input_even_with_overwrite(capsys, tmp_path,
                                                                                       vae_model_path, lesion_case):
    model = tmp_path / "vae.pt"
    model.write_bytes(vae_model_path.read_bytes())
    code, _, err = run_cli(capsys, "export", "--model", str(model), "--out", str(model), "--overwrite")
    assert code == 1 and "overwrite an input" in err and model.read_bytes() == vae_model_path.read_bytes()
    first = tmp_path / "interpolation.nii.gz"  # an input named like the output, in the output folder
    first.write_bytes(open(lesion_case["image_path"], "rb").read())
    code, _, err = run_cli(capsys, "interpolate", str(first), str(lesion_case["healthy_path"]), "--model",
                           str(model), "--output-dir", str(tmp_path), "--overwrite", "--device", "cpu")
    assert code == 1 and "overwrite an input" in err
    assert first.read_bytes() == open(lesion_case["image_path"], "rb").read()


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_component_size_that_is_not_a_finite_non_negative_number_is_refused(capsys, tmp_path, dae_model_path,
                                                                              lesion_case, value):
    code, _, err = run_cli(capsys, "calibrate", "--model", str(dae_model_path), "--healthy",
                           str(lesion_case["healthy_path"]), "--out", str(tmp_path / "c.pt"),
                           f"--min-component-ml={value}", "--device", "cpu")
    assert code == 1 and "min_component_ml must be a finite number >= 0" in err and not (tmp_path / "c.pt").exists()
