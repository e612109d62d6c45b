#!/usr/bin/env bash
# GPU checks in one go (run on a CUDA machine from the repository root): detection speed with AMP beside the
# plain MONAI pipeline, and DDP training through torchrun on the NCCL backend with a tiny toy cohort.
set -euo pipefail
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 benchmarks/benchmark_speed.py --device cuda --repeats 7 2>&1 | { grep -v -i warning || true; } | tee "$out/speed_cuda.txt"
python3 - <<'PY'
import numpy as np, SimpleITK as sitk, os
from MedAutoencoderLib.synthetic import toy_volume
os.makedirs("/tmp/toy", exist_ok=True)
for seed in range(4):
    sitk.WriteImage(toy_volume(np.random.default_rng(seed), shape=(48, 48, 40)), f"/tmp/toy/healthy{seed}.nrrd")
PY
torchrun --standalone --nproc_per_node 1 -m MedAutoencoderLib train --data /tmp/toy --out /tmp/toy_ddp.pt \
    --size 32 32 32 --spacing 1.5 1.5 1.5 --channels 8 16 --epochs 3 --device cuda --progress json --no-augment \
    2>&1 | { grep -v -i warning || true; } | tee "$out/ddp_nccl.txt"
python3 -m MedAutoencoderLib info /tmp/toy_ddp.pt | tee -a "$out/ddp_nccl.txt"
