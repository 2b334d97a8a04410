#!/usr/bin/env bash
# The image's build step (deploy/Dockerfile's build stage), also run by tests/deploy on this
# machine: installs the Debian packages (scripts/install-deps.sh, only the missing ones), then
# configures and builds the `vitrine` binary with CMake.
#
#   deploy/image/build.sh BUILD_DIR
#
# Settings (environment):
#   VITRINE_CUDA      AUTO|ON|OFF (cmake/cuda.cmake); ON needs nvcc (deploy/image/install-cuda.sh)
#   CUDA_VERSION      with VITRINE_CUDA=ON: use /usr/local/cuda-$CUDA_VERSION/bin/nvcc
#   CMAKE_BUILD_TYPE  default Release
#   JOBS              parallel compile jobs (default: the CPUs)
# A BUILD_DIR that is already configured keeps its settings unless they are given here, so this
# can run on a developer's build/ (then it is `make build` for one target).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$1

"$src/scripts/install-deps.sh"

args=()
if [ ! -f "$build/CMakeCache.txt" ]; then
  args+=("-DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-Release}" "-DVITRINE_CUDA=${VITRINE_CUDA:-AUTO}")
  # the image needs only the server binary: no CUDA emulator (a test tool)
  args+=("-DVITRINE_CUDA_EMU=OFF")
else
  [ -n "${CMAKE_BUILD_TYPE:-}" ] && args+=("-DCMAKE_BUILD_TYPE=$CMAKE_BUILD_TYPE")
  [ -n "${VITRINE_CUDA:-}" ] && args+=("-DVITRINE_CUDA=$VITRINE_CUDA")
fi
if [ "${VITRINE_CUDA:-}" = ON ] && [ -n "${CUDA_VERSION:-}" ] && [ -z "${CUDACXX:-}" ]; then
  export CUDACXX=/usr/local/cuda-$CUDA_VERSION/bin/nvcc
fi
cmake -S "$src" -B "$build" "${args[@]}"
cmake --build "$build" --target vitrine -j "${JOBS:-$(nproc)}"
test -x "$build/vitrine"
echo "build: $build/vitrine"
