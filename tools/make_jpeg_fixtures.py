"""JPEG fixtures (tests/fixtures/jpeg): files written by PIL's encoder (libjpeg-turbo) in every layout PIL writes,
and what PIL 13 decodes from each (`Image.open(p).convert("RGB")`, stored as PNG, which cliprt decodes bit-exactly).

Also `tiny-openai_image_embeds.npy`: HF's float64 image embeddings of each file by the tiny-openai fixture model.
(tools/parity.py checks JPEG embeddings at real shapes.)

Run from the repository root with the tools venv: `tools/.venv/bin/python tools/make_jpeg_fixtures.py`
(after tools/make_fixtures.py, whose tiny-openai model it loads).
"""

import io
import json
import os
import shutil

import numpy as np
import torch
from PIL import Image, features

import clipref as R
from transformers import CLIPModel

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "jpeg")


def photo(w, h, seed):
    """A smooth photo-like picture with a few hard edges: JPEG's usual input (pure noise would be its worst)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(3):
        v = 128 + 90 * np.sin(x / (7 + 5 * c) + y / (11 + 3 * c)) + 30 * np.cos((x - y) / 19.0)
        v += rng.normal(0, 6, (h, w))
        v[(y // 9 + x // 13) % 5 == 0] = 250 - 240 * (c == 1)
        chans.append(v)
    return Image.fromarray(np.clip(np.stack(chans, -1), 0, 255).round().astype(np.uint8), "RGB")


def cases():
    """(file name, PIL image, save options). Odd sizes leave partial MCUs at the right and bottom edges, where the
    upsamplers replicate the last column and row."""
    rgb = photo(97, 61, 1)
    big = photo(320, 240, 2)
    return [
        ("baseline_444.jpg", rgb, dict(quality=92, subsampling=0)),
        ("baseline_422.jpg", rgb, dict(quality=92, subsampling=1)),
        ("baseline_420.jpg", rgb, dict(quality=92, subsampling=2)),
        ("progressive_444.jpg", rgb, dict(quality=85, subsampling=0, progressive=True)),
        ("progressive_422.jpg", rgb, dict(quality=85, subsampling=1, progressive=True)),
        ("progressive_420.jpg", rgb, dict(quality=85, subsampling=2, progressive=True)),
        ("restart_420.jpg", photo(123, 77, 3), dict(quality=75, subsampling=2, restart_marker_blocks=3)),
        ("optimized_420.jpg", photo(64, 48, 4), dict(quality=60, subsampling=2, optimize=True)),
        ("low_quality_420.jpg", photo(50, 70, 5), dict(quality=10, subsampling=2)),
        ("grey.jpg", rgb.convert("L"), dict(quality=90)),
        ("grey_progressive.jpg", photo(45, 38, 6).convert("L"), dict(quality=90, progressive=True)),
        # PIL writes CMYK with an Adobe marker and inverted values, as Photoshop does.
        ("cmyk.jpg", photo(58, 41, 7).convert("CMYK"), dict(quality=90)),
        ("big_420.jpg", big, dict(quality=90, subsampling=2)),
        ("big_progressive_444.jpg", big, dict(quality=90, subsampling=0, progressive=True)),
    ]


def main():
    assert features.check_feature("libjpeg_turbo"), "the PIL contract is libjpeg-turbo's decoder"
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    names = []
    for name, img, opts in cases():
        buf = io.BytesIO()
        img.save(buf, "JPEG", **opts)
        path = os.path.join(OUT, name)
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        decoded = Image.open(path)
        decoded.convert("RGB").save(os.path.join(OUT, name.replace(".jpg", ".pil.png")))
        names.append(name)
        print(f"{name}: {decoded.mode} {decoded.size} {len(buf.getvalue())} bytes")
    paths = [os.path.join(OUT, n) for n in names]

    tiny = os.path.join(ROOT, "tiny-openai")
    with open(os.path.join(tiny, "preprocessor_config.json")) as f:
        pre = json.load(f)
    model = CLIPModel.from_pretrained(tiny).double().eval()
    with torch.no_grad():
        embeds = R.image_embeds(model, R.pixels_of(R.processor(pre), paths))
    R.save_npy(os.path.join(OUT, "tiny-openai_image_embeds.npy"), embeds.astype(np.float64))
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"images": names, "pil": Image.__version__, "libjpeg": features.version("jpg")}, f, indent=0)


if __name__ == "__main__":
    main()
