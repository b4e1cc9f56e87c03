#!/usr/bin/env bash
# Prepares, on the development machine, what scripts/gpu_bench.sh needs on a lent GPU machine
# (no network and no Rust there): the stripped release binary and test binaries, xz-compressed, in
# .bin/, the Vulkan/EGL loader packages in .gl/, and the official xlstm and mlstm_kernels
# wheels in .whl/ (the reference's Triton kernels). All three folders are git-ignored (.git/info/exclude)
# and travel with the device tool's `carry` (64 MiB in all):
#
#   scripts/gpu_bench_prepare.sh
#   device run: carry [".bin", ".gl", ".whl"], command "scripts/gpu_bench.sh", timeout 560
set -euo pipefail
cd "$(dirname "$0")/.."
for d in .bin .gl .whl; do
  grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
done
rm -rf .bin && mkdir -p .bin
cargo build --release --quiet
strip -o .bin/moxe target/release/moxe
# The test binaries find their fixtures under the path they were built in.
pwd > .bin/source_dir
# The kernel tests (every kernel against its CPU reference) and the golden-model tests.
for t in models large; do
  exe=$(cargo test --release --no-run --message-format=json --test "$t" 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1)
  strip -o ".bin/test-$t" "$exe"
done
lib=$(cargo test --release --no-run --message-format=json --lib 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])' | tail -1)
strip -o .bin/test-kernels "$lib"
if [ -z "$(ls .gl/*.deb 2>/dev/null)" ]; then
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update -qq
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
if [ -z "$(ls .whl/*.whl 2>/dev/null)" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d .whl xlstm==2.0.6 mlstm_kernels==2.0.6
fi
# Compressed, the binaries are about a quarter of their size (the tree travels within 64 MiB).
xz -9 -T0 .bin/moxe .bin/test-*
du -sh .bin .gl .whl
du -csh .bin .gl .whl | tail -1
