"""``python -m MedAutoencoderLib demo``: the whole job on data that needs no download.

A healthy subject is generated from the bundled MNI template (random grid and orientation), a synthetic
lesion with a known mask is inserted, the bundled default model (or ``--model``) detects it, and the outputs,
the ground truth, a summary with the Dice score and a PNG overlay are written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.data.synthetic import insert_lesion, make_healthy_subject_with_mask
from MedAutoencoderLib.data.template import load_template, template_brain_mask
from MedAutoencoderLib.detection.evaluation import dice
from MedAutoencoderLib.detection.scoring import voxel_volume_ml
from MedAutoencoderLib.errors import ConfigurationError
from MedAutoencoderLib.io.volumes import refuse_overwrite, require_writable_folder, write_image, write_text
from MedAutoencoderLib.runtime.progress import ProgressCallback


def _axial(image: sitk.Image) -> np.ndarray:
    """The volume reoriented to LPS (axial slices along the first array axis), as an array."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


def _grey(slice_: np.ndarray) -> np.ndarray:
    low, high = np.percentile(slice_, [1, 99.5])
    return np.clip((slice_ - low) / max(high - low, 1e-6), 0, 1)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def overlay_png(image: sitk.Image, reconstruction: sitk.Image, anomaly_map: sitk.Image, mask: sitk.Image,
                truth: sitk.Image, threshold: float, path: Path) -> Path:
    """Three axial panels through the lesion: input | reconstruction | anomaly map with outlines of the
    detected mask (yellow) and the ground truth (cyan). Written with SimpleITK, no plotting library needed."""
    truth_array = _axial(truth) > 0
    z = int(np.argmax(truth_array.reshape(truth_array.shape[0], -1).sum(axis=1)))
    grey = _grey(_axial(image)[z])
    recon = np.clip((_axial(reconstruction)[z] - np.percentile(_axial(image)[z], 1)) /
                    max(np.ptp(np.percentile(_axial(image)[z], [1, 99.5])), 1e-6), 0, 1)
    heat = np.clip(_axial(anomaly_map)[z] / threshold - 0.5, 0, 1)  # visible from half the threshold up
    panel = np.stack([grey] * 3, axis=-1)
    panel = panel * (1 - 0.7 * heat[..., None]) + 0.7 * heat[..., None] * np.stack([np.ones_like(heat), heat,
                                                                                      np.zeros_like(heat)], -1)
    panel[_outline(_axial(mask)[z] > 0)] = (1.0, 1.0, 0.0)
    panel[_outline(truth_array[z])] = (0.0, 1.0, 1.0)
    row = np.concatenate([np.stack([grey] * 3, -1), np.stack([recon] * 3, -1), panel], axis=1)
    rgb = sitk.GetImageFromArray((row * 255).astype(np.uint8), isVector=True)  # LPS row 0 is anterior: top
    sitk.WriteImage(rgb, str(path))
    return path


def demo_outputs(output_dir: Path) -> Dict[str, Path]:
    """Every file the demo writes into ``output_dir``, to check before any work."""
    from MedAutoencoderLib.api import detection_targets

    subject = output_dir / "demo_subject.nii.gz"
    return {"subject": subject, "truth": output_dir / "demo_subject_truth.nii.gz",
            "overlay": output_dir / "demo_overlay.png", **detection_targets(subject, output_dir)}


def run_demo(output_dir: Path, model_path: Optional[str] = None, kind: str = "mass", seed: int = 3,
             device: str = "auto", overwrite: bool = False,
             progress: Optional[ProgressCallback] = None) -> Dict[str, Any]:
    """Generate a lesioned subject, detect, and write outputs, overlay PNG and summary into ``output_dir``.
    Existing files there are refused unless ``overwrite``, and the model is loaded first: a bad request
    fails before the subject (30 MB) is written."""
    from MedAutoencoderLib.api import detect_files, load_model

    if seed < 0:
        raise ConfigurationError(f"seed must be 0 or more, not {seed}")
    output_dir = Path(output_dir)
    targets = demo_outputs(output_dir)
    refuse_overwrite(targets.values(), overwrite=overwrite)
    require_writable_folder(output_dir)
    model = load_model(model_path, device=device)
    rng = np.random.default_rng(seed)
    template = load_template()
    subject, brain = make_healthy_subject_with_mask(template, template_brain_mask(template), rng)
    lesioned, truth = insert_lesion(subject, brain, kind, rng)
    input_path = write_image(lesioned, targets["subject"])
    write_image(truth, targets["truth"])
    outputs = detect_files([input_path], output_dir, model, overwrite=overwrite, progress=progress)[str(input_path)]
    mask = sitk.ReadImage(outputs["anomaly_mask"])
    summary = json.loads(Path(outputs["summary"]).read_text())
    summary["lesion_kind"] = kind
    summary["lesion_ml"] = round(float(sitk.GetArrayViewFromImage(truth).sum()) * voxel_volume_ml(truth), 3)
    summary["dice_vs_truth"] = round(dice(sitk.GetArrayViewFromImage(mask) > 0,
                                          sitk.GetArrayViewFromImage(truth) > 0), 4)
    write_text(Path(outputs["summary"]), json.dumps(summary, indent=2), overwrite=True)  # detect_files' own
    outputs["overlay"] = str(overlay_png(lesioned, sitk.ReadImage(outputs["reconstruction"]),
                                         sitk.ReadImage(outputs["anomaly_map"]), mask, truth,
                                         summary["threshold"], targets["overlay"]))
    return {"outputs": outputs, "summary": summary}
