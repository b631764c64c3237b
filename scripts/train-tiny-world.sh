#!/usr/bin/env bash
# Trains mplug-tiny-world from nothing on the CPU: generates the world, pre-trains the visual
# tower alone on the images' labels (the stand-in for CLIP), pre-trains (ITC, ITM, MLM,
# PrefixLM) from that tower, fine-tunes caption + VQA + retrieval + grounding jointly (two rounds
# on this world, a third on a bigger one) and writes the f16 model folder (mplug-tiny-world),
# then fine-tunes grounding alone on single-object scenes and writes the grounding folder
# (mplug-tiny-world-grounding). Every step is an `mplug` command; the log says how long each
# took.
#
#   scripts/train-tiny-world.sh [OUT]          # default OUT: runs/tiny-world
#
# Environment:
#   SEED=1            data seed (the model seed is fixed by each command's --seed)
#   SIZE=3000         training images generated
#   STRIDE=3          connected attention every STRIDE-th fusion layer (6: never)
#   MODEL_CONFIG      a config.json to pre-train instead of the tiny preset (its vocab_size
#                     must be the world vocabulary's)
#   GROUNDING=1       0 leaves grounding out of the multi-task fine-tuning
#   PRETRAIN_STEPS, MULTITASK_STEPS, MULTITASK2_STEPS, MULTITASK3_STEPS, VIDEO_STEPS
#                     updates of each stage (0 for the second or third round or VIDEO_STEPS:
#                     no such round; the clip round is an experiment, not part of the default
#                     model)
#   PRETRAIN_LR=3e-4, MULTITASK_LR=5e-4, MULTITASK2_LR=2e-4, MULTITASK3_LR=2e-4
#                     peak learning rates of the stages (--lr1 and --lr2 alike)
#   SINCOS_POSITIONS=1  pre-training starts the visual positional embedding from a 2D
#                     sine-cosine table (--sincos-positions); 0: from random values
#   INIT_TOWER        a checkpoint whose visual tower pre-training starts from (--init-clip:
#                     CLIP's, or an mPLUG tower such as examples/probe_shape --save writes)
#                     instead of the sine-cosine table
#   PLACES=0          objects of the generated world stand on a PLACES x PLACES lattice
#                     (mplug data generate --places; 0: anywhere)
#   GROUNDING_SIZE=12000  training images generated (same seed) for the tower stage, the third
#                     multi-task round and the grounding round, which trains on the
#                     expressions of their single-object scenes (GROUNDING_STEPS=0: no
#                     grounding round, no grounding folder)
#   PRETRAIN_SPLIT=2  micro-batches of a pre-training update (32 pairs in all; ITC and ITM
#                     compare the pairs of one micro-batch)
#   MPLUG             the mplug binary (default: target/release/mplug, built if missing)
#   DATA_PARALLEL=2   micro-batches computed at once, one core each (--data-parallel; the
#                     updates are the same for any value, only the speed changes)
set -euo pipefail

OUT=${1:-runs/tiny-world}
SEED=${SEED:-1}
SIZE=${SIZE:-3000}
PLACES=${PLACES:-8}
STRIDE=${STRIDE:-3}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-450}
PRETRAIN_SPLIT=${PRETRAIN_SPLIT:-2}
MULTITASK_STEPS=${MULTITASK_STEPS:-800}
MULTITASK2_STEPS=${MULTITASK2_STEPS:-250}
MULTITASK3_STEPS=${MULTITASK3_STEPS:-500}
GROUNDING_STEPS=${GROUNDING_STEPS:-1200}
GROUNDING_SIZE=${GROUNDING_SIZE:-12000}
TOWER_STEPS=${TOWER_STEPS:-1500}
TOWER_LR=${TOWER_LR:-3e-4}
PRETRAIN_LR=${PRETRAIN_LR:-3e-4}
MULTITASK_LR=${MULTITASK_LR:-5e-4}
MULTITASK2_LR=${MULTITASK2_LR:-2e-4}
MULTITASK3_LR=${MULTITASK3_LR:-2e-4}
VIDEO_STEPS=${VIDEO_STEPS:-300}
GROUNDING=${GROUNDING:-1}
MPLUG=${MPLUG:-target/release/mplug}
DATA_PARALLEL=${DATA_PARALLEL:-2}
DATA=${DATA:-$OUT/world}
MODEL_CONFIG=${MODEL_CONFIG:-}
if [ -n "$MODEL_CONFIG" ]; then model=(--config "$MODEL_CONFIG"); else model=(--preset tiny); fi
INIT_TOWER=${INIT_TOWER:-}
if [ -n "$INIT_TOWER" ]; then
  TOWER_STEPS=0 # the tower is given: no tower stage
