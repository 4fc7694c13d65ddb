#!/bin/sh
# ABI check: compare the built shared library with the committed libabigail
# baseline. Added functions and types are fine; an incompatible change
# fails unless the SONAME was bumped (then regenerate the baseline with
# tests/abi/update.sh and say so in CHANGELOG.md).
# usage: check.sh BASELINE.abi LIBRARY.so INCLUDE_DIR
set -u
baseline=$1 lib=$2 include=$3
command -v abidiff >/dev/null || { echo "abidiff not installed (abigail-tools)"; exit 77; }
# The experimental tier (include/libmerge/experimental/, functions marked
# LM_EXPERIMENTAL) is outside the ABI promise: its functions and types are
# suppressed, listed from the headers themselves so that a new
# experimental declaration needs no edit here.
sup=$(mktemp); trap 'rm -f "$sup"' EXIT
for h in "$include"/libmerge/experimental/*.h; do
  [ -f "$h" ] || continue
  sed -n 's/^LM_EXPERIMENTAL .*[ *]\(lm_[a-z0-9_]*\)(.*/[suppress_function]\n  name = \1/p' "$h"
  sed -n -e 's/^} \(lm_[a-z0-9_]*\);.*/[suppress_type]\n  name = \1/p' \
         -e 's/^typedef struct \(lm_[a-z0-9_]*\) lm_[a-z0-9_]*;.*/[suppress_type]\n  name = \1/p' "$h"
done > "$sup"
# ...and the tier's name patterns (which also cover experimental functions
# renamed or removed since the baseline).
cat "$(dirname "$0")/experimental.suppr" >> "$sup"
grep -q suppress_function "$sup" || { echo "no experimental function found under $include/libmerge/experimental"; exit 1; }
abidiff --suppressions "$sup" --headers-dir2 "$include" --no-added-syms "$baseline" "$lib" > abidiff.out 2>&1
rc=$?
cat abidiff.out
if [ $((rc & 1)) -ne 0 ] || [ $((rc & 2)) -ne 0 ]; then
  echo "abidiff failed to run (status $rc)"; exit 1
fi
# Option structs start with struct_size and may grow at the end (libmerge
# reads only what the caller's struct_size covers), so a report made only
# of size growth and members inserted past the old end is compatible.
# Anything else (changed types or offsets, removals, enumerators, return
# types) is not.
# "type of 'X' changed" or "return type changed" followed by "in pointed
# to type" only says that a pointer's target changed (e.g. a callback's job
# struct grew at its end, or the vtable lm_file_sink_vtable points to);
# that target's own changes are listed below it and judged by the rules
# here, so such lines are dropped before judging.
awk '/type of .* changed:$|return type changed:$/ { held = $0; next }
     held != "" { if ($0 !~ /^ *in pointed to type/) print held; held = "" }
     { print }' abidiff.out > abidiff.judged
harmful=0
[ $((rc & 8)) -ne 0 ] && harmful=1
if [ $((rc & 4)) -ne 0 ] && grep -Eq "offset changed|type of '|deletion|deleted|name changed|return type|enumerator|[1-9][0-9]* Removed|size changed from [0-9]+ to [0-9]+ \(in bits\)$" abidiff.judged; then
  # a size change is fine only together with an insertion at the end
  if grep -Eq "offset changed|type of '|deletion|deleted|name changed|return type|enumerator|[1-9][0-9]* Removed" abidiff.judged \
     || ! grep -q "data member insertion" abidiff.judged; then
    harmful=1
  fi
fi
if [ $harmful -ne 0 ]; then
  old=$(sed -n 's/.*soname=.\([^"'"'"']*\).*/\1/p' "$baseline" | head -1)
  new=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
  if [ "$old" = "$new" ]; then
    echo "INCOMPATIBLE ABI CHANGE without a SONAME bump ($new): see the report above"
    exit 1
  fi
  echo "incompatible change with a new SONAME ($old -> $new): regenerate the baseline"
fi
echo "ABI compatible with $baseline"
exit 0
