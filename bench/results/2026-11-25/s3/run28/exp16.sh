B=$BIN; export LD_LIBRARY_PATH=$B/lib LOOM_SHARED=$PWD/.dev/shared
for t in test_cuda_matmul_fused test_cuda_golden test_cuda_fused test_cuda_engine; do timeout 200 $B/$t > /dev/null 2>&1; echo "$t rc=$?"; done
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
for rep in 1 2 3; do for bin in decode_bench_prev decode_bench; do
  echo "== b1 $bin $($B/$bin /tmp/q05 --batch 1 --prompt 128 --steps 256 2>&1 | tail -1 | sed 's/.*decode/decode/')"
done; done
for bin in decode_bench_prev decode_bench; do
  echo "== b1 p1024 $bin $($B/$bin /tmp/q05 --batch 1 --prompt 1024 --steps 128 2>&1 | tail -1 | sed 's/.*decode/decode/')"
done
echo "== bench b1 $($B/loom bench latency /tmp/q05 --device cuda --batch-size 1 --input-len 128 --output-len 256 --num-iters-warmup 1 --num-iters 3 --temperature 0 --no-progress 2>&1 | grep -E 'Decode throughput')"
ncu --clock-control none --cache-control none --csv --metrics gpu__time_duration.sum --launch-skip 3000 --launch-count 124 \
  $B/decode_bench /tmp/q05 --batch 1 --prompt 128 --steps 40 > $OUT/ncu_b1.csv 2>/dev/null
python3 bench/cuda/ncu_summary.py $OUT/ncu_b1.csv 1 | head -10
