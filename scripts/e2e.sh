#!/usr/bin/env bash
# e2e.sh BUILD_DIR: the end-to-end suite against the real `loom serve` binary (Node's test runner, the
# official openai npm client; tests/e2e/*.test.mjs). Each test has a time limit; every server a test
# starts is killed when its file ends.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_BIN=$(cd "$1" && pwd)/loom
export LOOM_SHARED=$(cd .. && pwd)/shared
cd tests/e2e
if [ ! -d node_modules/openai ]; then
    echo "e2e: tests/e2e/node_modules is missing; run 'make setup' (npm ci)" >&2
    exit 1
fi
node --test --test-concurrency=1 --test-timeout=300000 ./*.test.mjs
