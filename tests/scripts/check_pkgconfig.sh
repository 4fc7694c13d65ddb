#!/bin/sh
# Install into a staging root and build examples/merge_two.c exactly as a
# user would: cc prog.c $(pkg-config --cflags --libs libmerge).
# usage: check_pkgconfig.sh BUILD_DIR SOURCE_DIR CC
set -eu
build=$1; src=$2; cc=$3
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
meson install -C "$build" --destdir "$stage" --quiet >/dev/null
pcdir=$(dirname "$(find "$stage" -name libmerge.pc | head -n1)")
[ -f "$pcdir/libmerge.pc" ] || { echo "FAIL: libmerge.pc not installed"; exit 1; }
export PKG_CONFIG_PATH="$pcdir" PKG_CONFIG_SYSROOT_DIR="$stage"
$cc -std=c11 -Wall -Wextra -Werror "$src/examples/merge_two.c" -o "$stage/merge_two" \
  $(pkg-config --cflags --libs libmerge)
libdir=$(dirname "$(find "$stage" -name 'libmerge.so.*' | head -n1)")
out=$(LD_LIBRARY_PATH="$libdir" "$stage/merge_two")
echo "$out"
[ "$out" = "merged: 1.5 2 3 5" ] || { echo "FAIL: unexpected output"; exit 1; }
echo "ok: pkg-config build of examples/merge_two.c merges two models"
