#!/usr/bin/env bash
# test.sh: what `make test` runs after the build. Each stage prints its own summary; any failure fails.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
JOBS=${JOBS:-$(nproc)}
status=0
stage() { echo; echo "==== $1"; }

stage "unit and golden tests (ctest)"
(cd "$BUILD" && ctest --output-on-failure -j "$JOBS") || status=1

stage "fuzz smoke runs"
make --no-print-directory fuzz-smoke FUZZ_SECS="${FUZZ_SECS:-10}" || status=1

stage "sanitizer build of the tests (ASan + UBSan)"
make --no-print-directory asan || status=1

if [ -f tests/e2e/package.json ]; then
    stage "end-to-end suite (node --test, official openai client)"
    bash scripts/e2e.sh "$BUILD" || status=1
fi

echo
if [ $status -eq 0 ]; then echo "make test: all stages passed"; else echo "make test: FAILED"; fi
exit $status
