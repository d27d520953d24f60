B=$BIN; export LD_LIBRARY_PATH=$B/lib
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
$B/decode_bench /tmp/q05 --batch 1 --prompt 128 --steps 256 2>&1 | tail -2
$B/decode_bench /tmp/q05 --batch 8 --prompt 128 --steps 128 2>&1 | tail -1
ncu --clock-control none --csv --metrics gpu__time_duration.sum --launch-skip 3000 --launch-count 460 \
  $B/decode_bench /tmp/q05 --batch 1 --prompt 128 --steps 40 > $OUT/ncu_b1.csv 2>$OUT/ncu_b1.err
python3 bench/cuda/ncu_summary.py $OUT/ncu_b1.csv 2 | head -30
grep -c gpu__time $OUT/ncu_b1.csv
