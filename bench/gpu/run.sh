#!/usr/bin/env bash
# Run ON the GPU host, from the project root, with .whl/ copied over (see docs/gpu.md):
#   bash bench/gpu/run.sh
# One call: install offline, run the GPU tests, run the CUDA benchmarks; everything lands under $OUT.
# It aims at about 8 minutes in all.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
{ nvidia-smi; nvcc --version; python3 --version; } > "$OUT/machine.txt" 2>&1
t0=$(date +%s)
python3 -m pip install -q --no-index --find-links .whl --no-build-isolation pycuda lark xdsl ml_dtypes safetensors > "$OUT/install.log" 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . >> "$OUT/install.log" 2>&1
echo "install: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"
python3 -c "import pycuda.autoinit, pycuda.driver as d; print('pycuda ok:', d.Device(0).name())" 2>&1 | tee -a "$OUT/summary.txt"
t1=$(date +%s)
timeout 300 python3 -m pytest -q -m gpu -x --no-header -p no:cacheprovider > "$OUT/gpu-tests.log" 2>&1
echo "gpu tests: rc=$? in $(( $(date +%s) - t1 )) s: $(tail -1 "$OUT/gpu-tests.log")" | tee -a "$OUT/summary.txt"
t2=$(date +%s)
[ -f bench/cuda_bench.py ] && timeout 240 python3 bench/cuda_bench.py --out "$OUT/cuda_bench.json" > "$OUT/bench.log" 2>&1
echo "bench: rc=$? in $(( $(date +%s) - t2 )) s" | tee -a "$OUT/summary.txt"
