#!/usr/bin/env bash
# Evaluates a model folder on the generated world with `mplug eval` (test and held-out
# splits, clips), scores the blind baselines with `mplug baseline`, and prints the README's
# results table. Each figure's metrics.json stays under OUT/<split>-<task>/.
#
#   scripts/eval-tiny-world.sh MODEL DATA OUT [VIDEO_MODEL]
#
# MODEL: the multi-task folder (mplug-tiny-world); DATA: the world (`mplug data generate`);
# VIDEO_MODEL: a model fine-tuned on clips, evaluated on the clips next to MODEL (zero-shot).
# Grounding is evaluated with GROUNDING_MODEL (default: MODEL-grounding beside MODEL where it
# exists, as train-tiny-world.sh writes it; else MODEL).
# Environment: SPLITS (default "test heldout"), TASKS (default: every task), K (ITM re-ranking
# depth, default 16), MPLUG (the binary), EVAL_ARGS (more arguments for every `mplug eval`, as
# `--dtype bf16`).
set -euo pipefail
MODEL=$1
DATA=$2
OUT=$3
VIDEO_MODEL=${4:-}
SPLITS=${SPLITS:-test heldout}
TASKS=${TASKS:-caption vqa retrieval grounding videoqa videoretrieval}
K=${K:-16}
MPLUG=${MPLUG:-target/release/mplug}
if [ -z "${GROUNDING_MODEL:-}" ]; then
  GROUNDING_MODEL=$MODEL
  [ -f "${MODEL%/}-grounding/config.json" ] && GROUNDING_MODEL=${MODEL%/}-grounding
fi
mkdir -p "$OUT"

has() { [[ " $TASKS " == *" $1 "* ]]; }
ev() { # name task annotations [args...]
  local name=$1 task=$2 ann=$3
  shift 3
  if [ ! -f "$OUT/$name/metrics.json" ]; then
    local t=$(date +%s.%N)
    "$MPLUG" eval "$task" --model "${EV_MODEL:-$MODEL}" "$DATA/$ann" "$DATA" --output "$OUT/$name" \
      --quiet --json ${EVAL_ARGS:-} "$@" > /dev/null
    # Wall time of the whole evaluation (loading, preprocessing, model), for speed tables.
    echo "$(date +%s.%N) - $t" | bc > "$OUT/$name/seconds"
  fi
  echo "$name: $(jq -c 'del(.per_question_type, .per_answer_type)' "$OUT/$name/metrics.json")"
}

t0=$(date +%s)
for split in $SPLITS; do
  has caption && ev "$split-caption" caption "caption_$split.json"
  has vqa && ev "$split-vqa" vqa "vqa_$split.json"
  has retrieval && ev "$split-retrieval" retrieval "retrieval_$split.json" --k "$K"
  # The same ranking by ITC alone (no ITM re-scoring), the row the README sets beside it.
  has retrieval && ev "$split-retrieval-itc" retrieval "retrieval_$split.json" --k "$K" --itc-only
  has grounding && EV_MODEL=$GROUNDING_MODEL ev "$split-grounding" grounding "grounding_$split.json"
done
has videoqa && ev "video-zeroshot-qa" videoqa videoqa_test.jsonl --frames 8
has videoretrieval && ev "video-zeroshot-retrieval" videoretrieval videoretrieval_test.jsonl --frames 8 --k "$K"
if [ -n "$VIDEO_MODEL" ]; then
  MODEL=$VIDEO_MODEL
  has videoqa && ev "video-finetuned-qa" videoqa videoqa_test.jsonl --frames 8
  has videoretrieval && ev "video-finetuned-retrieval" videoretrieval videoretrieval_test.jsonl --frames 8 --k "$K"
fi
echo "evaluated in $(( $(date +%s) - t0 )) s"

# Blind baselines: the training annotations' answer priors, most frequent caption, mean box,
# and chance for retrieval.
base() { # name task test [--train file]
  local name=$1
  shift
  [ -f "$OUT/$name.json" ] || "$MPLUG" baseline "$@" --json > "$OUT/$name.json"
  echo "$name: $(cat "$OUT/$name.json")"
}
for split in $SPLITS; do
  base "blind-$split-caption" caption "$DATA/caption_$split.json" --train "$DATA/caption_train.json"
  base "blind-$split-vqa" vqa "$DATA/vqa_$split.json" --train "$DATA/vqa_train.json"
  base "blind-$split-retrieval" retrieval "$DATA/retrieval_$split.json"
  base "blind-$split-grounding" grounding "$DATA/grounding_$split.json" --train "$DATA/grounding_train.json"
done
base blind-videoqa videoqa "$DATA/videoqa_test.jsonl" --train "$DATA/videoqa_train.jsonl"
base blind-videoretrieval videoretrieval "$DATA/videoretrieval_test.jsonl"

# Per question type (`per_question_type`): the model next to the blind prior, in percent.
per_type() { # title model-metrics blind-json scale
  [ -f "$2" ] && [ -f "$3" ] || return 0
  echo "$1 per question type, model (blind):"
  jq -r --slurpfile b "$3" --argjson s "$4" '
    def pct: . * $s * 10 | round / 10;
    ($b[0].per_question_type // {}) as $blind | (.per_question_type // {}) | to_entries[]
    | "  \(.key): \(.value | pct) (\($blind[.key] // 0 | pct))"' "$2"
}
for split in $SPLITS; do
  has vqa && per_type "$split VQA" "$OUT/$split-vqa/metrics.json" "$OUT/blind-$split-vqa.json" 1
done
if has videoqa; then
  per_type "video QA zero-shot" "$OUT/video-zeroshot-qa/metrics.json" "$OUT/blind-videoqa.json" 100
  per_type "video QA fine-tuned" "$OUT/video-finetuned-qa/metrics.json" "$OUT/blind-videoqa.json" 100
fi
