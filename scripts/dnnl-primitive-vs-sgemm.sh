#!/usr/bin/env bash
# oneDNN's two ways to multiply the visual tower's linear layers on one thread: `dnnl_sgemm` (what
# the `dnnl` feature calls, packing the weight on every call) against the matmul primitive with
# the weight packed once, alone and with the bias and QuickGELU (swish, alpha 1.702) fused.
# Prints GFLOP/s per shape (best of 7). Needs g++ and libdnnl-dev (Debian); not run by CI.
set -euo pipefail
cd "$(dirname "$0")"
out=${TMPDIR:-/tmp}/dnnl-primitive-vs-sgemm
g++ -O2 -fopenmp dnnl-primitive-vs-sgemm.cpp -ldnnl -o "$out"
OMP_NUM_THREADS=1 "$out"
