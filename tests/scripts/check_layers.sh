#!/bin/sh
# Layering: the core (lib/core) knows purification, NSC, strategies, file
# formats and statistics only through its own interfaces (plan stages, the
# strategy vtable). Every core source is run through the preprocessor's
# dependency listing, so a forbidden header reached indirectly (e.g. via
# the libmerge.h umbrella) fails too.
# usage: check_layers.sh CC SOURCE_ROOT
set -eu
cc=$1; root=$2
forbidden='libmerge\.h$|libmerge/experimental/|libmerge/(purify|stats|npz|gguf|peft|safetensors|file_sink|output|io)\.h|lib/(purify|nsc|strategies|io|stats)/'
status=0
for src in "$root"/lib/core/*.c; do
  deps=$("$cc" -std=c11 -D_POSIX_C_SOURCE=200809L -MM -MG -I"$root/include" \
           -I"$root/lib" "$src" | tr ' \\' '\n\n' | grep -v '^$' | tail -n +2)
  bad=$(printf '%s\n' "$deps" | grep -E "$forbidden" || true)
  if [ -n "$bad" ]; then
    echo "FAIL: $src reaches $(echo $bad)"; status=1
  fi
done
# Nor may the core call into a stage or strategy module by name.
if grep -nE 'lm__(purify|factor_cache|nsc|esm)_' "$root"/lib/core/*.c "$root"/lib/core/*.h; then
  echo "FAIL: lib/core calls a stage or strategy module directly"; status=1
fi
# Nor may it know a file format by name: what a format keeps of a file
# rides on the model as an opaque attachment (lm__model_attach).
if grep -niE 'gguf|safetensors|npz|peft' "$root"/lib/core/*.c "$root"/lib/core/*.h; then
  echo "FAIL: lib/core names a file format"; status=1
fi
[ $status -eq 0 ] && echo "ok: lib/core depends only on its own interfaces"
exit $status
