B=$BIN; export LD_LIBRARY_PATH=$B/lib
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
ncu --clock-control none --cache-control none --csv --metrics gpu__time_duration.sum,sm__cycles_elapsed.avg.per_second --launch-skip 3000 --launch-count 230 \
  $B/decode_bench /tmp/q05 --batch 1 --prompt 128 --steps 40 > $OUT/ncu_b1_nc.csv 2>$OUT/ncu_b1_nc.err
python3 bench/cuda/ncu_summary.py $OUT/ncu_b1_nc.csv 1 | head -12
grep attn_kernel $OUT/ncu_b1_nc.csv | grep per_second | head -2
ncu --clock-control none --cache-control none -k regex:attn_kernel --launch-skip 60 --launch-count 1 \
  --section SpeedOfLight --section WarpStateStats --section LaunchStats --section Occupancy --section SchedulerStats --section MemoryWorkloadAnalysis \
  $B/decode_bench /tmp/q05 --batch 1 --prompt 128 --steps 40 > $OUT/ncu_attn.txt 2>&1
grep -v "^==PROF" $OUT/ncu_attn.txt | sed -n '/attn_kernel/,$p' | head -120
