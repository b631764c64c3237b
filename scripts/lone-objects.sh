#!/usr/bin/env bash
# The grounding expressions of a generated world's single-object scenes, as a grounding
# annotation file on standard output.
#
#   scripts/lone-objects.sh WORLD SPLIT > lone_SPLIT.json     # SPLIT: train, test, heldout, ...
set -euo pipefail
WORLD=$1
SPLIT=$2
jq --slurpfile s "$WORLD/scenes.json" \
  '($s[0] | map(select((.objects | length) == 1) | {key: .image, value: true}) | from_entries)
   as $one | map(select($one[.image]))' \
  "$WORLD/grounding_$SPLIT.json"
