B=$BIN; export LD_LIBRARY_PATH=$B/lib
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
for cfg in "LOOM_CUDA_DECODE_ATTN=0" "LOOM_CUDA_DATT_EARLY=0" "LOOM_CUDA_DATT_EARLY=1" "LOOM_CUDA_PDL_TRIGGER=0" "LOOM_CUDA_GRAPHS=0"; do for rep in 1 2 3; do
  echo "== $cfg p4000 $(env $cfg $B/decode_bench /tmp/q05 --batch 1 --prompt 4000 --steps 64 2>&1 | tail -1 | sed 's/.*decode/decode/')"
done; done
for rep in 1 2 3; do
  echo "== default p1024 $($B/decode_bench /tmp/q05 --batch 1 --prompt 1024 --steps 64 2>&1 | tail -1 | sed 's/.*decode/decode/')"
  echo "== default b4 p2000 $($B/decode_bench /tmp/q05 --batch 4 --prompt 2000 --steps 64 2>&1 | tail -1 | sed 's/.*decode/decode/')"
done
