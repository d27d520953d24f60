B=$BIN; export LD_LIBRARY_PATH=$B/lib
for t in test_cuda_matmul_fused test_cuda_engine; do
  (LOOM_SHARED=$PWD/.dev/shared timeout 150 $B/$t > $OUT/$t.log 2>&1; echo "$t rc=$?"; tail -1 $OUT/$t.log)
done
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
for bs in 1 4 8; do for f in 0 1; do
  echo "== batch $bs LOOM_FUSE_OPS=$f"
  LOOM_FUSE_OPS=$f $B/decode_bench /tmp/q05 --batch $bs --prompt 128 --steps 128 2>&1 | tail -1 | sed 's/.*decode/decode/'
done; done
ncu --clock-control none --cache-control none --csv --metrics gpu__time_duration.sum --launch-skip 3000 --launch-count 200 \
  $B/decode_bench /tmp/q05 --batch 8 --prompt 128 --steps 40 > $OUT/ncu_b8.csv 2>/dev/null
python3 bench/cuda/ncu_summary.py $OUT/ncu_b8.csv 1 | head -10
