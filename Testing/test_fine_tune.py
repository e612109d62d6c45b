"""Fine-tuning a trained model on the user's own healthy scans (``train --init``), on small real files."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from conftest import brain_scans
from MedAutoencoderLib.cli import commands as cli
from MedAutoencoderLib.config import TrainConfig
from MedAutoencoderLib.errors import ConfigurationError


def train(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "MedAutoencoderLib", "train", *map(str, args), "--device", "cpu",
                           "--progress", "lines"], capture_output=True, text=True, timeout=timeout)


def test_init_and_resume_together_are_refused():
    with pytest.raises(ConfigurationError, match="either --init .* or --resume"):
        TrainConfig(data=["x"], init="default", resume="m.pt").validate()


def test_fine_tuning_defaults_to_a_tenth_of_the_learning_rate_and_a_given_rate_wins(tmp_path):
    from MedAutoencoderLib.training.trainer import Trainer

    def rate(**options):
        return Trainer(TrainConfig(data=["x"], out=str(tmp_path / "m.pt"), device="cpu", **options)).config.learning_rate

    assert rate() == 1e-3 and rate(init="default") == 1e-4
    assert rate(init="default", learning_rate=5e-4) == 5e-4 and rate(learning_rate=2e-3) == 2e-3
    assert cli.train_config_from_args(cli.build_parser().parse_args(
        ["train", "--data", "x", "--out", "m.pt", "--init", "default"])).resolved_learning_rate() == 1e-4


def test_the_model_fine_tuned_is_never_written_over_its_starting_point(capsys, toy_cohort, ae_model_path, tmp_path):
    start = tmp_path / "start.pt"
    shutil.copy(ae_model_path, start)
    before = start.read_bytes()
    code = cli.main(["train", "--data", str(toy_cohort), "--init", str(start), "--out", str(start), "--overwrite",
                     "--device", "cpu", "--progress", "none"])
    assert code == 1 and "output would overwrite an input" in capsys.readouterr().err
    assert start.read_bytes() == before


@pytest.mark.slow
def test_fine_tuning_starts_from_the_model_keeps_its_settings_and_calibrates_on_held_out_volumes(
        toy_cohort, ae_model_path, tmp_path):
    out = tmp_path / "tuned.pt"
    done = train("--data", toy_cohort, "--init", ae_model_path, "--out", out, "--epochs", "1", "--no-augment",
                 "--model", "dae", "--size", "64", "64", "64")  # the model's settings win over these
    assert done.returncode == 0, done.stderr
    assert "fine-tuning" in done.stderr and "options given for them here are ignored" in done.stderr
    start = torch.load(ae_model_path, map_location="cpu", weights_only=True)
    tuned = torch.load(out, map_location="cpu", weights_only=True)
    assert tuned["model"] == start["model"] and tuned["preprocess"] == start["preprocess"]
    assert tuned["detection"] == start["detection"]
    training = tuned["training"]
    # the same held-out volume (same seed) scored with the starting weights gives the starting model's best loss:
    # its weights and preprocessing were loaded as they were
    assert training["init"]["model"] == str(ae_model_path)
    assert training["init"]["initial_val_loss"] == pytest.approx(start["training"]["best_val_loss"], rel=1e-5)
    assert [entry["epoch"] for entry in training["history"]] == [1]  # fresh epochs (it trained 2 before)
    assert training["best_val_loss"] <= training["init"]["initial_val_loss"]
    assert training["best_val_loss"] == pytest.approx(min(training["init"]["initial_val_loss"],
                                                           training["history"][0]["val_loss"]))
    assert tuned["calibration"]["calibrated_on"] == training["validation_files"]
    assert set(training["validation_files"]).isdisjoint(training["train_files"])
    assert "training_state" in tuned and tuned["training_state"]["epoch"] == 1


def test_a_brain_foreground_for_a_model_not_trained_on_brains_is_refused(capsys, toy_cohort, ae_model_path,
                                                                          tmp_path):
    code = cli.main(["train", "--data", str(toy_cohort), "--init", str(ae_model_path), "--out",
                     str(tmp_path / "tuned.pt"), "--foreground", "brain", "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 1 and "applies to brain models only" in err and "Traceback" not in err
    assert not (tmp_path / "tuned.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("foreground", [None, "template"])
def test_fine_tuning_the_bundled_model_on_brain_scans(tmp_path, foreground):
    """The fine-tuned bundled model trains, calibrates and detects with the learned brain extractor (the default
    brain mask: the registration refuses some real heads), or with the template registration when asked."""
    scans = brain_scans(tmp_path / "site", "ab", ".nii.gz")  # the MNI template's brain at 2 mm: one held out
    out = tmp_path / "site.pt"
    done = train("--data", scans, "--init", "default", "--out", out, "--epochs", "1", "--batch-size", "8",
                 "--no-augment", *(["--foreground", foreground] if foreground else []))
    assert done.returncode == 0, done.stderr
    tuned = torch.load(out, map_location="cpu", weights_only=True)
    assert tuned["training"]["init"]["model"] == "bundled default_brain_t1.pt"
    # the learned extractor's brain mask (the default of brain models) unless the registration is asked for,
    # on the bundled model's grid
    assert tuned["preprocess"]["foreground"] == (foreground or "brain")
    assert list(tuned["preprocess"]["size"]) == [128, 128, 112]
    assert tuned["calibration"]["threshold"] > 0
