#!/usr/bin/env bash
# The GPU checks of issue 5 on one CUDA machine: the gpu-marked parity tests (compiled Triton kernels
# against the float64 oracle), then the speed/memory comparison (torch eager, torch.compile, Triton,
# Liger-Kernel when installed; bf16 cross_entropy 8192x131072 and linear CE at H=4096), which prints
# one table. Budget: under 5 minutes on an H100/H200-class GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
"$PY" -m pytest -q -m gpu tests/test_linear.py tests/test_triton_interpret.py
timeout 300 "$PY" -m labelsmooth.bench_linear --gpu-suite
