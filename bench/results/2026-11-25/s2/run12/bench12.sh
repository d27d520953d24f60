B=$BIN; export LD_LIBRARY_PATH=$B/lib
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
for bsz in 1 64 256; do
  echo "== q05 latency b$bsz"
  $B/loom bench latency /tmp/q05 --device cuda --batch-size $bsz --input-len 128 --output-len 128 --num-iters-warmup 1 --num-iters 2 --temperature 0 --max-num-seqs 256 2>&1 | grep -E "Decode throughput|Mean decode step"
done
echo "== q05 prefill 16x512"
$B/loom bench latency /tmp/q05 --device cuda --batch-size 16 --input-len 512 --output-len 1 --num-iters-warmup 1 --num-iters 3 --temperature 0 --max-num-batched-tokens 8192 2>&1 | grep -E "Prefill throughput"
$B/loom make-model .dev/shared/configs/llama-3.1-8b.json /tmp/l8b --seed 1 >/dev/null 2>&1
echo "== l8b b1 / b64 / prefill"
$B/loom bench latency /tmp/l8b --device cuda --batch-size 1 --input-len 128 --output-len 128 --num-iters-warmup 1 --num-iters 2 --temperature 0 --max-model-len 4096 2>&1 | grep -E "Decode throughput"
$B/loom bench latency /tmp/l8b --device cuda --batch-size 64 --input-len 128 --output-len 64 --num-iters-warmup 1 --num-iters 2 --temperature 0 --max-model-len 4096 2>&1 | grep -E "Decode throughput"
$B/loom bench latency /tmp/l8b --device cuda --batch-size 16 --input-len 512 --output-len 1 --num-iters-warmup 1 --num-iters 2 --temperature 0 --max-model-len 4096 --max-num-batched-tokens 8192 2>&1 | grep -E "Prefill throughput"
