"""A tiny model trained once per test session through the real command line, for worker and bridge tests."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.data.synthetic import toy_volume
from MedAutoencoderLib.worker import jobs

#: ``train`` options that make a model in seconds on a CPU (tiny grid, two levels of four and eight features).
TINY_TRAIN_ARGUMENTS = ["--size", "32", "32", "24", "--spacing", "2", "2", "2", "--channels", "4", "8"]
TOY_SHAPE = (32, 32, 24)


def write_toy_volumes(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(count):
        sitk.WriteImage(toy_volume(np.random.default_rng(seed), shape=TOY_SHAPE), str(folder / f"healthy{seed}.nrrd"))
    return folder


def tiny_model(tmp_path_factory) -> Path:
    """Path of a model trained with the CLI in a worker process; trained on first use, then reused."""
    base = tmp_path_factory.getbasetemp()
    model = base / "tiny_model" / "tiny.pt"
    if not model.is_file():
        data = write_toy_volumes(base / "tiny_model" / "healthy")
        command = jobs.train_command(sys.executable, [str(data)], "dae", str(model), epochs=1, device="cpu",
                                     extra_arguments=TINY_TRAIN_ARGUMENTS)
        job = jobs.start_worker(command, jobs.worker_environment("cpu"))
        code = job.wait()
        assert code == 0, job.recent_output()
        assert job.outputs == {"model": str(model)}
    return model
