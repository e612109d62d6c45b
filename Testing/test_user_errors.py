"""User mistakes found in review get one clear ``error:`` line (exit 1), never a traceback, and lose no file.

The command line runs in-process through ``cli.main`` (the same code path as ``python -m MedAutoencoderLib``).
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest
import torch

from conftest import tiny_train_config
from MedAutoencoderLib import cli
from MedAutoencoderLib.api import detect_image, load_model
from MedAutoencoderLib.config import DetectOptions, ModelConfig
from MedAutoencoderLib.errors import ConfigurationError, ModelFileError


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
    ({"learning_rate": 0.0}, "learning rate must be positive"),
    ({"model": ModelConfig(name="ae", channels=(8, 16), latent_channels=0)}, "latent channels must be at least 1"),
    ({"model": ModelConfig(name="vae", channels=(8, 16), kl_weight=-1.0)}, "kl_weight must not be negative"),
    ({"model": ModelConfig(name="ae", spatial_dims=3, channels=(8, 16), patch_size=(64, 64, 64))},
     "exceeds the model grid"),
])
def test_invalid_training_settings_are_refused_before_any_work(tmp_path, toy_cohort, overrides, message):
    config = dataclasses.replace(tiny_train_config([toy_cohort], tmp_path / "m.pt"), **overrides)
    with pytest.raises(ConfigurationError, match=message):
        config.validate()


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


def test_info_prints_a_threshold_without_its_calibration_details(capsys, tmp_path, dae_model_path):
    payload = torch.load(dae_model_path, weights_only=True)
    payload["calibration"] = {"threshold": 0.25}
    del payload["training"]
    partial = tmp_path / "partial.pt"
    torch.save(payload, partial)
    code, out, err = run_cli(capsys, "info", str(partial))
    assert code == 0, err
    assert "threshold: 0.25 (calibration details not recorded)" in out and "training: not recorded" in out
