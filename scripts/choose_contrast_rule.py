"""Choose the contrast identification's tissue-map rules on validation data: engine images of the IXI validation
maps in each contrast (T1, T2, FLAIR, PD), healthy and with one 30-200 mL lesion (T2/FLAIR/PD: 1.4-2.2 times the
brain's median; T1: 0.3-0.7 times), read as detect reads them (the learned extractor's sure tissue classes). Prints
the confusion of the rules as shipped and with the FLAIR ventricle rule off, and the figures a rule could use.

    PYTHONPATH=$PWD python scripts/choose_contrast_rule.py --maps /work/cache/brain_maps --out /tmp/contrast.json

``--maps``: the prepared label maps (``MedAutoencoderLib.synthesis.sources.build_cache``, ``ixi_<subject>.npz``).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import MedAutoencoderLib.brain.contrast as contrast  # noqa: E402
from MedAutoencoderLib.brain.extractor import NoBrainError, extract_brain  # noqa: E402
from MedAutoencoderLib.detection.harness import synthetic_healthy_scan  # noqa: E402
from MedAutoencoderLib.synthesis.sources import load_map  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("T1", "T2", "FLAIR", "PD")


def with_lesion(image: sitk.Image, brain: sitk.Image, kind: str, rng: np.random.Generator) -> sitk.Image:
    """``image`` with one ellipsoidal lesion (radius 20-36 mm) deep in its brain, brighter (darker on T1)."""
    values, inside = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(brain) > 0
    deep = ndimage.distance_transform_edt(inside) > 8
    z, y, x = np.argwhere(deep)[rng.integers(deep.sum())]
    r = rng.uniform(10, 18)
    zz, yy, xx = np.ogrid[:values.shape[0], :values.shape[1], :values.shape[2]]
    blob = (((zz - z) / (r * rng.uniform(0.6, 1))) ** 2 + ((yy - y) / r) ** 2
            + ((xx - x) / (r * rng.uniform(0.6, 1))) ** 2 < 1) & inside
    factor = rng.uniform(0.3, 0.7) if kind == "T1" else rng.uniform(1.4, 2.2)
    values[blob] = np.median(values[inside]) * factor * rng.uniform(0.9, 1.1, blob.sum())
    out = sitk.GetImageFromArray(values.astype(np.float32))
    out.CopyInformation(image)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", default="/work/cache/brain_maps")
    parser.add_argument("--split", default=os.path.join(HERE, "ixi_split.json"))
    parser.add_argument("--out", default="")
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args()
    subjects = json.load(open(args.split))["validation"]
    rng = np.random.default_rng(args.seed)
    rows = []
    for i, subject in enumerate(subjects):
        label_map = dict(load_map(os.path.join(args.maps, f"ixi_{subject}.npz")))
        for k, kind in enumerate(KINDS):
            for lesion in (False, True):
                image, brain = synthetic_healthy_scan(label_map, kind, seed=1000 * i + 10 * k + lesion)
                if lesion:
                    image = with_lesion(image, brain, kind, rng)
                try:
                    levels = contrast.extraction_levels(extract_brain(image, name=subject))
                except NoBrainError as refusal:  # an engine draw scaled beyond a brain's size
                    print(refusal, flush=True)
                    continue
                shipped = contrast.contrast_from_levels(levels)
                rule, contrast._FLAIR_MAX_CSF_CLASS_WHITE = contrast._FLAIR_MAX_CSF_CLASS_WHITE, -np.inf
                without = contrast.contrast_from_levels(levels)
                contrast._FLAIR_MAX_CSF_CLASS_WHITE = rule
                rows.append({"subject": subject, "contrast": kind, "lesion": lesion, "shipped": shipped.name,
                             "without_ventricle_rule": without.name, "evidence": shipped.evidence})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "evidence"}), flush=True)
    if args.out:
        json.dump(rows, open(args.out, "w"), indent=1, default=float)
    for rule in ("without_ventricle_rule", "shipped"):
        confusion = collections.Counter((r["contrast"], r[rule]) for r in rows)
        print(f"{rule}:")
        for kind in KINDS:
            print(f"  {kind:6s}", ", ".join(f"{found}: {n}" for (truth, found), n in sorted(confusion.items(), key=str)
                                          if truth == kind))


if __name__ == "__main__":
    main()
