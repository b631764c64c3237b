#!/usr/bin/env bash
# Where the visual tower's time goes: perf (Debian's linux-perf) over `mplug bench` on the base
# model with random weights, batch ${BATCH:-1}, ${THREADS:-2} threads, decoding cut to one token
# so the tower dominates. Prints the hottest functions; the recording stays in ${OUT:-/tmp/mplug-tower.perf}.
# MPLUG_CANDLE_OPS=1 profiles candle's own operations instead of model/kernels. ONLY=train (or
# any of bench's --only parts) profiles that part instead, e.g. the caption fine-tuning step.
# DTYPE=bf16 profiles compact weights (bench's --dtype); FEATURES=dnnl profiles the oneDNN build.
# RUNS (default 4) sets bench's --runs; WINDOW (as 50%-100%) reports only that part of the
# recording, e.g. the runs after the model's build: RUNS=30 WINDOW=50%-100% ONLY=tower.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
cargo build --release -q -p mplug-cli ${FEATURES:+--features "$FEATURES"}
out=${OUT:-/tmp/mplug-tower.perf}
RAYON_NUM_THREADS=${THREADS:-2} perf record -F 999 -g -o "$out" -- \
    ./target/release/mplug bench --runs "${RUNS:-4}" --batch-size "${BATCH:-1}" --max-len 1 --vqa-len 1 \
    --dtype "${DTYPE:-f32}" \
    ${ONLY:+--only "$ONLY" --train-steps 4}
perf report -i "$out" ${WINDOW:+--time "$WINDOW"} --no-children --sort dso,symbol --stdio 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | head -30 | cut -c1-140
