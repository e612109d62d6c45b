"""Time the learned brain extractor (``extract_brain``: resampling both ways included) on shared scans and on the
speed benchmark's volume, optionally interleaved with a previous implementation of
``MedAutoencoderLib/brain/extractor.py`` (its file, e.g. from ``git show <commit>:MedAutoencoderLib/brain/extractor.py``),
and check that both give the same masks. Two ways: the mask on the scan's grid (``extract_brain``'s default), and as
detection runs it (no mask on the scan's grid; ``mask_on`` the bundled model's grid).

    PYTHONPATH=$PWD python benchmarks/benchmark_extractor.py [--previous /tmp/extractor_before.py] [--repeats 7]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from benchmark_speed import benchmark_volume, cpu_model  # this folder (the script's own) is on the path
from MedAutoencoderLib.brain import extractor as current
from MedAutoencoderLib.io.loaded_model import DEFAULT_MODEL, load_model
from MedAutoencoderLib.preprocessing.prepare import model_grid

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SPLIT = json.loads((Path(__file__).resolve().parents[1] / "scripts" / "ixi_split.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--previous", type=Path, help="a previous extractor.py to time beside the current one")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--device", default="cpu", help="where the network runs (cuda on a GPU machine)")
    args = parser.parse_args()
    if args.previous and args.device != "cpu":
        parser.error("--previous compares on the CPU (a previous extract_brain may not move its input to a GPU)")
    torch.set_num_threads(2)
    versions = {"now": current}
    if args.previous:
        spec = importlib.util.spec_from_file_location("previous_extractor", args.previous)
        previous = importlib.util.module_from_spec(spec)
        sys.modules["previous_extractor"] = previous
        spec.loader.exec_module(previous)
        versions = {"before": previous, "now": current}
    networks = {key: module.load_extractor(current.MODEL_FILE, device=args.device) for key, module in versions.items()}
    gpu = f"; {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    print(f"{torch.get_num_threads()} threads; {cpu_model()}{gpu}", flush=True)
    scans = {"IXI test head 120x120x90": args.data / "ixi_t1_2mm" / "t1" / f"{SPLIT['test'][0]}_T1.nii.gz",
             "healthy head 188x256x190": args.data / "healthy_t1_head" / "chris_t1.nii.gz",
             "BraTS t1n 240x240x155": args.data / "brats_glioma_case" / "t1n.nii.gz"}
    preprocess = load_model(DEFAULT_MODEL).record.preprocess
    ways = {"on the scan's grid": lambda key, image: versions[key].extract_brain(image, extractor=networks[key]).mask,
            "as detection runs it": lambda key, image: on_model_grid(versions[key], image, networks[key], preprocess)}
    with tempfile.TemporaryDirectory() as folder:
        scans["speed benchmark volume 256x256x180 oblique"] = benchmark_volume(Path(folder) / "volume.nii.gz")
        for name, path in scans.items():
            if not Path(path).exists():  # a machine without ../shared (a lent GPU machine) times the benchmark volume
                print(f"{name}: {path} missing, skipped", flush=True)
                continue
            image = sitk.ReadImage(str(path), sitk.sitkFloat32)
            for way, run in ways.items():
                masks = {k: np.asarray(sitk.GetArrayFromImage(run(k, image)) if way == "on the scan's grid"
                                       else run(k, image)) for k in versions}
                times = {k: [] for k in versions}
                for _ in range(args.repeats):
                    for key in versions:  # interleaved: the machine's load drifts alike for both
                        start = time.perf_counter()
                        run(key, image)
                        times[key].append(time.perf_counter() - start)
                same = "" if len(masks) == 1 else f"; masks identical: {bool(np.array_equal(*masks.values()))}"
                print(f"{name}, {way}: " + ", ".join(f"{k} median {statistics.median(t):.3f} s (min {min(t):.3f})"
                                                     for k, t in times.items()) + same, flush=True)
            print(f"{name}, the network alone on {args.device} (2 mm grid, softmax included): " + ", ".join(
                f"{key} median {statistics.median(network_seconds(image, net, args.repeats)) * 1000:.1f} ms"
                for key, net in networks.items()), flush=True)


def network_seconds(image: sitk.Image, network, repeats: int) -> list:
    """Seconds of the extractor network's forward pass and softmax on the scan's 2 mm grid, where it lies."""
    model, config = network
    scan = current.network_input(current.scan_on_network_grid(image, config.spacing_mm)[1], model)
    device = scan.device
    seconds = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            torch.softmax(model(scan)[0], 0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
    return seconds[1:]  # the first: warm-up (cuDNN's choice of algorithms)


def on_model_grid(module, image: sitk.Image, network, preprocess) -> np.ndarray:
    """The brain mask as detection makes it: on the model grid centred on the brain, none on the scan's grid."""
    extraction = module.extract_brain(image, extractor=network, on_input_grid=False)
    return extraction.mask_on(model_grid(extraction.centre_lps, preprocess))


if __name__ == "__main__":
    main()
