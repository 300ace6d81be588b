"""Checks `cliprt embed` against HF transformers in float64 on seeded random models at real CLIP shapes.

    tools/.venv/bin/python tools/parity.py --arch vit-b-32 vit-b-16 vit-l-14 [--cliprt target/release/cliprt]

Models are generated into tools/models/<arch> (not committed); images are harsh synthetic PNGs of assorted sizes
and texts a mix of short and over-long prompts. Prints, per model, the worst cosine and the worst max-abs
difference of the L2-normalized embeddings.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import clipref as R  # noqa: E402
from transformers import CLIPModel  # noqa: E402

ARCHS = {
    # (text width, text heads, vision width, vision layers, vision heads, image, patch, projection)
    "vit-b-32": (512, 8, 768, 12, 12, 224, 32, 512),
    "vit-b-16": (512, 8, 768, 12, 12, 224, 16, 512),
    "vit-l-14": (768, 12, 1024, 24, 16, 224, 14, 768),
}
TEXTS = ["a photo of a cat.", "a diagram", "A black and white photo of a very old car parked by the sea!",
         "🙂 emoji and CJK 日本", "" , "word " * 100]


def build(arch, out):
    tw, th, vw, vl, vh, img, patch, proj = ARCHS[arch]
    cfg = R.make_config(
        dict(hidden_size=tw, intermediate_size=4 * tw, num_hidden_layers=12, num_attention_heads=th),
        dict(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=vl, num_attention_heads=vh,
             image_size=img, patch_size=patch), projection_dim=proj)
    model = R.randomize(CLIPModel(cfg).double(), seed=sum(arch.encode())).eval()
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        os.makedirs(out, exist_ok=True)
        model.float().save_pretrained(out)
        R.build_tokenizer().save_pretrained(out)
    return model.double()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", nargs="+", default=list(ARCHS))
    ap.add_argument("--cliprt", default="target/release/cliprt")
    ap.add_argument("--models", default=os.path.join(os.path.dirname(__file__), "models"))
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [(640, 480), (333, 1000), (224, 224), (150, 200)]
        paths = []
        for i, (w, h) in enumerate(sizes):
            p = os.path.join(tmp, f"img{i}.png")
            R.harsh_image(w, h, 500 + i).save(p)
            paths.append(p)
        for arch in args.arch:
            d = os.path.join(args.models, arch)
            model = build(arch, d)
            tok = R.build_tokenizer()
            img_ref = R.image_embeds(model, R.pixels_of(R.processor({}), paths))
            txt_ref = R.text_embeds(model, tok, TEXTS, 77)
            oi, ot = os.path.join(tmp, "i.npy"), os.path.join(tmp, "t.npy")
            cmd = [args.cliprt, "embed", "--model", d, "--out-image", oi, "--out-text", ot, "--no-normalize"]
            for p in paths:
                cmd += ["--image", p]
            for t in TEXTS:
                cmd += ["--text", t]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            row = {}
            for what, got, ref in [("image", np.load(oi), img_ref), ("text", np.load(ot), txt_ref)]:
                g, r = R.normalize(got.astype(np.float64)), R.normalize(ref)
                row[what] = {"worst_cosine": float(np.min(np.sum(g * r, axis=1))),
                             "worst_max_abs": float(np.max(np.abs(g - r)))}
            results[arch] = row
            print(arch, json.dumps(row), flush=True)
    ok = all(v[w]["worst_cosine"] >= 0.99999 and v[w]["worst_max_abs"] <= 1e-4 for v in results.values() for w in v)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
