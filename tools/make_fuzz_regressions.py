"""Writes fuzz/regressions/<target>/<case>: the failure classes of issue 16 as inputs of the fuzz targets, in the
harness's parts format (u32 count, then u32 length + bytes per part). tests/fuzz.rs runs each one; a crash the fuzzer
finds later is saved in the same format under fuzz/crashes/ and is committed here once fixed.

Run after `cargo build --release` (the index case is built with the cliprt binary):
    tools/.venv/bin/python tools/make_fuzz_regressions.py
"""
import json
import pathlib
import struct
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
OUT = ROOT / "fuzz" / "regressions"
IMAGES = ROOT / "tests" / "fixtures" / "images"


def parts(*ps: bytes) -> bytes:
    out = struct.pack("<I", len(ps))
    for p in ps:
        out += struct.pack("<I", len(p)) + p
    return out


def case(target: str, name: str, *ps: bytes):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(parts(*ps))


def main():
    config = json.loads((SEEDS / "model" / "config.json").read_text())
    weights = (SEEDS / "model" / "model.safetensors").read_bytes()
    c = json.loads(json.dumps(config))
    c["text_config"]["eos_token_id"] = 2**32 + 2
    case("model", "eos-token-id-over-u32", json.dumps(c).encode(), weights)
    c = json.loads(json.dumps(config))
    c["vision_config"]["intermediate_size"] = 10**12
    case("model", "intermediate-size-overflow", json.dumps(c).encode(), weights)
    # A NaN in the first f32 tensor's data.
    n = struct.unpack("<Q", weights[:8])[0]
    header = json.loads(weights[8 : 8 + n])
    first = min((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    at = 8 + n + first[0]
    nan = weights[:at] + struct.pack("<f", float("nan")) + weights[at + 4 :]
    case("model", "nan-weight", json.dumps(config).encode(), nan)

    tok = json.loads((SEEDS / "tokenizer" / "tokenizer.json").read_text())
    sot = {"SpecialToken": {"id": "<|startoftext|>", "type_id": 0}}
    tok["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [sot] * 20 + [{"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [],
        "special_tokens": {"<|startoftext|>": {"id": "<|startoftext|>", "ids": [512], "tokens": ["<|startoftext|>"]}},
    }
    case("tokenizer", "specials-overflow-context", json.dumps(tok).encode(), b"a photo of a cat")
    tok = json.loads((SEEDS / "tokenizer" / "tokenizer.json").read_text())
    tok["normalizer"]["normalizers"][1] = {"type": "Replace", "pattern": {"String": ""}, "content": "x"}
    case("tokenizer", "replace-empty-pattern-panics-in-encode", json.dumps(tok).encode(), b"a photo of a cat")
    tok = json.loads((SEEDS / "tokenizer" / "tokenizer.json").read_text())
    tok["normalizer"]["normalizers"].append({"type": "Precompiled", "precompiled_charsmap": "AAAA"})
    case("tokenizer", "precompiled-garbage-panics-in-load", json.dumps(tok).encode(), b"a photo of a cat")

    case("preprocessor", "huge-shortest-edge", b'{"size": {"shortest_edge": 4611686018427387904}}')
    case("preprocessor", "std-underflows-to-infinity", b'{"size": 8, "crop_size": 8, "image_std": [1e-40, 1, 1]}')
    case("preprocessor", "rescale-overflows", b'{"size": 8, "crop_size": 8, "rescale_factor": 1e300}')

    jpg = (IMAGES / "photo.jpg").read_bytes()
    case("image", "truncated-jpeg", jpg[:-1])
    case("image", "gif-partial-first-frame", (IMAGES / "partial_frame_transparent.gif").read_bytes())
    webp = (IMAGES / "photo.webp").read_bytes()
    case("image", "truncated-webp", webp[: len(webp) // 2])

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "images").mkdir()
        for f in ["square.png", "photo.jpg"]:
            (tmp / "images" / f).write_bytes((IMAGES / f).read_bytes())
        subprocess.run(
            [ROOT / "target" / "release" / "cliprt", "index", "--model", SEEDS / "model", "--images", tmp / "images",
             "--out", tmp / "x.idx"], check=True, capture_output=True)
        idx = bytearray((tmp / "x.idx").read_bytes())
    dim, rows, meta = struct.unpack_from("<IQQ", idx, 12)
    emb = 64 + (meta + 63) // 64 * 64
    struct.pack_into("<f", idx, emb + 4 * dim, float("nan"))  # row 1
    case("index", "nan-row", bytes(idx))
    over = bytearray(idx)
    struct.pack_into("<Q", over, 16, 2**64 - 1)
    case("index", "rows-overflow", bytes(over))

    case("cli", "threads-1e9", b"cliprt\0--threads\0001000000000\0info")
    case("cli", "bench-gallery-huge", b"cliprt\0bench\0--workload\0search\0--gallery\0001000000000000")
    case("cli", "bench-reps-max", b"cliprt\0bench\0--reps\00018446744073709551615")
    print("regressions written to", OUT)


main()
