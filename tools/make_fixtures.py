"""Builds tests/fixtures: a shared tokenizer.json, tiny seeded CLIP models (OpenAI-like, exotic, f16, bf16), test
images, and their reference outputs computed with HF transformers (float64) + PIL.

    python3 -m venv tools/.venv && tools/.venv/bin/pip install -r tools/requirements.txt
    tools/.venv/bin/python tools/make_fixtures.py          # rewrites tests/fixtures
"""

import json
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import clipref as R  # noqa: E402
from transformers import CLIPModel  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

TEXTS = [
    "a photo of a cat", "A PHOTO OF A DOG!", "", " ", "hello world", "It's", "they'll go, we'd stay; I'm here",
    "don't won't can't shouldn't", "it’s curly", "numbers 1234567890 and 3.14159", "2024-11-26T12:00:00Z",
    "café", "cafe\u0301", "naïve résumé", "Ångström", "Straße", "😀", "👨‍👩‍👧‍👦 family", "👍🏽 ok", "🇫🇷 flag",
    "日本語のテキスト", "中文文本测试", "한국어", "Привет, мир", "Γειά σου Κόσμε", "שלום", "مرحبا", "हिन्दी",
    "&amp; &lt;tag&gt; &quot;q&quot;", "<b>bold</b>", "Ã©tÃ© mojibake", "ﬁne ligature", "tab\there", "new\nline",
    "multiple     spaces", "\u00a0nbsp\u2003emspace", "  leading and trailing  ", "UPPER lower MiXeD",
    "punctuation!!! ??? ... ,,, ;;;", "a-b_c/d\\e|f", "email@example.com", "https://example.com/path?q=1&r=2",
    "#hashtag @mention $money 100%", "<|startoftext|>", "<|endoftext|>", "mid <|endoftext|> text",
    "x" * 300, "the " * 90, " ".join(str(i) for i in range(120)), "a photo of " + "very " * 100 + "big cat",
    "C++ and C# and F#", "snake_case_identifier", "camelCaseIdentifier", "ALLCAPS", "ümlaut Ölçü",
    "zero\u200bwidth", "🙂" * 40,
]


def save_model(model, tok, dirname, pre, dtype=None):
    d = os.path.join(ROOT, dirname)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    m = model if dtype is None else model.to(dtype)
    m.save_pretrained(d)
    os.symlink("../tokenizer.json", os.path.join(d, "tokenizer.json"))
    if pre is not None:
        with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
            json.dump(pre, f, indent=2)
    return d


def write_refs(d, model64, tok, pre, images, texts, context):
    """Reference ids, pixels and embeddings for one model folder, from weights already rounded as stored."""
    ref = os.path.join(d, "reference")
    os.makedirs(ref, exist_ok=True)
    proc = R.processor(pre or {})
    paths = [os.path.join(ROOT, "images", f) for f in images]
    pixels = R.pixels_of(proc, paths)
    img = R.image_embeds(model64, pixels)
    txt = R.text_embeds(model64, tok, texts, context)
    ids = [tok(t, truncation=True, max_length=context)["input_ids"] for t in texts]
    scale = float(model64.logit_scale.exp())
    logits = scale * R.normalize(img) @ R.normalize(txt).T
    R.save_npy(os.path.join(ref, "pixels.npy"), pixels)
    R.save_npy(os.path.join(ref, "image_embeds.npy"), img)
    R.save_npy(os.path.join(ref, "text_embeds.npy"), txt)
    R.save_npy(os.path.join(ref, "logits.npy"), logits)
    with open(os.path.join(ref, "manifest.json"), "w") as f:
        json.dump({"images": images, "texts": texts, "ids": ids, "logit_scale": scale}, f, ensure_ascii=False, indent=0)
    cos_img = R.normalize(img) @ R.normalize(img).T
    cos_txt = R.normalize(txt) @ R.normalize(txt).T
    off = lambda c: float(np.mean(c[~np.eye(len(c), dtype=bool)]))  # noqa: E731
    print(f"{os.path.basename(d)}: mean off-diagonal cosine images {off(cos_img):.3f}, texts {off(cos_txt):.3f}")


