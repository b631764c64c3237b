#!/usr/bin/env bash
# How fast does the tiny model learn where a lone object is? Trains grounding alone, from a
# freshly initialized tiny model, on the single-object scenes of a 12000-image world, and
# evaluates it on the unseen single-object test scenes: accuracy at IoU 0.5 next to the mean
# box, and what the boxes get right (`scripts/box-stats.sh`: correlations of predicted and true
# centres and widths, boxes with cx = cy). The README's grounding paragraph quotes this run.
#
#   scripts/ground-lone-objects.sh [OUT]     # default OUT: runs/lone-objects
#
# Environment: WORLD (default runs/w12k, generated with seed 1, objects anywhere, if missing), STEPS (1500
# updates of 32 expressions), SINCOS_POSITIONS (1: the fresh model's visual positional
# embedding starts as a 2D sine-cosine table, `pretrain --sincos-positions`), MPLUG (the binary).
set -euo pipefail
OUT=${1:-runs/lone-objects}
WORLD=${WORLD:-runs/w12k}
STEPS=${STEPS:-1500}
MPLUG=${MPLUG:-target/release/mplug}
init=()
if [ "${SINCOS_POSITIONS:-0}" = 1 ]; then init+=(--sincos-positions); fi
mkdir -p "$OUT"

[ -f "$WORLD/scenes.json" ] || "$MPLUG" data generate "$WORLD" --seed 1 --size 12000 --places 0

# The expressions of the scenes that hold one object.
for split in train test; do
  "$(dirname "$0")/lone-objects.sh" "$WORLD" "$split" > "$OUT/lone_$split.json"
done
jq '.[:300]' "$OUT/lone_train.json" > "$OUT/lone_train300.json"

# A fresh model: one pre-training update on top of the seeded initialization writes the
# model folder.
[ -d "$OUT/init/model" ] || "$MPLUG" pretrain --preset tiny "${init[@]}" \
  --vocab "$WORLD/vocab.txt" --data "$WORLD/pretrain.json" --image-root "$WORLD" \
  --output "$OUT/init" --steps 1 --batch-size 4 --queue-size 0 --workers 1 --no-augment --no-dropout

[ -d "$OUT/grounding/model" ] || "$MPLUG" finetune grounding --model "$OUT/init/model" \
  --data "$OUT/lone_train.json" --image-root "$WORLD" --output "$OUT/grounding" \
  --prefix-token "[unused0]" --bins 64 --batch-size 16 --accumulate 2 --data-parallel 2 \
  --workers 1 --no-augment --no-dropout --steps "$STEPS" --lr1 5e-4 --lr2 5e-4 --warmup 20 \
  --save-every 250

for split in test train300; do
  out="$OUT/eval-$split"
  [ -f "$out/metrics.json" ] || "$MPLUG" eval grounding --model "$OUT/grounding/model" \
    "$OUT/lone_$split.json" "$WORLD" --output "$out" --quiet --json > /dev/null
  blind=$("$MPLUG" baseline grounding "$OUT/lone_$split.json" --train "$OUT/lone_train.json" \
    --json | jq .accuracy)
  echo "$split: accuracy $(jq .accuracy "$out/metrics.json") (mean box $blind)," \
    "$("$(dirname "$0")/box-stats.sh" "$out/predictions.jsonl")"
done
