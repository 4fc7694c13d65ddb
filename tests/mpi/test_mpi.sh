#!/bin/bash
# mpirun -n 3 lmerge run gives byte-identical files to one process (task
# arithmetic, TIES, TSV; single file and shards); a failure on one rank
# names the rank and tensor and leaves no index and no shard.
# Also: statistics reduced across ranks equal one process's.
# usage: test_mpi.sh LMERGE MPIRUN STATS_ALLREDUCE
set -euo pipefail
lmerge=$1 mpirun=$2 stats_allreduce=$3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
/usr/bin/python3 "$here/gen.py" "$work"
config() { # method params b-model
  printf 'merge_method: %s\nbase_model: %s/base.safetensors\nmodels:\n  - model: %s/a.safetensors\n  - model: %s/%s\nparameters:\n%s' \
    "$1" "$work" "$work" "$work" "$3" "$2" > "$work/$1.yaml"
}
fail=0
for spec in "task_arithmetic|  lambda: 0.4" "ties|  density: 0.3" "tsv|  alpha: 1.0"; do
  method=${spec%%|*} params=${spec#*|}
  config "$method" "$params" b.safetensors
  for shard in none 12KB; do
    extra=(); [ "$shard" = none ] || extra=(--shard-size "$shard")
    "$lmerge" run "$work/$method.yaml" -o "$work/one-$method-$shard" -q "${extra[@]}"
    "$mpirun" --oversubscribe -n 3 "$lmerge" run "$work/$method.yaml" \
      -o "$work/mpi-$method-$shard" -q "${extra[@]}"
    files=$(cd "$work/one-$method-$shard" && ls)
    [ "$files" = "$(cd "$work/mpi-$method-$shard" && ls)" ] || { echo "FAIL $method $shard: files differ"; fail=1; }
    for f in $files; do
      if cmp -s "$work/one-$method-$shard/$f" "$work/mpi-$method-$shard/$f"; then
        echo "ok: $method shard=$shard $f identical"
      else
        echo "FAIL: $method shard=$shard $f differs"; fail=1
      fi
    done
  done
done
# Failure on one rank: a NaN in one model's tensor.
config task_arithmetic "  lambda: 0.4" b_nan.safetensors
if "$mpirun" --oversubscribe -n 3 "$lmerge" run "$work/task_arithmetic.yaml" \
     -o "$work/mpi-fail" -q --shard-size 12KB 2> "$work/err.txt"; then
  echo "FAIL: the run with a NaN succeeded"; fail=1
fi
cat "$work/err.txt"
grep -q "rank [0-9] of 3: tensor 'layers.3.fc.weight'" "$work/err.txt" || { echo "FAIL: no rank/tensor in the message"; fail=1; }
left=$(ls -A "$work/mpi-fail" 2>/dev/null || true)
[ -z "$left" ] || { echo "FAIL: left behind: $left"; fail=1; }
"$mpirun" --oversubscribe -n 3 "$stats_allreduce" || { echo "FAIL: stats allreduce"; fail=1; }
[ $fail -eq 0 ] && echo "all MPI checks passed"
exit $fail
