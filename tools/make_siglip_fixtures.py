"""Builds the SigLIP-family fixtures under tests/fixtures, references from transformers in float64 (SiglipModel with
the processor's padding="max_length" ids and attention mask; SiglipImageProcessorPil pixels: PIL, pinned, not the
torchvision backend):
- siglip-gemma: a tiny seeded SigLIP with a Gemma-style tokenizer.json, as SigLIP2's fixed-resolution checkpoints
  ship (model_type "siglip", tokenizer_class GemmaTokenizer: left padding);
- siglip-spm: a tiny SigLIP with a SentencePiece spiece.model, as SigLIP's checkpoints ship (SiglipTokenizer);
- tokenizers/siglip-*: spiece.model variants (legacy, do_lower_case) with the ids transformers gives TRICKY texts.

    tools/.venv/bin/python tools/make_siglip_fixtures.py      # rewrites those folders

Kept apart from make_fixtures.py so that the CLIP fixtures are never rewritten by adding a family.
"""

import json
import math
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import clipref as R  # noqa: E402
from make_fixtures import ROOT, TEXTS  # noqa: E402
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers  # noqa: E402
import sentencepiece as spm  # noqa: E402
from transformers import AutoTokenizer, GemmaTokenizer, SiglipConfig, SiglipModel, SiglipTokenizer  # noqa: E402
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil  # noqa: E402

# Words for the tokenizer's training corpus: the test texts' own characters plus common caption words.
CORPUS = TEXTS + ["a photo of a cat", "a photo of a dog", "a painting of a house by the sea", "two people walking"] * 20

# Strings that exercise SiglipTokenizer's own rules on top of TEXTS: special tokens in the text (and the whitespace
# they strip), the "▁" character, punctuation-only, whitespace of every kind, case.
TRICKY = TEXTS + [
    "</s>", "a </s> b", "a</s>b", "  </s>  x", "<unk>", "x <unk> y", "<pad>", "hello</s>", "</s></s>", "▁", "▁▁x",
    "a▁b", "▁ ▁", "!!!", "...", "'quoted'", "(paren)", "a\x1cb", "a\x1fb\x85c", "a\u3000b", "\tindent", "x\r\ny",
    "İstanbul", "ΟΔΟΣ ΣΟΦΟΣ", "ǅemal", "ﬀ ﬃ", "①②③", "ｆｕｌｌｗｉｄｔｈ", "Ⅻ", "A PHOTO OF A CAT.", "a photo, of: a cat?",
    "MiXeD CaSe WoRdS", "under_score", "tab\t\ttabs", "¿qué?", "e\u0301", "zw\u200dj", "x" * 80,
]


def train_spm(prefix, vocab_size=300):
    """A unigram SentencePiece model with nmt_nfkc normalization, trained on CORPUS: <pad> 0, </s> 1, <unk> 2, as
    SigLIP's spiece.model numbers them."""
    corpus = prefix + ".txt"
    with open(corpus, "w") as f:
        f.write("\n".join(t for t in CORPUS if t.strip()))
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=prefix, vocab_size=vocab_size, model_type="unigram",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name="nmt_nfkc",
                                   character_coverage=0.98, hard_vocab_limit=False, minloglevel=2)
    os.remove(corpus)
    os.remove(prefix + ".vocab")
    return prefix + ".model"