def make_images():
    d = os.path.join(ROOT, "images")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    specs = [
        ("square.png", 50, 50, "RGB"), ("landscape.png", 64, 40, "RGB"), ("portrait.png", 30, 90, "RGB"),
        ("upscale.png", 20, 14, "RGB"), ("one_wide.png", 1, 40, "RGB"), ("grey.png", 45, 38, "L"),
        ("grey_alpha.png", 41, 44, "LA"), ("rgba.png", 52, 47, "RGBA"), ("grey16.png", 39, 43, "I;16"),
    ]
    for i, (name, w, h, mode) in enumerate(specs):
        R.harsh_image(w, h, 100 + i, mode).save(os.path.join(d, name))
    R.save_rgb16_png(os.path.join(d, "rgb16.png"), 37, 48, 7)
    # Real-resolution inputs for the 224 preprocessing check (both of Pillow 13's pass orders).
    for i, (name, w, h) in enumerate([("big_landscape.png", 640, 480), ("big_portrait.png", 333, 1000),
                                      ("big_upscale.png", 200, 150)]):
        R.harsh_image(w, h, 200 + i).save(os.path.join(d, name))
    R.harsh_image(40, 30, 9).convert("RGB").save(os.path.join(d, "photo.jpg"), quality=92)
    R.harsh_image(40, 30, 10).save(os.path.join(d, "photo.webp"), lossless=True)
    R.harsh_image(33, 21, 11).save(os.path.join(d, "photo.bmp"))
    R.harsh_image(24, 24, 12).convert("P").save(os.path.join(d, "photo.gif"))
    return [s[0] for s in specs] + ["rgb16.png"]


def main():
    torch.manual_seed(0)
    os.makedirs(ROOT, exist_ok=True)
    tok = R.build_tokenizer()
    tok_dir = os.path.join(ROOT, "_tok")
    tok.save_pretrained(tok_dir)
    shutil.move(os.path.join(tok_dir, "tokenizer.json"), os.path.join(ROOT, "tokenizer.json"))
    shutil.rmtree(tok_dir)
    small_images = make_images()

    # OpenAI-like: legacy token ids (eos 2 → argmax pooling), quick_gelu, OpenAI preprocessing at 32 px.
    openai_cfg = R.make_config(
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, hidden_act="quick_gelu"),
        dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3, image_size=32,
             patch_size=8, hidden_act="quick_gelu"),
        projection_dim=24, legacy_ids=True)
    openai_pre = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "resample": 3,
                  "image_mean": R.OPENAI_MEAN, "image_std": R.OPENAI_STD, "do_resize": True, "do_center_crop": True,
                  "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True}
    # Exotic: gelu text tower, odd widths, 8-wide heads, eps 1e-6, context 40, 36 px images with 6 px patches,
    # resize to 40 then crop 36, non-OpenAI mean/std.
    exotic_cfg = R.make_config(
        dict(hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=3, hidden_act="gelu",
             layer_norm_eps=1e-6, max_position_embeddings=40),
        dict(hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_attention_heads=5, image_size=36,
             patch_size=6, hidden_act="quick_gelu", layer_norm_eps=1e-6),
        projection_dim=20)
    exotic_pre = {"size": {"shortest_edge": 40}, "crop_size": {"height": 36, "width": 36}, "resample": 3,
                  "image_mean": [0.45, 0.5, 0.55], "image_std": [0.22, 0.25, 0.28]}

    for name, cfg, pre, seed, low in [("tiny-openai", openai_cfg, openai_pre, 1, ("tiny-openai-f16", torch.float16)),
                                      ("exotic", exotic_cfg, exotic_pre, 2, ("exotic-bf16", torch.bfloat16))]:
        model = R.randomize(CLIPModel(cfg).double(), seed).eval()
        context = cfg.text_config.max_position_embeddings
        d = save_model(model.float(), tok, name, pre)
        write_refs(d, model.double(), tok, pre, small_images, TEXTS, context)
        # The low-precision copy: references from the rounded weights, upcast to float64.
        low_name, dtype = low
        d = save_model(model.to(dtype), tok, low_name, pre)
        write_refs(d, model.double(), tok, pre, small_images, TEXTS[:12], context)

    # PIL fidelity at real resolution: OpenAI preprocessing at 224 on large images.
    pre224 = dict(openai_pre, size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    big = ["big_landscape.png", "big_portrait.png", "big_upscale.png"]
    pix = R.pixels_of(R.processor(pre224), [os.path.join(ROOT, "images", b) for b in big])
    pdir = os.path.join(ROOT, "preprocess224")
    shutil.rmtree(pdir, ignore_errors=True)
    os.makedirs(pdir)
    with open(os.path.join(pdir, "preprocessor_config.json"), "w") as f:
        json.dump(pre224, f, indent=2)
    with open(os.path.join(pdir, "manifest.json"), "w") as f:
        json.dump({"images": big}, f)
    # Stored as the u8 values PIL produced (before rescale/normalize) to keep the fixture small.
    mean, std = np.array(R.OPENAI_MEAN)[:, None, None], np.array(R.OPENAI_STD)[:, None, None]
    u8 = np.rint((pix.astype(np.float64) * std + mean) * 255).astype(np.float32)
    R.save_npy(os.path.join(pdir, "pixels_u8.npy"), u8)


if __name__ == "__main__":
    main()
