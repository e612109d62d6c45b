"""Evaluate the brain extractor beside the template registration on scans it never trained on.

Cases: the IXI test split (reference: DLMUSE > 0, holes filled); the shared skull-stripped scans (MS patient 26
T1/T1POST/T2/FLAIR, BraTS t1n/t1c/t2w/t2f; reference: their non-zero region, holes filled); the shared healthy
head (no reference: a picture); and scans that must be refused (abdomen, knee, head-shaped phantoms, a constant
volume, a head CT made from an IXI test head, slabs of a head). With --validation it runs the validation split
instead (skull-stripped copies of the real validation heads: the check that chose the skull-stripped rule).

    PYTHONPATH=$PWD python scripts/evaluate_brain_extractor.py --out /work/cache/eval.json --figures docs/images
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage as ndi

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MedAutoencoderLib.brain.extractor import (MODEL_FILE, ExtractionConfig, extract_brain,  # noqa: E402
                                               load_extractor)
from MedAutoencoderLib.errors import MedAutoencoderError  # noqa: E402
from MedAutoencoderLib.synthesis.sources import ixi_brain_reference  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 2.0 * float((a & b).sum()) / s if s else 1.0


def registration_mask(image: sitk.Image) -> np.ndarray:
    from MedAutoencoderLib.brain.registration import template_brain_mask_on, template_to_image_transform

    return template_brain_mask_on(image, template_to_image_transform(image))


def run(method: str, image: sitk.Image, name: str, model: str, config: ExtractionConfig, refuse: bool = True):
    start = time.perf_counter()
    try:
        if method == "registration":
            mask = registration_mask(image)
            extra = {}
        else:
            result = extract_brain(image, name=name, config=config, model_file=model, refuse=refuse)
            mask = sitk.GetArrayFromImage(result.mask) > 0
            extra = {"brain_ml": round(result.brain_ml), "confidence": round(result.confidence, 3),
                     "edge_share": round(result.edge_share, 3), "csf_share": round(result.csf_share, 3),
                     "length_mm": round(result.length_mm), "stripped": result.stripped}
        return mask, {"seconds": round(time.perf_counter() - start, 3), **extra}
    except MedAutoencoderError as exc:
        return None, {"seconds": round(time.perf_counter() - start, 3), "refused": str(exc)}


def figure(image: sitk.Image, masks: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iso = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayFromImage(iso)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    colours = ["r", "c", "y"]
    oriented = {k: sitk.GetArrayFromImage(sitk.DICOMOrient(m, "LPS")) for k, m in masks.items()}
    centre = [int(np.mean(np.nonzero(next(iter(oriented.values())))[i])) if next(iter(oriented.values())).any()
              else array.shape[i] // 2 for i in range(3)]
    sp = iso.GetSpacing()
    views = [(array[centre[0]], {k: m[centre[0]] for k, m in oriented.items()}, sp[1] / sp[0], "axial", False),
             (array[:, centre[1]], {k: m[:, centre[1]] for k, m in oriented.items()}, sp[2] / sp[0], "coronal", True),
             (array[:, :, centre[2]], {k: m[:, :, centre[2]] for k, m in oriented.items()}, sp[2] / sp[1],
              "sagittal", True)]
    for ax, (sl, ms, aspect, label, flip) in zip(axes, views):
        ax.imshow(sl, cmap="gray", origin="lower" if flip else "upper", aspect=aspect,
                  vmax=np.percentile(array, 99.5))
        for (k, m), c in zip(ms.items(), colours):
            if m.any():
                ax.contour(m, [0.5], colors=c, linewidths=0.8, origin="lower" if flip else "upper")
        ax.set_title(label)
        ax.axis("off")
    fig.suptitle(title + "  (" + ", ".join(f"{c}: {k}" for k, c in zip(masks, colours)) + ")", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def refusal_cases(data: str, subject: str) -> dict:
    """Scans that must be refused: made as Testing/test_detection.py makes its phantoms, plus a head CT and slabs."""
    z, y, x = np.mgrid[0:100, 0:128, 0:128].astype(np.float32)
    rng = np.random.default_rng(0)
    cases = {}
    head_shape = ((x - 64) / 36) ** 2 + ((y - 64) / 45) ** 2 + ((z - 50) / 36) ** 2
    for kind in ("abdomen", "knee", "ellipsoid", "rimmed ellipsoid", "constant"):
        v = np.zeros(z.shape, np.float32)
        if kind in ("ellipsoid", "rimmed ellipsoid"):
            v[head_shape < 1] = 600
            if kind == "rimmed ellipsoid":
                v[(head_shape < 1) & (head_shape > 0.8)] = 900
        elif kind == "abdomen":
            v[((x - 64) / 55) ** 2 + ((y - 64) / 40) ** 2 < 1] = 200
            v[((x - 45) / 15) ** 2 + ((y - 60) / 12) ** 2 + ((z - 50) / 30) ** 2 < 1] = 500
            v[((x - 85) / 8) ** 2 + ((y - 70) / 8) ** 2 + ((z - 50) / 20) ** 2 < 1] = 700
            v[((x - 64) / 5) ** 2 + ((y - 85) / 5) ** 2 < 1] = 900
        elif kind == "knee":
            v[((x - 64) / 30) ** 2 + ((y - 64) / 30) ** 2 < 1] = 300
            v[((x - 64) / 12) ** 2 + ((y - 64) / 12) ** 2 < 1] = 800
        else:
            v[:] = 100
        if kind != "constant":
            v = np.abs(v + rng.normal(0, 20, v.shape)).astype(np.float32)
        image = sitk.GetImageFromArray(v)
        image.SetSpacing((2.0, 2.0, 2.0))
        cases[kind] = image
    t1 = sitk.ReadImage(os.path.join(data, "ixi_t1_2mm", "t1", f"{subject}_T1.nii.gz"), sitk.sitkFloat32)
    ref = sitk.GetArrayFromImage(ixi_brain_reference(
        os.path.join(data, "ixi_t1_2mm", "dlmuse_seg", f"{subject}_T1_DLMUSE.nii.gz"))) > 0
    values = sitk.GetArrayFromImage(t1)
    head = values > 0.1 * np.percentile(values, 99)
    head = ndi.binary_fill_holes(ndi.binary_closing(head, iterations=2))
    outside = ndi.distance_transform_edt(~ref, sampling=t1.GetSpacing()[::-1])
    hu = np.full(values.shape, -1000.0, np.float32)
    hu[head] = 40.0
    hu[ref] = 20.0 + 25.0 * values[ref] / np.percentile(values[ref], 99)
    hu[head & (outside > 2) & (outside <= 8)] = 1000.0
    ct = sitk.GetImageFromArray(hu)
    ct.CopyInformation(t1)
    cases["head CT"] = ct
    # slabs: the IXI head with only its top 40 % / 25 % of the brain's extent in view
    dlmuse_img = sitk.DICOMOrient(t1, "LPS")
    ref_lps = sitk.GetArrayFromImage(sitk.DICOMOrient(ixi_brain_reference(
        os.path.join(data, "ixi_t1_2mm", "dlmuse_seg", f"{subject}_T1_DLMUSE.nii.gz")), "LPS")) > 0
    zs = np.nonzero(ref_lps.any((1, 2)))[0]
    for share in (0.4, 0.25):
        start = int(zs[-1] - share * (zs[-1] - zs[0]))
        cases[f"slab top {int(share * 100)}%"] = dlmuse_img[:, :, start:]
    return cases


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data"))
    parser.add_argument("--split", default=os.path.join(HERE, "ixi_split.json"))
    parser.add_argument("--model", default=MODEL_FILE)
    parser.add_argument("--out", default="/work/cache/brain_eval.json")
    parser.add_argument("--figures", default="")
    parser.add_argument("--no-registration", action="store_true")
    parser.add_argument("--validation", action="store_true")
    parser.add_argument("--no-refuse", action="store_true", help="report the refusal figures of every scan")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = json.load(open(args.split))
    data = args.data
    methods = ["extractor"] + ([] if args.no_registration else ["registration"])
    config = ExtractionConfig()
    load_extractor(args.model)
    rows = []

    def record(group, name, image, reference, figure_path=None):
        masks = {}
        for method in methods:
            mask, info = run(method, image, name, args.model, config, refuse=not args.no_refuse)
            row = {"group": group, "case": name, "method": method, **info}
            if mask is not None and reference is not None:
                row["dice"] = round(dice(mask, reference), 4)
            if mask is not None:
                m = sitk.GetImageFromArray(mask.astype(np.uint8))
                m.CopyInformation(image)
                masks[method] = m
            rows.append(row)
            print(json.dumps(row), flush=True)
        if figure_path and masks:
            figure(image, masks, figure_path, name)

    if args.validation:
        for s in split["validation"]:
            t1 = sitk.ReadImage(os.path.join(data, "ixi_t1_2mm", "t1", f"{s}_T1.nii.gz"), sitk.sitkFloat32)
            ref = sitk.GetArrayFromImage(ixi_brain_reference(
                os.path.join(data, "ixi_t1_2mm", "dlmuse_seg", f"{s}_T1_DLMUSE.nii.gz"))) > 0
            record("validation heads", s, t1, ref)
        for r in (0.0, 2.0):
            for s in split["validation"]:
                t1 = sitk.ReadImage(os.path.join(data, "ixi_t1_2mm", "t1", f"{s}_T1.nii.gz"), sitk.sitkFloat32)
                ref = sitk.GetArrayFromImage(ixi_brain_reference(
                    os.path.join(data, "ixi_t1_2mm", "dlmuse_seg", f"{s}_T1_DLMUSE.nii.gz"))) > 0
                keep = ndi.binary_dilation(ref, iterations=int(r / 2)) if r else ref
                stripped = sitk.GetImageFromArray(sitk.GetArrayFromImage(t1) * keep)
                stripped.CopyInformation(t1)
                for rule in (True, False):
                    config = ExtractionConfig(stripped_rule=rule)
                    record(f"validation stripped {r:.0f} mm rule {rule}", s, stripped, keep)
        config = ExtractionConfig()
    else:
        for i, s in enumerate(split["test"]):
            t1 = sitk.ReadImage(os.path.join(data, "ixi_t1_2mm", "t1", f"{s}_T1.nii.gz"), sitk.sitkFloat32)
            ref = sitk.GetArrayFromImage(ixi_brain_reference(
                os.path.join(data, "ixi_t1_2mm", "dlmuse_seg", f"{s}_T1_DLMUSE.nii.gz"))) > 0
            fig = os.path.join(args.figures, "brain_ixi_test.png") if args.figures and i == 0 else None
            record("ixi test", s, t1, ref, fig)
        stripped = [("ms_lesion_patient26", n) for n in ("T1", "T1POST", "T2", "FLAIR")] + \
                   [("brats_glioma_case", n) for n in ("t1n", "t1c", "t2w", "t2f")]
        for folder, n in stripped:
            image = sitk.ReadImage(os.path.join(data, folder, f"{n}.nii.gz"), sitk.sitkFloat32)
            ref = ndi.binary_fill_holes(sitk.GetArrayViewFromImage(image) != 0)
            fig = os.path.join(args.figures, f"brain_{folder.split('_')[0]}_{n}.png") if args.figures else None
            record("skull-stripped", f"{folder}/{n}", image, ref, fig)
        head = sitk.ReadImage(os.path.join(data, "healthy_t1_head", "chris_t1.nii.gz"), sitk.sitkFloat32)
        record("healthy head", "healthy_t1_head/chris_t1", head, None,
               os.path.join(args.figures, "brain_healthy_head.png") if args.figures else None)
        for name, image in refusal_cases(data, split["test"][0]).items():
            record("must refuse", name, image, None)
    json.dump(rows, open(args.out, "w"), indent=1)
    summary = {}
    for row in rows:
        key = (row["group"], row["method"])
        s = summary.setdefault(key, {"n": 0, "refused": 0, "dice": [], "seconds": []})
        s["n"] += 1
        s["refused"] += "refused" in row
        s["seconds"].append(row["seconds"])
        if "dice" in row:
            s["dice"].append(row["dice"])
    for (group, method), s in summary.items():
        d = s["dice"]
        print(f"{group:40s} {method:12s} n={s['n']:2d} refused={s['refused']:2d} "
              + (f"dice mean {np.mean(d):.4f} min {np.min(d):.4f} " if d else "")
              + f"median s {np.median(s['seconds']):.3f}")


if __name__ == "__main__":
    main()
