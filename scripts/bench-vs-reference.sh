#!/usr/bin/env bash
# mplug-rs beside the anchors of ../shared/bench/ (the reference PyTorch mPLUG, ONNX Runtime and
# OpenVINO running the reference's visual tower), alternating the two sides over ROUNDS rounds on
# the same machine with the same threads, then one table of ratios (the fastest peer's median time
# over ours: above 1 means mplug-rs is faster). A second table puts mplug-rs with bf16 weights
# (`--dtype bf16`) beside the peers in f32 and in bf16 (PyTorch's bf16 autocast, OpenVINO's bf16
# hint); BF16=0 leaves it out. A third puts mplug-rs with int8 weights (`--dtype int8`) beside
# the same peers (the anchors have no int8 set-up); INT8=0 leaves it out. Not run by CI: it needs
# the reference environment and about 7-8 minutes per round on 2 cores.
#
# Usage: scripts/bench-vs-reference.sh            (THREADS=2 ROUNDS=2 by default)
# Environment:
#   REF        the reference set-up of ../shared/bench/README.md (default /tmp/ref: REF/src/mPLUG,
#              REF/env/bin/python)
#   REF_ONNX_DIR  the exported ONNX towers (default REF/onnx; made by `refvit.py ... export`)
#   BENCH_DIR  the anchors' scripts (default: ../shared/bench beside the checkout)
#   THREADS, ROUNDS, MPLUG (the binary; default target/release/mplug, built with FEATURES)
#   BF16       1 (default) for the bf16 table, 0 without
#   INT8       1 (default) for the int8 table, 0 without
#   FEATURES   cargo features of that build (default: dnnl when libdnnl-dev is installed)
#   OUT        where the raw JSON lines go (default a temporary file; its path is printed)
# Set-up, once (about 5 minutes, mostly downloads), as ../shared/bench/README.md says:
#   fetch github:alibaba/AliceMind with the search tool -> bare git dir M
#   bash ../shared/bench/setup_ref.sh M /tmp/ref
#   /tmp/ref/env/bin/python ../shared/bench/refvit.py /tmp/ref/src/mPLUG 2 export
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REF=${REF:-/tmp/ref}
export REF_ONNX_DIR=${REF_ONNX_DIR:-$REF/onnx}
BENCH_DIR=${BENCH_DIR:-$ROOT/../shared/bench}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
BF16=${BF16:-1}
INT8=${INT8:-1}
MPLUG=${MPLUG:-$ROOT/target/release/mplug}
PY=$REF/env/bin/python
SRC=$REF/src/mPLUG

missing=()
[ -x "$PY" ] || missing+=("the reference's Python at $PY")
[ -d "$SRC/models" ] || missing+=("the reference's code at $SRC")
[ -f "$BENCH_DIR/refbench.py" ] || missing+=("the anchors' scripts at $BENCH_DIR")
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench-vs-reference: the reference environment is missing, nothing was timed:" >&2
    for m in "${missing[@]}"; do echo "  - not found: $m" >&2; done
    echo "Set it up as the comment at the top of $0 says (or ../shared/bench/README.md), or point REF/BENCH_DIR at it." >&2
    exit 0
fi
onnx=1
if [ ! -f "$REF_ONNX_DIR/vit_b16_384_b1.onnx" ] || [ ! -f "$REF_ONNX_DIR/vit_b16_384_b8.onnx" ]; then
    echo "bench-vs-reference: no exported ONNX towers in $REF_ONNX_DIR; ONNX Runtime and OpenVINO are left out" >&2
    echo "  (make them once: $PY $BENCH_DIR/refvit.py $SRC $THREADS export)" >&2
    onnx=0
fi
# mplug-rs as built with FEATURES (default: `dnnl` where oneDNN is installed, as Debian's
# libdnnl-dev puts it; FEATURES= for the pure-Rust default build). A given MPLUG is used as is.
if [ "$MPLUG" = "$ROOT/target/release/mplug" ]; then
    if [ -z "${FEATURES+set}" ]; then
        FEATURES=$([ -e /usr/include/dnnl.h ] && echo dnnl || echo "")
    fi
    (cd "$ROOT" && cargo build --release -q -p mplug-cli ${FEATURES:+--features "$FEATURES"})
    echo "bench-vs-reference: mplug-rs built with features: ${FEATURES:-(default)}" >&2
