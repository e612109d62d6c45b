"""How far a head may be tilted in the scanner before the brain-mask registration fails.

A tilted head is the same voxels with a rotated direction matrix and origin: the brain mask on those voxels must
not change. For each real scan in ``../shared/data`` and each tilt (about the left-right, anterior-posterior and
superior-inferior axes, through the volume's centre) this prints the Dice between the brain mask registered on
the tilted scan and on the scan as acquired (1.0 = the same voxels; below about 0.95 the template brain has
slipped, typically grown onto the scalp of a whole head). For skull-stripped scans, whose non-zero voxels are the
brain, it also prints each mask's Dice with that brain: two masks can disagree while both are as good.

    python benchmarks/registration_tilt.py [--data ../shared/data] [--tilts 10 20 30 -20]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import List

import numpy as np
import SimpleITK as sitk

from MedAutoencoderLib.brain.registration import template_brain_mask_on, template_to_image_transform
from MedAutoencoderLib.data.synthetic import tilted_copy
from MedAutoencoderLib.detection.evaluation import dice
from MedAutoencoderLib.io.volumes import read_image

SCANS = {  # label: (file under --data, skull-stripped: its non-zero voxels are its brain)
    "healthy head with skull, T1": ("healthy_t1_head/chris_t1.nii.gz", False),
    "MS patient, skull-stripped T1": ("ms_lesion_patient26/T1.nii.gz", True),
    "BraTS glioma, skull-stripped T1": ("brats_glioma_case/t1n.nii.gz", True),
    "BraTS glioma, skull-stripped FLAIR": ("brats_glioma_case/t2f.nii.gz", True),
}
AXES = {"LR": (1.0, 0.0, 0.0), "AP": (0.0, 1.0, 0.0), "SI": (0.0, 0.0, 1.0)}


def brain_mask(image: sitk.Image, seconds: List[float]) -> np.ndarray:
    start = time.perf_counter()
    transform = template_to_image_transform(image)
    seconds.append(time.perf_counter() - start)
    return template_brain_mask_on(image, transform)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--tilts", type=float, nargs="+", default=[10.0, 20.0, 30.0, -20.0])
    args = parser.parse_args()

    seconds: List[float] = []
    scores: List[float] = []
    for label, (relative, skull_stripped) in SCANS.items():
        path = args.data / relative
        if not path.is_file():
            print(f"{label}: {path} missing, skipped")
            continue
        image = read_image(path)
        as_acquired = brain_mask(image, seconds)
        own_brain = (sitk.GetArrayViewFromImage(image) > 0) if skull_stripped else None
        cells: List[str] = []
        against_own = [] if own_brain is None else [dice(own_brain, as_acquired)]
        for axis_name, axis in AXES.items():
            for degrees in args.tilts:
                on_tilted = brain_mask(tilted_copy(image, degrees, axis), seconds)
                score = dice(as_acquired, on_tilted)
                scores.append(score)
                cells.append(f"{axis_name}{degrees:+.0f} {score:.2f}")
                if own_brain is not None:
                    against_own.append(dice(own_brain, on_tilted))
        print(f"{label}:\n  " + "  ".join(cells), flush=True)
        if against_own:  # the skull-stripped scan's non-zero voxels are its own brain: how good is each mask?
            print(f"  Dice with the scan's own brain: as acquired {against_own[0]:.3f}, tilted "
                  f"{min(against_own[1:]):.3f}-{max(against_own[1:]):.3f}", flush=True)
    if scores:
        print(f"tilted registrations with Dice < 0.95: {sum(s < 0.95 for s in scores)} of {len(scores)}; "
              f"median registration time {statistics.median(seconds):.2f} s")


if __name__ == "__main__":
    main()
