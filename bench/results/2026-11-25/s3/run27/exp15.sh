B=$BIN; export LD_LIBRARY_PATH=$B/lib LOOM_SHARED=$PWD/.dev/shared
for t in $B/test_cuda_*; do timeout 200 $t > /dev/null 2>$OUT/err.txt; echo "$(basename $t) rc=$?"; done
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
for rep in 1 2; do for bs in 1 4 8; do for t in 0 1; do
  echo "== b$bs TRIGGER=$t $(LOOM_CUDA_PDL_TRIGGER=$t $B/decode_bench /tmp/q05 --batch $bs --prompt 128 --steps 256 2>&1 | tail -1 | sed 's/.*decode/decode/')"
done; done; done
for t in 0 1; do
  echo "== bench b1 TRIGGER=$t $(LOOM_CUDA_PDL_TRIGGER=$t $B/loom bench latency /tmp/q05 --device cuda --batch-size 1 --input-len 128 --output-len 256 --num-iters-warmup 1 --num-iters 3 --temperature 0 --no-progress 2>&1 | grep -E 'Decode throughput')"
  echo "== bench b8 TRIGGER=$t $(LOOM_CUDA_PDL_TRIGGER=$t $B/loom bench latency /tmp/q05 --device cuda --batch-size 8 --input-len 128 --output-len 256 --num-iters-warmup 1 --num-iters 3 --temperature 0 --no-progress 2>&1 | grep -E 'Decode throughput')"
done
