B=$BIN; export LD_LIBRARY_PATH=$B/lib
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
$B/loom bench latency /tmp/q05 --device cuda --batch-size 64 --input-len 128 --output-len 128 --num-iters-warmup 1 --num-iters 2 --temperature 0 --no-progress 2>&1 | grep -E "loading weights|Decode throughput"
$B/loom make-model .dev/shared/configs/llama-3.1-8b.json /tmp/l8b --seed 1 >/dev/null 2>&1
$B/loom bench latency /tmp/l8b --device cuda --batch-size 1 --input-len 128 --output-len 64 --num-iters-warmup 1 --num-iters 1 --temperature 0 --max-model-len 4096 --no-progress 2>&1 | grep -E "loading weights|Decode throughput"
