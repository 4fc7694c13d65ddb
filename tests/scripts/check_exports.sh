#!/bin/sh
# The shared library exports nothing but lm_* symbols.
# usage: check_exports.sh LIBRARY
set -eu
lib=$1
syms=$(nm -D --defined-only "$lib" | awk '{print $3}')
[ -n "$syms" ] || { echo "FAIL: no exported symbols in $lib"; exit 1; }
bad=$(printf '%s\n' "$syms" | grep -v '^lm_' || true)
if [ -n "$bad" ]; then
  echo "FAIL: symbols outside the lm_ namespace are exported:"; echo "$bad"; exit 1
fi
internal=$(printf '%s\n' "$syms" | grep '^lm__' || true)
if [ -n "$internal" ]; then
  echo "FAIL: internal lm__ symbols are exported:"; echo "$internal"; exit 1
fi
echo "ok: $(printf '%s\n' "$syms" | wc -l) exported symbols, all lm_*"