fi
load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")
echo "load average before the run: $load (anything else running spoils the figures)" >&2

OUT=${OUT:-$(mktemp /tmp/bench-vs-reference.XXXXXX.jsonl)}
: >"$OUT"
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
# Each line is tagged with its side and round so that the summary can take medians over rounds.
tag() { python3 -c '
import json, sys
side, rnd = sys.argv[1], int(sys.argv[2])
for line in sys.stdin:
    line = line.strip()
    if line.startswith("{"):
        try: d = json.loads(line)
        except ValueError: continue
        d["side"], d["round"] = side, rnd
        print(json.dumps(d), flush=True)
' "$@" >>"$OUT"; }
mplug_side() {
    echo "round $1: mplug bench" >&2
    "$MPLUG" bench --json --runs 3 --train-steps 2 2>/dev/null | tag mplug "$1"
    if [ "$BF16" = 1 ]; then
        echo "round $1: mplug bench --dtype bf16" >&2
        "$MPLUG" bench --json --runs 3 --dtype bf16 --only tower,caption,vqa 2>/dev/null | tag mplug_bf16 "$1"
    fi
    if [ "$INT8" = 1 ]; then
        echo "round $1: mplug bench --dtype int8" >&2
        "$MPLUG" bench --json --runs 3 --dtype int8 --only tower,caption,vqa 2>/dev/null | tag mplug_int8 "$1"
    fi
}
ref_side() {
    echo "round $1: reference PyTorch (inference, then training)" >&2
    (cd "$SRC" && "$PY" "$BENCH_DIR/refbench.py" "$SRC" "$THREADS" 2>/dev/null) | tag torch "$1"
    (cd "$SRC" && "$PY" "$BENCH_DIR/refbench.py" "$SRC" "$THREADS" train 2>/dev/null) | tag torch "$1"
    if [ $onnx = 1 ]; then
        echo "round $1: ONNX Runtime and OpenVINO" >&2
        (cd "$SRC" && "$PY" "$BENCH_DIR/refvit.py" "$SRC" "$THREADS" ort openvino 2>/dev/null) | tag engines "$1"
    fi
    if [ "$BF16" = 1 ]; then
        echo "round $1: reference tower in PyTorch's bf16 autocast" >&2
        (cd "$SRC" && "$PY" "$BENCH_DIR/refvit.py" "$SRC" "$THREADS" bf16 2>/dev/null) | tag engines "$1"
    fi
}
for r in $(seq 1 "$ROUNDS"); do
    # Alternate which side goes first, so that a slow drift of the machine hits both.
    if [ $((r % 2)) = 1 ]; then mplug_side "$r"; ref_side "$r"; else ref_side "$r"; mplug_side "$r"; fi
done
echo "raw figures: $OUT" >&2

python3 - "$OUT" "$THREADS" "$ROUNDS" <<'EOF'
import json, statistics, sys
path, threads, rounds = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(path) if l.strip()]
def med(side, pred):
    ts = [r["median_s"] for r in rows if r["side"] == side and "median_s" in r and pred(r["name"])]
    return statistics.median(ts) if ts else None
def exact(n): return lambda name: name == n
def engine(prefix, suffix): return lambda name: name.startswith(prefix) and name.endswith(suffix)
work = [
    ("visual tower f32, batch 1, 384 px", exact("vision_b1_384"), {
        "PyTorch": ("torch", exact("vision_b1_384")),
        "ONNX Runtime": ("engines", engine("onnxruntime_", "_f32_vision_b1")),
        "OpenVINO": ("engines", engine("openvino_", "_f32_vision_b1"))}),
    ("visual tower f32, batch 8, 384 px", exact("vision_b8_384"), {
        "PyTorch": ("torch", exact("vision_b8_384")),
        "ONNX Runtime": ("engines", engine("onnxruntime_", "_f32_vision_b8")),
        "OpenVINO": ("engines", engine("openvino_", "_f32_vision_b8"))}),
    ("caption, beam 5, 20 tokens, batch 1", exact("caption_beam5_len20_b1"), {
        "PyTorch": ("torch", exact("caption_beam5_len20_b1"))}),
    ("VQA, beam 5, 10 tokens, batch 1", exact("vqa_beam5_len10_b1"), {
        "PyTorch": ("torch", exact("vqa_beam5_len10_b1"))}),
    ("training step, caption, 256 px, batch 2", exact("caption_train_step_256_b2"), {
        "PyTorch": ("torch", exact("caption_train_step_256_b2"))}),
]
peers = ["PyTorch", "ONNX Runtime", "OpenVINO"]
fmt = lambda x: "" if x is None else f"{x:.3f}"
print(f"\nMedian seconds over {rounds} alternating rounds, {threads} threads (lower is faster); "
      "ratio = fastest peer's time / mplug-rs's time (above 1: mplug-rs is faster).\n")
