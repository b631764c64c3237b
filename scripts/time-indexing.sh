#!/usr/bin/env bash
# Indexing speed: `mplug index DIR` from scratch with each given binary in turn, alternating over
# ROUNDS rounds (default 3), printing images/s per run. The index goes to a temporary folder;
# DIR is only read. Nothing else should run meanwhile.
#
# Usage: scripts/time-indexing.sh DIR [MPLUG...]   (default: target/release/mplug)
#   e.g. an older build against this one:
#   scripts/time-indexing.sh ~/Pictures /tmp/old/mplug target/release/mplug
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/time-indexing.sh DIR [MPLUG...]}
shift
binaries=("$@")
[ ${#binaries[@]} -gt 0 ] || binaries=(target/release/mplug)
rounds=${ROUNDS:-3}
images=$(find "$dir" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' -o -iname '*.webp' \) \
    -not -path '*/.*' | wc -l)
echo "$images images under $dir" >&2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$rounds"); do
    for b in "${binaries[@]}"; do
        rm -rf "$out/index"
        start=$(date +%s.%N)
        "$b" index "$dir" --index "$out/index" --quiet >/dev/null
        end=$(date +%s.%N)
        python3 -c "import sys; s = float(sys.argv[2]) - float(sys.argv[1]); \
print(f'round {sys.argv[3]}: {sys.argv[4]}: {int(sys.argv[5]) / s:.1f} images/s ({s:.2f} s)')" \
            "$start" "$end" "$r" "$b" "$images"
    done
done
