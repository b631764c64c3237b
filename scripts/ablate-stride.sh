#!/usr/bin/env bash
# The paper's central claim on the generated world: the same small model trained and evaluated
# with connected attention at every fusion layer (stride 1), every 3rd (stride 3, as mPLUG),
# and never (stride 6, larger than the 4-layer fusion). A shorter schedule than the shipped
# model (pre-training 30 updates, multi-task caption + VQA + retrieval 100 updates); every run
# sees the same data in the same order. Pre-training updates are one batch of 32 pairs, as
# when the README's table was measured (the default model now splits them in two micro-batches
# for --data-parallel, which changes ITC's and ITM's in-batch comparisons).
#
#   scripts/ablate-stride.sh [OUT]     # default OUT: runs/ablation; needs runs/tiny-world/world
set -euo pipefail
OUT=${1:-runs/ablation}
DATA=${DATA:-runs/tiny-world/world}
for stride in 1 3 6; do
  run="$OUT/stride-$stride"
  DATA=$DATA STRIDE=$stride GROUNDING=0 PRETRAIN_SPLIT=1 PRETRAIN_STEPS=30 MULTITASK_STEPS=100 MULTITASK2_STEPS=0 VIDEO_STEPS=0 \
    scripts/train-tiny-world.sh "$run"
  SPLITS=test TASKS="caption vqa retrieval" scripts/eval-tiny-world.sh \
    "$run/mplug-tiny-world" "$DATA" "$run/eval"
done
