"""Train the bundled brain extractor (MedAutoencoderLib/models/brain_extractor.pt).

Images: the synthesis engine (MedAutoencoderLib.synthesis) draws each training image from a label map of the
training split: a SynthSeg whole-head map or an IXI DLMUSE head (any contrast; sometimes the real IXI T1 itself).
Validation, every --validate-minutes: the real IXI T1 heads of the validation split through the extractor's full
inference (Dice of the brain against DLMUSE > 0, holes filled) and fixed synthetic images of other contrasts drawn
from the validation maps; the checkpoint with the best mean of both is kept.

Reproducible: --seed fixes the network's initialisation and every random draw; with --steps the run is the same
step for step (the default budget is time, --minutes, and the file records the steps it made).

    PYTHONPATH=$PWD python scripts/train_brain_extractor.py --data ../shared/data --cache /work/cache/brain_maps
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from MedAutoencoderLib.brain.extractor import (ExtractionConfig, NetworkConfig, build_network, extract_brain,  # noqa
                                               save_extractor)
from MedAutoencoderLib.synthesis.engine import SynthesisConfig, synthesize, to_tensors  # noqa: E402
from MedAutoencoderLib.synthesis.sources import build_cache, ixi_brain_reference, load_map  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 2.0 * float((a & b).sum()) / s if s else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data"))
    parser.add_argument("--cache", default="/work/cache/brain_maps")
    parser.add_argument("--split", default=os.path.join(HERE, "ixi_split.json"))
    parser.add_argument("--out", default=os.path.join(HERE, "..", "MedAutoencoderLib", "models", "brain_extractor.pt"))
    parser.add_argument("--minutes", type=float, default=40.0, help="training time budget")
    parser.add_argument("--steps", type=int, default=0, help="a fixed number of steps instead of the time budget")
    parser.add_argument("--validate-minutes", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=(80, 96, 80))
    parser.add_argument("--shift-mm", type=float, default=40.0,
                        help="crop centres this far from the brain's centre (the neck and face come into view)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--synthseg-share", type=float, default=0.3)
    parser.add_argument("--real-share", type=float, default=0.35, help="IXI draws that use the real T1")
    parser.add_argument("--template-share", type=float, default=0.7,
                        help="drawn contrasts that follow a T1/T2/PD/FLAIR ordering (the rest fully random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", default="", help="start from this model file's weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    split = json.load(open(args.split))
    paths = build_cache(args.data, args.cache, split["train"] + split["validation"])
    synthseg = [to_tensors(load_map(p)) for p in paths if os.path.basename(p).startswith("synthseg_")]
    ixi_train = [to_tensors(load_map(os.path.join(args.cache, f"ixi_{s}.npz"))) for s in split["train"]]
    ixi_val = [to_tensors(load_map(os.path.join(args.cache, f"ixi_{s}.npz"))) for s in split["validation"]]
    print(f"maps: {len(synthseg)} SynthSeg, {len(ixi_train)} IXI train, {len(ixi_val)} IXI validation", flush=True)

    config = SynthesisConfig(shape=tuple(args.shape), shift_mm=args.shift_mm, real_probability=args.real_share,
                             template_probability=args.template_share)
    val_config = SynthesisConfig()
    val_gen = torch.Generator().manual_seed(12345)
    contrasts = ("t2", "pd", "flair", None)
    val_synth = [synthesize(m, val_gen, val_config, contrasts[i % 4]) for i, m in enumerate(ixi_val)]
    val_real = []
    for s in split["validation"]:
        image = sitk.ReadImage(os.path.join(args.data, "ixi_t1_2mm", "t1", f"{s}_T1.nii.gz"), sitk.sitkFloat32)
        ref = ixi_brain_reference(os.path.join(args.data, "ixi_t1_2mm", "dlmuse_seg", f"{s}_T1_DLMUSE.nii.gz"))
        val_real.append((image, sitk.GetArrayFromImage(ref) > 0))

    net_config = NetworkConfig()
    network = build_network(net_config)
    if args.init:
        network.load_state_dict(torch.load(args.init, weights_only=True)["state_dict"])
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    n_params = sum(p.numel() for p in network.parameters())
    print(f"network: {n_params} parameters; budget {args.steps or args.minutes} {'steps' if args.steps else 'min'}",
          flush=True)

    def validate() -> dict:
        network.eval()
        real = [dice(sitk.GetArrayViewFromImage(extract_brain(img, config=ExtractionConfig(stripped_rule=False),
                                                              refuse=False, extractor=(network, net_config)).mask),
                     ref) for img, ref in val_real]
        synth = []
        with torch.inference_mode():
            for sample in val_synth:
                pred = network(sample["image"][None]).argmax(1)[0]
                synth.append(dice(pred.numpy() > 0, sample["brain"].numpy()))
        network.train()
        return {"real_t1": float(np.mean(real)), "real_t1_min": float(np.min(real)),
                "synthetic": float(np.mean(synth)), "synthetic_min": float(np.min(synth)),
                "score": float((np.mean(real) + np.mean(synth)) / 2)}

    start = time.time()
    budget = args.minutes * 60
    best, step, last_val, history = -1.0, 0, start, []
    losses = []
    network.train()
    while True:
        elapsed = time.time() - start
        progress = step / args.steps if args.steps else elapsed / budget
        if progress >= 1:
            break
        lr = args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        for group in optimiser.param_groups:
            group["lr"] = lr
        images, targets = [], []
        for _ in range(args.batch):
            if torch.rand((), generator=gen) < args.synthseg_share:
                source = synthseg[int(torch.randint(len(synthseg), (), generator=gen))]
            else:
                source = ixi_train[int(torch.randint(len(ixi_train), (), generator=gen))]
            sample = synthesize(source, gen, config)
            images.append(sample["image"])
            targets.append(sample["tissue"][None])
        x, y = torch.stack(images), torch.stack(targets)
        loss = loss_fn(network(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 20 == 0:
            print(f"step {step} {elapsed / 60:.1f} min loss {np.mean(losses[-20:]):.4f} lr {lr:.5f}", flush=True)
        at_end = (args.steps and step >= args.steps) or (not args.steps and time.time() - start >= budget)
        if time.time() - last_val >= args.validate_minutes * 60 or at_end:
            result = validate()
            result.update(step=step, minutes=round((time.time() - start) / 60, 1))
            history.append(result)
            print("validation", json.dumps(result), flush=True)
            if result["score"] > best:
                best = result["score"]
                save_extractor(args.out, network, net_config,
                               {"seed": args.seed, "steps": step, "batch": args.batch, "shape": list(args.shape),
                                "lr": args.lr, "shift_mm": args.shift_mm, "real_share": args.real_share,
                                "template_share": args.template_share, "validation": result, "split": os.path.basename(args.split)})
                print(f"saved {args.out}", flush=True)
            last_val = time.time()
    print("history", json.dumps(history), flush=True)


if __name__ == "__main__":
    main()
