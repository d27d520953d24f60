B=$BIN; export LD_LIBRARY_PATH=$B/lib
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
r=""; for rep in 1 2 3; do r="$r $($B/decode_bench /tmp/q05 --batch 1 --prompt 1024 --steps 64 2>&1 | tail -1 | sed 's/.*checksum //; s/)//')"; done
echo "== p1024 s64 checksums: $r"
r=""; for rep in 1 2 3; do r="$r $($B/decode_bench /tmp/q05 --batch 1 --prompt 4000 --steps 128 2>&1 | tail -1 | sed 's/.*checksum //; s/)//')"; done
echo "== p4000 s128 checksums: $r"
for rep in 1 2; do for p in 128 300 512 1024; do for cr in 16 64; do
  echo "== b1 p$p CL_ROWS=$cr $(LOOM_CUDA_DATT_CL_ROWS=$cr $B/decode_bench /tmp/q05 --batch 1 --prompt $p --steps 256 2>&1 | tail -1 | sed 's/.*decode/decode/')"
done; done; done
for bs in 2 4; do for cr in 16 64; do
  echo "== b$bs p128 CL_ROWS=$cr $(LOOM_CUDA_DATT_CL_ROWS=$cr $B/decode_bench /tmp/q05 --batch $bs --prompt 128 --steps 256 2>&1 | tail -1 | sed 's/.*decode/decode/')"
done; done
