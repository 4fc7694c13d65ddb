#!/bin/bash
# README command 1: install what is missing, build, run the demo merge.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
[ -d build ] || meson setup build --buildtype=release -Ddebug=true >/dev/null
ninja -C build >/dev/null
exec ./build/tools/lmerge/lmerge demo
