#!/bin/bash
# Wall time of `mpirun -n R lmerge run` for R = 1, 2, 3 on this machine,
# for task arithmetic and TSV; writes the table of docs/distributed.md
# (between the "measured" markers).
# usage: bench/mpi/run.sh [BUILD_DIR with -Dmpi=enabled]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build-mpi}
lmerge=$build/tools/lmerge/lmerge
work=${BENCH_TMP:-/tmp/lmerge-bench-mpi}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
[ -x "$lmerge" ] || { echo "build with: meson setup $build -Dmpi=enabled && ninja -C $build"; exit 1; }
dir=$work/models
[ -f "$dir/merge.yaml" ] || /usr/bin/python3 "$root/bench/rss/gen_models.py" "$dir" 4 128
table=$(mktemp)
echo "| method | models x MB | ranks | wall (s) | speed-up | output identical to 1 process |" > "$table"
echo "|---|---|---|---|---|---|" >> "$table"
for spec in "task_arithmetic|  lambda: 0.3" "tsv|  alpha: 1.0"; do
  method=${spec%%|*}
  sed "s/^merge_method: .*/merge_method: $method/; /^parameters:/,\$d" "$dir/merge.yaml" > "$work/$method.yaml"
  printf 'parameters:\n%s\n' "${spec#*|}" >> "$work/$method.yaml"
  base_time=
  for ranks in 1 2 3; do
    rm -rf "$work/out-$ranks"
    t0=$(date +%s.%N)
    mpirun --bind-to none --oversubscribe -n $ranks "$lmerge" run "$work/$method.yaml" -o "$work/out-$ranks" \
      -q --threads $(( ranks == 1 ? 2 : 1 )) --shard-size 100MB
    t1=$(date +%s.%N)
    wall=$(echo "$t1 - $t0" | bc)
    [ -n "$base_time" ] || base_time=$wall
    same=yes
    for f in "$work/out-1"/*; do cmp -s "$f" "$work/out-$ranks/${f##*/}" || same=no; done
    printf '| %s | 4 x 128 | %d | %.1f | %.2f | %s |\n' "$method" "$ranks" "$wall" \
      "$(echo "$base_time / $wall" | bc -l)" "$same" >> "$table"
  done
done
cat "$table"
doc=$root/docs/distributed.md
/usr/bin/python3 - "$doc" "$table" <<'PY'
import sys
doc, table = sys.argv[1], open(sys.argv[2]).read()
s = open(doc).read()
a, b = s.index("<!-- measured -->"), s.index("<!-- /measured -->")
open(doc, "w").write(s[:a] + "<!-- measured -->\n" + table + s[b:])
PY
