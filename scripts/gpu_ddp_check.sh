#!/usr/bin/env bash
# The CUDA/NCCL path of issue 17, for a GPU machine: the DDP tests (gloo, CPU ranks) and, when more than one
# GPU is visible, a 2-GPU smoke run (NCCL, torch's SyncBatchNorm, DDP for the standard strategy) compared
# with a 1-GPU run of the same global batch.   Usage: ADAKD_DATA=DIR scripts/gpu_ddp_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ADAKD_DATA:?set ADAKD_DATA to the folder holding fashion-mnist/}"
python -m pytest -x -q tests/test_ddp.py tests/test_elastic.py
n=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
echo "visible GPUs: $n"
if [ "$n" -lt 2 ]; then echo "fewer than 2 GPUs: smoke run skipped"; exit 0; fi
out=$(mktemp -d)
common=(configs/fashion_mnist/kd.yaml device=cuda train.epochs=1 data.train_subset=4096 train.sync_batchnorm=true
        train.precision=fp32 train.channels_last=false compare_scratch=false progress=false)
python -m adakd train "${common[@]}" data.batch_size=256 run_dir="$out/one"
torchrun --nproc_per_node 2 --standalone -m adakd train "${common[@]}" data.batch_size=128 run_dir="$out/two"
python - "$out" <<'PY'
import sys, torch
from adakd.engine.checkpoint import load_checkpoint
a, b = (load_checkpoint(f"{sys.argv[1]}/{n}/checkpoints/student.pt")["model"] for n in ("one", "two"))
worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
print(f"2 GPUs x 128 vs 1 GPU x 256: max |weight difference| {worst:.2e} (GPU kernels are not bitwise: expect ~1e-4)")
PY
