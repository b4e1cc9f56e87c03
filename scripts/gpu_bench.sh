#!/usr/bin/env bash
# The GPU benchmark, run on a lent GPU machine (see scripts/gpu_bench_prepare.sh for what it
# carries), every step under a timeout and the whole within one time budget
# (GPU_BENCH_SECONDS, 500 by default) so it fits one 10-minute device call: the matmul kernel
# tests on real Vulkan; the bundled model's bench; `moxe bench` on the xLSTM-7B shape in bf16
# (with a per-kernel profile) and transformers' xLSTMForCausalLM with the official Triton
# kernels on CUDA on the same shape, side by side (with a CUDA read-bandwidth yardstick); the
# 7B shape at q4 and q8; `moxe bench kernels` (GEMV GB/s against the read probe); the paper
# config at f16, q8, q4; the server bench; the kernel tests (every kernel against its CPU
# reference) and the golden-model tests. GPU_BENCH_ONLY names the steps to run (matmul-tests
# bundled 7b-bf16 hf 7b-quant kernels paper serve tests; all by default). The log goes to $OUT (or ./gpu-bench-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-bench-out}
mkdir -p "$out"
log="$out/gpu_bench.log"
exec > >(tee "$log") 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s)
budget=${GPU_BENCH_SECONDS:-500}
step() { echo; echo "=== $* ($(date -u +%H:%M:%S), $(($(date +%s) - start)) s)"; }
# only NAME: whether step NAME runs (GPU_BENCH_ONLY lists the steps to run; unset: all).
only() { [ -z "${GPU_BENCH_ONLY:-}" ] || [[ " $GPU_BENCH_ONLY " == *" $1 "* ]]; }
# limit CAP CMD..: CMD under a timeout of CAP seconds or what is left of the budget.
limit() {
  local cap=$1 left
  shift
  left=$((start + budget - $(date +%s)))
  if ((left < 10)); then
    echo "(skipped, out of time: $*)"
    return 0
  fi
  ((cap > left)) && cap=$left
  timeout "$cap" "$@"
  local rc=$?
  ((rc == 124)) && echo "(stopped after $cap s: $*)"
  return $rc
}

step "loaders and driver"
if ! ldconfig -p | grep -q libvulkan.so.1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$nvidia_icd" ] && export VK_DRIVER_FILES=$nvidia_icd
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
  --format=csv 2>/dev/null || echo "(no nvidia-smi)"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
# The tests read their fixtures from the directory they were built in: point it here.
src=$(cat .bin/source_dir 2>/dev/null || true)
if [ -n "$src" ] && [ ! -e "$src" ]; then
  mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"
fi
# The binaries travel xz-compressed; python3's lzma unpacks them (xz may be missing there).
bin=/tmp/moxe-gpu-bench
mkdir -p $bin
for f in .bin/*.xz; do
  python3 -c 'import lzma, shutil, sys
shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$bin/$(basename "${f%.xz}")"
done
chmod +x $bin/*
moxe=$bin/moxe
$moxe info

if only matmul-tests; then
  step "matmul kernel tests on real Vulkan (every matmul kernel against its CPU reference)"
  limit 45 $bin/test-kernels --test-threads 4 matmul 2>&1 | grep -E "^test result|FAILED|panicked|^\("
fi

if only bundled; then
  step "the bundled model on real Vulkan"
  limit 45 $moxe bench --profile-tokens 16 --repeats 3
fi

if only 7b-bf16; then
  step "xLSTM-7B shape (32 blocks, random weights) in bf16, beside the reference"
  limit 120 $moxe bench --config configs/xlstm-7b.json --dtype bf16 --prompt-tokens 128 \
    --decode-tokens 64 --batch 1 --profile-tokens 4 --no-reference --repeats 2
fi

if only hf; then
  step "transformers xLSTMForCausalLM + mlstm_kernels (Triton), bf16, CUDA, same shape"
  # The config's Triton kernels first; where Triton fails to compile one, the chunkwise
  # (prefill) kernels native and the Triton step kernel (decode); then all native.
  hf="python3 reference/bench_hf_decode.py --config configs/xlstm-7b.json --device cuda
    --dtype bfloat16 --prompt-tokens 128 --decode-tokens 64 --repeats 2"
  native="--chunkwise-kernel chunkwise--native_autograd --sequence-kernel native_sequence__native"
  limit 120 $hf || limit 90 $hf $native || limit 90 $hf $native --step-kernel native
fi

if only 7b-quant; then
  step "xLSTM-7B shape at q4 and q8"
  for d in q4 q8; do
    limit 90 $moxe bench --config configs/xlstm-7b.json --dtype $d --prompt-tokens 128 \
      --decode-tokens 64 --batch 1 --profile-tokens 0 --no-reference --repeats 2
  done
fi

if only kernels; then
  step "moxe bench kernels"
  limit 60 $moxe bench kernels --seconds 0.3
fi

if only paper; then
  step "paper config (555 M parameters) at f16, q8, q4"
  for d in f16 q8 q4; do
    limit 40 $moxe bench --config configs/paper.json --dtype $d --prompt-tokens 128 \
      --decode-tokens 64 --batch 1 --profile-tokens 0 --no-reference --repeats 3
  done
fi

if only serve; then
  step "moxe bench serve: the HTTP server on the bundled model, 1, 4 and 16 streams"
  limit 60 $moxe bench serve
fi

if only tests; then
  step "tests on real Vulkan: kernels against CPU references, models against golden outputs"
  for t in $bin/test-kernels $bin/test-models $bin/test-large; do
    limit 45 "$t" --test-threads 4 2>&1 | grep -E "^test result|FAILED|panicked|^\("
  done
fi

step "done"
