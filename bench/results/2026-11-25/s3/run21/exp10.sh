B=$BIN; export LD_LIBRARY_PATH=$B/lib LOOM_SHARED=$PWD/.dev/shared
$B/loom make-model .dev/shared/configs/qwen2-0.5b.json /tmp/q05 --seed 1 >/dev/null 2>&1
for rep in 1 2; do for e in 0 1; do for cl in 8 4; do
  echo "== b1 EARLY=$e MAX_CL=$cl $(LOOM_CUDA_DATT_EARLY=$e LOOM_CUDA_DATT_MAX_CL=$cl $B/decode_bench /tmp/q05 --batch 1 --prompt 128 --steps 256 2>&1 | tail -1 | sed 's/.*decode/decode/')"
done; done; done
for e in 0 1; do
  echo "== b1 p1024 EARLY=$e $(LOOM_CUDA_DATT_EARLY=$e $B/decode_bench /tmp/q05 --batch 1 --prompt 1024 --steps 128 2>&1 | tail -1 | sed 's/.*decode/decode/')"
  echo "== b4 EARLY=$e $(LOOM_CUDA_DATT_EARLY=$e $B/decode_bench /tmp/q05 --batch 4 --prompt 128 --steps 128 2>&1 | tail -1 | sed 's/.*decode/decode/')"
  echo "== b64 EARLY=$e $(LOOM_CUDA_DATT_EARLY=$e $B/decode_bench /tmp/q05 --batch 64 --prompt 128 --steps 64 2>&1 | tail -1 | sed 's/.*decode/decode/')"
done
