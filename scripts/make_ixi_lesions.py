"""Insert synthetic lesions into real IXI heads, inside their DLMUSE brain, for the user-site evaluation.

Each head of the chosen split (default: the 20 test heads of ``scripts/ixi_split.json``) gets one lesion of
the library's kinds (:data:`MedAutoencoderLib.data.synthetic.LESION_KINDS`: hyper, hypo, mass, subtle, foreign,
in turn, so 4 of each for 20 heads), painted by :func:`MedAutoencoderLib.data.synthetic.insert_lesion` entirely
inside the head's DLMUSE brain (label > 0); the skull, scalp and face stay as they are. Head ``i`` depends only
on ``--seed`` and ``i``. Writes ``lesioned/<id>.nii.gz`` (float32, the head's grid) with its truth in
``masks/<id>_mask.nii.gz``, and ``healthy/<id>.nii.gz`` links to the untouched heads, ready for
``evaluate --images lesioned --masks masks --healthy healthy``.

    PYTHONPATH=$PWD python scripts/make_ixi_lesions.py --out /work/cache/ixi_lesions
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MedAutoencoderLib.data.synthetic import LESION_KINDS, insert_lesion  # noqa: E402

HERE = Path(__file__).resolve().parent
IXI = HERE.parent.parent / "shared" / "data" / "ixi_t1_2mm"


def brain_mask(dlmuse: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """DLMUSE label > 0 as a uint8 mask on ``reference``'s grid (the parcellation lies on the scan's grid)."""
    mask = sitk.Cast(dlmuse > 0, sitk.sitkUInt8)
    return sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for lesioned/, masks/, healthy/ and lesions.json")
    parser.add_argument("--split", default="test", help="which list of scripts/ixi_split.json (default: test)")
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--data", default=str(IXI), help="the IXI folder (t1/, dlmuse_seg/)")
    args = parser.parse_args()

    ids = json.loads((HERE / "ixi_split.json").read_text())[args.split]
    out = Path(args.out)
    for sub in ("lesioned", "masks", "healthy"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    records = []
    for i, (subject, seed) in enumerate(zip(ids, np.random.SeedSequence(args.seed).spawn(len(ids)))):
        t1 = Path(args.data) / "t1" / f"{subject}_T1.nii.gz"
        image = sitk.ReadImage(str(t1), sitk.sitkFloat32)
        brain = brain_mask(sitk.ReadImage(str(Path(args.data) / "dlmuse_seg" / f"{subject}_T1_DLMUSE.nii.gz")),
                           image)
        kind = LESION_KINDS[i % len(LESION_KINDS)]
        lesioned, lesion = insert_lesion(image, brain, kind, np.random.default_rng(seed))
        sitk.WriteImage(lesioned, str(out / "lesioned" / f"{subject}.nii.gz"), useCompression=True)
        sitk.WriteImage(lesion, str(out / "masks" / f"{subject}_mask.nii.gz"), useCompression=True)
        healthy = out / "healthy" / f"{subject}.nii.gz"
        if not healthy.exists():
            healthy.symlink_to(t1)
        volume_ml = float(sitk.GetArrayViewFromImage(lesion).sum()) * float(np.prod(image.GetSpacing())) / 1000
        records.append({"subject": subject, "kind": kind, "lesion_ml": round(volume_ml, 2)})
        print(f"{subject}: {kind}, {volume_ml:.1f} mL", flush=True)
    (out / "lesions.json").write_text(json.dumps({"seed": args.seed, "split": args.split, "lesions": records},
                                                 indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
