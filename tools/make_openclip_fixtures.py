"""Builds the open_clip fixtures under tests/fixtures: tiny seeded CLIPs in open_clip's own format
(open_clip_config.json + open_clip_model.safetensors, no tokenizer file), and their references from open_clip 3.3
itself in float64: `open_clip.create_model_and_transforms("local-dir:…")` for the model and its transform (PIL
through torchvision), `open_clip.get_tokenizer("local-dir:…")` for the ids.

    tools/.venv/bin/python tools/make_openclip_fixtures.py

- openclip-ls: layer scale (ls_init_value) in both towers, gelu, shortest-side resize + center crop at 26 px (odd
  crop margins, where torchvision's rounding differs from HF's), OpenAI mean/std, context 20;
- openclip-custom: CustomTextCLIP key names (`text.`), a text projection with bias, quick_gelu, norm eps 1e-6,
  squash resize with bilinear interpolation and its own mean/std;
- resize16: PIL's 16-bit resizes of a small grey image (open_clip resizes a 16-bit grey file before its clip to 8
  bits).
"""

import json
import math
import os
import shutil
import sys

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import clipref as R  # noqa: E402
from make_fixtures import ROOT, TEXTS  # noqa: E402
from make_siglip_fixtures import TRICKY  # noqa: E402

# open_clip resizes before converting to RGB, so PIL resizes in the file's own mode: palette and 1-bit images
# (photo.gif, palette.png, bilevel.png, palette.bmp) with nearest neighbour, a grey-ramp BMP (mode "L",
# grey_ramp.bmp) with the filter, transparent ones (rgba.png, grey_alpha.png) with premultiplied alpha, a CMYK JPEG
# (cmyk.jpg) band by band; grey16.png shows the 16-bit difference cliprt documents.
IMAGES = ["square.png", "landscape.png", "portrait.png", "upscale.png", "one_wide.png", "grey.png", "rgb16.png",
          "grey16.png", "photo.gif", "palette.png", "rgba.png", "grey_alpha.png", "bilevel.png", "palette.bmp",
          "grey_ramp.bmp", "cmyk.jpg"]

MODELS = {
    "openclip-ls": dict(
        model_cfg=dict(embed_dim=24,
                       vision_cfg=dict(image_size=26, layers=2, width=40, head_width=8, patch_size=13,
                                       ls_init_value=0.5),
                       text_cfg=dict(context_length=20, vocab_size=49408, width=32, heads=4, layers=2,
                                     ls_init_value=0.5)),
        preprocess_cfg=dict(interpolation="bicubic", resize_mode="shortest")),
    "openclip-custom": dict(
        model_cfg=dict(embed_dim=20, quick_gelu=True, custom_text=True,
                       vision_cfg=dict(image_size=24, layers=2, width=32, head_width=16, patch_size=8,
                                       mlp_ratio=2.5, norm_kwargs=dict(eps=1e-6)),
                       text_cfg=dict(context_length=24, vocab_size=49408, width=24, heads=3, layers=2,
                                     proj_bias=True, norm_kwargs=dict(eps=1e-6))),
        preprocess_cfg=dict(interpolation="bilinear", resize_mode="squash", mean=[0.5, 0.45, 0.4],
                            std=[0.25, 0.3, 0.2])),
}


def randomize(model, seed):
    """Input-sensitive seeded weights (clipref.randomize's scheme under open_clip's names)."""
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=g, dtype=torch.float64) * std

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.copy_(torch.tensor(math.log(30.0)))
            elif ".ln_" in name or name.startswith(("ln_", "text.ln_", "visual.ln_")) or "ln_final" in name:
                p.copy_(1.0 + normal(p.shape, 0.2) if name.endswith("weight") else normal(p.shape, 0.1))
            elif name.endswith("gamma"):
                p.copy_(0.5 + normal(p.shape, 0.2))
            elif name.endswith("bias"):
                p.copy_(normal(p.shape, 0.1))
            elif "embedding" in name:
                p.copy_(normal(p.shape, 0.7))
            elif name.endswith("conv1.weight"):
                p.copy_(normal(p.shape, 1.0 / math.sqrt(p[0].numel())))
            elif name.endswith(("proj", "text_projection")):
                p.copy_(normal(p.shape, 1.0 / math.sqrt(p.shape[0])))
            elif p.dim() == 2:
                gain = 2.0 if "in_proj" in name else 1.0
                p.copy_(normal(p.shape, gain / math.sqrt(p.shape[1])))
            else:
                raise ValueError(f"unexpected parameter {name}")
    return model


def unpadded(row, eot):
    """open_clip pads with 0 after the end token; the ids up to and including the last end token."""
    row = row.tolist()
    return row[:len(row) - row[::-1].index(eot)]


