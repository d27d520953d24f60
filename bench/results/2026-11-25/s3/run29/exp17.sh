B=$BIN; export LD_LIBRARY_PATH=$B/lib
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
ncu --clock-control none --cache-control none --csv --metrics gpu__time_duration.sum -k regex:sample --launch-skip 20 --launch-count 4 \
  $B/loom bench latency /tmp/q05 --device cuda --batch-size 1 --input-len 128 --output-len 64 --num-iters-warmup 0 --num-iters 1 --temperature 0 --no-progress > $OUT/ncu_s1.csv 2>/dev/null
python3 bench/cuda/ncu_summary.py $OUT/ncu_s1.csv 1 | head -4
ncu --clock-control none --cache-control none --csv --metrics gpu__time_duration.sum -k regex:sample --launch-skip 20 --launch-count 4 \
  $B/loom bench latency /tmp/q05 --device cuda --batch-size 1 --input-len 128 --output-len 64 --num-iters-warmup 0 --num-iters 1 --temperature 1.0 --no-progress > $OUT/ncu_s2.csv 2>/dev/null
python3 bench/cuda/ncu_summary.py $OUT/ncu_s2.csv 1 | head -4
