B=$BIN; export LD_LIBRARY_PATH=$B/lib LOOM_SHARED=$PWD/.dev/shared
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
for rep in 1 2; do for t in 0 1; do for r in 0 1 2; do
  echo "== b1 TRIGGER=$t RW1=$r $(LOOM_CUDA_PDL_TRIGGER=$t LOOM_GEMV_RW1=$r $B/decode_bench /tmp/q05 --batch 1 --prompt 128 --steps 256 2>&1 | tail -1 | sed 's/.*decode/decode/')"
done; done; done
for t in 0 1; do for bs in 2 4; do
  echo "== b$bs TRIGGER=$t $(LOOM_CUDA_PDL_TRIGGER=$t $B/decode_bench /tmp/q05 --batch $bs --prompt 128 --steps 128 2>&1 | tail -1 | sed 's/.*decode/decode/')"
done; done
LOOM_CUDA_PDL_TRIGGER=1 LOOM_GEMV_RW1=2 timeout 200 $B/test_cuda_matmul_fused 2>&1 | tail -1
LOOM_CUDA_PDL_TRIGGER=1 LOOM_GEMV_RW1=2 timeout 200 $B/test_cuda_golden 2>&1 | tail -1
LOOM_CUDA_PDL_TRIGGER=1 LOOM_GEMV_RW1=2 timeout 200 $B/test_cuda_engine 2>&1 | tail -1
