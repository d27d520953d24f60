#!/usr/bin/env bash
# run.sh: `make run`. Serves MODEL (a Hugging Face folder) with `loom serve` on HOST:PORT (default
# 127.0.0.1:8000). Without MODEL it serves a small built-in model: random weights in the Qwen2 layout
# (scripts/default-model.json) with a byte-level tokenizer and a ChatML chat template, made once by
# `loom make-model` into $BUILD/default-model. Extra `loom serve` flags can be given in SERVE_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
LOOM="$BUILD/loom"
if [ ! -x "$LOOM" ]; then
    echo "make run: $LOOM is missing; run 'make build' first" >&2
    exit 1
fi
if [ -z "${MODEL:-}" ]; then
    MODEL="$BUILD/default-model"
    if [ ! -f "$MODEL/model.safetensors" ] || [ scripts/default-model.json -nt "$MODEL/config.json" ]; then
        echo "make run: making the built-in demo model (random weights) in $MODEL" >&2
        rm -rf "$MODEL"
        "$LOOM" make-model scripts/default-model.json "$MODEL" --tokenizer byte-level >&2
    fi
fi
if [ ! -d "$MODEL" ]; then
    echo "make run: MODEL=$MODEL is not a folder (expected a Hugging Face model folder)" >&2
    exit 1
fi
NAME=$(basename "$(cd "$MODEL" && pwd)")
cat >&2 <<MSG
make run: serving $MODEL as '$NAME' on http://$HOST:$PORT (Ctrl-C stops it). Try:
  curl http://$HOST:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "$NAME", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'
  curl http://$HOST:$PORT/v1/completions -H 'Content-Type: application/json' \\
    -d '{"model": "$NAME", "prompt": "Once upon a time", "max_tokens": 32, "temperature": 0}'
MSG
# shellcheck disable=SC2086
exec "$LOOM" serve "$MODEL" --host "$HOST" --port "$PORT" ${SERVE_FLAGS:-}