def gemma_tokenizer(vocab_size=600):
    """A small Gemma-style BPE (byte fallback, spaces as ▁) trained on CORPUS, wrapped as transformers'
    GemmaTokenizer: <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4, then the 256 byte tokens."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return GemmaTokenizer(vocab=state["vocab"], merges=merges, add_bos_token=False, add_eos_token=True)


def randomize(model, seed):
    """clipref.randomize's scheme (input-sensitive embeddings), with SigLIP's extra parameters: the probe O(1) like
    the embeddings, the logit scale and bias fixed."""
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=g, dtype=torch.float64) * std

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.copy_(torch.tensor([math.log(10.0)]))
            elif name == "logit_bias":
                p.copy_(torch.tensor([-2.5]))
            elif "layer_norm" in name or "layernorm" in name:
                p.copy_(1.0 + normal(p.shape, 0.2) if name.endswith("weight") else normal(p.shape, 0.1))
            elif name.endswith("bias"):
                p.copy_(normal(p.shape, 0.1))
            elif name.endswith("probe") or ("embedding" in name and "patch_embedding" not in name):
                p.copy_(normal(p.shape, 0.7))
            elif "patch_embedding" in name:
                p.copy_(normal(p.shape, 1.0 / math.sqrt(p[0].numel())))
            elif p.dim() == 2:
                gain = 2.0 if ("q_proj" in name or "k_proj" in name or "in_proj" in name) else 1.0
                p.copy_(normal(p.shape, gain / math.sqrt(p.shape[1])))
            else:
                raise ValueError(f"unexpected parameter {name}")
    return model


def main():
    torch.manual_seed(0)
    name, context = "siglip-gemma", 16
    d = os.path.join(ROOT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tok = gemma_tokenizer()
    tok.save_pretrained(d)
    # Odd widths: text 24 wide with a head to 40 (projection_size), vision 40 wide with 5 heads of 8; context 16
    # (truncation shows), 32 px images in 8 px patches.
    cfg = SiglipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=3, max_position_embeddings=context, projection_size=40,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id),
        vision_config=dict(hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_attention_heads=5,
                           image_size=32, patch_size=8),
    )
    model = randomize(SiglipModel(cfg).double(), 3).eval()
    model.float().save_pretrained(d)
    model = model.double()
    pre = {"image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
           "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True}
    with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=2)

    # References: the tokenizer as AutoTokenizer loads the folder, the processor's padding and mask.
    auto = AutoTokenizer.from_pretrained(d)
    assert type(auto).__name__ == "GemmaTokenizer", type(auto)
    # The tokenizer kind alone on the tricky strings (its tokenizer.json and tokenizer_config.json, ids at 16).
    t = os.path.join(ROOT, "tokenizers", "gemma")
    shutil.rmtree(t, ignore_errors=True)
    os.makedirs(t)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(d, f), os.path.join(t, f))
    with open(os.path.join(t, "expected.json"), "w") as f:
        json.dump({"context": 16, "texts": TRICKY, "ids": [auto(x, truncation=True, max_length=16)["input_ids"]
                                                           for x in TRICKY]}, f, ensure_ascii=False, indent=0)
    enc = auto(TEXTS, padding="max_length", truncation=True, max_length=context, return_tensors="pt")
    unpadded = [auto(t, truncation=True, max_length=context)["input_ids"] for t in TEXTS]
    with torch.no_grad():
        txt = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        txt = getattr(txt, "pooler_output", txt).numpy()
        images = ["square.png", "landscape.png", "portrait.png", "upscale.png", "one_wide.png", "grey.png",
                  "grey_alpha.png", "rgba.png", "grey16.png", "rgb16.png"]
        proc = SiglipImageProcessorPil(**{k: v for k, v in pre.items() if k != "image_processor_type"})
        pixels = R.pixels_of(proc, [os.path.join(ROOT, "images", i) for i in images])
        img = model.get_image_features(pixel_values=torch.from_numpy(pixels.astype(np.float64)))
        img = getattr(img, "pooler_output", img).numpy()
    logits = float(model.logit_scale.exp()) * R.normalize(img) @ R.normalize(txt).T + float(model.logit_bias)
    ref = os.path.join(d, "reference")
    os.makedirs(ref)
    R.save_npy(os.path.join(ref, "pixels.npy"), pixels)
    R.save_npy(os.path.join(ref, "image_embeds.npy"), img)
    R.save_npy(os.path.join(ref, "text_embeds.npy"), txt)
    R.save_npy(os.path.join(ref, "logits.npy"), logits)
    with open(os.path.join(ref, "manifest.json"), "w") as f:
        json.dump({"images": images, "texts": TEXTS, "ids": unpadded,
                   "padded_ids": enc["input_ids"].tolist(), "logit_scale": float(model.logit_scale.exp()),
                   "logit_bias": float(model.logit_bias)}, f, ensure_ascii=False, indent=0)
    cos = R.normalize(txt) @ R.normalize(txt).T
    print(f"{name}: {len(tok)} tokens; mean off-diagonal text cosine {np.mean(cos[~np.eye(len(cos), dtype=bool)]):.3f}")


def siglip_spm_tokenizers(model_file):
    """Tokenizer-only fixtures: SiglipTokenizer with each setting, its ids (truncation at 16) of TRICKY."""
    base = os.path.join(ROOT, "tokenizers")
    for name, kwargs in [("siglip", {}), ("siglip-not-legacy", {"legacy": False}),
                         ("siglip-cased", {"do_lower_case": False})]:
        d = os.path.join(base, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        SiglipTokenizer(model_file, **kwargs).save_pretrained(d)
        tok = AutoTokenizer.from_pretrained(d)
        assert type(tok).__name__ == "SiglipTokenizer", type(tok)
        ids = [tok(t, truncation=True, max_length=16)["input_ids"] for t in TRICKY]
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump({"context": 16, "texts": TRICKY, "ids": ids}, f, ensure_ascii=False, indent=0)


def siglip_spm_model(model_file):
    """A tiny SigLIP as SigLIP's checkpoints ship: spiece.model, SiglipTokenizer, right padding with </s>."""
    name, context = "siglip-spm", 16
    d = os.path.join(ROOT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tok = SiglipTokenizer(model_file)
    tok.save_pretrained(d)
    cfg = SiglipConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=context),
        vision_config=dict(hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=2,
                           image_size=24, patch_size=6, layer_norm_eps=1e-5),
    )
    model = randomize(SiglipModel(cfg).double(), 4).eval()
    model.float().save_pretrained(d)
    model = model.double()
    # No preprocessor_config.json: SiglipImageProcessor's defaults at the model's size.
    pre = {"size": {"height": 24, "width": 24}}
    write_refs(d, model, AutoTokenizer.from_pretrained(d), pre, context)


