"""Writes the fuzz harness's seed inputs (fuzz/seeds/): a micro CLIP checkpoint (HF format, so the mutations start
from what transformers writes), a CLIP tokenizer.json cut to 514 tokens (fast to parse, same components as the
real one), and preprocessor configs of several shapes. Images and index files are seeded from tests/fixtures and
from an index the harness builds at start.

Run: tools/.venv/bin/python tools/make_fuzz_seeds.py
"""
import json
import shutil
import pathlib

import torch
from transformers import CLIPConfig, CLIPModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
KEEP = 512  # ordinary tokens kept; the two special tokens follow


def tiny_tokenizer():
    t = json.loads((ROOT / "tests" / "fixtures" / "tokenizer.json").read_text())
    vocab = {tok: i for tok, i in t["model"]["vocab"].items() if i < KEEP}
    sot, eot = KEEP, KEEP + 1
    vocab["<|startoftext|>"] = sot
    vocab["<|endoftext|>"] = eot
    merges = [m for m in t["model"]["merges"] if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    t["model"]["vocab"] = vocab
    t["model"]["merges"] = merges
    for a in t["added_tokens"]:
        a["id"] = sot if a["content"] == "<|startoftext|>" else eot
    t["post_processor"]["cls"] = ["<|startoftext|>", sot]
    t["post_processor"]["sep"] = ["<|endoftext|>", eot]
    return t


def micro_model(dst: pathlib.Path):
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=KEEP + 2, max_position_embeddings=16, eos_token_id=KEEP + 1,
                         bos_token_id=KEEP, pad_token_id=KEEP + 1),
        vision_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                           image_size=8, patch_size=4),
        projection_dim=4,
    )
    CLIPModel(cfg).eval().save_pretrained(dst, safe_serialization=True)


def main():
    tok = tiny_tokenizer()
    (SEEDS / "tokenizer").mkdir(parents=True, exist_ok=True)
    (SEEDS / "tokenizer" / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    model = SEEDS / "model"
    micro_model(model)
    (model / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    pre = {
        "size": {"shortest_edge": 8}, "crop_size": {"height": 8, "width": 8}, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_resize": True, "do_center_crop": True, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "do_convert_rgb": True,
    }
    (model / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    p = SEEDS / "preprocessor"
    p.mkdir(parents=True, exist_ok=True)
    (p / "openai.json").write_text(json.dumps(pre, indent=1))
    (p / "exact.json").write_text(json.dumps({"size": {"height": 8, "width": 8}, "do_center_crop": False,
                                              "image_mean": 0.5, "image_std": 0.5, "resample": 2}))
    (p / "legacy.json").write_text(json.dumps({"size": 8, "crop_size": 8, "do_normalize": False}))
    # SigLIP's SentencePiece tokenizer: the fixture tools/make_siglip_fixtures.py trained (run that first).
    sp = SEEDS / "sentencepiece"
    sp.mkdir(parents=True, exist_ok=True)
    for f in ["spiece.model", "tokenizer_config.json"]:
        shutil.copy(ROOT / "tests" / "fixtures" / "tokenizers" / "siglip" / f, sp / f)
    # open_clip_config.json: the open_clip fixtures' configs (tools/make_openclip_fixtures.py).
    oc = SEEDS / "open_clip"
    oc.mkdir(parents=True, exist_ok=True)
    for name, fixture in [("ls.json", "openclip-ls"), ("custom.json", "openclip-custom")]:
        shutil.copy(ROOT / "tests" / "fixtures" / fixture / "open_clip_config.json", oc / name)
    print("seeds written to", SEEDS)


main()
