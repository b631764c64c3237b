"""Drives `mplug serve` through OpenAI's own Python library, as an existing client would.

Usage: python openai_client.py BASE_URL IMAGE_PNG
Prints one JSON object with what the library returned; the Rust test compares it with the
command line's answers.
"""

import base64
import json
import sys

import openai

base_url, image_path = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
with open(image_path, "rb") as f:
    url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
image = {"type": "image_url", "image_url": {"url": url}}

out = {}
out["models"] = [m.id for m in client.models.list()]

caption = client.chat.completions.create(
    model="mplug", messages=[{"role": "user", "content": [image]}]
)
out["caption"] = caption.choices[0].message.content
out["caption_finish"] = caption.choices[0].finish_reason
out["caption_usage"] = caption.usage.total_tokens

answer = client.chat.completions.create(
    model="mplug-vqa",
    n=2,
    max_tokens=5,
    messages=[
        {"role": "system", "content": "You answer questions about images."},
        {"role": "user", "content": [{"type": "text", "text": "what color is the circle?"}, image]},
    ],
)
out["answers"] = [c.message.content for c in answer.choices]

stream = client.chat.completions.create(
    model="mplug",
    stream=True,
    messages=[{"role": "user", "content": [image]}],
)
out["streamed"] = "".join(
    chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
)

emb = client.embeddings.create(model="mplug-retrieval", input=["a red circle", url])
out["embeddings"] = [e.embedding for e in emb.data]

try:
    client.chat.completions.create(model="mplug", messages=[{"role": "user", "content": "hi"}])
    out["no_image_error"] = None
except openai.APIStatusError as e:
    out["no_image_error"] = [e.status_code, e.message]

print(json.dumps(out))
