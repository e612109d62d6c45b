"""Export for deployment, on a tiny trained VAE: the TorchScript module and the torch.export program with their
sidecars give the same anomaly map as the Python model, and the ONNX graph the same reconstruction
(onnxruntime)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import SimpleITK as sitk
import torch

from MedAutoencoderLib.api import load_model, run_detection
from MedAutoencoderLib.cli.commands import main
from MedAutoencoderLib.errors import ConfigurationError
from MedAutoencoderLib.io.export import export_format, load_exported


@pytest.fixture(scope="module")
def vae_model(vae_model_path):
    return load_model(vae_model_path, device="cpu")


def assert_detects_like(exported_model, python_model, image) -> None:
    """The library's detection on an exported module gives the Python model's anomaly map, mask and threshold."""
    python = run_detection(image, python_model).result
    exported = run_detection(image, exported_model).result
    np.testing.assert_allclose(sitk.GetArrayFromImage(exported.anomaly_map),
                               sitk.GetArrayFromImage(python.anomaly_map), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported.anomaly_mask),
                                  sitk.GetArrayFromImage(python.anomaly_mask))
    assert exported.summary["threshold"] == python.summary["threshold"]


@pytest.mark.slow
def test_torchscript_export_detects_exactly_like_the_python_model(vae_model, vae_model_path, lesion_case,
                                                                   tmp_path):
    out = tmp_path / "vae.ts"
    assert main(["export", "--model", str(vae_model_path), "--out", str(out)]) == 0
    meta = json.loads((tmp_path / "vae.ts.json").read_text())
    assert meta["export"]["threshold"] == vae_model.record.threshold is not None
    assert meta["preprocess"]["size"] == [32, 32, 32] and meta["detection"]["residual"] == "abs"
    assert meta["export"]["input"]["shape"] == ["batch", 1, 32, 32]

    module = torch.jit.load(str(out))  # what a deployment without this library does
    batch = torch.rand(5, 1, 32, 32)  # traced with 2 slices; any batch size works
    with torch.no_grad():
        torch.testing.assert_close(module(batch), vae_model.network(batch)["reconstruction"])

    assert_detects_like(load_exported(out), vae_model, lesion_case["image"])
    assert main(["export", "--model", str(vae_model_path), "--out", str(out)]) == 1  # never overwritten silently


@pytest.mark.slow
def test_pt2_export_detects_exactly_like_the_python_model(vae_model, vae_model_path, lesion_case, tmp_path,
                                                          recwarn):
    """torch.export, TorchScript's successor: no deprecation warning, any batch size, the same detection."""
    out = tmp_path / "vae.pt2"
    assert main(["export", "--model", str(vae_model_path), "--out", str(out), "--format", "pt2"]) == 0
    assert json.loads((tmp_path / "vae.pt2.json").read_text())["export"]["format"] == "pt2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.pt2", "vae.pt2.json"]  # no temporary left

    module = torch.export.load(str(out)).module()  # what a deployment without this library does
    with torch.no_grad():
        for size in (1, 5):  # exported with a batch of 2
            batch = torch.rand(size, 1, 32, 32)
            torch.testing.assert_close(module(batch), vae_model.network(batch)["reconstruction"])

    assert_detects_like(load_exported(out), vae_model, lesion_case["image"])
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning) and "torch" in str(w.message)]
    assert main(["export", "--model", str(vae_model_path), "--out", str(tmp_path / "vae.bin"), "--format", "pt2"]) == 1
    assert not (tmp_path / "vae.bin").exists()


@pytest.mark.parametrize("name, fmt, expected", [
    ("m.pt2", None, "pt2"), ("m.onnx", None, "onnx"), ("m.ts", None, "torchscript"), ("m.bin", None, "torchscript"),
    ("m.bin", "onnx", "onnx"), ("m.ONNX", "onnx", "onnx"),
    ("m.onnx", "torchscript", "the name says onnx (.onnx) but the format asked for is torchscript"),
    ("m.pt2", "torchscript", "the name says pt2"), ("m.ts", "onnx", "the name says torchscript (.ts)"),
    ("m.bin", "pt2", "a pt2 export's name must end in .pt2"),
    ("m.PT2", None, "a pt2 export's name must end in .pt2"),  # torch.export.load's check is case-sensitive
])
def test_the_export_format_follows_the_name_and_a_name_of_another_format_is_refused(name, fmt, expected):
    """The format was torchscript unless --format said otherwise, whatever the name: model.onnx held TorchScript
    (onnxruntime: INVALID_PROTOBUF), and --format onnx wrote ONNX into a .ts file."""
    if " " not in expected:
        assert export_format(name, fmt) == expected
    else:
        with pytest.raises(ConfigurationError, match=re.escape(f"{name}: {expected}")):
            export_format(name, fmt)