print("| work | mplug-rs | " + " | ".join(peers) + " | fastest peer / mplug-rs |")
print("|---|---|" + "---|" * len(peers) + "---|")
for title, ours, theirs in work:
    m = med("mplug", ours)
    times = {p: med(*theirs[p]) if p in theirs else None for p in peers}
    known = [t for t in times.values() if t is not None]
    ratio = f"{min(known) / m:.2f}x" if m and known else "n/a"
    print(f"| {title} | {fmt(m)} | " + " | ".join(fmt(times[p]) for p in peers) + f" | {ratio} |")
bf16_peers = {
    "vision_b1_384": [("engines", exact("torch_autocast_bf16_vision_b1")),
                      ("engines", engine("openvino_", "_bf16_vision_b1"))],
    "vision_b8_384": [("engines", exact("torch_autocast_bf16_vision_b8")),
                      ("engines", engine("openvino_", "_bf16_vision_b8"))],
}
def reduced_table(side, label, what):
    """mplug-rs with `label` weights beside the peers in f32 and in bf16."""
    if not any(r["side"] == side for r in rows):
        return
    print(f"\nWith {label} weights (mplug-rs `--dtype {label}`: {what}; peers: PyTorch's bf16 autocast, "
          f"OpenVINO's bf16 hint), median seconds; ratios = the peer's time / mplug-rs {label}'s time.\n")
    print(f"| work | mplug-rs {label} | mplug-rs f32 | fastest f32 peer | PyTorch bf16 | OpenVINO bf16 "
          f"| fastest f32 peer / mplug-rs {label} | fastest bf16 peer / mplug-rs {label} |")
    print("|---|---|---|---|---|---|---|---|")
    for title, ours, theirs in work[:4]:
        name = next(r["name"] for r in rows if ours(r["name"])) if any(ours(r["name"]) for r in rows) else None
        b = med(side, ours)
        f = med("mplug", ours)
        f32_peer = [t for t in (med(*theirs[p]) for p in theirs) if t is not None]
        f32_best = min(f32_peer) if f32_peer else None
        pb = [med(*q) for q in bf16_peers.get(name, [])] + [None, None]
        bf_known = [t for t in pb[:2] if t is not None]
        r1 = f"{f32_best / b:.2f}x" if b and f32_best else "n/a"
        r2 = f"{min(bf_known) / b:.2f}x" if b and bf_known else "n/a"
        print(f"| {title.replace(' f32', '')} | {fmt(b)} | {fmt(f)} | {fmt(f32_best)} | {fmt(pb[0])} | {fmt(pb[1])} | {r1} | {r2} |")
reduced_table("mplug_bf16", "bf16", "linear weights in bf16, products of many rows in bf16 dot products "
              "where the CPU has AVX512-BF16")
reduced_table("mplug_int8", "int8", "linear weights in int8 per output, input rows quantized per call, "
              "integer dot products where the CPU has AVX512-VNNI, the tower's attention in bf16")
extra = [r for r in rows if r["side"] == "mplug" and r["name"].startswith(("itm_", "peak_memory"))]
for name in dict.fromkeys(r["name"] for r in extra):
    vals = [r for r in extra if r["name"] == name]
    if name.startswith("itm_"):
        print(f"\nmplug-rs {name}: {statistics.median(r['pairs_per_s'] for r in vals):.1f} pairs/s", end="")
    elif vals[-1].get("bytes"):
        print(f"\nmplug-rs {name}: {max(r['bytes'] for r in vals) / 1e9:.2f} GB", end="")
print()
EOF
