#!/usr/bin/env bash
# fuzz_smoke.sh BUILD_DIR: runs every fuzz_* target for FUZZ_SECS seconds from its seed corpus
# (tests/fuzz/corpus/<target>/ plus the files tests/fuzz/<target>.seeds lists, relative to ../shared).
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=$1
SECS=${FUZZ_SECS:-10}
SHARED=$(cd .. && pwd)/shared
status=0; n=0
for bin in "$BUILD"/tests/fuzz_*; do
    [ -x "$bin" ] || continue
    name=$(basename "$bin")
    work=$(mktemp -d)
    [ -d "tests/fuzz/corpus/$name" ] && cp -r "tests/fuzz/corpus/$name/." "$work/"
    if [ -f "tests/fuzz/$name.seeds" ]; then
        while read -r rel; do
            [ -n "$rel" ] && [ -f "$SHARED/$rel" ] && cp "$SHARED/$rel" "$work/seed_$(echo "$rel" | tr '/' '_')"
        done < "tests/fuzz/$name.seeds"
    fi
    dict=""
    [ -f "tests/fuzz/$name.dict" ] && dict="-dict=tests/fuzz/$name.dict"
    echo "fuzz: $name for ${SECS}s"
    if ! "$bin" $dict -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$BUILD/" "$work" >"$BUILD/$name.log" 2>&1; then
        echo "fuzz: $name FAILED (log: $BUILD/$name.log)"; tail -30 "$BUILD/$name.log"; status=1
    else
        grep -E "^(#[0-9]+ *DONE|Done)" "$BUILD/$name.log" | tail -1
    fi
    rm -rf "$work"; n=$((n + 1))
done
echo "fuzz: $n targets run"
exit $status
