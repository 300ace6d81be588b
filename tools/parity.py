"""Checks `cliprt embed` against HF transformers in float64 on seeded random models at real shapes: CLIP, and
SigLIP (siglip-b-16, siglip-so400m-14-384: SiglipModel with the processor's padding="max_length" ids and attention
mask, the SentencePiece tokenizer of tests/fixtures/tokenizers/siglip, SiglipImageProcessorPil pixels).

    tools/.venv/bin/python tools/parity.py --arch vit-b-32 vit-b-16 vit-l-14 [--cliprt target/release/cliprt]
    tools/.venv/bin/python tools/parity.py --arch siglip-b-16 siglip-so400m-14-384 openclip-vit-h-14
    tools/.venv/bin/python tools/parity.py --precision f32 bf16 i16 [--engine amx-bf16-emu]

Models are generated into tools/models/<arch> (not committed); images are harsh synthetic PNGs of assorted sizes
and JPEGs (PIL-written: 4:2:0, progressive 4:4:4, 4:2:2, grey, CMYK), texts a mix of short and over-long prompts. Prints, per model and precision, the worst cosine and the worst
max-abs difference of the L2-normalized embeddings against HF float64 (with the input of the worst cosine), and for bf16
and i16 also against cliprt's own f32 (the bars: f32 cosine ≥ 0.99999 and max-abs ≤ 1e-4 to HF; bf16 and i16 cosine
≥ 0.9999 to f32 and ≥ 0.9995 to HF).
`--engine` runs the reduced precision of that engine (bf16, or i16 for an i16 engine) on it (`CLIPRT_CPU_ENGINE`),
e.g. the AMX emulator, or avx2-i16 on an AVX-512 CPU.
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
# SigLIP: (width, layers, heads, MLP width, image, patch), both towers alike.
SIGLIP = {
    "siglip-b-16": (768, 12, 12, 3072, 224, 16),
    "siglip-so400m-14-384": (1152, 27, 16, 4304, 384, 14),
}
# open_clip models by open_clip's own config name, saved in open_clip's format (references from open_clip itself).
OPENCLIP = {"openclip-vit-h-14": "ViT-H-14"}
SPIECE = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizers", "siglip", "spiece.model")
TEXTS = ["a photo of a cat.", "a diagram", "A black and white photo of a very old car parked by the sea!",
         "🙂 emoji and CJK 日本", "" , "word " * 100]


def build_siglip(arch, out):
    """A seeded SigLIP at `arch`'s shapes saved with SigLIP's tokenizer; returns (model64, tokenizer, processor)."""
    import torch
    from transformers import SiglipConfig, SiglipModel, SiglipTokenizer
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    from make_siglip_fixtures import randomize
    w, layers, heads, mlp, img, patch = SIGLIP[arch]
    tower = dict(hidden_size=w, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp)
    cfg = SiglipConfig(text_config=dict(tower, vocab_size=32000), vision_config=dict(tower, image_size=img,
                                                                                  patch_size=patch))
    torch.manual_seed(0)
    model = randomize(SiglipModel(cfg).double(), sum(arch.encode())).eval()
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        os.makedirs(out, exist_ok=True)
        model.float().save_pretrained(out)
        SiglipTokenizer(SPIECE).save_pretrained(out)
    model = model.double()
    return model, SiglipTokenizer(SPIECE), SiglipImageProcessorPil(size={"height": img, "width": img})


def siglip_refs(arch, d, paths):
    import torch
    model, tok, proc = build_siglip(arch, d)
    enc = tok(TEXTS, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        txt = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        pixels = R.pixels_of(proc, paths)
        img = model.get_image_features(pixel_values=torch.from_numpy(pixels.astype(np.float64)))
    pool = lambda o: getattr(o, "pooler_output", o).numpy()  # noqa: E731
    return pool(img), pool(txt)


def openclip_refs(arch, d, paths):
    """A seeded open_clip model saved in open_clip format in `d`; its float64 embeddings as open_clip loads it."""
    import gc
    import open_clip
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from make_openclip_fixtures import randomize
    name = OPENCLIP[arch]
    if not os.path.exists(os.path.join(d, "open_clip_model.safetensors")):
        os.makedirs(d, exist_ok=True)
        model = randomize(open_clip.create_model(name, pretrained=None).double(), sum(arch.encode()))
        with open(os.path.join(d, "open_clip_config.json"), "w") as f:
            json.dump({"model_cfg": open_clip.get_model_config(name), "preprocess_cfg": {}}, f)
        save_file({k: v.float().contiguous() for k, v in model.state_dict().items()},
                  os.path.join(d, "open_clip_model.safetensors"))
        del model
        gc.collect()
    model, _, transform = open_clip.create_model_and_transforms("local-dir:" + d)
    model = model.double().eval()
    tok = open_clip.get_tokenizer("local-dir:" + d)
    with torch.no_grad():
        pixels = torch.stack([transform(Image.open(p)) for p in paths]).double()
        return model.encode_image(pixels).numpy(), model.encode_text(tok(TEXTS)).numpy()


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
    ap.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS) + list(SIGLIP) + list(OPENCLIP))
    ap.add_argument("--cliprt", default="target/release/cliprt")
    ap.add_argument("--models", default=os.path.join(os.path.dirname(__file__), "models"))
    ap.add_argument("--precision", nargs="+", default=["f32"], choices=["f32", "bf16", "i16"])
    ap.add_argument("--engine", help="CLIPRT_CPU_ENGINE for the run of its precision (e.g. amx-bf16-emu, avx2-i16)")
    ap.add_argument("--torch-bf16", action="store_true",
                    help="also print PyTorch bf16 (model.to(torch.bfloat16)) against HF float64: the same "
                         "rounding in another runtime, to tell bf16's own error from cliprt's")
    args = ap.parse_args()
    # The precision whose run `--engine` forces (none without it).
    engine_precision = ("i16" if "i16" in args.engine else "bf16") if args.engine else None
    # f32 first: the reduced precisions are measured against it too.
    precisions = ["f32"] + sorted(set(args.precision) - {"f32"})
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [(640, 480), (333, 1000), (224, 224), (150, 200)]
        paths = []
        for i, (w, h) in enumerate(sizes):
            p = os.path.join(tmp, f"img{i}.png")
            R.harsh_image(w, h, 500 + i).save(p)
            paths.append(p)
        from PIL import ImageFile
        ImageFile.MAXBLOCK = 1 << 24  # a progressive file of pure noise outgrows PIL's default encoder buffer
        # JPEGs as PIL writes them (4:2:0, progressive 4:4:4, 4:2:2, grey, CMYK): decoded as PIL decodes them.
        for i, (w, h, mode, opts) in enumerate([(640, 480, "RGB", dict(subsampling=2)),
                                                (500, 333, "RGB", dict(subsampling=0, progressive=True)),
                                                (300, 410, "RGB", dict(subsampling=1)),
                                                (257, 199, "L", {}), (320, 240, "CMYK", {})]):
            p = os.path.join(tmp, f"jpeg{i}.jpg")
            R.harsh_image(w, h, 600 + i).convert(mode).save(p, "JPEG", quality=90, **opts)
            paths.append(p)
        for arch in args.arch:
            d = os.path.join(args.models, arch)
            if arch in SIGLIP:
                img_ref, txt_ref = siglip_refs(arch, d, paths)
            elif arch in OPENCLIP:
                img_ref, txt_ref = openclip_refs(arch, d, paths)
            else:
                model = build(arch, d)
                tok = R.build_tokenizer()
                img_ref = R.image_embeds(model, R.pixels_of(R.processor({}), paths))
                txt_ref = R.text_embeds(model, tok, TEXTS, 77)
            outs = {}
            for precision in precisions:
                oi, ot = os.path.join(tmp, f"i-{precision}.npy"), os.path.join(tmp, f"t-{precision}.npy")
                cmd = [args.cliprt, "embed", "--model", d, "--out-image", oi, "--out-text", ot, "--no-normalize",
                       "--precision", precision]
                for p in paths:
                    cmd += ["--image", p]
                for t in TEXTS:
                    cmd += ["--text", t]
                env = dict(os.environ)
                if precision == engine_precision:
                    env["CLIPRT_CPU_ENGINE"] = args.engine
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
                outs[precision] = {"image": R.normalize(np.load(oi).astype(np.float64)),
                                   "text": R.normalize(np.load(ot).astype(np.float64))}
            refs = {"image": R.normalize(img_ref), "text": R.normalize(txt_ref)}
            if args.torch_bf16:
                import torch
                pixels = R.pixels_of(R.processor({}), paths)
                enc = tok(TEXTS, truncation=True, max_length=77, padding=True, return_tensors="pt")
                m16 = build(arch, d).to(torch.bfloat16)
                with torch.no_grad():
                    vi = m16.visual_projection(m16.vision_model(
                        pixel_values=torch.from_numpy(pixels).to(torch.bfloat16)).pooler_output)
                    ti = m16.text_projection(m16.text_model(
                        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output)
                row = {}
                for what, got in [("image", vi), ("text", ti)]:
                    g = R.normalize(got.double().numpy())
                    row[what] = {"worst_cosine": float(np.min(np.sum(g * refs[what], axis=1)))}
                print(f"{arch} torch-bf16 (for comparison)", json.dumps(row), flush=True)
            for precision in precisions:
                row = {}
                for what in ("image", "text"):
                    g = outs[precision][what]
                    cos = np.sum(g * refs[what], axis=1)
                    row[what] = {"worst_cosine": float(np.min(cos)),
                                 "worst_max_abs": float(np.max(np.abs(g - refs[what]))),
                                 # Which input it was: an image file or a text.
                                 "worst_at": os.path.basename((paths if what == "image" else TEXTS)[int(np.argmin(cos))])}
                    if precision != "f32":
                        row[what]["worst_cosine_to_f32"] = float(np.min(np.sum(g * outs["f32"][what], axis=1)))
                label = f"{arch} {precision}" + (f" ({args.engine})" if precision == engine_precision else "")
                results[label] = (precision, row)
                print(label, json.dumps(row), flush=True)

    def passes(precision, r):
        if precision == "f32":
            return r["worst_cosine"] >= 0.99999 and r["worst_max_abs"] <= 1e-4
        return r["worst_cosine_to_f32"] >= 0.9999 and r["worst_cosine"] >= 0.9995

    ok = all(passes(precision, row[w]) for precision, row in results.values() for w in row)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
