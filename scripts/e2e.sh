#!/usr/bin/env bash
# e2e.sh BUILD_DIR: the end-to-end suite against the real `loom serve` binary (Node's test runner).
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_BIN=$(cd "$1" && pwd)/loom
export LOOM_SHARED=$(cd .. && pwd)/shared
cd tests/e2e
node --test --test-concurrency=1 ./*.test.mjs
