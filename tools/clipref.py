"""Shared reference helpers: the CLIP tokenizer built from the open_clip vocab, seeded input-sensitive random CLIP
models, harsh synthetic test images, and float64 reference computations with HF transformers + PIL."""

import gzip
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch
from PIL import Image

from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def bytes_to_unicode():
    """GPT-2/CLIP byte → printable unicode char table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def openai_bpe_lines():
    """Merge lines of OpenAI's BPE vocab, read from the open_clip_torch wheel (downloaded with pip, no deps)."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", d, "open_clip_torch==3.3.0"], check=True)
        wheel = [f for f in os.listdir(d) if f.endswith(".whl")][0]
        with zipfile.ZipFile(os.path.join(d, wheel)) as z:
            data = z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
    return gzip.decompress(data).decode("utf-8").split("\n")


def build_tokenizer():
    """The CLIP tokenizer exactly as OpenAI/HF build it: 256 byte chars, their </w> forms, 48 894 merges, SOT, EOT."""
    lines = openai_bpe_lines()
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    # transformers 5.x ignores vocab_file/merges_file paths: pass the vocab and merges themselves.
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[tuple(m) for m in merges])


def make_config(text, vision, projection_dim, legacy_ids=False):
    """A CLIPConfig from plain dicts; legacy_ids gives the openai/clip-vit-* token ids (bos 0, pad 1, eos 2)."""
    if legacy_ids:
        text = dict(text, bos_token_id=0, pad_token_id=1, eos_token_id=2)
    else:
        text = dict(text, bos_token_id=49406, pad_token_id=49407, eos_token_id=49407)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def randomize(model, seed):
    """Seeded weights that make embeddings depend strongly on the input (transformers' init makes every input give
    nearly the same embedding, which would hide bugs): wider linear weights, attention logits scaled up,
    perturbed LayerNorms and biases, O(1) embeddings."""
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=g, dtype=torch.float64) * std

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.copy_(torch.tensor(math.log(30.0) + 0.1 * float(torch.randn(1, generator=g))))
            elif "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + normal(p.shape, 0.2))
                else:
                    p.copy_(normal(p.shape, 0.1))
            elif name.endswith("bias"):
                p.copy_(normal(p.shape, 0.1))
            elif "embedding" in name:
                if "patch_embedding" in name:
                    fan_in = p[0].numel()
                    p.copy_(normal(p.shape, 1.0 / math.sqrt(fan_in)))
                else:
                    p.copy_(normal(p.shape, 0.7))
            elif p.dim() == 2:
                gain = 2.0 if ("q_proj" in name or "k_proj" in name) else 1.0
                p.copy_(normal(p.shape, gain / math.sqrt(p.shape[1])))
            else:
                raise ValueError(f"unexpected parameter {name}")
    return model


def harsh_image(w, h, seed, mode="RGB"):
    """Gradients + a sine pattern + noise + hard black/white bars: many clipped pixels, the worst case for resize."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(4):
        v = 255 * (x / max(w - 1, 1)) * (c % 2) + 255 * (y / max(h - 1, 1)) * ((c + 1) % 2)
        v = 0.6 * v + 60 * np.sin((x * (c + 1) + y * (3 - c)) / 3.0) + rng.normal(0, 20, (h, w))
        v[:, (np.arange(w) // 3) % 7 == 0] = 0 if c % 2 else 255
        chans.append(v)
    rgba = np.clip(np.stack(chans, -1), 0, 255)
    if mode == "RGB":
        return Image.fromarray(rgba[..., :3].round().astype(np.uint8), "RGB")
    if mode == "RGBA":
        return Image.fromarray(rgba.round().astype(np.uint8), "RGBA")
    if mode == "L":
        return Image.fromarray(rgba[..., 0].round().astype(np.uint8), "L")
    if mode == "LA":
        return Image.fromarray(rgba[..., [0, 3]].round().astype(np.uint8), "LA")
    if mode == "I;16":
        # Values spread over 0..1023 so that PIL's clip-to-255 conversion of 16-bit grey shows.
        return Image.fromarray((rgba[..., 0] * 4).round().astype(np.uint16))
    raise ValueError(mode)


def save_rgb16_png(path, w, h, seed):
    """A 16-bit-per-channel RGB PNG (PIL cannot write one from an array; use the zlib PNG format directly)."""
    import struct
    import zlib

    rng = np.random.default_rng(seed)
    arr = (rng.integers(0, 65536, (h, w, 3))).astype(">u2")
    raw = b"".join(b"\x00" + arr[r].tobytes() for r in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def processor(pre):
    """HF's PIL-backed CLIP image processor for a preprocessor_config dict."""
    return CLIPImageProcessorPil(**pre)


def pixels_of(proc, paths):
    """Reference pixel tensors [N, 3, H, W] (float32, as HF returns them)."""
    imgs = [Image.open(p) for p in paths]
    return proc(images=imgs, return_tensors="np")["pixel_values"].astype(np.float32)


@torch.no_grad()
def image_embeds(model, pixels):
    """Projected image embeddings in float64 from float pixels."""
    out = model.vision_model(pixel_values=torch.from_numpy(np.asarray(pixels, dtype=np.float64)))
    return model.visual_projection(out.pooler_output).numpy()


@torch.no_grad()
def text_embeds(model, tok, texts, context):
    """Projected text embeddings in float64 (padded to the longest, with the attention mask, as HF users do)."""
    enc = tok(texts, truncation=True, max_length=context, padding=True, return_tensors="pt")
    out = model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return model.text_projection(out.pooler_output).numpy()


def normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def save_npy(path, arr):
    np.save(path, np.ascontiguousarray(arr))
