#!/bin/bash
# Every bench/perf target in one run, on a quiet machine (each part
# prints the load average it started at; ratios are only meaningful
# below ~1 per core). Release build first (README command 1's
# configuration). Writes, under docs/benchmarks/:
#   perf_elementwise.md  task_arithmetic / linear / average vs floor, numpy, torch
#   perf_sparse.md       ties / DARE vs floor (and scripts)
#   svd.md (+ .png)      TSV-M, Iso-C, Iso-CTS, ESM vs torch and an f64 reference
#   perf_lora.md         the load-time row: 8 LoRA adapters through lm_merger
# usage: bash bench/perf/all.sh [build dir, default build-rel] [--quick]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-rel}
quick=${2:-}
[ -d "$build" ] || meson setup "$build" --buildtype=release -Dtests=false >/dev/null
ninja -C "$build" >/dev/null
py=/usr/bin/python3
export OPENBLAS_NUM_THREADS=1
stamp() { echo "== $1: $(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"; }
stamp elementwise
$py bench/perf/elementwise.py --build "$build" $quick
stamp sparse
$py bench/perf/elementwise.py --build "$build" --rows sparse $quick
stamp svd
LIBMERGE_LIBRARY="$build/lib/libmerge.so.1" $py bench/perf/svd_rows.py $quick
stamp lora
gb=1.0; [ -n "$quick" ] && gb=0.06
LIBMERGE_LIBRARY="$build/lib/libmerge.so.1" PYTHONPATH=bindings/python \
  $py bench/perf/lora_load.py --gb "$gb" --repeat 2 --out docs/benchmarks/perf_lora.md
stamp done