def test_export_writes_the_format_its_name_says_and_refuses_a_folder_name(vae_model_path, tmp_path, capsys):
    assert main(["export", "--model", str(vae_model_path), "--out", str(tmp_path / "vae.onnx")]) == 0
    assert "(onnx)" in capsys.readouterr().out
    assert json.loads((tmp_path / "vae.onnx.json").read_text())["export"]["format"] == "onnx"
    assert main(["export", "--model", str(vae_model_path), "--out", f"{tmp_path / 'new'}{os.sep}"]) == 1
    assert "ends in a slash, so it names a folder" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_onnx_export_reconstructs_like_the_python_model(vae_model, vae_model_path, tmp_path):
    out = tmp_path / "vae.onnx"
    assert main(["export", "--model", str(vae_model_path), "--out", str(out), "--format", "onnx"]) == 0
    assert json.loads((tmp_path / "vae.onnx.json").read_text())["export"]["format"] == "onnx"
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    (reconstruction,) = session.run(None, {"image": batch})
    with torch.no_grad():
        expected = vae_model.network(torch.from_numpy(batch))["reconstruction"].numpy()
    np.testing.assert_allclose(reconstruction, expected, rtol=1e-4, atol=1e-5)


def test_a_failed_onnx_export_leaves_the_file_it_was_to_replace_as_it_was(monkeypatch, vae_model_path, tmp_path,
                                                                          capsys):
    """The exporter fails on operators it cannot convert (none of this library's networks has one, so the failure
    is injected); with --overwrite it used to delete the user's existing file first."""
    out = tmp_path / "vae.onnx"
    out.write_bytes(b"the user's earlier export")

    def unsupported(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::something' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    assert main(["export", "--model", str(vae_model_path), "--out", str(out), "--format", "onnx", "--overwrite"]) == 1
    assert "ONNX export of this model failed (Exporting the operator" in capsys.readouterr().err
    assert out.read_bytes() == b"the user's earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.onnx"]


def test_the_sidecar_says_how_a_3d_model_tiles_a_volume(vae_model):
    """A deployment must tile a 3D model's input as the library does to reproduce its anomaly maps."""
    from MedAutoencoderLib.config import DetectionConfig, ModelConfig, PreprocessConfig
    from MedAutoencoderLib.io.checkpoint import ModelRecord
    from MedAutoencoderLib.io.export import sidecar

    record = ModelRecord(model=ModelConfig(name="dae", spatial_dims=3, channels=(8, 16), patch_size=(16, 16, 24)),
                         preprocess=PreprocessConfig(), detection=DetectionConfig())
    applied = sidecar(record, Path("m.pt"), "torchscript")["export"]["applied_as"]
    assert applied["window_zyx"] == [24, 16, 16] and applied["overlap"] == 0.25 and applied["blend"] == "gaussian"
    assert "axial slice" in sidecar(vae_model.record, Path("m.pt"), "onnx")["export"]["applied_as"]["over"]


@pytest.mark.parametrize("fmt, name, kind", [("torchscript", "vae.ts", "TorchScript"),
                                             ("pt2", "vae.pt2", "torch.export (pt2)")])
def test_an_export_given_as_model_is_named_as_such(vae_model_path, lesion_case, tmp_path, capsys, recwarn, fmt, name,
                                                   kind):
    """Users pass the export next to the .pt; torch.load only says it needs weights_only=False, with a warning."""
    export = tmp_path / name
    assert main(["export", "--model", str(vae_model_path), "--out", str(export), "--format", fmt]) == 0
    assert main(["detect", str(lesion_case["image_path"]), "--model", str(export), "--output-dir",
                 str(tmp_path / "out"), "--device", "cpu"]) == 1
    assert (f"{name}: not a readable MedAutoencoder model file (it is a {kind} export for deployment, written "
            "by export; the model file is the .pt written by train or calibrate)") in capsys.readouterr().err
    assert not [w for w in recwarn if "TorchScript" in str(w.message)]
