"""The Python API: results, bitwise equality with the CLI, bad arrays, threads."""

import json
import os
import threading

import numpy as np
import pytest

import cliprt
from conftest import IMAGES, TINY, bmp_bytes, cli


def image(name):
    return os.path.join(IMAGES, name)


FILES = [image(n) for n in ["square.png", "landscape.png", "photo.jpg", "rgba.png", "photo.gif", "grey.png"]]
TEXTS = ["a photo of a cat", "A PHOTO OF A DOG!", "", "naïve résumé", "日本語のテキスト"]


def test_model_properties(model):
    assert model.dim == 24 and model.image_size == 32 and model.context_length > 0
    assert model.family == "clip" and model.format == "hf" and model.probability == "softmax"
    assert model.precision == "f32" and model.device == "cpu" and model.threads is None
    assert model.logit_scale > 0 and model.logit_bias == 0
    assert "tiny-openai" in repr(model)


def test_i16_precision_runs_its_engine_or_says_f32(model):
    """i16 runs where an i16 engine pays off (AVX512_VNNI, or AVX2-only CPUs), f32 elsewhere; either way within
    cosine 0.9999 of f32."""
    fast = cliprt.Model(TINY, precision="i16", threads=1)
    assert (fast.precision, fast.engine) in [("i16", "avx512-i16"), ("i16", "avx2-i16"), ("f32", model.engine)]
    for a, b in [(fast.embed_images(FILES), model.embed_images(FILES)), (fast.embed_texts(TEXTS), model.embed_texts(TEXTS))]:
        assert np.min(np.sum(a * b, axis=1)) >= 0.9999
    with pytest.raises(cliprt.CliprtError, match="unknown precision"):
        cliprt.Model(TINY, precision="int4")


def test_embeddings_are_numpy_unit_rows(model):
    e = model.embed_images(FILES)
    t = model.embed_texts(TEXTS)
    for a, n in [(e, len(FILES)), (t, len(TEXTS))]:
        assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (n, model.dim)
        assert a.flags.c_contiguous
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-6)
    raw = model.embed_images(FILES, normalize=False)
    # cliprt multiplies by the inverse norm: within an f32 rounding of numpy's division.
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), e, rtol=1e-6, atol=1e-7)


def test_embeddings_equal_the_clis_bitwise(model, tmp_path):
    out_i, out_t = tmp_path / "i.npy", tmp_path / "t.npy"
    args = ["embed", "--model", TINY, "--out-image", str(out_i), "--out-text", str(out_t)]
    for f in FILES:
        args += ["--image", f]
    for t in TEXTS:
        args += ["--text", t]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(model.embed_images(FILES), np.load(out_i))
    np.testing.assert_array_equal(model.embed_texts(TEXTS), np.load(out_t))


def test_paths_bytes_and_arrays_agree(model, rng):
    by_path = model.embed_images(FILES)
    by_bytes = model.embed_images([open(f, "rb").read() for f in FILES])
    np.testing.assert_array_equal(by_path, by_bytes)
    by_pathlike = model.embed_images([__import__("pathlib").Path(f) for f in FILES])
    np.testing.assert_array_equal(by_path, by_pathlike)
    # A uint8 array equals the same pixels as a (lossless) BMP file.
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 33), (17, 64), (32, 32)]]
    np.testing.assert_array_equal(model.embed_images(arrays), model.embed_images([bmp_bytes(a) for a in arrays]))
    grey = rng.integers(0, 256, (30, 41), dtype=np.uint8)
    np.testing.assert_array_equal(model.embed_images([grey]), model.embed_images([np.stack([grey] * 3, -1)]))
    # Mixed in one call, in order.
    mixed = model.embed_images([FILES[0], open(FILES[1], "rb").read(), arrays[0]])
    np.testing.assert_array_equal(mixed[:2], by_path[:2])
    np.testing.assert_array_equal(mixed[2], model.embed_images([arrays[0]])[0])


def test_preprocess_tokenize_pixels(model):
    pixels = model.preprocess(FILES)
    assert pixels.shape == (len(FILES), 3, 32, 32) and pixels.dtype == np.float32
    np.testing.assert_array_equal(model.embed_pixels(pixels), model.embed_images(FILES))
    ids = model.tokenize(["a cat", "x"])
    assert ids.dtype == np.int64 and ids.shape == (2, model.context_length)
    assert ids[0, 0] == 49406 and 49407 in ids[0]


