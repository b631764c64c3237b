#!/usr/bin/env bash
# golden-variant.sh SRC DEST [DROP]
#
# Makes DEST, a copy of the golden folder SRC (layout: SRC/README.md) that no test can pass by
# naming what the committed copy holds:
#   - every image in io/images/ is renamed (img<N>_variant.<same extension>), and every file that
#     names one is rewritten to match: JSON string values equal to an old file name
#     (io/preprocess.json "file"); tensors named after an image (io/*.safetensors names
#     "<stem>_<suffix>", e.g. preprocess_io's camera_384) are renamed tensor<N>_variant, and so
#     are the JSON strings that name them ("key");
#   - the configuration folder DROP (default: the first one, sorted, that holds a config.json) is
#     left out, and every other one is renamed cfg<N>_variant, with the "config" fields of its JSON
#     files rewritten to the new name.
# Tensors, numbers and configurations are byte for byte those of SRC: tests that read the golden
# folder through MPLUG_GOLDEN_DIR must pass on DEST exactly as on SRC.
#
#   scripts/golden-variant.sh tests/fixtures/golden /tmp/golden-variant
#   MPLUG_GOLDEN_DIR=/tmp/golden-variant cargo test -p mplug --test golden_model
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 SRC DEST [DROP]" >&2
    exit 2
fi
src=$1
dest=$2
drop=${3:-}
[ -d "$src/io/images" ] || { echo "error: $src has no io/images folder" >&2; exit 1; }
if [ -e "$dest" ] && [ -n "$(ls -A "$dest")" ]; then
    echo "error: $dest exists and is not empty" >&2
    exit 1
fi

python3 - "$src" "$dest" "$drop" <<'PY'
import json, os, shutil, struct, sys

src, dest, drop = sys.argv[1:4]

configs = sorted(d for d in os.listdir(src) if os.path.isfile(os.path.join(src, d, "config.json")))
if len(configs) < 2:
    sys.exit(f"error: {src} holds {len(configs)} configuration folder(s); dropping one needs two")
drop = drop or configs[0]
if drop not in configs:
    sys.exit(f"error: {drop} is not a configuration folder of {src} ({', '.join(configs)})")
kept = [c for c in configs if c != drop]
config_names = {c: f"cfg{i}_variant" for i, c in enumerate(kept)}

images = sorted(os.listdir(os.path.join(src, "io", "images")))
image_names = {}
for i, name in enumerate(images):
    stem, ext = os.path.splitext(name)
    image_names[name] = f"img{i}_variant{ext}"
stems = [os.path.splitext(name)[0] for name in images]


def rename_tensor(key):
    """A tensor named after an image (<stem>_<suffix>) gets a name unrelated to any file's, so
    that only the JSON naming it ("key") finds it."""
    if not any(key.startswith(stem + "_") for stem in stems):
        return key
    return f"tensor{len(tensor_names)}_variant"


tensor_names = {}


def rewrite_safetensors(path_in, path_out):
    with open(path_in, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    new = {}
    for key, value in header.items():
        new_key = key if key == "__metadata__" else rename_tensor(key)
        if new_key != key:
            tensor_names[key] = new_key
        assert new_key not in new, f"{path_in}: two tensors would be named {new_key}"
        new[new_key] = value
    text = json.dumps(new, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the header is padded to 8 bytes with spaces
    with open(path_out, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data[8 + n :])


def rewrite_json(value, config=None):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            k2 = image_names.get(k, tensor_names.get(k, k))
            if k == "config" and config is not None and v == config[0]:
                out[k2] = config[1]
            else:
                out[k2] = rewrite_json(v, config)
        return out
    if isinstance(value, list):
        return [rewrite_json(v, config) for v in value]
    if isinstance(value, str):
        return image_names.get(value, tensor_names.get(value, value))
    return value


os.makedirs(dest, exist_ok=True)
jsons = []
for root, dirs, files in os.walk(src):
    rel = os.path.relpath(root, src)
    parts = [] if rel == "." else rel.split(os.sep)
    if parts and parts[0] == drop:
        dirs[:] = []
        continue
    config = None
    if parts and parts[0] in config_names:
        config = (parts[0], config_names[parts[0]])
        parts[0] = config_names[parts[0]]
    out_root = os.path.join(dest, *parts)
    os.makedirs(out_root, exist_ok=True)
    in_images = parts == ["io", "images"]
    for name in files:
        path_in = os.path.join(root, name)
        path_out = os.path.join(out_root, image_names[name] if in_images else name)
        if name.endswith(".safetensors") and parts[:1] == ["io"]:
            rewrite_safetensors(path_in, path_out)
        elif name.endswith(".json"):
            jsons.append((path_in, path_out, config))
        else:
            shutil.copyfile(path_in, path_out)

# JSON files last: they may name tensors renamed above.
for path_in, path_out, config in jsons:
    with open(path_in) as f:
        value = json.load(f)
    with open(path_out, "w") as f:
        json.dump(rewrite_json(value, config), f)

renamed = ", ".join(f"{o} -> {n}" for o, n in config_names.items())
print(f"{dest}: configurations {renamed}; {drop} dropped")
print(f"{dest}: images {', '.join(f'{o} -> {n}' for o, n in image_names.items())}")
PY
