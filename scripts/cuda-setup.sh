#!/usr/bin/env bash
# Makes a CUDA 13.0 build root (nvcc, headers, runtime and link stubs) from PyPI wheels: enough
# to check, lint and link zoo's `cuda`, `cudnn` and `nccl` features on a machine without a GPU.
#
#   bash scripts/cuda-setup.sh [DIR]      # default DIR: target/cuda13 (cached between CI runs)
#   . DIR/env.sh                          # CUDA_HOME, PATH, CUDA_COMPUTE_CAP=90, CUDARC_CUDA_VERSION
#
# The stubs only carry the sonames and symbols the linker asks for: the real libraries are on
# the GPU machine (docs/gpu.md). Never put DIR/.../stubs on a GPU machine's library path.
set -euo pipefail
cd "$(dirname "$0")/.."
D=$(realpath -m "${1:-target/cuda13}")
C="$D/root/nvidia/cu13"
if [ -x "$C/bin/nvcc" ] && [ -f "$D/env.sh" ] && [ -f "$C/lib/stubs/libnccl.so" ]; then
  echo "cuda-setup: $D is ready ($("$C/bin/nvcc" --version | tail -1))"; exit 0
fi
mkdir -p "$D/whl" "$D/root"
PY=$(command -v python3 || command -v python)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
  -d "$D/whl" nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
for w in "$D"/whl/*.whl; do
  "$PY" -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("nvidia/")])' "$w" "$D/root"
done
chmod +x "$C"/bin/* "$C"/nvvm/bin/* 2>/dev/null || true
ln -sfn lib "$C/lib64"
ln -sf libcudart.so.13 "$C/lib/libcudart.so"
# The stubs are generated from cudarc's own bindings: the version candle-core locks.
cargo fetch --locked -q
V=$(awk '/^name = "cudarc"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
S=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$V"/src | head -1)
[ -d "$S" ] || { echo "cuda-setup: cudarc $V source not found after cargo fetch" >&2; exit 1; }
mkdir -p "$C/lib/stubs"
stub() { # stub NAME SONAME BINDINGS...
  grep -ohE '^pub unsafe fn [A-Za-z0-9_]+' "${@:3}" | awk '{print "void "$4"(void){}"}' | sort -u \
    > "$C/lib/stubs/$1.c"
  gcc -shared -fPIC -o "$C/lib/stubs/lib$1.so" -Wl,-soname,"$2" "$C/lib/stubs/$1.c"
}
stub cuda libcuda.so.1 "$S/driver/sys/mod.rs"
stub cublas libcublas.so.13 "$S/cublas/sys/mod.rs"
stub cublasLt libcublasLt.so.13 "$S/cublaslt/sys/mod.rs"
stub curand libcurand.so.10 "$S/curand/sys/mod.rs"
stub nvrtc libnvrtc.so.13 "$S/nvrtc/sys/mod.rs"
stub cudnn libcudnn.so.9 "$S/cudnn/sys/mod.rs"
stub nccl libnccl.so.2 "$S/nccl/sys/mod.rs"
cat > "$D/env.sh" <<ENV
export CUDA_HOME=$C PATH=$C/bin:\$PATH CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-2}
export LIBRARY_PATH=$C/lib/stubs:$C/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}
ENV
echo "cuda-setup: $D ready ($("$C/bin/nvcc" --version | tail -1))"
