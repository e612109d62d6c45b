"""Speed and memory of detection and training, beside a plain MONAI pipeline, in one process run.

Detect end to end (read -> preprocess -> network -> post-process -> write) on a 256x256x180, 1 mm volume with
an oblique direction, for (a) MedAutoencoder with the bundled default model (brain mask: the learned extractor;
also with the template registration, --foreground template) and (b) the pipeline a MONAI user
would write without tuning: ``LoadImage`` -> ``Orientation`` -> ``Spacing`` -> ``ScaleIntensity`` -> 3D MONAI
``AutoEncoder`` through ``sliding_window_inference`` -> |x - x_hat| -> resample back -> write. Prints medians of
several runs, the ratio, training throughput and the process's peak resident memory. The plain pipeline runs
first with glibc's default allocator, as a MONAI user's script would; then the allocator is set as
``python -m MedAutoencoderLib`` sets it (:mod:`MedAutoencoderLib.runtime.allocator`) for ours, and the plain pipeline
runs once more with that setting too, for a like-for-like ratio, and both alternate run by run (``--pairs``): the
ratio of each pair, taken at one moment of a machine whose speed drifts, is the steadier figure. Last, whole
one-volume command-line processes are timed, as each Slicer job ran before the standby worker (imports and
first-use costs included), and detections sent to a standby worker (``python -m MedAutoencoderLib serve``), as the
Slicer module now runs them.

    pip install -e ".[bench]"  # nibabel, which MONAI's LoadImage reads NIfTI with
    python benchmarks/benchmark_speed.py --repeats 5 [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from MedAutoencoderLib.api import DEFAULT_MODEL, OUTPUT_KINDS, LoadedModel, detect_files, load_model
from MedAutoencoderLib.config import DetectOptions, ModelConfig, PreprocessConfig, TrainConfig
from MedAutoencoderLib.data.template import load_template
from MedAutoencoderLib.io.volumes import read_image, write_image
from MedAutoencoderLib.preprocessing.prepare import prepare_volume
from MedAutoencoderLib.runtime.allocator import keep_freed_memory_for_reuse


def benchmark_volume(path: Path) -> Path:
    """The template on a 256x256x180, 1 mm grid rotated 12 degrees about z (an oblique acquisition)."""
    template = load_template()
    angle = np.deg2rad(12.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    size = np.array([256, 256, 180])
    centre = np.array(template.TransformContinuousIndexToPhysicalPoint([s / 2 for s in template.GetSize()]))
    grid = sitk.Image(size.tolist(), sitk.sitkFloat32)
    grid.SetDirection(direction.flatten().tolist())
    grid.SetOrigin((centre - direction @ (size / 2.0)).tolist())
    sitk.WriteImage(sitk.Resample(template, grid, sitk.Transform(), sitk.sitkLinear, 0.0), str(path))
    return path


def plain_monai_pipeline(device: torch.device) -> Callable[[Path, Path], None]:
    """Detection as written from MONAI's building blocks with default settings (untrained weights: speed only)."""
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import AutoEncoder
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation, ScaleIntensity, Spacing

    network = AutoEncoder(spatial_dims=3, in_channels=1, out_channels=1, channels=(16, 32, 64, 128),
                          strides=(2, 2, 2, 2)).to(device).eval()
    load = Compose([LoadImage(image_only=True), EnsureChannelFirst(), Orientation(axcodes="RAS"),
                    Spacing(pixdim=(1.5, 1.5, 1.5)), ScaleIntensity()])

    def run(source: Path, out_dir: Path) -> None:
        image = load(str(source))
        with torch.no_grad():
            reconstruction = sliding_window_inference(image[None].to(device), (96, 96, 96), 4, network,
                                                      overlap=0.25)
        residual = (image[None].to(device) - reconstruction).abs()[0, 0].cpu().numpy()
        original = sitk.ReadImage(str(source))
        affine = image.affine.numpy()  # RAS voxel->world of the resampled grid
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        on_grid = sitk.GetImageFromArray(residual.transpose(2, 1, 0).astype(np.float32))
        on_grid.SetSpacing(spacing.tolist())
        flip = np.diag([-1.0, -1.0, 1.0])  # RAS -> LPS
        on_grid.SetDirection((flip @ affine[:3, :3] / spacing).flatten().tolist())
        on_grid.SetOrigin((flip @ affine[:3, 3]).tolist())
        back = sitk.Resample(on_grid, original, sitk.Transform(), sitk.sitkLinear, 0.0)
        sitk.WriteImage(back, str(out_dir / "plain_anomaly_map.nii.gz"))

    return run


