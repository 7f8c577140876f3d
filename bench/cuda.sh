#!/usr/bin/env bash
# The GPU checks, one command: the CUDA tests, training cost at the real shapes, then the benchmarks.
#
#     bash bench/cuda.sh                     # all: tests, 2B and 7B training steps, every benchmark
#     bash bench/cuda.sh --quick             # the tests and the 2B's training steps (minutes)
#     bash bench/cuda.sh --flash-attn ...    # first try to install flash-attn (it may build for long)
#
# `pytest -m gpu` (tests/test_gpu.py) checks on the GPU: keep-raw against the native model's logits
# (fp32 and bf16), summary chunks made on CUDA against the CPU's, flash-attn against sdpa (when
# installed), the service end to end in bf16 over gRPC, the demo model's answers, and summary-token
# training in bf16 with gradient checkpointing. bench/train_scale.py times training steps and peak
# GPU memory on random VideoLLaMA3-2B/-7B of the real depth and widths. Results go to bench/results/
# (cuda-tests.txt, cuda-train.json, cuda.json). Sets up its own virtual environment (.venv-cuda).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
flash=0
rest=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        --flash-attn) flash=1 ;;
        *) rest+=("$arg") ;;
    esac
done

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench/cuda.sh: no CUDA GPU here (nvidia-smi finds none); use bench/run_all.py" >&2
    exit 2
fi
nvidia-smi -L

python3 -m venv .venv-cuda
.venv-cuda/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 -e '.[dev]'
if [ "$flash" = 1 ] && ! .venv-cuda/bin/pip install --quiet --disable-pip-version-check --no-build-isolation 'flash-attn>=2.6'; then
    echo "flash-attn did not install: attention runs on PyTorch's sdpa kernels" >&2
fi
mkdir -p bench/results
py=.venv-cuda/bin/python
status=0

echo "== pytest -m gpu"
$py -m pytest -m gpu -rs -p no:cacheprovider 2>&1 | tee bench/results/cuda-tests.txt || status=$?

echo "== summary-token training at the real shapes (bf16)"
export LONGWATCH_DEVICE=cuda LONGWATCH_DTYPE=bfloat16 LONGWATCH_ATTN=auto
$py bench/train_scale.py --shape 2b --json-out bench/results/.cuda-train-2b.json || status=$?
if [ "$quick" = 0 ]; then
    $py bench/train_scale.py --shape 7b --checkpointing --json-out bench/results/.cuda-train-7b.json || status=$?
fi
$py - <<'EOF'
import json, pathlib
rows = [r for f in sorted(pathlib.Path("bench/results").glob(".cuda-train-*.json")) for r in json.loads(f.read_text())]
pathlib.Path("bench/results/cuda-train.json").write_text(json.dumps(rows, indent=1))
EOF

if [ "$quick" = 0 ]; then
    echo "== benchmarks on the GPU"
    $py bench/run_all.py --out bench/results/cuda.json "${rest[@]}" || status=$?
fi
exit "$status"
