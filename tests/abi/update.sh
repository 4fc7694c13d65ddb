#!/bin/sh
# Regenerate the ABI baseline from a build (only when the SONAME changes or
# for a release that adds API): tests/abi/update.sh BUILD_DIR
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
lib=$(ls "$1"/lib/libmerge.so.*.*.* | head -1)
abidw --headers-dir "$root/include" --no-corpus-path --out-file "$root/tests/abi/libmerge.so.0.abi" "$lib"
echo "wrote tests/abi/libmerge.so.0.abi from $lib"
