B=$BIN; export LD_LIBRARY_PATH=$B/lib
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
for rep in 1 2; do for p in 128 1024 4000; do for cl in 8 4 2; do
  echo "== b1 p$p MAX_CL=$cl $(LOOM_CUDA_DATT_MAX_CL=$cl $B/decode_bench /tmp/q05 --batch 1 --prompt $p --steps 128 2>&1 | tail -1 | sed 's/.*decode/decode/')"
done; done; done
for bs in 2 4 8; do for cl in 8 4; do
  echo "== b$bs p512 MAX_CL=$cl $(LOOM_CUDA_DATT_MAX_CL=$cl $B/decode_bench /tmp/q05 --batch $bs --prompt 512 --steps 128 2>&1 | tail -1 | sed 's/.*decode/decode/')"
done; done
