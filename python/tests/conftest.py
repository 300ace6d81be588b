"""Shared fixtures of the Python package's tests: the repository's model fixtures, the CLI binary, shard builders."""

import io
import os
import struct
import subprocess
import tarfile

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
IMAGES = os.path.join(FIXTURES, "images")
TINY = os.path.join(FIXTURES, "tiny-openai")
# The CLI the Python results must equal bitwise: CLIPRT_BIN, else the release build of this checkout.
CLI = os.environ.get("CLIPRT_BIN", os.path.join(ROOT, "target", "release", "cliprt"))

SAMPLE_IMAGES = ["square.png", "landscape.png", "photo.jpg", "portrait.png", "photo.webp", "grey.png"]


def cli(*args):
    """Runs the cliprt CLI; returns the completed process (output as text)."""
    if not os.path.exists(CLI):
        pytest.fail(f"{CLI} is missing: build it with `cargo build --release` or set CLIPRT_BIN")
    return subprocess.run([CLI, *args], capture_output=True, text=True)


def bmp_bytes(rgb):
    """A 24-bit uncompressed BMP of a uint8 [H, W, 3] array (bottom-up rows, BGR, rows padded to 4 bytes)."""
    h, w, _ = rgb.shape
    row = (3 * w + 3) // 4 * 4
    pixels = bytearray()
    for y in range(h - 1, -1, -1):
        line = rgb[y, :, ::-1].tobytes()
        pixels += line + b"\0" * (row - len(line))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + bytes(pixels)


def write_shard(path, samples, extra=()):
    """A webdataset shard: for each (key, image file name) the image, a caption and a json member, then `extra`
    (name, bytes) members."""
    with tarfile.open(path, "w") as t:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))

        for key, image in samples:
            ext = image.rsplit(".", 1)[1]
            with open(os.path.join(IMAGES, image), "rb") as f:
                add(f"{key}.{ext}", f.read())
            add(f"{key}.txt", f"caption of {key}".encode())
            add(f"{key}.json", f'{{"key": "{key}"}}'.encode())
        for name, data in extra:
            add(name, data)


def make_shards(folder, counts=(7, 40, 5, 12)):
    """Good shards of the given sample counts in `folder`: their paths."""
    paths, n = [], 0
    for s, count in enumerate(counts):
        samples = [(f"{n + i:06d}", SAMPLE_IMAGES[(n + i) % len(SAMPLE_IMAGES)]) for i in range(count)]
        n += count
        path = os.path.join(folder, f"{s:05d}.tar")
        write_shard(path, samples)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def model():
    import cliprt

    return cliprt.Model(TINY)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
