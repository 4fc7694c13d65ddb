#!/bin/bash
# README command 2 (and CI): install what is missing, then build and run
# every test: gcc in README command 1's release configuration (C, Python,
# build checks, the demo, a selection of C suites under valgrind; -O3 is
# where gcc warns about more), clang with AddressSanitizer + UndefinedBehaviorSanitizer
# (C suites, then the libFuzzer targets from the same build for
# LIBMERGE_FUZZ_SECONDS each: default 10, the committed corpora are
# replayed first, so a short run only adds fresh mutations), clang with
# ThreadSanitizer (C suites and the build checks that compile), an MPI
# build (distributed lmerge). Ends with one "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh

export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=detect_leaks=1
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
# Tests run merges on their own threads; keep OpenBLAS from oversubscribing.
export OPENBLAS_NUM_THREADS=1

run() { # name, setup args..., -- test args...
  local dir=$1; shift
  local setup=() ; while [ "$1" != "--" ]; do setup+=("$1"); shift; done; shift
  [ -d "$dir" ] || meson setup "$dir" "${setup[@]}" >/dev/null
  ninja -C "$dir" ${BUILD_ONLY:+$(targets_of "$dir" "$BUILD_ONLY")} >/dev/null
  meson test -C "$dir" --print-errorlogs "$@"
}

# What the tests of suite $2 run in build $1 (what `meson test --suite`
# would rebuild), and the fuzz targets: the ninja targets, one per line.
targets_of() {
  /usr/bin/python3 - "$1" "$2" <<'PY'
import json, os, sys
build, suite = sys.argv[1:]
info = os.path.join(build, "meson-info")
targets = {t["id"]: t for t in json.load(open(os.path.join(info, "intro-targets.json")))}
out = set()
for test in json.load(open(os.path.join(info, "intro-tests.json"))):
    if any(s.split(":")[-1] == suite for s in test["suite"]):
        out.update(f for d in test["depends"] for f in targets[d]["filename"])
out.update(f for t in targets.values() if "tests/fuzz/" in t["defined_in"]
           for f in t["filename"])
print("\n".join(sorted(os.path.relpath(f, build) for f in out)))
PY
}

status=0
# The build README command 1 (tools/demo.sh) makes, with debug information
# for the ABI check and valgrind's reports. Its tests include the demo
# (lmerge_demo) and the valgrind suite (tests/c/meson.build).
run build --buildtype=release -Ddebug=true -- || status=1
# The fuzz targets need clang and a library built with coverage feedback
# (-Dfuzz=true); building them in the ASan build instead of a build of
# their own saves a whole compile of the library, for about a third more
# CPU time in the instrumented C suites. Only what suite c and the fuzz
# targets run is built (not lmerge nor the examples: the TSan build below
# compiles everything with clang).
BUILD_ONLY=c CC=clang run build-asan-clang -Db_sanitize=address,undefined -Db_lundef=false -Dfuzz=true \
  -- --suite c || status=1
# clang: ThreadSanitizer over the C suites (the kernel-per-instruction-set
# reruns check kernels, not threads: ASan runs them), and the build checks
# that compile with the compiler itself. This build is also the clang
# -Werror build (a plain clang debug build would compile the same code the
# same way, without the instrumentation).
CC=clang run build-tsan -Db_sanitize=thread -Db_lundef=false -- --suite c --no-suite isa || status=1
meson test -C build-tsan --no-rebuild --print-errorlogs --logbase testlog-clang-build \
  headers_self_contained core_layering || status=1
# lmerge under mpirun (3 ranks on this machine) against one process. Only
# what the mpi suite runs is built: the other suites ran above.
[ -d build-mpi ] || meson setup build-mpi -Dmpi=enabled >/dev/null
if ninja -C build-mpi tools/lmerge/lmerge tests/stats_allreduce >/dev/null; then
  meson test -C build-mpi --no-rebuild --print-errorlogs --suite mpi || status=1
else
  status=1
fi

# libFuzzer targets under ASan+UBSan (built with build-asan-clang above):
# tests/fuzz/run.sh fails unless every target of tests/fuzz/meson.build
# was built, runs every input of its committed corpus
# (tests/fuzz/corpus/<name>/) cleanly, then survives LIBMERGE_FUZZ_SECONDS
# of fuzzing. A failed fuzz build counts as a failed fuzz run (and the
# summary line is still printed).
fuzz_secs=${LIBMERGE_FUZZ_SECONDS:-10}
if [ -d build-asan-clang/tests/fuzz ] && bash tests/fuzz/run.sh build-asan-clang "$fuzz_secs"; then
  fuzz_ok=1
else
  fuzz_ok=0; status=1
fi

/usr/bin/python3 - "$fuzz_ok" build build-asan-clang build-tsan build-mpi <<'PY'
import glob, json, sys, os
passed = failed = skipped = 0
if sys.argv[1] == "1": passed += 1  # the fuzz run
else: failed += 1
del sys.argv[1]
for d in sys.argv[1:]:
    for path in sorted(glob.glob(os.path.join(d, "meson-logs", "testlog*.json"))):
      for line in open(path):
        r = json.loads(line).get("result")
        if r == "OK": passed += 1
        elif r == "SKIP": skipped += 1
        else: failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
exit $status