def resize16_cases():
    """PIL's own 16-bit resizes ("I;16", Resample.c's 16bpc passes) of a small image with values around the 8-bit clip
    and at the top of the range, where the filters' overshoot takes sums above 65535."""
    rng = np.random.default_rng(31)
    w, h = 23, 17
    a = rng.integers(0, 600, (h, w)).astype(np.uint16)
    a[rng.random((h, w)) < 0.2] = 65535
    a[:, ::5] = 0
    im = Image.fromarray(a)
    assert im.mode == "I;16", im.mode
    filters = [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.LANCZOS,
               Image.Resampling.BOX, Image.Resampling.HAMMING]
    cases = [dict(width=ow, height=oh, filter=int(f), output=np.asarray(im.resize((ow, oh), f)).flatten().tolist())
             for ow, oh in [(9, 7), (31, 12), (23, 40), (5, 17), (40, 4)] for f in filters]
    d = os.path.join(ROOT, "resize16")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(dict(width=w, height=h, input=a.flatten().tolist(), cases=cases), f)


def main():
    resize16_cases()
    made = {
        "palette.png": lambda: R.harsh_image(37, 29, 21).convert("P"),
        "bilevel.png": lambda: R.harsh_image(35, 31, 22).convert("1"),
        "palette.bmp": lambda: R.harsh_image(31, 37, 23).convert("P"),
        # PIL writes grey as 8 bits through a palette whose entry i is (i, i, i), and opens that as mode "L".
        "grey_ramp.bmp": lambda: R.harsh_image(33, 27, 24).convert("L"),
        # Four harsh bands as C, M, Y, K (PIL writes them as an Adobe CMYK JPEG).
        "cmyk.jpg": lambda: Image.frombytes("CMYK", (43, 35), R.harsh_image(43, 35, 25, "RGBA").tobytes()),
    }
    for name, make in made.items():
        path = os.path.join(ROOT, "images", name)
        if not os.path.exists(path):
            make().save(path)
    expected = {"bilevel.png": "1", "palette.bmp": "P", "grey_ramp.bmp": "L", "cmyk.jpg": "CMYK"}
    for name, mode in expected.items():
        got = Image.open(os.path.join(ROOT, "images", name)).mode
        assert got == mode, f"{name} opens as {got}, not {mode}"
    for i, (name, cfg) in enumerate(MODELS.items()):
        d = os.path.join(ROOT, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        mc = cfg["model_cfg"]
        cls = open_clip.CustomTextCLIP if mc.get("custom_text") else open_clip.CLIP
        model = randomize(cls(**{k: v for k, v in mc.items() if k != "custom_text"}).double(), 10 + i)
        with open(os.path.join(d, "open_clip_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        save_file({k: v.float().contiguous() for k, v in model.state_dict().items()},
                  os.path.join(d, "open_clip_model.safetensors"))
        # The references from open_clip's own loading of the folder, in float64.
        loaded, _, transform = open_clip.create_model_and_transforms("local-dir:" + d)
        loaded = loaded.double().eval()
        tok = open_clip.get_tokenizer("local-dir:" + d)
        ctx = mc["text_cfg"]["context_length"]
        with torch.no_grad():
            pixels = torch.stack([transform(Image.open(os.path.join(ROOT, "images", im))) for im in IMAGES])
            img = loaded.encode_image(pixels.double()).numpy()
            txt = loaded.encode_text(tok(TEXTS, context_length=ctx)).numpy()
            scale = float(loaded.logit_scale.exp())
        logits = scale * R.normalize(img) @ R.normalize(txt).T
        ref = os.path.join(d, "reference")
        os.makedirs(ref)
        R.save_npy(os.path.join(ref, "pixels.npy"), pixels.numpy().astype(np.float32))
        R.save_npy(os.path.join(ref, "image_embeds.npy"), img)
        R.save_npy(os.path.join(ref, "text_embeds.npy"), txt)
        R.save_npy(os.path.join(ref, "logits.npy"), logits)
        eot = tok.eot_token_id
        ids = [unpadded(r, eot) for r in tok(TEXTS, context_length=ctx)]
        with open(os.path.join(ref, "manifest.json"), "w") as f:
            json.dump({"images": IMAGES, "texts": TEXTS, "ids": ids, "logit_scale": scale}, f, ensure_ascii=False,
                      indent=0)
        cos = R.normalize(txt) @ R.normalize(txt).T
        print(f"{name}: mean off-diagonal text cosine {np.mean(cos[~np.eye(len(cos), dtype=bool)]):.3f}")
    # Tokenizer fixture: open_clip's ids of the tricky strings at context 77.
    tok = open_clip.get_tokenizer("local-dir:" + os.path.join(ROOT, "openclip-ls"))
    d = os.path.join(ROOT, "tokenizers", "openclip")
    os.makedirs(d, exist_ok=True)
    ids = [unpadded(r, tok.eot_token_id) for r in tok(TRICKY, context_length=77)]
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump({"context": 77, "texts": TRICKY, "ids": ids}, f, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main()
