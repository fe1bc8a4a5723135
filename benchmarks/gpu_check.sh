#!/usr/bin/env bash
# Every GPU measurement of the speed issue in one go, for a GPU machine without internet whose image has torch (2.11)
# but no diffusers, datasets or mlxtend.
#
#   bash benchmarks/gpu_check.sh prepare      # here, with PyPI: wheels of what the GPU image lacks, into .whl/
#   bash benchmarks/gpu_check.sh run [OUT]    # there, from the repository root (carry .whl): results into OUT
#   bash benchmarks/gpu_check.sh smoke [OUT]  # before a GPU session, on any machine (a CPU too): the same install and
#                                             # commands at toy sizes (PYTHON=/path/to/python picks the interpreter)
#
# "run" installs the wheels and the project into /tmp (nothing is downloaded), then runs:
#   1. benchmark 1, mnist preset (1 channel, 28 px, batch 64): the tutorial loop (fp16 + loss scaling: the baseline),
#      hfddpm's step in bf16 and float32 (TF32), and compiled (CUDA graphs; max-autotune without graphs);
#   2. benchmark 1, cifar10 preset (3 channels, 32 px, batch 128), eager and compiled, channels_last;
#   3. the default run, `accelerate launch training/train.py` with no flags (the GPU recipe, the measured step
#      format), wall time and digit metrics;
#   4. the tests marked gpu.
# Each prints its table; json files land in OUT (default: benchmarks/results/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the GPU image lacks (its own transformers refuses huggingface_hub 2.x, and diffusers imports it via peft).
WHEELS=(
  diffusers==0.42.1 datasets==5.2.0 huggingface_hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
  mlxtend==0.25.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 importlib_metadata==10.2.0 anyio==4.16.0
  transformers==5.24.0
)

PY=${PYTHON:-python3}
case "${1:-}" in
prepare)
  grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
  mkdir -p .whl
  # for the GPU image's Python 3.12, and for this machine's $PY (smoke), where a wheel depends on the version
  here=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  for version in $(printf '%s\n' 3.12 "$here" | sort -u); do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "${WHEELS[@]}"
  done
  du -sh .whl
  ;;
run | smoke)
  default_out=benchmarks/results/gpu
  toy=()     # benchmark 1 at full size, the default run as a user runs it
  toy_run=()
  if [ "$1" = smoke ]; then
    default_out=/tmp/gpu_check_smoke
    toy=(--batch-size 8 --rounds 1 --steps-per-round 2 --warmup-steps 1)
    toy_run=(--num-images 20 --max_train_steps 4 --eval_count 0 --validation_inference_steps 1)
  fi
  out=$(realpath -m "${2:-$default_out}")
  mkdir -p "$out"
  rm -rf /tmp/site /tmp/hfddpm
  "$PY" -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${WHEELS[@]}"
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/hfddpm .
  export PYTHONPATH=/tmp/hfddpm:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
  fi
  (cd /tmp && "$PY" -c "import torch, diffusers, datasets, mlxtend, hfddpm
print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'datasets', datasets.__version__)
print('hfddpm from', hfddpm.__file__, '; cuda:', torch.cuda.is_available())")
  "$PY" benchmarks/bench_train_throughput.py --preset mnist --batch-size 64 --data-on-device \
    --compile-mode reduce-overhead --compile-mode max-autotune-no-cudagraphs "${toy[@]}" \
    --out "$out/train_throughput_mnist.json"
  "$PY" benchmarks/bench_train_throughput.py --preset cifar10 --resolution 32 --channels 3 --batch-size 128 \
    --rounds 3 --channels-last --data-on-device --compile-mode max-autotune-no-cudagraphs "${toy[@]}" \
    --out "$out/train_throughput_cifar10.json"
  "$PY" benchmarks/bench_default_run.py --output-dir /tmp/hfddpm-mnist --out "$out/default_run" "${toy_run[@]}"
  # 4. the GPU-marked tests (CUDA-graph step, resident batches, the measured step format), where pytest exists
  if "$PY" -c "import pytest" 2>/dev/null; then
    "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_engine.py tests/test_step_format.py \
      tests/test_benchmarks.py 2>&1 | tee "$out/gpu_tests.txt" || true
  fi
  ;;
*)
  echo "usage: bash benchmarks/gpu_check.sh prepare | run [OUT] | smoke [OUT]" >&2
  exit 2
  ;;
esac