def test_logits_zero_shot_and_search(model):
    e, t = model.embed_images(FILES), model.embed_texts(TEXTS)
    logits = model.logits(e, t)
    np.testing.assert_allclose(logits, model.logit_scale * e @ t.T, rtol=1e-5, atol=1e-5)
    labels = ["cat", "dog", "car"]
    probs = model.zero_shot(FILES[:2], labels, template="a photo of a {}.")
    prompts = model.embed_texts([f"a photo of a {l}." for l in labels])
    ref = model.logits(e[:2], prompts)
    ref = np.exp(ref - ref.max(1, keepdims=True))
    np.testing.assert_allclose(probs, ref / ref.sum(1, keepdims=True), rtol=1e-5)
    scores, ids = cliprt.search(t, e, 3)
    full = t @ e.T
    assert ids.dtype == np.int64 and scores.shape == (len(TEXTS), 3)
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(scores, np.take_along_axis(full, ids, 1), rtol=1e-5, atol=1e-6)
    s_all, _ = cliprt.search(t, e, 100)
    assert s_all.shape == (len(TEXTS), len(FILES))


BAD_ARRAYS = [
    ("float64 pixels", lambda m: m.embed_pixels(np.zeros((1, 3, 32, 32)))),
    ("wrong pixel shape", lambda m: m.embed_pixels(np.zeros((1, 3, 31, 32), np.float32))),
    ("3-D pixels", lambda m: m.embed_pixels(np.zeros((3, 32, 32), np.float32))),
    ("empty pixels", lambda m: m.embed_pixels(np.zeros((0, 3, 32, 32), np.float32))),
    ("Fortran pixels", lambda m: m.embed_pixels(np.asfortranarray(np.zeros((2, 3, 32, 32), np.float32)))),
    ("strided queries", lambda m: cliprt.search(np.zeros((4, 48), np.float32)[:, ::2], np.ones((3, 24), np.float32), 1)),
    ("NaN queries", lambda m: cliprt.search(np.full((1, 24), np.nan, np.float32), np.ones((3, 24), np.float32), 1)),
    ("width mismatch", lambda m: cliprt.search(np.ones((1, 23), np.float32), np.ones((3, 24), np.float32), 1)),
    ("object array", lambda m: m.logits(np.array([None, 1]), np.ones((1, 24), np.float32))),
    ("int image", lambda m: m.embed_images([np.zeros((8, 8, 3), np.int32)])),
    ("2-channel image", lambda m: m.embed_images([np.zeros((8, 8, 2), np.uint8)])),
    ("empty image", lambda m: m.embed_images([np.zeros((0, 8, 3), np.uint8)])),
    ("strided image", lambda m: m.embed_images([np.zeros((8, 16, 3), np.uint8)[:, ::2]])),
    ("Fortran image", lambda m: m.embed_images([np.asfortranarray(np.zeros((8, 9, 3), np.uint8))])),
    ("a lone path", lambda m: m.embed_images(FILES[0])),
    ("a lone text", lambda m: m.embed_texts("a cat")),
    ("no images", lambda m: m.embed_images([])),
    ("no texts", lambda m: m.embed_texts([])),
    ("a number as text", lambda m: m.embed_texts(["a", 3])),
    ("a number as image", lambda m: m.embed_images([3])),
    ("no {} in template", lambda m: m.zero_shot(FILES[:1], ["cat"], template="a cat")),
]


@pytest.mark.parametrize("what,call", BAD_ARRAYS, ids=[b[0] for b in BAD_ARRAYS])
def test_bad_arrays_raise_input_error(model, what, call):
    with pytest.raises(cliprt.InputError):
        call(model)


def test_bad_files_raise_typed_errors(model, tmp_path):
    with pytest.raises(cliprt.ImageError):
        model.embed_images([b"not an image"])
    (tmp_path / "cut.jpg").write_bytes(open(image("photo.jpg"), "rb").read()[:300])
    with pytest.raises(cliprt.ImageError, match="truncated"):
        model.embed_images([str(tmp_path / "cut.jpg")])
    with pytest.raises(cliprt.CliprtError, match="no such file"):
        model.embed_images([str(tmp_path / "missing.png")])
    with pytest.raises(cliprt.CliprtError):
        cliprt.Model(str(tmp_path))
    with pytest.raises(cliprt.InputError):
        cliprt.Model(TINY, threads=0)
    with pytest.raises(cliprt.CliprtError):
        cliprt.Model(TINY, device="tpu")