elif [ "$TOWER_STEPS" -gt 0 ]; then
  INIT_TOWER=$OUT/tower/tower.safetensors
fi
if [ -n "$INIT_TOWER" ]; then
  model+=(--init-clip "$INIT_TOWER")
elif [ "${SINCOS_POSITIONS:-1}" = 1 ]; then
  model+=(--sincos-positions)
fi

if [ ! -x "$MPLUG" ]; then
  cargo build --release
fi
mkdir -p "$OUT"
start=$(date +%s)
stage() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$OUT/stages.log"; }

if [ ! -f "$DATA/world.json" ]; then
  stage "generate the world (seed $SEED, $SIZE training images)"
  "$MPLUG" data generate "$DATA" --seed "$SEED" --size "$SIZE" --places "$PLACES"
fi

# A stage whose model folder exists is skipped: running the script again continues.
done_() { [ -f "$1/model/model.safetensors" ]; }

# A bigger world of the same seed for the tower stage, the third multi-task round and the
# grounding round: its train split begins with this world's training images and holds no val,
# test or held-out image of it (each split has its own seed stream).
LONE=$OUT/lone-world
if [ "$TOWER_STEPS" -gt 0 ] || [ "$GROUNDING_STEPS" -gt 0 ] || [ "$MULTITASK3_STEPS" -gt 0 ]; then
  if [ ! -f "$LONE/world.json" ]; then
    stage "generate $GROUNDING_SIZE training images (seed $SEED) for the tower stage, the third round and the grounding round"
    "$MPLUG" data generate "$LONE" --seed "$SEED" --size "$GROUNDING_SIZE" --clips 0 --places "$PLACES"
  fi
fi

# The released models' tower comes from CLIP; this world's comes from learning which shapes,
# colours and colour-shape pairs each image holds (a sigmoid per label on the class token).
if [ "$TOWER_STEPS" -gt 0 ] && [ ! -f "$OUT/tower/tower.safetensors" ]; then
  stage "pre-train the visual tower alone on the images' labels, $TOWER_STEPS updates"
  "$MPLUG" pretrain-tower --preset tiny --sincos-positions \
    --data "$LONE/labels_train.json" --image-root "$LONE" --output "$OUT/tower" \
    --eval "$LONE/labels_val.json" \
    --steps "$TOWER_STEPS" --batch-size 16 --accumulate 2 --lr1 "$TOWER_LR" --lr2 "$TOWER_LR" \
    --warmup 40 --save-every 500 --workers 1 --seed 1 \
    --data-parallel $((DATA_PARALLEL < 2 ? DATA_PARALLEL : 2)) --no-augment --no-dropout
fi

# No augmentation: the world's texts name counts, positions and exact colours, which the
# reference's crops and colour operations would falsify, and these runs see each image only a
# few times. No dropout either: a model this small, trained this briefly, underfits. In-batch ITC (--queue-size 0): the momentum encoders (EMA 0.995) and feature queues serve
# runs of many thousand updates; in a few hundred the momentum copy hardly moves from its
# random start, and its queued features and distillation targets would be noise.
done_ "$OUT/pretrain" || {
stage "pre-train: ITC + ITM + MLM + PrefixLM, $PRETRAIN_STEPS updates"
"$MPLUG" pretrain "${model[@]}" --stride-layer "$STRIDE" --vocab "$DATA/vocab.txt" \
  --data "$DATA/pretrain.json" --image-root "$DATA" --output "$OUT/pretrain" \
  --steps "$PRETRAIN_STEPS" --batch-size $((32 / PRETRAIN_SPLIT)) --accumulate "$PRETRAIN_SPLIT" \
  --lr1 "$PRETRAIN_LR" --lr2 "$PRETRAIN_LR" --warmup 40 \
  --clip 1.0 --queue-size 0 --max-len 30 --save-every 100 --workers 1 --seed 1 \
  --data-parallel $((DATA_PARALLEL < PRETRAIN_SPLIT ? DATA_PARALLEL : PRETRAIN_SPLIT)) \
  --no-augment --no-dropout
}

# The tasks of a multi-task round on the world in $1, from its own annotation files (into the
# array `tasks`).
tasks_of() {
  tasks=(--data caption="$1/caption_train.json" --data vqa="$1/vqa_train.json"
    --data retrieval="$1/retrieval_train.json")
  if [ "$GROUNDING" = 1 ]; then
    tasks+=(--data grounding="$1/grounding_train.json" --prefix-token "[unused0]" --bins 64)
  fi
}

