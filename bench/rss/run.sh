#!/bin/bash
# Peak resident memory of `lmerge run` against the size of its inputs.
# usage: bench/rss/run.sh [BUILD_DIR]   (writes docs/benchmarks/rss.md)
# Models are generated under $BENCH_TMP (default /tmp/lmerge-bench-rss).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
lmerge=$build/tools/lmerge/lmerge
work=${BENCH_TMP:-/tmp/lmerge-bench-rss}
out=$root/docs/benchmarks/rss.md
py=/usr/bin/python3
[ -x "$lmerge" ] || { echo "build first: meson setup build && ninja -C build"; exit 1; }

{
echo "# Peak memory of \`lmerge run\`"
echo
echo "Measured by \`bench/rss/run.sh\` on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB,"
echo "$(date -u +%Y-%m-%d). Task arithmetic of N fine-tuned models into a base,"
echo "safetensors to safetensors, transformer-like tensors (hidden 1024: 4 MB"
echo "attention matrices, 16 MB MLP matrices in f32). Peak RSS from"
echo "\`/usr/bin/time -v\` (maximum resident set size). Page cache is not"
echo "counted in RSS; each input tensor's mapped pages are released after it"
echo "is merged."
echo
echo "| models | MB per model | input total (MB) | threads | wall (s) | peak RSS (MB) | RSS / input |"
echo "|---|---|---|---|---|---|---|"
} > "$out.tmp"

for cfg in "2 100 2" "4 100 2" "4 200 2" "4 200 1"; do
  set -- $cfg
  n=$1; mb=$2; threads=$3
  dir=$work/n${n}_mb${mb}
  [ -f "$dir/merge.yaml" ] || $py "$root/bench/rss/gen_models.py" "$dir" "$n" "$mb"
  input=$(du -cm "$dir"/base/model.safetensors "$dir"/model*/model.safetensors | tail -1 | cut -f1)
  rm -rf "$dir/merged"
  /usr/bin/time -v "$lmerge" run "$dir/merge.yaml" -o "$dir/merged" --threads "$threads" -q \
    2> "$dir/time.txt"
  rss_kb=$(awk -F': ' '/Maximum resident set size/{print $2}' "$dir/time.txt")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$dir/time.txt")
  secs=$($py -c "p='$wall'.split(':'); print('%.2f' % sum(float(x)*60**i for i,x in enumerate(reversed(p))))")
  rss_mb=$((rss_kb / 1024))
  ratio=$($py -c "print('%.3f' % ($rss_mb / $input))")
  echo "| $n | $mb | $input | $threads | $secs | $rss_mb | $ratio |" >> "$out.tmp"
  rm -rf "$dir/merged"
done
{
echo
echo "Peak RSS is set by the tensors in flight: per worker, f32 working copies"
echo "of one tensor for the base, each model and the output, plus that tensor's"
echo "mapped input pages (released once merged). It grows with the thread count"
echo "and the largest tensor (16 MB here), not with model size: compare the rows"
echo "with 100 and 200 MB per model. A merge that loaded whole models, as"
echo "torch-based tools do, would need at least the input total."
} >> "$out.tmp"
mv "$out.tmp" "$out"
cat "$out"