def cpu_model() -> str:
    """The processor's name as Linux reports it (timings of one CPU model compare only with the same model's)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU model unknown"


def timed(function: Callable[[], None], repeats: int) -> List[float]:
    function()  # warm-up: allocations, cuDNN autotuning, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def alternated_seconds(runs: Dict[str, Callable[[], None]], pairs: int) -> Dict[str, List[float]]:
    """Seconds of each of ``runs``, run one after the other ``pairs`` times, in turn first and last (ABBA): each pair
    sees the same moment of the machine, whose speed drifts by 10-20 % within minutes, so the ratio of a pair is
    steadier than that of medians taken minutes apart."""
    seconds: Dict[str, List[float]] = {name: [] for name in runs}
    for pair in range(pairs):
        for name, run in (list(runs.items()) if pair % 2 == 0 else list(runs.items())[::-1]):
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def stage_seconds(volume: Path, out_dir: Path, model: LoadedModel, repeats: int) -> Dict[str, float]:
    """Median seconds of each stage of our detection, run one after another (the end-to-end run overlaps the
    writes with scoring; here each is timed alone)."""
    from MedAutoencoderLib.brain.extractor import extract_brain
    from MedAutoencoderLib.brain.registration import template_to_image_transform
    from MedAutoencoderLib.detection.inference import reconstruct
    from MedAutoencoderLib.detection.scoring import finish_detection, reconstruction_on_input_grid, score_volume

    record, times = model.record, {}

    def timed_stage(name: str, function: Callable[[], object]) -> object:
        start = time.perf_counter()
        result = function()
        times.setdefault(name, []).append(time.perf_counter() - start)
        return result

    for _ in range(repeats + 1):
        image = timed_stage("read (NIfTI, gzip)", lambda: read_image(volume))
        prepared = timed_stage("preprocess (brain mask, resample, normalise)",
                               lambda: prepare_volume(image, record.preprocess))
        if record.preprocess.foreground == "brain":
            timed_stage("  of which the brain extractor", lambda: extract_brain(image, on_input_grid=False))
        else:
            timed_stage("  of which brain-mask registration", lambda: template_to_image_transform(image))
        reconstruction = timed_stage("network", lambda: reconstruct(model.network, prepared, record.model,
                                                                      record.detection.batch_size, model.device))
        scored = timed_stage("score (residual, median, erosion)",
                             lambda: score_volume(prepared, reconstruction, record.detection))
        recon_image = timed_stage("reconstruction onto the input grid",
                                  lambda: reconstruction_on_input_grid(prepared, reconstruction))
        result = timed_stage("map onto the input grid, threshold, components", lambda: finish_detection(
            prepared, recon_image, scored, float(record.threshold), record.detection))
        for kind in OUTPUT_KINDS:
            timed_stage(f"write {kind}", lambda: write_image(getattr(result, kind), out_dir / f"{kind}.nii.gz"))
    return {name: statistics.median(values[1:]) for name, values in times.items()}  # first run: warm-up


def command_line_seconds(volume: Path, out_dir: Path, device: str, repeats: int) -> List[float]:
    """Wall time of whole ``python -m MedAutoencoderLib detect`` processes on one volume, as each Slicer job runs:
    interpreter start, imports (torch, MONAI), model and template loading, first passes, detection, writes."""
    command = [sys.executable, "-m", "MedAutoencoderLib", "detect", str(volume), "--output-dir", str(out_dir),
               "--device", device, "--overwrite", "--progress", "none"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def standby_worker_seconds(volume: Path, out_dir: Path, device: str, repeats: int) -> Dict[str, List[float]]:
    """Wall time of detections as the Slicer module runs them, less the scene update: the volume as the module
    hands it over (uncompressed NRRD), the module's arguments sent to a standby worker (``python -m
    MedAutoencoderLib serve``), and its outputs read back; the first one sent as the worker starts, then
    ``repeats`` more to the started worker."""
    from MedAutoencoderLib.slicer import bridge as slicer_bridge
    from MedAutoencoderLib.worker import jobs
    from MedAutoencoderLib.worker.standby import StandbyWorker

    handed_over = out_dir / "input.nrrd"
    out_dir.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(read_image(volume), str(handed_over), useCompression=False)
    module_device = "gpu" if device.startswith("cuda") else device  # the module's choices: auto, cpu, gpu
    arguments = jobs.detect_arguments([str(handed_over)], str(out_dir / "outputs"), device=module_device)
    environment = jobs.worker_environment(module_device, os.environ.get("PYTHONPATH", ""))  # as the module does
    worker = StandbyWorker(sys.executable, dict(os.environ, **environment))
    times: Dict[str, List[float]] = {"first": [], "later": []}
    try:
        for kind in ["first"] + ["later"] * repeats:
            start = time.perf_counter()
            job = worker.run(arguments)
            code = job.wait(poll_seconds=0.01)
            if code != 0:
                raise RuntimeError(f"standby detection failed with code {code}")
            slicer_bridge.read_worker_outputs(job.outputs[str(handed_over)])
            times[kind].append(time.perf_counter() - start)
    finally:
        worker.stop()
    return times


def cohort_seconds_per_volume(volume: Path, folder: Path, model: LoadedModel, count: int,
                              depths: List[int]) -> Dict[int, Tuple[float, float]]:
    """Wall and CPU (user + system, all threads) seconds per volume of one ``detect`` batch over ``count`` copies
    of the volume, for each read-ahead depth (volumes read and preprocessed in worker threads while the network
    runs; 0: one after the other). CPU over wall says how many cores the batch kept busy: what scheduling alone
    could still gain."""
    folder.mkdir(parents=True, exist_ok=True)
    cohort = [folder / f"subject{i:03d}.nii.gz" for i in range(count)]
    for path in cohort:
        shutil.copyfile(volume, path)
    detect_files(cohort[:2], folder / "out", model, DetectOptions(device=str(model.device),
                                                                  prepare_ahead=max(depths)), overwrite=True)
    seconds = {}  # after that warm-up (worker threads, page cache, cuDNN's choices), no depth runs cold
    for depth in depths:
        options = DetectOptions(device=str(model.device), prepare_ahead=depth)
        start, cpu_start = time.perf_counter(), os.times()
        detect_files(cohort, folder / "out", model, options, overwrite=True)
        cpu_end = os.times()
        cpu = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
        seconds[depth] = ((time.perf_counter() - start) / count, cpu / count)
    return seconds


def training_throughput(folder: Path, device: str) -> float:
    """Slices per second of the default DAE's training loop (one epoch on one volume, augmentation on)."""
    from MedAutoencoderLib.training.trainer import Trainer

    config = TrainConfig(data=[str(folder / "volume.nii.gz")], out=str(folder / "speed.pt"), overwrite=True,
                         model=ModelConfig(name="dae", channels=(16, 32, 64, 128)), preprocess=PreprocessConfig(),
                         epochs=2, device=device, batch_size=16, validation_fraction=0.0)
    events = []
    Trainer(config, progress=events.append).run()
    epochs = [e for e in events if e["event"] == "progress" and "train_loss" in e]
    steps = [e for e in events if e["event"] == "progress" and e.get("epoch") == 2 and "step" in e]
    second_epoch_seconds = epochs[1]["elapsed_s"] - epochs[0]["elapsed_s"]
    return steps[-1]["steps"] * 16 / second_epoch_seconds


