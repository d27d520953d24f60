B=$BIN; export LD_LIBRARY_PATH=$B/lib
echo "== test_cuda_ops with fine splits"; LOOM_CUDA_ATTN_FINE_SPLITS=1 $B/test_cuda_ops 2>&1 | tail -1
echo "== test_cuda_engine with fine splits"; LOOM_CUDA_ATTN_FINE_SPLITS=1 $B/test_cuda_engine 2>&1 | tail -1
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
for f in 0 1 0 1; do
  echo "== q05 b1 fine=$f"; LOOM_CUDA_ATTN_FINE_SPLITS=$f $B/loom bench latency /tmp/q05 --device cuda --batch-size 1 --input-len 128 --output-len 256 --num-iters-warmup 1 --num-iters 3 --temperature 0 2>&1 | grep -E "Mean decode step"
done
echo "== q05 b1 1024-token prompt fine=0/1"
for f in 0 1; do LOOM_CUDA_ATTN_FINE_SPLITS=$f $B/loom bench latency /tmp/q05 --device cuda --batch-size 1 --input-len 1024 --output-len 256 --num-iters-warmup 1 --num-iters 2 --temperature 0 2>&1 | grep -E "Mean decode step"; done
echo "== q05 b64 fine=0/1"
for f in 0 1; do LOOM_CUDA_ATTN_FINE_SPLITS=$f $B/loom bench latency /tmp/q05 --device cuda --batch-size 64 --input-len 128 --output-len 128 --num-iters-warmup 1 --num-iters 2 --temperature 0 2>&1 | grep -E "Mean decode step"; done
