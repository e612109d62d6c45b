#!/usr/bin/env bash
# GPU checks in one go (run on a CUDA machine from the repository root): detection speed with AMP beside the
# plain MONAI pipeline (stages timed alone too), DDP training through torchrun on the NCCL backend with a tiny toy
# cohort (and the clear error when more processes than GPUs are started), and the synthetic evaluation in mixed
# precision, to compare with the same cases in float32 on a CPU:
#     python benchmarks/evaluate_anomalies.py --per-kind 2 --healthy 3 --device cpu
# Through the device tool, carry .whl (the wheels of monai, nibabel, SimpleITK and isal for the machine's Python
# 3.12) and run: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
# PYTHONPATH=/tmp/site bash benchmarks/gpu_check.sh [speed]   (about 10 minutes; with "speed", the speed benchmark
# and the brain extractor alone, about 4 minutes: what a short device lease should run first)
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the library from this checkout, also in its subprocesses
export PYTHONUNBUFFERED=1  # each figure reaches $OUT as it is printed, also when a later step fails
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
quiet() { grep --line-buffered -v -i warning || true; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -c "import torch, SimpleITK, monai; print('torch', torch.__version__, 'monai', monai.__version__, 'SimpleITK', SimpleITK.Version_VersionString())"
} 2>&1 | tee "$out/gpu.txt"
timeout 300 python3 benchmarks/benchmark_speed.py --device cuda --repeats 3 --pairs 5 --cohort 12 --ahead 0 4 8 2>&1 | quiet | tee "$out/speed_cuda.txt"
speed_status=${PIPESTATUS[0]}
# the brain extractor's network on the GPU (target 20 ms per volume; the rest of its work stays on the CPU)
timeout 120 python3 benchmarks/benchmark_extractor.py --device cuda --repeats 9 2>&1 | quiet | tee "$out/extractor_cuda.txt"
[ "${1:-}" = speed ] && exit "$speed_status"
python3 - <<'PY'
import numpy as np, SimpleITK as sitk, os
from MedAutoencoderLib.data.synthetic import toy_volume
os.makedirs("/tmp/toy", exist_ok=True)
for seed in range(4):
    sitk.WriteImage(toy_volume(np.random.default_rng(seed), shape=(48, 48, 40)), f"/tmp/toy/healthy{seed}.nrrd")
PY
for n in 1 2; do
  echo "== torchrun --nproc_per_node $n on $(nvidia-smi -L | wc -l) GPU(s)"
  timeout 120 torchrun --standalone --nproc_per_node $n -m MedAutoencoderLib train --data /tmp/toy \
      --out /tmp/toy_ddp$n.pt --size 32 32 32 --spacing 1.5 1.5 1.5 --channels 8 16 --epochs 3 --device cuda \
      --progress json --no-augment 2>&1 | quiet | grep --line-buffered -v '"step"'
  echo "exit status: ${PIPESTATUS[0]}"
  python3 -m MedAutoencoderLib info /tmp/toy_ddp$n.pt
done 2>&1 | tee "$out/ddp_nccl.txt"
timeout 240 python3 benchmarks/evaluate_anomalies.py --per-kind 2 --healthy 3 --device cuda 2>&1 | quiet \
    | tee "$out/evaluation_cuda_amp.txt"