def write_refs(d, model, tok, pre, context):
    enc = tok(TEXTS, padding="max_length", truncation=True, max_length=context, return_tensors="pt")
    unpadded = [tok(t, truncation=True, max_length=context)["input_ids"] for t in TEXTS]
    images = ["square.png", "landscape.png", "portrait.png", "upscale.png", "one_wide.png", "grey.png",
              "grey_alpha.png", "rgba.png", "grey16.png", "rgb16.png"]
    with torch.no_grad():
        txt = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        txt = getattr(txt, "pooler_output", txt).numpy()
        proc = SiglipImageProcessorPil(**pre)
        pixels = R.pixels_of(proc, [os.path.join(ROOT, "images", i) for i in images])
        img = model.get_image_features(pixel_values=torch.from_numpy(pixels.astype(np.float64)))
        img = getattr(img, "pooler_output", img).numpy()
        scale, bias = float(model.logit_scale.exp()), float(model.logit_bias)
    logits = scale * R.normalize(img) @ R.normalize(txt).T + bias
    ref = os.path.join(d, "reference")
    os.makedirs(ref, exist_ok=True)
    R.save_npy(os.path.join(ref, "pixels.npy"), pixels)
    R.save_npy(os.path.join(ref, "image_embeds.npy"), img)
    R.save_npy(os.path.join(ref, "text_embeds.npy"), txt)
    R.save_npy(os.path.join(ref, "logits.npy"), logits)
    with open(os.path.join(ref, "manifest.json"), "w") as f:
        json.dump({"images": images, "texts": TEXTS, "ids": unpadded, "padded_ids": enc["input_ids"].tolist(),
                   "logit_scale": scale, "logit_bias": bias}, f, ensure_ascii=False, indent=0)
    cos = R.normalize(txt) @ R.normalize(txt).T
    print(f"{os.path.basename(d)}: mean off-diagonal text cosine {np.mean(cos[~np.eye(len(cos), dtype=bool)]):.3f}")


if __name__ == "__main__":
    main()
    work = os.path.join(ROOT, "_spm")
    os.makedirs(work, exist_ok=True)
    model_file = train_spm(os.path.join(work, "spiece"))
    siglip_spm_tokenizers(model_file)
    siglip_spm_model(model_file)
    shutil.rmtree(work)
