B=$BIN; export LD_LIBRARY_PATH=$B/lib LOOM_SHARED=$PWD/.dev/shared
for t in $B/test_cuda_*; do timeout 200 $t > $OUT/$(basename $t).log 2>&1; echo "$(basename $t) rc=$? $(tail -1 $OUT/$(basename $t).log)"; done
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
for rep in 1 2 3; do for v in 0 1; do
  echo "== b1 LOOM_GEMV_RW1=$v"; LOOM_GEMV_RW1=$v $B/decode_bench /tmp/q05 --batch 1 --prompt 128 --steps 256 2>&1 | tail -1 | sed 's/.*decode/decode/'
done; done
ncu --clock-control none --cache-control none --csv --metrics gpu__time_duration.sum --launch-skip 3000 --launch-count 130 \
  $B/decode_bench /tmp/q05 --batch 1 --prompt 128 --steps 40 > $OUT/ncu_b1.csv 2>/dev/null
python3 bench/cuda/ncu_summary.py $OUT/ncu_b1.csv 1 | head -12
LOOM_GEMV_RW1=1 ncu --clock-control none --cache-control none --csv --metrics gpu__time_duration.sum --launch-skip 3000 --launch-count 130 \
  $B/decode_bench /tmp/q05 --batch 1 --prompt 128 --steps 40 > $OUT/ncu_b1_rw.csv 2>/dev/null
python3 bench/cuda/ncu_summary.py $OUT/ncu_b1_rw.csv 1 | head -12
