"""Training on healthy toy volumes and detection on a lesioned one, end to end on real files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import tiny_train_config, toy

from MedAutoencoderLib.api import OUTPUT_KINDS, detect_files, load_model, run_detection
from MedAutoencoderLib.config import DetectionConfig, DetectOptions, ModelConfig
from MedAutoencoderLib.detection.evaluation import voxel_metrics
from MedAutoencoderLib.errors import Cancelled, ConfigurationError, InputImageError, ModelFileError, OutputExistsError
from MedAutoencoderLib.io.checkpoint import FORMAT_VERSION, read_model_file
from MedAutoencoderLib.io.volumes import read_image
from MedAutoencoderLib.training.trainer import Trainer, split_volumes


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
            and a.GetDirection() == b.GetDirection())


def test_model_file_is_calibrated_and_loads_with_weights_only(dae_model_path):
    payload = torch.load(dae_model_path, map_location="cpu", weights_only=True)
    assert payload["format"] == "MedAutoencoder-model" and payload["format_version"] == FORMAT_VERSION
    calibration = payload["calibration"]
    assert calibration["target_fpr"] == pytest.approx(DetectionConfig().target_fpr)
    assert np.isfinite(calibration["threshold"]) and calibration["threshold"] > calibration["healthy_p50"] > 0
    training = payload["training"]
    assert training["epochs"] == 6 and training["stop_reason"] == "epochs" and len(training["history"]) == 6
    assert training["validation_is_held_out"] and calibration["calibrated_on"] == training["validation_files"]
    assert tuple(payload["preprocess"]["size"]) == (32, 32, 32)
    model = load_model(dae_model_path, device="cpu")
    assert model.record.model.name == "dae" and model.record.threshold == calibration["threshold"]


@pytest.fixture(scope="module")
def lesion_run(dae_model, lesion_case):
    return run_detection(lesion_case["image"], dae_model, name="case_000")


@pytest.mark.slow
def test_detection_outputs_lie_on_the_input_grid(lesion_run, lesion_case):
    image = lesion_case["image"]
    result = lesion_run.result
    for output in (result.reconstruction, result.anomaly_map, result.anomaly_mask):
        assert same_grid(output, image)
    assert result.anomaly_mask.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(result.anomaly_mask))) <= {0, 1}
    assert result.anomaly_map.GetPixelID() == sitk.sitkFloat32
    summary = result.summary
    assert summary["threshold"] == lesion_run.scored.score_map.dtype.type(summary["threshold"])
    assert summary["n_components"] == len(summary["components"])
    scored = sitk.GetArrayFromImage(lesion_run.prepared.to_input_grid(lesion_run.scored.region, nearest=True)) > 0
    organ = scored & (sitk.GetArrayFromImage(lesion_case["truth"]) == 0)
    recon = sitk.GetArrayFromImage(result.reconstruction)[organ]
    original = sitk.GetArrayFromImage(image)[organ]
    # in the input's units (normalised values would be ~1); a tiny model trained for seconds is still biased
    assert abs(recon.mean() - original.mean()) < 0.5 * original.mean()


def test_anomaly_map_finds_the_lesion(lesion_run, lesion_case):
    region = sitk.GetArrayFromImage(lesion_run.prepared.to_input_grid(lesion_run.scored.region, nearest=True)) > 0
    truth = sitk.GetArrayFromImage(lesion_case["truth"]) > 0
    scores = sitk.GetArrayFromImage(lesion_run.result.anomaly_map)
    assert truth[region].sum() > 0.9 * truth.sum()  # the lesion lies in the scored region
    metrics = voxel_metrics(scores[region], truth[region])
    assert metrics["auroc"] > 0.8, metrics
    assert scores[truth].mean() > 1.5 * scores[region & ~truth].mean()


@pytest.mark.slow
def test_healthy_volume_scores_lower_than_the_lesioned_one(dae_model, lesion_run, lesion_case):
    healthy = run_detection(lesion_case["healthy"], dae_model).result.summary
    assert healthy["anomaly_score"] < lesion_run.result.summary["anomaly_score"]
    assert healthy["anomalous_volume_ml"] <= lesion_run.result.summary["anomalous_volume_ml"]


@pytest.mark.slow
def test_bfloat16_changes_maps_and_masks_only_within_rounding(dae_model, lesion_run, lesion_case):
    """The default on a CPU is float32 (what ``lesion_run`` used); bfloat16 must give nearly the same result."""
    reduced = run_detection(lesion_case["image"], dae_model, DetectOptions(precision="bfloat16"), name="case_000")
    region = lesion_run.scored.region
    difference = np.abs(reduced.scored.score_map - lesion_run.scored.score_map)[region]
    assert 0 < np.quantile(difference, 0.99) < 0.02 * lesion_run.scored.score_map[region].max()
    full_mask = sitk.GetArrayFromImage(lesion_run.result.anomaly_mask) > 0
    reduced_mask = sitk.GetArrayFromImage(reduced.result.anomaly_mask) > 0
    assert 2 * (full_mask & reduced_mask).sum() >= 0.9 * (full_mask.sum() + reduced_mask.sum())
    with pytest.raises(ConfigurationError, match="precision must be"):
        run_detection(lesion_case["image"], dae_model, DetectOptions(precision="float8"))


@pytest.mark.slow
@pytest.mark.parametrize("prepare_ahead", [0, 2])
def test_files_written_by_the_writer_threads_hold_each_volumes_own_outputs(dae_model, lesion_case, tmp_path,
                                                                           prepare_ahead):
    """detect_files writes outputs on threads while the next volume is computed, and prepares the next volumes
    on threads while the network runs: every file must hold what detection gives for its own volume."""
    paths = [lesion_case["image_path"], lesion_case["healthy_path"], tmp_path / "third.nii.gz"]
    shutil.copy(lesion_case["image_path"], paths[2])  # three volumes: two of them prepared ahead of the first
    written = detect_files(paths, tmp_path / "out", dae_model, DetectOptions(prepare_ahead=prepare_ahead))
    for path in paths:
        expected = run_detection(read_image(path), dae_model, name=str(path)).result
        for kind in ("reconstruction", "anomaly_map", "anomaly_mask"):
            on_disk = sitk.ReadImage(written[str(path)][kind])
            np.testing.assert_array_equal(sitk.GetArrayFromImage(on_disk),
                                          sitk.GetArrayFromImage(getattr(expected, kind)))
        assert json.loads(Path(written[str(path)]["summary"]).read_text()) == json.loads(json.dumps(expected.summary))


def test_stop_file_present_from_the_start_cancels_before_training_and_keeps_the_existing_model(
        toy_cohort, tmp_path, ae_model_path):
    stop = tmp_path / "STOP"
    stop.write_text("")
    out = tmp_path / "existing.pt"
    shutil.copy(ae_model_path, out)
    original = out.read_bytes()
    events = []
    trainer = Trainer(tiny_train_config([toy_cohort], out, "ae", epochs=50, stop_file=str(stop), overwrite=True),
                      progress=events.append)
    with pytest.raises(Cancelled, match="before it began; nothing was written"):
        trainer.run()
    assert events[-1]["event"] == "cancelled" and "outputs" not in events[-1]
    assert not any(e["event"] == "progress" for e in events)
    assert out.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["STOP", "existing.pt"]


def test_a_validation_volume_without_samples_is_refused_before_training(toy_cohort, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for source in sorted(toy_cohort.iterdir())[:2]:
        shutil.copy(source, scans / source.name)
    held_out = split_volumes(sorted(scans.iterdir()), 0.2, seed=0)[1][0]
    sitk.WriteImage(toy(7, spacing=(0.35, 0.35, 0.35)), str(held_out))  # a 1 cm object: < 5 % of the 48 mm grid
    out = tmp_path / "m.pt"
    events = []
    with pytest.raises(InputImageError, match=f"{held_out}: held out for validation, but gives no validation "
                                              "sample.*lower --size or --spacing"):
        Trainer(tiny_train_config([scans], out, "ae", epochs=1), progress=events.append).run()
    assert not out.exists() and not any(e["event"] == "progress" for e in events)


@pytest.mark.slow
def test_without_held_out_validation_a_training_volume_without_samples_is_only_left_out(toy_cohort, tmp_path):
    """--validation-fraction 0 validates on the training volumes: one without samples is left out of both
    with a warning, not refused as if it had been held out."""
    scans = tmp_path / "scans"
    scans.mkdir()
    for source in sorted(toy_cohort.iterdir())[:2]:
        shutil.copy(source, scans / source.name)
    sitk.WriteImage(toy(7, spacing=(0.35, 0.35, 0.35)), str(scans / "tiny_object.nii.gz"))
    out = tmp_path / "m.pt"
    events = []
    Trainer(tiny_train_config([scans], out, "ae", epochs=1, validation_fraction=0.0), progress=events.append).run()
    assert out.is_file()
    assert any("tiny_object" in e.get("message", "") for e in events if e["event"] == "log")


@pytest.mark.slow
def test_tiny_time_budget_stops_early(toy_cohort, tmp_path):
    out = tmp_path / "budget.pt"
    Trainer(tiny_train_config([toy_cohort], out, "ae", epochs=50, max_minutes=1e-4)).run()
    training = read_model_file(out)["training"]
    assert training["stop_reason"] == "time budget" and training["epochs"] == 1
    assert np.isfinite(read_model_file(out)["calibration"]["threshold"])


@pytest.mark.slow
def test_resume_continues_the_epoch_count(ae_model_path, toy_cohort, tmp_path):
    before = read_model_file(ae_model_path)
    out = tmp_path / "resumed.pt"
    config = tiny_train_config([toy_cohort], out, "ae", epochs=3, resume=str(ae_model_path),
                               model=ModelConfig(name="ae", channels=(4, 8)))  # ignored: the stored model wins
    Trainer(config).run()
    after = read_model_file(out)
    assert before["training"]["epochs"] == 2
    assert after["training"]["epochs"] == 3 and [h["epoch"] for h in after["training"]["history"]] == [1, 2, 3]
    assert after["model"] == before["model"]
    assert after["training"]["history"][:2] == before["training"]["history"]


@pytest.mark.slow
def test_a_resumed_run_records_the_training_time_of_all_its_runs(ae_model_path, toy_cohort, tmp_path):
    """It recorded the last run's seconds beside all runs' epochs."""
    payload = torch.load(ae_model_path, weights_only=True)
    payload["training"]["seconds"] = 1000.0
    earlier = tmp_path / "earlier.pt"
    torch.save(payload, earlier)
    out = tmp_path / "resumed.pt"
    Trainer(tiny_train_config([toy_cohort], out, "ae", epochs=3, resume=str(earlier))).run()
    assert 1000.0 < read_model_file(out)["training"]["seconds"] < 1000.0 + 600


@pytest.mark.slow
def test_a_calibration_that_fails_after_training_says_where_the_model_is(toy_cohort, tmp_path, monkeypatch,
                                                                         ae_model_path):
    """The error of a calibration that failed (the held-out volumes out of memory, say) did not mention the
    trained model kept in <name>.unfinished.pt beside the untouched --out."""
    from MedAutoencoderLib.errors import OutOfMemoryError
    from MedAutoencoderLib.training import trainer as training

    def out_of_memory(*args, **kwargs):
        raise OutOfMemoryError("the GPU ran out of memory scoring a held-out volume")

    monkeypatch.setattr(training, "reconstruct_and_score", out_of_memory)
    mine = tmp_path / "mine.pt"
    shutil.copy(ae_model_path, mine)
    with pytest.raises(OutOfMemoryError, match=r"ran out of memory .*The best model before it \(epoch 1, .* is in "
                                               r".*mine.unfinished.pt: .*mine.pt is as it was"):
        Trainer(tiny_train_config([toy_cohort], mine, "ae", epochs=1, overwrite=True)).run()
    assert mine.read_bytes() == ae_model_path.read_bytes()


def test_resuming_with_no_more_epochs_than_done_is_refused(ae_model_path, toy_cohort, tmp_path):
    """It trained nothing and ended without a word."""
    config = tiny_train_config([toy_cohort], tmp_path / "again.pt", "ae", epochs=2, resume=str(ae_model_path))
    with pytest.raises(ConfigurationError, match="has trained 2 epoch.s. already, and --epochs counts them too"):
        Trainer(config).run()
    assert not (tmp_path / "again.pt").exists()


@pytest.mark.slow
def test_a_run_failing_midway_says_which_model_it_left_and_keeps_the_one_it_was_to_replace(
        toy_cohort, tmp_path, monkeypatch, ae_model_path):
    """A run that diverged (or ran out of memory, or was killed) after an epoch had saved its best model left that
    uncalibrated model at --out, in place of the one --overwrite was to replace, without a word."""
    check_finite = Trainer._check_finite

    def diverge_in_epoch_two(trainer, loss):  # the real check, given a NaN loss once epoch 1 is done
        check_finite(trainer, torch.tensor(float("nan")) if trainer.state.epoch >= 1 else loss)

    monkeypatch.setattr(Trainer, "_check_finite", diverge_in_epoch_two)
    new = tmp_path / "new.pt"
    with pytest.raises(ConfigurationError, match=r"training diverged at epoch 2 .*The best model before it \(epoch 1, "
                                                 r"its threshold not calibrated\) is in .*new.pt: resume from it"):
        Trainer(tiny_train_config([toy_cohort], new, "ae", epochs=3)).run()
    assert read_model_file(new)["training"]["epochs"] == 1 and not read_model_file(new).get("calibration")

    mine = tmp_path / "mine.pt"
    shutil.copy(ae_model_path, mine)
    before = mine.read_bytes()
    with pytest.raises(ConfigurationError, match=r"is in .*mine.unfinished.pt: resume from it .*mine.pt is as it was"):
        Trainer(tiny_train_config([toy_cohort], mine, "ae", epochs=3, overwrite=True)).run()
    assert mine.read_bytes() == before
    assert read_model_file(tmp_path / "mine.unfinished.pt")["training"]["epochs"] == 1

    monkeypatch.setattr(Trainer, "_check_finite", check_finite)  # a run that ends replaces it, and leaves nothing
    Trainer(tiny_train_config([toy_cohort], mine, "ae", epochs=1, overwrite=True)).run()
    assert mine.read_bytes() != before and read_model_file(mine)["calibration"]["threshold"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.pt", "new.pt"]


def test_existing_output_is_refused_and_left_unchanged(toy_cohort, tmp_path, ae_model_path):
    out = tmp_path / "existing.pt"
    shutil.copy(ae_model_path, out)
    original = out.read_bytes()
    with pytest.raises(OutputExistsError, match=str(out)):
        Trainer(tiny_train_config([toy_cohort], out, "ae", epochs=1)).run()
    assert out.read_bytes() == original


def _future_file(source, path):
    payload = torch.load(source, map_location="cpu", weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, path)


@pytest.mark.parametrize("kind, words", [
    ("truncated", "damaged or truncated"),
    ("foreign", "not a MedAutoencoder model"),
    ("text", "bytes are not a PyTorch file"),
    ("pickled objects", "holds Python objects"),
    ("volume.nii.gz", "image volume"),
    ("future", "upgrade"),
    ("missing", "not found"),
])
def test_bad_model_files_give_model_file_error(kind, words, tmp_path, ae_model_path, lesion_case):
    path = tmp_path / (kind if kind.endswith(".nii.gz") else f"{kind}.pt")
    if kind == "truncated":
        data = ae_model_path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        torch.save({"a": 1}, path)
    elif kind == "text":
        path.write_text("this is a text file, not a model\n")
    elif kind == "pickled objects":
        torch.save({"network": torch.nn.Linear(2, 2)}, path)  # a whole module, as people often save them
    elif kind.endswith(".nii.gz"):
        path.write_bytes(open(lesion_case["image_path"], "rb").read())
    elif kind == "future":
        _future_file(ae_model_path, path)
    with pytest.raises(ModelFileError) as caught:
        load_model(path, device="cpu")
    assert str(path) in str(caught.value) and words in str(caught.value)
    assert "weights_only" not in str(caught.value)  # torch's advice would run the file's code


@pytest.mark.slow
def test_3d_patch_model_trains_and_detects_on_the_input_grid(toy_cohort, tmp_path, lesion_case):
    out = tmp_path / "patch3d.pt"
    model_config = ModelConfig(name="dae", spatial_dims=3, channels=(8, 16), patch_size=(16, 16, 16))
    Trainer(tiny_train_config([toy_cohort], out, model=model_config, epochs=1)).run()
    model = load_model(out, device="cpu")
    assert model.record.model.spatial_dims == 3 and np.isfinite(model.record.threshold)
    result = run_detection(lesion_case["image"], model).result
    for output in (result.reconstruction, result.anomaly_map, result.anomaly_mask):
        assert same_grid(output, lesion_case["image"])
    assert float(sitk.GetArrayFromImage(result.anomaly_map).max()) > 0


def test_a_batch_writes_each_output_straight_under_its_hidden_name_without_a_second_temporary(
        monkeypatch, dae_model, lesion_case, tmp_path):
    """Each output's hidden name (outputs.pending_path) is already a temporary one; a second temporary name
    inside it made every name about 30 characters longer, which reaches Windows' 260-character limit sooner."""
    from MedAutoencoderLib.io.outputs import pending_path

    written_by_itk = []
    real_write = sitk.WriteImage
    monkeypatch.setattr(sitk, "WriteImage", lambda image, name, *args, **kwargs: (
        written_by_itk.append(Path(name).name), real_write(image, name, *args, **kwargs))[1])
    written = detect_files([lesion_case["image_path"]], tmp_path / "out", dae_model, output_format="nrrd")
    outputs = {kind: Path(target) for kind, target in written[str(lesion_case["image_path"])].items()}
    assert sorted(written_by_itk) == sorted(pending_path(outputs[kind]).name for kind in OUTPUT_KINDS)
    assert pending_path(outputs["anomaly_map"]).name == f".{outputs['anomaly_map'].name}.pending.nrrd"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in outputs.values())
