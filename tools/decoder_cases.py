"""Writes tests/fixtures/decoder_cases.json: truncated and corrupted variants of the fixture images, each with whether
PIL (HF's decoder) opens it. tests/decode.rs holds cliprt to the same verdicts.

Run: tools/.venv/bin/python tools/decoder_cases.py
"""
import io
import json
import pathlib

from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMAGES = ROOT / "tests" / "fixtures" / "images"


def pil_opens(data: bytes) -> bool:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        im.convert("RGB")
        return True
    except Exception:
        return False


cases = []
for name in ["photo.jpg", "photo.webp", "square.png", "photo.gif", "photo.bmp", "grey.png", "rgba.png"]:
    data = (IMAGES / name).read_bytes()
    n = len(data)
    for cut in sorted({n - 1, n - 2, n - 12, n * 3 // 4, n // 2, n // 4, 40}):
        cases.append({"image": name, "cut": cut, "pil": pil_opens(data[:cut])})
    for at in [n // 2, n * 3 // 4]:
        mutated = bytearray(data)
        mutated[at] ^= 0xFF
        cases.append({"image": name, "flip": at, "pil": pil_opens(bytes(mutated))})
(ROOT / "tests" / "fixtures" / "decoder_cases.json").write_text(json.dumps(cases, indent=1) + "\n")
print(len(cases), "cases,", sum(c["pil"] for c in cases), "open in PIL")


# GIFs whose first frame covers only part of the logical screen, with and without a transparent index: PIL draws
# the frame on a canvas filled with the transparent index (else index 0). Expected pixels as HF converts them
# (RGBA, composited on white).
def partial_frame_gif(transparency):
    frame = Image.new("P", (4, 3))
    frame.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200, 90, 90, 90])
    for x in range(4):
        for y in range(3):
            frame.putpixel((x, y), 1 + (x + y) % 3)
    buf = io.BytesIO()
    kw = {"transparency": transparency} if transparency is not None else {}
    frame.save(buf, "GIF", **kw)
    data = bytearray(buf.getvalue())
    data[6:10] = (9).to_bytes(2, "little") + (7).to_bytes(2, "little")  # logical screen 9 x 7
    at = data.index(0x2C)  # image descriptor: left, top
    data[at + 1 : at + 5] = (3).to_bytes(2, "little") + (2).to_bytes(2, "little")
    return bytes(data)


def hf_rgb(data):
    im = Image.open(io.BytesIO(data))
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255))
    return list(Image.alpha_composite(white, rgba).convert("RGB").tobytes()), rgba.size


expected = {}
for name, t in [("partial_frame.gif", None), ("partial_frame_transparent.gif", 2)]:
    data = partial_frame_gif(t)
    (IMAGES / name).write_bytes(data)
    pixels, size = hf_rgb(data)
    expected[name] = {"size": size, "rgb": pixels}
(ROOT / "tests" / "fixtures" / "gif_expected.json").write_text(json.dumps(expected) + "\n")
