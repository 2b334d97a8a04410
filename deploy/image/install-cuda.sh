#!/usr/bin/env bash
# The CUDA toolkit for the image's build stage (deploy/Dockerfile), from NVIDIA's own apt
# repository for Debian 12, only the parts vitrine's build needs: nvcc, the runtime and cuBLAS
# (headers and libraries), NCCL's header (kernels/cuda/runtime.cu loads libnccl at run time).
#
#   VITRINE_CUDA=OFF (default) -> nothing to do (the CPU image)
#   VITRINE_CUDA=ON  -> CUDA ${CUDA_VERSION:-13.0}: if /usr/local/cuda-$CUDA_VERSION/bin/nvcc is
#                       that version already, nothing is installed (as on a development machine,
#                       where tests/deploy runs this); else installs it (root, network).
#   --check          -> only say whether it is installed (exit 1 if not); never installs.
# Prints the nvcc it settled on as the last line (`nvcc=PATH`).
#
# Why NVIDIA's debian12 repository and not the nvidia/cuda:*-devel images or Debian's
# nvidia-cuda-toolkit: see the comment at the top of deploy/Dockerfile.
set -euo pipefail
mode=${VITRINE_CUDA:-OFF}
ver=${CUDA_VERSION:-13.0}
check_only=0
[ "${1:-}" = "--check" ] && check_only=1
case "${mode^^}" in
  OFF|AUTO) echo "install-cuda: VITRINE_CUDA=$mode: no CUDA toolkit needed"; exit 0 ;;
  ON) ;;
  *) echo "install-cuda: VITRINE_CUDA must be ON or OFF, not '$mode'" >&2; exit 2 ;;
esac
[[ "$ver" =~ ^[0-9]+\.[0-9]+$ ]] || { echo "install-cuda: CUDA_VERSION must be MAJOR.MINOR, not '$ver'" >&2; exit 2; }
nvcc=/usr/local/cuda-$ver/bin/nvcc

installed() {
  [ -x "$nvcc" ] && "$nvcc" --version | grep -q "release $ver,"
}

if installed; then
  echo "install-cuda: CUDA $ver already installed"
  echo "nvcc=$nvcc"
  exit 0
fi
if [ "$check_only" = 1 ]; then
  echo "install-cuda: CUDA $ver is not installed ($nvcc)" >&2
  exit 1
fi
[ "$(id -u)" -eq 0 ] || { echo "install-cuda: must run as root (the image's build stage does)" >&2; exit 1; }
# shellcheck source=/dev/null
. /etc/os-release
if [ "${ID:-}" != debian ] || [ "${VERSION_ID:-}" != 12 ]; then
  echo "install-cuda: NVIDIA's debian12 repository needs Debian 12, this is ${PRETTY_NAME:-unknown}" >&2
  exit 1
fi

dash=${ver/./-}
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends ca-certificates curl
# the repository's signing key and source, as NVIDIA's installation guide does (cuda-keyring)
curl -fsSL -o /tmp/cuda-keyring.deb \
  https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb
dpkg -i /tmp/cuda-keyring.deb
rm -f /tmp/cuda-keyring.deb
apt-get update -q
# NCCL: the newest build for this CUDA (its versions end in +cudaMAJOR.MINOR)
nccl=$(apt-cache madison libnccl-dev | awk -v v="+cuda$ver" 'index($3, v) {print $3; exit}')
[ -n "$nccl" ] || { echo "install-cuda: no libnccl-dev for CUDA $ver in the repository" >&2; exit 1; }
apt-get install -y -q --no-install-recommends \
  "cuda-nvcc-$dash" "cuda-cudart-dev-$dash" "cuda-cccl-$dash" "libcublas-dev-$dash" \
  "libnccl-dev=$nccl" "libnccl2=$nccl"
rm -rf /var/lib/apt/lists/*
installed || { echo "install-cuda: $nvcc is not CUDA $ver after installing" >&2; exit 1; }
echo "nvcc=$nvcc"
