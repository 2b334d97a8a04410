#!/usr/bin/env bash
# The image's staging step (deploy/Dockerfile's build stage), also run by tests/deploy: puts into
# DESTROOT exactly what the runtime stage copies onto debian:12.11-slim:
#
#   DESTROOT/opt/vitrine/bin/vitrine     the binary
#   DESTROOT/opt/vitrine/lib/<soname>    every shared library `ldd` lists for it, except those the
#                                        runtime base has (deploy/image/runtime-base-libs.txt)
#   DESTROOT/etc/passwd, DESTROOT/etc/group   this system's, plus the non-root user vitrine
#                                        (uid/gid $VITRINE_UID, default 10001)
#
#   deploy/image/stage.sh BINARY DESTROOT
#
# Nothing else: no bundle, no catalogue (they are mounted), no build outputs. The binary finds the
# libraries through LD_LIBRARY_PATH=/opt/vitrine/lib (set by the Dockerfile). Libraries are hard
# links where the file system allows (the same bytes, no copy of cuBLAS's 570 MB), else copies.
# libcuda.so.1 is never listed (the CUDA runtime opens it at run time): the NVIDIA container
# runtime mounts the host driver's into the container.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BINARY DESTROOT" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
bin=$1
root=$2
uid=${VITRINE_UID:-10001}
prefix=/opt/vitrine
[ -x "$bin" ] || { echo "stage: $bin is not an executable" >&2; exit 1; }
[ "$uid" -gt 0 ] 2>/dev/null || { echo "stage: VITRINE_UID must be a positive number" >&2; exit 2; }

mapfile -t base < <(awk '!/^#/ && NF {print $1}' "$here/runtime-base-libs.txt")
is_base() {
  local s
  for s in "${base[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}

mkdir -p "$root$prefix/bin" "$root$prefix/lib" "$root/etc"
cp -f "$bin" "$root$prefix/bin/vitrine"
chmod 0755 "$root$prefix/bin/vitrine"

out=$(ldd "$bin")
if grep -q "not found" <<<"$out"; then
  echo "stage: unresolved libraries:" >&2
  grep "not found" <<<"$out" >&2
  exit 1
fi
n=0
while read -r soname arrow path _; do
  [ "$arrow" = "=>" ] || continue          # linux-vdso, the loader's own line
  [ -n "$path" ] || continue
  is_base "$soname" && continue
  real=$(readlink -f "$path")
  ln -f "$real" "$root$prefix/lib/$soname" 2>/dev/null || cp -f "$real" "$root$prefix/lib/$soname"
  n=$((n + 1))
done <<<"$out"

# the non-root user the image runs as (USER in deploy/Dockerfile, runAsUser in deploy/k8s)
cp -f /etc/passwd "$root/etc/passwd"
cp -f /etc/group "$root/etc/group"
if ! awk -F: -v u="$uid" '$3 == u {f=1} END {exit !f}' "$root/etc/passwd"; then
  echo "vitrine:x:$uid:$uid:vitrine:/nonexistent:/usr/sbin/nologin" >>"$root/etc/passwd"
fi
if ! awk -F: -v g="$uid" '$3 == g {f=1} END {exit !f}' "$root/etc/group"; then
  echo "vitrine:x:$uid:" >>"$root/etc/group"
fi
echo "stage: $root$prefix/bin/vitrine and $n libraries in $root$prefix/lib"
