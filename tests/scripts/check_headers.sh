#!/bin/sh
# Every public header compiles on its own, as C11 and as C++.
# usage: check_headers.sh CC INCLUDE_DIR HEADER...
set -eu
cc=$1; inc=$2; shift 2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for h in "$@"; do
  printf '#include "%s"\n#include "%s"\nint lm_header_test_anchor;\n' "$h" "$h" > "$tmp/t.c"
  $cc -std=c11 -Wall -Wextra -Werror -pedantic -I"$inc" -c "$tmp/t.c" -o "$tmp/t.o" \
    || { echo "FAIL: $h does not compile alone (C11)"; exit 1; }
  if command -v c++ >/dev/null 2>&1; then
    cp "$tmp/t.c" "$tmp/t.cpp"
    c++ -std=c++11 -Wall -Wextra -Werror -I"$inc" -c "$tmp/t.cpp" -o "$tmp/t.o" \
      || { echo "FAIL: $h does not compile alone (C++11)"; exit 1; }
  fi
  echo "ok: $h"
done
