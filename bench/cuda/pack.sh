#!/usr/bin/env bash
# pack.sh: prepares what the GPU machine runs, on the development machine (nvcc works here; only running
# needs the GPU). Builds build-cuda for sm_90, copies the cuda tests (and loom, when it links) into
# .dev/cuda-bin with the shared libraries the device image lacks (jansson, pcre2, utf8proc, microhttpd
# and their dependencies; CUDA and libc come from the image) in $P/lib, and copies ../shared's
# models and configs into .dev/shared. Both are git-ignored (.dev/). The device tool's `carry` takes
# .dev/cuda-bin.txz (the binaries, compressed) and .dev/shared; there run
#   BIN=.dev/cuda-bin.txz bash bench/cuda/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${LOOM_SHARED_SRC:-../shared}
# several people may pack at once: BUILD (default build-cuda) and PACK (default .dev/cuda-bin; the
# tarball is $PACK.txz) keep them apart
B=${BUILD:-build-cuda}
P=${PACK:-.dev/cuda-bin}

cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
tests=$(ls tests/unit/test_cuda_*.c | xargs -n1 basename | sed 's/\.c$//')
# shellcheck disable=SC2086
cmake --build "$B" -j "$(nproc)" --target $tests 2>&1 | grep -E "error:|Error " || true
cmake --build "$B" -j "$(nproc)" --target loom >/dev/null 2>&1 || echo "pack: loom did not build (only the tests travel)"

rm -rf "$P"
mkdir -p $P/lib
for t in $tests; do
    [ -x "$B/tests/$t" ] && cp "$B/tests/$t" $P/ || echo "pack: $t missing"
done
if [ -x $B/loom ]; then cp $B/loom $P/; fi

mkdir -p .dev/shared
for d in models configs; do
    [ -d "$SHARED/$d" ] && { rm -rf ".dev/shared/$d"; cp -r "$SHARED/$d" .dev/shared/; }
done

# the forward-only decode benchmark (not in the CMake build): links the same static libraries
cc -O2 -std=gnu11 -Iinclude -Isrc bench/cuda/decode_bench.c $B/libloomcore.a $B/libloomcuda.a \
    -L/usr/local/cuda/lib64 -lcudart -lcublas -lcublasLt -lstdc++ -ljansson -lpcre2-8 -lutf8proc -lmicrohttpd \
    -lm -lpthread -o $P/decode_bench && echo "pack: decode_bench built"
# the card's own ceilings (memory bandwidth, cuBLAS bf16 GEMM) for the results to be compared with
nvcc -O2 -arch=sm_90 -std=c++17 bench/cuda/ceilings.cu -lcublas -o $P/ceilings && echo "pack: ceilings built"

for b in $P/*; do
    [ -f "$b" ] || continue
    ldd "$b" | awk '/=>/ {print $3}' |
        grep -v -E '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcudart|libcublas|libcublasLt)\.so' |
        while read -r lib; do cp -L -n "$lib" $P/lib/ 2>/dev/null || true; done || true
done
strip --strip-debug $P/test_cuda_* $P/decode_bench $P/ceilings $P/loom 2>/dev/null || true
# binaries compress about 3x: the tarball is what travels (the device tool carries 64 MiB at most)
# xz with a large dictionary stores the GPU code that every binary repeats about once (53 MB with gzip, 9 MB
# with xz, seen 2026-11-25), so tests, loom and .dev/shared fit under the device tool's 64 MiB together
rm -f "$P.tgz" "$P.txz"; tar -C "$(dirname "$P")" -cf - "$(basename "$P")" | xz -9 -T2 > "$P.txz"
du -sh "$P" "$P.txz" .dev/shared
ls "$P" "$P/lib"
