#!/usr/bin/env bash
# The prepared device check: one command, minutes on any CUDA machine, results in OUT_DIR.
#
#   bash bench/gpu_check.sh OUT_DIR
#
# Needs torch, triton and timm, and DALI, PyAV and webdataset importable (PYTHON picks the interpreter;
# default python3). Runs, each step bounded by a timeout so the whole check ends within 7 minutes:
#   1. the `gpu` tests (tests/test_gpu.py and every test marked gpu, compiled Triton on CUDA tensors)
#      -> OUT_DIR/gpu-tests.txt, gpu-tests.xml
#   2. bench/throughput.py on the GPU -> OUT_DIR/<gpu>-<date>.{json,md,png}:
#      kernels: AMD-style eager vs our eager vs Triton, ViT-S/B/L shapes, B=32 and 64, bf16, ms, GB/s,
#               % of the device-to-device copy bandwidth measured in the same run, peak memory;
#      train:   ViT-S + ViT-L and ViT-B + ViT-L teachers, fast vs all-eager: clips/s, data wait, MFU;
#      loaders: DALI 'mixed' at 1, 2, 4 and 7 pipelines (NVDEC utilisation sampled by nvidia-smi) vs the
#               eager loader and its peers, on H.264 and VP9 shards (short side 320) built here first.
# What cannot run (no DALI, no NVDEC, a peer not installed) is written as "not measured (why)", never
# estimated. Without CUDA the same script runs, GPU parts skipped, in a quick mode (tests/test_bench.py).
set -uo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
t0=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - t0 ))s] $*" | tee -a "$out/gpu-check.log"; }

if "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "CUDA: $("$py" -c 'import torch; print(torch.cuda.get_device_name(0))')"
  bench_args=(--device cuda --parts kernels,train,loaders --repeats 3 --warmup 2 --train-steps 10
              --train-models vit_small:vit_large,vit_base:vit_large --train-paths fast,eager
              --loader-videos 16 --loader-batches 10 --loader-workers 8 --loader-pipelines 1,2,4,7)
  tests_timeout=150; bench_timeout=390
else
  log "no CUDA: GPU tests skip, the bench runs its quick CPU mode"
  bench_args=(--device cpu --quick --parts kernels,train,loaders --kernel-batch 2 --train-steps 1 --repeats 1)
  tests_timeout=300; bench_timeout=400
fi

log "1/2 gpu tests (timeout ${tests_timeout}s)"
timeout "$tests_timeout" "$py" -m pytest -q -m gpu -p no:cacheprovider -rs --junitxml="$out/gpu-tests.xml" tests \
  > "$out/gpu-tests.txt" 2>&1
tests_rc=$?
log "gpu tests rc=$tests_rc: $(tail -n 1 "$out/gpu-tests.txt")"

log "2/2 bench (timeout ${bench_timeout}s): ${bench_args[*]}"
timeout "$bench_timeout" "$py" bench/throughput.py "${bench_args[@]}" --out "$out" > "$out/bench.txt" 2>&1
bench_rc=$?
log "bench rc=$bench_rc"
tail -n 40 "$out/bench.txt" | tee -a "$out/gpu-check.log"
log "done: tests rc=$tests_rc, bench rc=$bench_rc; results in $out"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
