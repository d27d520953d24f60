B=$BIN; export LD_LIBRARY_PATH=$B/lib
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
for cfg in "X=default" "LOOM_CUDA_DECODE_ATTN=0" "LOOM_CUDA_PDL_TRIGGER=0" "LOOM_CUDA_DATT_EARLY=0" "LOOM_CUDA_GRAPHS=0" "LOOM_CUDA_PDL=0" "LOOM_GEMV_RW1=0"; do
  r=""; for rep in 1 2 3 4; do r="$r $(env $cfg $B/decode_bench /tmp/q05 --batch 1 --prompt 1024 --steps 64 2>&1 | tail -1 | sed 's/.*checksum //; s/)//')"; done
  echo "== $cfg p1024 s64: $r"
done
for cfg in "X=default" "LOOM_CUDA_DECODE_ATTN=0"; do
  r=""; for rep in 1 2 3; do r="$r $(env $cfg $B/decode_bench /tmp/q05 --batch 1 --prompt 4000 --steps 128 2>&1 | tail -1 | sed 's/.*checksum //; s/)//')"; done
  echo "== $cfg p4000 s128: $r"
done
