#!/usr/bin/env bash
# The same benchmarks on a CUDA machine: the model in bf16 on the GPU, flash-attn when it installs.
#
#     bash bench/cuda.sh                    # all benchmarks -> bench/results/cuda.json
#     bash bench/cuda.sh --only ask_latency
#
# Sets up its own virtual environment (.venv-cuda) with torch's CUDA wheel from the package index.
# Stored bytes do not depend on the device; the storage benchmark runs too, as a check.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench/cuda.sh: no CUDA GPU here (nvidia-smi finds none); use bench/run_all.py" >&2
    exit 2
fi
nvidia-smi -L

python3 -m venv .venv-cuda
.venv-cuda/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 -e '.[dev]'
attn=sdpa
if .venv-cuda/bin/pip install --quiet --disable-pip-version-check --no-build-isolation 'flash-attn>=2.6'; then
    attn=flash_attention_2
else
    echo "flash-attn did not install: attention runs on PyTorch's sdpa kernels" >&2
fi

export LONGWATCH_DEVICE=cuda LONGWATCH_DTYPE=bfloat16 LONGWATCH_ATTN=$attn
mkdir -p bench/results
.venv-cuda/bin/python bench/run_all.py --out bench/results/cuda.json "$@"