# One multi-task round: multitask_round MODEL WORLD OUT STEPS LR WARMUP SEED.
multitask_round() {
  tasks_of "$2"
  "$MPLUG" finetune multitask --model "$1" "${tasks[@]}" \
    --image-root "$2" --output "$3" \
    --steps "$4" --batch-size 16 --lr1 "$5" --lr2 "$5" --warmup "$6" \
    --max-len 30 --save-every 100 --workers 1 --seed "$7" --data-parallel "$DATA_PARALLEL" \
    --no-augment --no-dropout
}

done_ "$OUT/multitask" || {
tasks_of "$DATA"
stage "fine-tune ${tasks[*]} jointly, $MULTITASK_STEPS updates"
multitask_round "$OUT/pretrain/model" "$DATA" "$OUT/multitask" "$MULTITASK_STEPS" "$MULTITASK_LR" 20 2
}

# A second round at a lower learning rate (a warm restart of the cosine schedule).
final="$OUT/multitask"
if [ "$MULTITASK2_STEPS" -gt 0 ]; then
  final="$OUT/multitask2"
  done_ "$final" || {
  stage "fine-tune the same tasks again, $MULTITASK2_STEPS updates at a lower learning rate"
  multitask_round "$OUT/multitask/model" "$DATA" "$final" "$MULTITASK2_STEPS" "$MULTITASK2_LR" 10 4
  }
fi

# A third round on the bigger world's 12000 images (the same four tasks, its own annotations):
# more scenes than the 3000 the first rounds saw a few times each. It raises CIDEr, VQA and
# retrieval on the test split (README, "What the table says").
if [ "$MULTITASK3_STEPS" -gt 0 ]; then
  done_ "$OUT/multitask3" || {
  stage "fine-tune the same tasks on the $GROUNDING_SIZE images of $LONE, $MULTITASK3_STEPS updates"
  multitask_round "$final/model" "$LONE" "$OUT/multitask3" "$MULTITASK3_STEPS" "$MULTITASK3_LR" 10 7
  }
  final="$OUT/multitask3"
fi

stage "write the f16 model folder"
"$MPLUG" convert "$final/model" "$OUT/mplug-tiny-world" --dtype f16 --force
stage "the default model is ready: $OUT/mplug-tiny-world"

# Grounding gets its own folder. Multi-object scenes alone leave the decoder on a plateau
# (boxes near the mean box, centres uncorrelated with the objects') for well over a thousand
# updates; one object per scene breaks it after a few hundred, and what it learns there
# carries over to scenes of several objects (README, "What the table says"). The 3000-image
# world holds only about 700 single-object expressions, which a round this long learns by
# heart, so the round trains on the single-object scenes of the bigger world above.
if [ "$GROUNDING_STEPS" -gt 0 ]; then
  "$(dirname "$0")/lone-objects.sh" "$LONE" train > "$OUT/lone_train.json"
  done_ "$OUT/grounding" || {
  stage "fine-tune grounding alone on $(jq length "$OUT/lone_train.json") single-object expressions, $GROUNDING_STEPS updates"
  "$MPLUG" finetune grounding --model "$final/model" --data "$OUT/lone_train.json" \
    --image-root "$LONE" --output "$OUT/grounding" --prefix-token "[unused0]" --bins 64 \
    --steps "$GROUNDING_STEPS" --batch-size 16 --accumulate 2 --lr1 5e-4 --lr2 5e-4 --warmup 20 \
    --save-every 400 --workers 1 --seed 5 --data-parallel $((DATA_PARALLEL < 2 ? DATA_PARALLEL : 2)) \
    --no-augment --no-dropout
  }
  stage "write the f16 grounding folder"
  "$MPLUG" convert "$OUT/grounding/model" "$OUT/mplug-tiny-world-grounding" --dtype f16 --force
  stage "the grounding model is ready: $OUT/mplug-tiny-world-grounding"
fi

# The clip round starts from the shipped f16 folder, so that the README's command from
# models/mplug-tiny-world gives the same weights without running this script.
if [ "$VIDEO_STEPS" -gt 0 ] && ! done_ "$OUT/video"; then
  stage "fine-tune on clips (video QA + video retrieval), $VIDEO_STEPS updates"
  "$MPLUG" finetune multitask --model "$OUT/mplug-tiny-world" \
    --data videoqa="$DATA/videoqa_train.jsonl" --data videoretrieval="$DATA/videoretrieval_train.jsonl" \
    --frames 8 --image-root "$DATA" --output "$OUT/video" \
    --steps "$VIDEO_STEPS" --batch-size 4 --lr1 2e-4 --lr2 2e-4 --warmup 10 \
    --max-len 30 --save-every 100 --workers 1 --seed 3 --data-parallel "$DATA_PARALLEL" \
    --no-augment --no-dropout
fi
stage "done"
