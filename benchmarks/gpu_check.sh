#!/usr/bin/env bash
# Every GPU measurement of the speed issue in one go, for a GPU machine without internet whose image has torch (2.11)
# but no diffusers, datasets or mlxtend.
#
#   bash benchmarks/gpu_check.sh prepare      # here, with PyPI: wheels of what the GPU image lacks, into .whl/
#   bash benchmarks/gpu_check.sh run [OUT]    # there, from the repository root (carry .whl): results into OUT
#   bash benchmarks/gpu_check.sh smoke [OUT]  # before a GPU session, on any machine (a CPU too): the same install and
#                                             # commands at toy sizes (PYTHON=/path/to/python picks the interpreter)
#
# "run" installs the wheels and the project into /tmp (nothing is downloaded), then runs, most important first, each
# step under its own time limit so that one slow step (a compile) cannot starve the rest of a short GPU lease:
#   1. the default run, `accelerate launch training/train.py` with no flags (the GPU recipe, the measured step
#      format): wall time, images/s and digit metrics (target: >= 5x 1382 images/s, under 60 s);
#   2. benchmark 1, cifar10 preset (3 channels, 32 px, batch 128, channels_last), eager: the tutorial loop (fp16 +
#      loss scaling: the baseline), hfddpm in bf16 and float32 (TF32) (target: >= 1.5x the baseline);
#   3. the same with hfddpm's step compiled (torch.compile, default mode: about 100 s to compile), against the baseline;
#   4. benchmark 1, mnist preset (1 channel, 28 px, batch 64), eager and compiled with CUDA graphs (reduce-overhead);
#   5. the tests marked gpu.
# OUT ends up with at most 8 files (what a device lease brings back): summary.txt (the GPU, versions, each step's
# outcome and time, the headline numbers), log.txt (everything printed), 3 benchmark json files and the default run's
# json and two pictures. The summary is printed last. The limits add up to 520 s; with the install, under 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the GPU image lacks (its own transformers refuses huggingface_hub 2.x, and diffusers imports it via peft), and
# the versions these need of what it has: anyio 4.16 imports typing_extensions 4.16's `sentinel`, transformers checks
# regex >= 2025.10.22 at import, httpx2 and httpcore2 want idna >= 3.18 and h11 >= 0.16, and peft is taken at the
# release that goes with transformers 5.24 (the image's versions of these are unknown here).
WHEELS=(
  diffusers==0.42.1 datasets==5.2.0 huggingface_hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
  mlxtend==0.25.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 importlib_metadata==10.2.0 anyio==4.16.0
  transformers==5.24.0 typing_extensions==4.16.0 regex==2026.11.19 idna==3.20 h11==0.16.0 peft==0.21.2
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
  limit_scale=1
  if [ "$1" = smoke ]; then
    limit_scale=5 # a CPU compiles and steps far slower than a GPU
    default_out=/tmp/gpu_check_smoke
    toy=(--batch-size 8 --rounds 1 --steps-per-round 2 --warmup-steps 1)
    toy_run=(--num-images 20 --max_train_steps 4 --eval_count 0 --validation_inference_steps 1)
  fi
  out=$(realpath -m "${2:-$default_out}")
  mkdir -p "$out"
  exec > >(tee "$out/log.txt") 2>&1
  tee_pid=$!
  summary="$out/summary.txt"
  : >"$summary"
  rm -rf /tmp/site /tmp/hfddpm /tmp/hfddpm-mnist  # a second run on the same machine starts clean too
  "$PY" -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${WHEELS[@]}"
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/hfddpm .
  export PYTHONPATH=/tmp/hfddpm:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$summary"
  fi
  # pre-flight: everything the steps import (the training engine pulls in transformers and peft through diffusers);
  # a failure is written to the summary and the steps still run, each failing on its own
  (cd /tmp && "$PY" -c "import importlib.metadata as md, torch, diffusers, datasets, mlxtend, hfddpm, hfddpm.training
names = 'diffusers datasets transformers peft huggingface_hub accelerate typing_extensions regex anyio'.split()
print('torch', torch.__version__, 'cuda:', torch.cuda.is_available(), *(f'{n} {md.version(n)}' for n in names))") \
    >>"$summary" 2>&1 || echo "pre-flight import failed (its error is above)" >>"$summary"

  # step NAME LIMIT_S COMMAND...: runs COMMAND under a time limit; its outcome and time go to the summary, and a
  # failed or timed-out step does not stop the others
  step() {
    local name=$1 limit=$(($2 * limit_scale)) rc=0 t0=$SECONDS outcome=ok
    shift 2
    echo "=== $name (at most ${limit} s)"
    timeout --kill-after=15 "$limit" "$@" || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      outcome="timed out"
    elif [ "$rc" -ne 0 ]; then
      outcome="failed (exit $rc)"
    fi
    printf '%-26s %-18s %5d s\n' "$name" "$outcome" $((SECONDS - t0)) >>"$summary"
  }
  bench=("$PY" benchmarks/bench_train_throughput.py --data-on-device)
  cifar10=(--preset cifar10 --resolution 32 --channels 3 --batch-size 128 --rounds 3 --channels-last)
  step "default run" 140 "$PY" benchmarks/bench_default_run.py --output-dir /tmp/hfddpm-mnist \
    --out "$out/default_run" "${toy_run[@]}"
  step "cifar10 eager" 70 "${bench[@]}" "${cifar10[@]}" "${toy[@]}" --out "$out/train_throughput_cifar10.json"
  step "cifar10 compiled" 150 "${bench[@]}" "${cifar10[@]}" --compile-mode default --skip-row diffusers_fp32 \
    --skip-row diffusers_bf16 --skip-row hfddpm_fp32 "${toy[@]}" --out "$out/train_throughput_cifar10_compiled.json"
  step "mnist eager + CUDA graphs" 90 "${bench[@]}" --preset mnist --batch-size 64 --compile-mode reduce-overhead \
    "${toy[@]}" --out "$out/train_throughput_mnist.json"
  if "$PY" -c "import pytest" 2>/dev/null; then
    # -o addopts=: setup.cfg's -n (pytest-xdist) is left out, and the GPU tests run one at a time, the quick ones
    # first (the compiled step's test compiles a small UNet last)
    step "tests marked gpu" 70 "$PY" -m pytest -q -p no:cacheprovider -o addopts= -m gpu tests/test_data.py \
      tests/test_budget.py tests/test_step_format.py tests/test_benchmarks.py tests/test_engine.py
  fi
  "$PY" benchmarks/gpu_summary.py "$out" >>"$summary" || true
  echo && cat "$summary"
  exec >&- 2>&-  # let tee write the last lines of log.txt before the command returns
  wait "$tee_pid" 2>/dev/null || true
  ;;
*)
  echo "usage: bash benchmarks/gpu_check.sh prepare | run [OUT] | smoke [OUT]" >&2
  exit 2
  ;;
esac