def main() -> None:
    """Each figure is printed as soon as it is measured: a failure late in the run (on a borrowed GPU machine
    whose time is short) keeps the figures before it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model file (default: the bundled T1 model)")
    parser.add_argument("--cohort", type=int, default=8, help="volumes in the batch timed for throughput (0: skip)")
    parser.add_argument("--ahead", type=int, nargs="+", default=[0, 2],
                        help="read-ahead depths of that batch (detect --prepare-ahead)")
    parser.add_argument("--pairs", type=int, default=15,
                        help="detect and the plain pipeline alternated this many times for the like-for-like ratio "
                             "(0: skip)")
    parser.add_argument("--no-extras", action="store_true",
                        help="detect and its stages only (no batch, command-line processes, worker or training)")
    args = parser.parse_args()
    device = torch.device(args.device)
    report = partial(print, flush=True)
    report(f"device: {args.device} ({torch.get_num_threads()} threads; {cpu_model()}); volume 256x256x180 at 1 mm, "
           "oblique")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        volume = benchmark_volume(folder / "volume.nii.gz")
        plain_run = plain_monai_pipeline(device)
        (folder / "plain").mkdir()
        plain = timed(lambda: plain_run(volume, folder / "plain"), args.repeats)  # glibc's default allocator
        allocator_set = keep_freed_memory_for_reuse()  # from here on as ``python -m MedAutoencoderLib`` runs
        model = load_model(args.model, device=args.device)  # its brain mask: the learned extractor
        ours = timed(lambda: detect_files([volume], folder / "ours", model, overwrite=True), args.repeats)
        bfloat16 = DetectOptions(device=args.device, precision="bfloat16")
        ours_bfloat16 = timed(lambda: detect_files([volume], folder / "ours", model, bfloat16, overwrite=True),
                              args.repeats)
        with_registration = load_model(args.model, device=args.device, foreground="template")
        ours_template = timed(lambda: detect_files([volume], folder / "ours", with_registration, overwrite=True),
                              args.repeats)
        plain_same_allocator = timed(lambda: plain_run(volume, folder / "plain"), args.repeats)
        report(f"{'pipeline':<52}{'median s':>10}{'min s':>8}")
        for name, times in (("MedAutoencoder detect (end to end)", ours),
                            ("MedAutoencoder detect --precision bfloat16", ours_bfloat16),
                            ("MedAutoencoder detect --foreground template", ours_template),
                            ("plain MONAI AutoEncoder + sliding window", plain),
                            ("  the same with our allocator setting", plain_same_allocator)):
            report(f"{name:<52}{statistics.median(times):>10.2f}{min(times):>8.2f}")
        report(f"speed-up: {statistics.median(plain) / statistics.median(ours):.2f}x (each as it runs); "
               f"{statistics.median(plain_same_allocator) / statistics.median(ours):.2f}x (both with our allocator "
               f"setting{'' if allocator_set else ': not available here'})")
        if args.pairs > 0:
            alternated = alternated_seconds({"ours": lambda: detect_files([volume], folder / "ours", model,
                                                                          overwrite=True),
                                             "plain": lambda: plain_run(volume, folder / "plain")}, args.pairs)
            ratios = [p / o for p, o in zip(alternated["plain"], alternated["ours"])]
            report(f"like for like, alternated one run each {args.pairs} times (both with our allocator setting"
                   f"{'' if allocator_set else ': not available here'}): detect median "
                   f"{statistics.median(alternated['ours']):.2f} s, plain pipeline median "
                   f"{statistics.median(alternated['plain']):.2f} s; speed-up per pair median "
                   f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x)")
        report("stages of our detection, each timed alone (medians, s):")
        for name, seconds in stage_seconds(volume, folder, model, args.repeats).items():
            report(f"  {name:<50}{seconds:>6.2f}")
        if args.no_extras:
            report(f"peak resident memory of this process: "
                   f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
            return
        if args.cohort:
            for depth, (wall, cpu) in cohort_seconds_per_volume(volume, folder / "cohort", model, args.cohort,
                                                                args.ahead).items():
                report(f"batch of {args.cohort} volumes (one detect call), {depth} prepared ahead: {wall:.2f} s per "
                       f"volume ({statistics.median(plain) / wall:.2f}x the plain pipeline's time per volume); CPU "
                       f"{cpu:.2f} s per volume, {cpu / wall:.2f} of {os.cpu_count()} cores busy")
        process_seconds = command_line_seconds(volume, folder / "cli", args.device, max(3, args.repeats // 3))
        report(f"one-volume command-line process (python -m MedAutoencoderLib detect, imports included): "
               f"median {statistics.median(process_seconds):.2f} s of {len(process_seconds)}")
        standby = standby_worker_seconds(volume, folder / "standby", args.device, max(3, args.repeats // 3))
        report(f"the same as the Slicer module runs it (a standby worker, python -m MedAutoencoderLib serve; "
               f"uncompressed files in and out, outputs read back): {standby['first'][0]:.2f} s sent as it starts, "
               f"then median {statistics.median(standby['later']):.2f} s of {len(standby['later'])}")
        report(f"training throughput (default DAE, batch 16, augmentation): "
               f"{training_throughput(folder, args.device):.1f} slices/s")
    report(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
