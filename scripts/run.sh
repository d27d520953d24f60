#!/usr/bin/env bash
# run.sh: `make run`. Until the server lands this generates from MODEL; see the README.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MODEL:-}" ]; then
    echo "make run: set MODEL=/path/to/hf-model-folder (the built-in default model comes with the server)" >&2
    exit 2
fi
exec build/loom generate "$MODEL" --prompt-ids 1 --max-tokens 32 --temperature 0
