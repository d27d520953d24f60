B=$BIN; export LD_LIBRARY_PATH=$B/lib
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
for pad in 1 0; do
  echo "== throughput, varied lengths, LOOM_PAD_DECODE=$pad"
  LOOM_PAD_DECODE=$pad LOOM_CUDA_STATS=1 $B/loom bench throughput /tmp/q05 --device cuda --input-len 128 --output-len 256 --random-range-ratio 0.9 --num-prompts 1024 --max-num-seqs 256 --no-progress 2>&1 | grep -E -i "throughput|graph|replay|Total"
done
for bsz in 1 24 64; do
  echo "== latency b$bsz"
  $B/loom bench latency /tmp/q05 --device cuda --batch-size $bsz --input-len 128 --output-len 128 --num-iters-warmup 1 --num-iters 2 --temperature 0 2>&1 | grep -E "Decode throughput|Mean decode step"
done