def test_two_threads_share_one_model():
    model = cliprt.Model(TINY, threads=1)
    want_i, want_t = model.embed_images(FILES), model.embed_texts(TEXTS)
    errors, results = [], []

    def work():
        try:
            for _ in range(20):
                results.append((model.embed_images(FILES), model.embed_texts(TEXTS)))
        except Exception as e:  # noqa: BLE001 — reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 80
    for i, t in results:
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_array_equal(t, want_t)


def test_index_matches_the_cli(model, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in FILES:
        (folder / os.path.basename(f)).write_bytes(open(f, "rb").read())
    idx_path = tmp_path / "idx"
    r = cli("index", "--model", TINY, "--images", str(folder), "--out", str(idx_path))
    assert r.returncode == 0, r.stderr
    idx = cliprt.Index(str(idx_path))
    assert len(idx) == len(FILES) and idx.dim == model.dim
    r = cli("search", "--model", TINY, "--index", str(idx_path), "--text", "a photo of a cat", "-k", "3", "--json")
    want = json.loads(r.stdout)
    scores, ids = idx.search_texts(model, ["a photo of a cat"], 3)
    assert [idx.path(i) for i in ids[0]] == [w["path"] for w in want]
    np.testing.assert_allclose(scores[0], [w["score"] for w in want], rtol=1e-6)
    s2, i2 = idx.search(model.embed_texts(["a photo of a cat"]), 3)
    np.testing.assert_array_equal(i2, ids)
    s3, i3 = idx.search_images(model, [os.path.join(folder, "square.png")], 1)
    assert idx.path(int(i3[0, 0])).endswith("square.png")
    assert idx.embeddings().shape == (len(FILES), model.dim)
    with pytest.raises(cliprt.InputError):
        idx.path(len(FILES))
    with pytest.raises(cliprt.CliprtError):
        cliprt.Index(str(tmp_path / "nothing"))


@pytest.mark.parametrize("threads", [None, 1])
def test_a_forked_child_computes(threads):
    """A model that computed in the parent works in a forked child (multiprocessing, DataLoader workers): the
    parent's thread pools do not exist there, and the child must not wait on them."""
    import signal

    model = cliprt.Model(TINY, threads=threads)
    want = model.embed_images(FILES)
    scores, _ = cliprt.search(want, want, 2)
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)  # a hang ends the child with SIGALRM instead of hanging the suite
        try:
            got = model.embed_images(FILES)
            s2, _ = cliprt.search(got, got, 2)
            os._exit(0 if np.array_equal(got, want) and np.array_equal(s2, scores) else 1)
        except BaseException:  # noqa: BLE001 — the child reports through its exit status only
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_model_pickles_by_its_folder_and_options():
    import pickle

    model = cliprt.Model(TINY, threads=1, drop_alpha=True)
    again = pickle.loads(pickle.dumps(model))
    assert (again.path, again.threads, again.device, again.precision) == (model.path, 1, "cpu", "f32")
    np.testing.assert_array_equal(again.embed_images(FILES), model.embed_images(FILES))
    # drop_alpha travels too: rgba.png differs between compositing on white and dropping the alpha.
    white = cliprt.Model(TINY, threads=1).embed_images([image("rgba.png")])
    assert not np.array_equal(again.embed_images([image("rgba.png")]), white)


def test_other_families():
    """SigLIP (sigmoid probabilities, logit bias, left-padded Gemma ids) and an open_clip folder."""
    from conftest import FIXTURES

    siglip = cliprt.Model(os.path.join(FIXTURES, "siglip-gemma"))
    assert siglip.family == "siglip" and siglip.probability == "sigmoid" and siglip.format == "hf"
    labels = ["cat", "dog", "car"]
    probs = siglip.zero_shot(FILES[:2], labels, template="a photo of a {}.")
    logits = siglip.logits(siglip.embed_images(FILES[:2]), siglip.embed_texts([f"a photo of a {l}." for l in labels]))
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-7)
    ids = siglip.tokenize(["a cat"])
    # GemmaTokenizer pads on the left with <pad> (0), as the processor does: `cliprt tokenize` gives [416, 448, 1].
    assert ids.shape == (1, siglip.context_length) and ids[0, -3:].tolist() == [416, 448, 1] and ids[0, 0] == 0
    openclip = cliprt.Model(os.path.join(FIXTURES, "openclip-ls"))
    assert openclip.family == "clip" and openclip.format == "open_clip"
    assert openclip.embed_texts(["a cat"]).shape == (1, openclip.dim)
