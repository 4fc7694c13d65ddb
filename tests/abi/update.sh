#!/bin/sh
# Regenerate the ABI baseline from a build (only when the SONAME changes or
# for a release that adds API): tests/abi/update.sh BUILD_DIR
# The baseline is named after the library's SONAME (libmerge.so.N.abi), so
# a bump starts a new one; remove the previous SONAME's file afterwards.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
lib=$(ls "$1"/lib/libmerge.so.*.*.* | head -1)
soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ -n "$soname" ] || { echo "no SONAME in $lib"; exit 1; }
abidw --headers-dir "$root/include" --no-corpus-path --out-file "$root/tests/abi/$soname.abi" "$lib"
echo "wrote tests/abi/$soname.abi from $lib"
