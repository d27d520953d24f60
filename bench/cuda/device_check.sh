#!/usr/bin/env bash
# device_check.sh: the one command the GPU machine runs (through the device tool's `run`): checks the
# card, builds the CUDA tests (or takes binaries built on the development machine), runs every
# cuda-labelled test, optionally times `loom bench`, and prints a short table last. Logs go to $OUT.
#
#   bash bench/cuda/device_check.sh                 # cmake + build here (needs nvcc, cmake, pkg-config deps)
#   BIN=.dev/cuda-bin.txz bash bench/cuda/device_check.sh   # what bench/cuda/pack.sh built here (carried)
#   BENCH="cmd ..." ...          # also run this command ($BIN is the binaries' folder), output in $OUT/bench.log
#
# LOOM_SHARED (the ../shared test data) defaults to .dev/shared: the device tool copies only the
# repository, so the models travel as a carried, git-ignored folder (see bench/cuda/README.md).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/loom-device-out}
mkdir -p "$OUT"
export LOOM_SHARED=${LOOM_SHARED:-$PWD/.dev/shared}
export LOOM_SOURCE=$PWD
T0=$(date +%s)

{
    echo "== $(date -u +%FT%TZ) $(uname -m) $(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-?}")"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>&1
    command -v nvcc >/dev/null && nvcc --version | tail -2
    for p in jansson libpcre2-8 libutf8proc libmicrohttpd; do
        printf '%s: %s\n' "$p" "$(pkg-config --modversion $p 2>/dev/null || echo missing)"
    done
    echo "LOOM_SHARED=$LOOM_SHARED ($(ls "$LOOM_SHARED/models" 2>/dev/null | tr '\n' ' '))"
} 2>&1 | tee "$OUT/env.txt"

BIN=${BIN:-}
if [ -f "$BIN" ]; then # a tarball from pack.sh
    rm -rf /tmp/loom-bin && mkdir -p /tmp/loom-bin && { tar -C /tmp/loom-bin -xf "$BIN" || python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$BIN" /tmp/loom-bin; } && BIN=/tmp/loom-bin/$(basename "${BIN%.t?z}")
fi
if [ -z "$BIN" ]; then
    echo "== building (cmake, sm_90)"
    if ! { cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 &&
           cmake --build build-cuda -j "$(nproc)"; } >"$OUT/build.log" 2>&1; then
        tail -40 "$OUT/build.log"
        echo "BUILD FAILED"
        exit 1
    fi
    BIN=build-cuda/tests
else
    BIN=$(cd "$BIN" && pwd)
    export LD_LIBRARY_PATH="$BIN/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LOOM_BIN="$BIN/loom"
fi
echo "== build/setup took $(( $(date +%s) - T0 ))s"

results=()
status=0
for t in "$BIN"/test_cuda_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    s=$(date +%s.%N)
    timeout 400 "$t" >"$OUT/$name.log" 2>&1
    rc=$?
    e=$(date +%s.%N)
    case $rc in 0) r=PASS ;; 77) r=SKIP ;; 124) r=TIMEOUT; status=1 ;; *) r="FAIL($rc)"; status=1 ;; esac
    results+=("$(printf '%-22s %-9s %6.1fs  %s' "$name" "$r" "$(awk "BEGIN{print $e - $s}")" "$(tail -1 "$OUT/$name.log")")")
    grep -E "FAIL|worst|error|Assert|abort" "$OUT/$name.log" | head -40
done

if [ -n "${BENCH:-}" ]; then
    echo "== bench: $BENCH"
    timeout 300 bash -c "$BENCH" >"$OUT/bench.log" 2>&1
    echo "bench rc=$?"
    tail -25 "$OUT/bench.log"
fi

echo
echo "== results (logs in \$OUT), total $(( $(date +%s) - T0 ))s"
printf '%s\n' "${results[@]}"
exit $status
