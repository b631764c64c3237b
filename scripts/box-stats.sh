#!/usr/bin/env bash
# What a grounding model's boxes get right: from the predictions.jsonl that `mplug eval
# grounding --output DIR` writes, the Pearson correlation of predicted and true box centres
# (x and y) and widths, and how many boxes repeat their x centre as y centre (a degenerate
# answer of a decoder that copies its previous coordinate token; rare in the data).
#
#   scripts/box-stats.sh DIR/predictions.jsonl
set -euo pipefail
P=$1

# Pearson correlation of a predicted and a true box quantity (a jq expression of a box).
corr() {
  jq -s "[.[] | {p: (.box | $1), t: (.target | $1)}] as \$r | (\$r | length) as \$n
    | (\$r | map(.p) | add / \$n) as \$mp | (\$r | map(.t) | add / \$n) as \$mt
    | (\$r | map((.p - \$mp) * (.t - \$mt)) | add)
      / (((\$r | map((.p - \$mp) * (.p - \$mp)) | add)
          * (\$r | map((.t - \$mt) * (.t - \$mt)) | add)) | sqrt)
    | . * 1000 | round / 1000" "$P"
}
echo "centre x r = $(corr '(.[0] + .[2]) / 2'), centre y r = $(corr '(.[1] + .[3]) / 2')," \
  "width r = $(corr '.[2] - .[0]')," \
  "boxes with cx = cy: $(jq -s 'map(select(.box[0] + .box[2] == .box[1] + .box[3])) | length' "$P")" \
  "of $(jq -s length "$P")"
