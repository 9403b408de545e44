#!/usr/bin/env bash
# Installs Open MPI from Debian's packages (libopenmpi-dev, openmpi-bin) and libclang, which the
# `mpi` crate's bindings are generated with: what zoo's `mpi` feature builds and runs against.
#
#   bash scripts/mpi-setup.sh            # as root, or with sudo on the PATH
#   cargo build --release -p zoo-cli --features mpi
#   mpirun -np 2 target/release/zoo train resnet18 ...    (docs/distributed.md)
set -euo pipefail
if command -v mpirun >/dev/null && command -v mpicc >/dev/null \
  && ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  echo "mpi-setup: $(mpirun --version | head -1) and libclang are installed"; exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || echo "mpi-setup: apt-get update failed; trying the cached package lists"
$SUDO apt-get install -y -qq --no-install-recommends libopenmpi-dev openmpi-bin libclang-dev >/dev/null
echo "mpi-setup: $(mpirun --version | head -1)"
