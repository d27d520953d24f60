#!/usr/bin/env bash
# issue6_bench.sh: the CUDA benchmark set of issue 6 in one device call (bench/RESULTS.md quotes it).
# Runs on the GPU machine with the binaries from bench/cuda/pack.sh:
#   run(command='bash bench/cuda/issue6_bench.sh', carry=['.dev/cuda-bin.txz', '.dev/shared'])
# BIN=.dev/x-bin.txz takes another pack; ONLY=REGEX runs only the matching steps; TESTS=0 skips the tests.
# Random bf16 weights at real shapes (loom make-model); every figure with its command in $OUT/bench.log,
# the --json files in $OUT/json.tgz. Later steps are skipped when the time budget (SECS) runs out.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/loom-bench-out}
SECS=${SECS:-540}
T0=$(date +%s)
BIN=${BIN:-.dev/cuda-bin.txz} # pack.sh's tarball (PACK=... names others)
mkdir -p "$OUT/json" /tmp/loom-bin
{ tar -C /tmp/loom-bin -xf "$BIN" || python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$BIN" /tmp/loom-bin; }
B=/tmp/loom-bin/$(basename "${BIN%.t?z}")
export LD_LIBRARY_PATH="$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" LOOM_SHARED=$PWD/.dev/shared
LOG=$OUT/bench.log
left() { echo $(( SECS - ($(date +%s) - T0) )); }
ONLY=${ONLY:-.} # a regex: only the steps whose names match run (e.g. ONLY='make_q05|q05_decode')
TESTS=${TESTS:-1} # 0: skip the test programs
step() { # step NAME MIN_SECONDS_LEFT COMMAND...
    local name=$1 need=$2; shift 2
    if ! [[ $name =~ $ONLY ]]; then return; fi
    if [ "$(left)" -lt "$need" ]; then echo "SKIP $name (time)" | tee -a "$LOG"; return; fi
    echo "== $name: $*" | tee -a "$LOG"
    timeout "$(left)" "$@" >>"$LOG" 2>"$OUT/json/$name.err"; echo "rc=$?" >>"$LOG"
    grep -E "throughput|Mean decode|Mean prefill|bandwidth" "$LOG" | tail -4
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOG"
[ "$TESTS" = 0 ] || for t in "$B"/test_cuda_*; do timeout 200 "$t" > "$OUT/json/$(basename "$t").log" 2>&1; echo "$(basename "$t") rc=$? $(tail -1 "$OUT/json/$(basename "$t").log")" | tee -a "$LOG"; done
L="$B/loom bench latency"
step ceilings 30 "$B/ceilings"
step make_q05 30 "$B/loom" make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1
step q05_decode_b1 30 $L /tmp/q05 --device cuda --batch-size 1 --input-len 128 --output-len 256 --num-iters-warmup 1 --num-iters 3 --temperature 0 --json "$OUT/json/q05_decode_b1.json"
step q05_decode_b64 30 $L /tmp/q05 --device cuda --batch-size 64 --input-len 128 --output-len 128 --num-iters-warmup 1 --num-iters 3 --temperature 0 --json "$OUT/json/q05_decode_b64.json"
step q05_decode_b256 40 $L /tmp/q05 --device cuda --batch-size 256 --input-len 128 --output-len 128 --num-iters-warmup 1 --num-iters 3 --temperature 0 --max-num-seqs 256 --json "$OUT/json/q05_decode_b256.json"
step q05_prefill_512 30 $L /tmp/q05 --device cuda --batch-size 16 --input-len 512 --output-len 1 --num-iters-warmup 1 --num-iters 3 --temperature 0 --max-num-batched-tokens 8192 --json "$OUT/json/q05_prefill_512.json"
step q05_b1_profile 20 env LOOM_CUDA_PROFILE=1 "$B/decode_bench" /tmp/q05 --batch 1 --prompt 128 --steps 64
step q05_sampled_b64 30 $L /tmp/q05 --device cuda --batch-size 64 --input-len 128 --output-len 128 --num-iters-warmup 1 --num-iters 2 --json "$OUT/json/q05_sampled_b64.json"
step make_l8b 200 "$B/loom" make-model .dev/shared/configs/llama-3.1-8b.json /tmp/l8b --seed 1
step l8b_decode_b1 40 $L /tmp/l8b --device cuda --batch-size 1 --input-len 128 --output-len 128 --num-iters-warmup 1 --num-iters 2 --temperature 0 --max-model-len 4096 --json "$OUT/json/l8b_decode_b1.json"
step l8b_decode_b64 40 $L /tmp/l8b --device cuda --batch-size 64 --input-len 128 --output-len 64 --num-iters-warmup 1 --num-iters 2 --temperature 0 --max-model-len 4096 --json "$OUT/json/l8b_decode_b64.json"
step l8b_prefill_512 30 $L /tmp/l8b --device cuda --batch-size 16 --input-len 512 --output-len 1 --num-iters-warmup 1 --num-iters 2 --temperature 0 --max-model-len 4096 --max-num-batched-tokens 8192 --json "$OUT/json/l8b_prefill_512.json"
tar -C "$OUT" -czf "$OUT/json.tgz" json && rm -rf "$OUT/json"
echo "== done in $(( $(date +%s) - T0 ))s"
grep -E "^== |bandwidth:|TFLOP/s|Prefill throughput|Decode throughput|bandwidth|^SKIP|rc=[1-9]" "$LOG"
