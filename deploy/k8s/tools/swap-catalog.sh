#!/bin/sh
# Publishes a catalogue version to every vitrine pod: points ROOT/current at ROOT/VERSION with one
# atomic rename (a new symlink renamed over the old one), so a pod's watch
# (VITRINE_WATCH_CATALOG_MS) sees either the old catalogue or the new one, never a mix. The pods
# load and check it; one that finds it broken keeps serving the old one (log event
# `reload_failed`, vitrine_catalog_reloads_total{result="failed"}), as on SIGHUP.
#
#   swap-catalog.sh ROOT VERSION
#   kubectl -n vitrine exec -i vitrine-model-loader -- sh -s /models/catalog/demo v2 < deploy/k8s/tools/swap-catalog.sh
#
# POSIX sh and coreutils only (it runs in debian:12-slim). Prints the previous version.
# tests/deploy/test_client_config.py runs it against a live server.
set -eu
[ $# -eq 2 ] || { echo "usage: swap-catalog.sh ROOT VERSION" >&2; exit 2; }
root=$1
ver=$2
case "$ver" in
  */*|.*|current|"") echo "swap-catalog: VERSION must be a directory name in $root, not '$ver'" >&2; exit 2 ;;
esac
[ -f "$root/$ver/manifest.json" ] || { echo "swap-catalog: $root/$ver/manifest.json is missing" >&2; exit 1; }
prev=$(readlink "$root/current" 2>/dev/null || true)
ln -sfn "$ver" "$root/.current.tmp"
mv -Tf "$root/.current.tmp" "$root/current"
echo "swap-catalog: $root/current -> $ver (was ${prev:-nothing})"
