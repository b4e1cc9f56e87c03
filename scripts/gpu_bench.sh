#!/usr/bin/env bash
# The GPU benchmark, run on a lent GPU machine (see scripts/gpu_bench_prepare.sh for what it
# carries), most important first, each step under a timeout so the whole fits one 10-minute
# device call: `moxe bench` on the xLSTM-7B shape in bf16 and transformers' xLSTMForCausalLM
# with the official Triton kernels on CUDA on the same shape, side by side; `moxe bench
# kernels` (GEMV GB/s against the read probe); the 7B shape at q8 and q4; the paper config
# at f16, q8, q4; the kernel and golden-model tests on real Vulkan. The log goes to $OUT (or
# ./gpu-bench-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-bench-out}
mkdir -p "$out"
log="$out/gpu_bench.log"
exec > >(tee "$log") 2>&1
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "loaders and driver"
if ! ldconfig -p | grep -q libvulkan.so.1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$nvidia_icd" ] && export VK_DRIVER_FILES=$nvidia_icd
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.mem --format=csv 2>/dev/null \
  || echo "(no nvidia-smi)"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
moxe=.bin/moxe
$moxe info | head -12
step "smoke test: the bundled model on real Vulkan"
timeout 60 $moxe generate --prompt "Once upon a time" --max-tokens 24 --temperature 0
timeout 60 $moxe bench --profile-tokens 16 --repeats 3

step "xLSTM-7B shape (32 blocks, random weights) in bf16, beside the reference"
timeout 120 $moxe bench --config configs/xlstm-7b.json --dtype bf16 --prompt-tokens 128 \
  --decode-tokens 64 --batch 1 --profile-tokens 0 --no-reference --repeats 2

step "transformers xLSTMForCausalLM + mlstm_kernels (Triton), bf16, CUDA, same shape"
timeout 150 python3 reference/bench_hf_decode.py --config configs/xlstm-7b.json --device cuda \
  --dtype bfloat16 --prompt-tokens 128 --decode-tokens 64 --repeats 2

step "moxe bench kernels"
timeout 90 $moxe bench kernels

step "xLSTM-7B shape at q8 and q4"
for d in q8 q4; do
  timeout 110 $moxe bench --config configs/xlstm-7b.json --dtype $d --prompt-tokens 128 \
    --decode-tokens 64 --batch 1 --profile-tokens 0 --no-reference --repeats 2
done

step "paper config (555 M parameters) at f16, q8, q4"
for d in f16 q8 q4; do
  timeout 45 $moxe bench --config configs/paper.json --dtype $d --prompt-tokens 128 \
    --decode-tokens 64 --batch 1 --profile-tokens 0 --no-reference --repeats 3
done

step "tests on real Vulkan: kernels against CPU references, models against golden outputs"
# The tests read their fixtures from the directory they were built in: point it here.
src=$(cat .bin/source_dir 2>/dev/null || true)
if [ -n "$src" ] && [ ! -e "$src" ]; then
  mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"
fi
for t in .bin/test-kernels .bin/test-models .bin/test-large; do
  [ -x "$t" ] && timeout 45 "$t" --test-threads 4 2>&1 | grep -E "^test result|FAILED|panicked" 
done

step "done"
