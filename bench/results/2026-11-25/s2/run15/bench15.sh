B=$BIN; export LD_LIBRARY_PATH=$B/lib
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
for bsz in 1 64; do
$B/loom bench latency /tmp/q05 --device cuda --batch-size $bsz --input-len 128 --output-len 128 --num-iters-warmup 1 --num-iters 2 --temperature 0 --no-progress 2>&1 | grep -E "Decode throughput|KV|kv"
done
