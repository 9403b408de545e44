#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): every registry model's forward and backward on the GPU
# against zoo's CPU kernels, training-step timings beside PyTorch's on the same GPU, and one
# timed epoch of ResNet-18 at 224 px. Under 8 minutes on an H200.
#
#   cargo xtask device-check                     # here: builds .devbin/zoo.xz (cuda, cudnn)
#   bash scripts/device-check.sh                 # on the GPU machine (device tool: carry .devbin)
#   bash scripts/device-check.sh --self-test --zoo target/debug/zoo   # CPU self-test (CI)
#
# Results go to $OUT (the device tool's output folder), else target/device-check.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target/device-check}
mode=gpu
zoo=""
while [ $# -gt 0 ]; do
  case "$1" in
    --self-test) mode=self ;;
    --zoo) zoo=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "device-check.sh: unknown argument \`$1\` (expected --self-test, --zoo BIN, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
if [ -z "$zoo" ]; then
  [ -f .devbin/zoo.xz ] || { echo "device-check.sh: no .devbin/zoo.xz: run \`cargo xtask device-check\` first" >&2; exit 1; }
  zoo=$(mktemp /tmp/zoo-device.XXXXXX)
  xz -dc .devbin/zoo.xz > "$zoo"
  chmod +x "$zoo"
fi
commit=$(cat .devbin/COMMIT 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
started=$(date +%s)
if [ "$mode" = self ]; then
  header="## CPU self-test

$(date -u +%Y-%m-%d), commit $commit, $cpu, $(nproc) threads: candle's compositions (the ops a
GPU runs) and zoo's CPU kernels against the f64 reference, timings at batch 2 (not a benchmark)."
  "$zoo" device-check --self-test --batch 2 --time-batch 2 --warmup 1 --steps 1 \
    --epoch-images 64 --epoch-size 32 --epoch-batch 32 --header "$header" --out "$out/self-test.md"
else
  # The real libraries come with the device's PyTorch wheels; never the build stubs.
  L=$(for n in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13 libcudnn.so.9 libnccl.so.2; do
    d=$(find / \( -path /proc -o -path /sys \) -prune -o -name "$n" -print 2>/dev/null | head -1)
    [ -n "$d" ] && dirname "$d"; done | sort -u | tr '\n' ':')
  export LD_LIBRARY_PATH="$L${LD_LIBRARY_PATH:-}"
  if ldd "$zoo" | grep 'not found'; then echo "device-check.sh: libraries missing (above)" >&2; exit 1; fi
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
  torch=$(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)
  cases=$("$zoo" device-check --print-cases)
  torch_args=()
  if [ "$torch" != none ]; then
    python3 scripts/bench_torch.py --device cuda --batch 32 --warmup 3 --steps 10 --cases "$cases" \
      | tee "$out/torch.txt" || true
    torch_args=(--torch-results "$out/torch.txt")
  fi
  header="## $gpu

$(date -u +%Y-%m-%d), commit $commit, host $cpu, PyTorch $torch, \`scripts/device-check.sh\`."
  "$zoo" device-check --device cuda --batch 4 --time-batch 32 --warmup 3 --steps 10 \
    "${torch_args[@]}" --epoch-images 50000 --epoch-size 224 \
    --header "$header" --out "$out/gpu.md"
fi
echo "device-check.sh: done in $(( $(date +%s) - started )) s; report in $out"
