#!/usr/bin/env bash
# Installs the Debian 12 packages vitrine needs, only those missing (apt-get update first).
set -euo pipefail
PKGS=(
  cmake make gcc g++ pkg-config      # build (g++: the CUDA emulator of the tests)
  python3-torch python3-numpy        # the reference model and training (Debian's /usr/bin/python3)
  python3-pytest                     # the reference model's tests
  libcjson-dev libopenblas-dev libssl-dev libcriterion-dev  # the C engine: manifest JSON, GEMM, sha256, tests
  valgrind                           # leak checks
  libgrpc-dev libprotobuf-c-dev protobuf-c-compiler grpc-proto  # vitrine serve
  zlib1g-dev                         # vitrine serve: compressed requests, inflated with a bound
  openssl                            # the TLS tests make their certificates with it
  clang libclang-rt-14-dev           # make fuzz: clang and its libFuzzer runtime (tests/fuzz)
  protobuf-compiler python3-grpcio python3-protobuf python3-prometheus-client  # server tests, demo
  python3-matplotlib                 # bench/plot.py (its test is in make test)
  python3-yaml                       # tests/deploy: reads the rendered Kubernetes manifests
  chromium chromium-driver python3-selenium  # tests/server/test_review.py: the review page in a headless browser
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "install-deps: installing ${missing[*]}" >&2
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
