"""cliprt: a from-scratch CLIP inference runtime (Rust), from Python.

Numpy in, numpy out; the Python lock is released while Rust computes, so one Model serves several threads.

    import cliprt
    model = cliprt.Model("clip-vit-base-patch32", threads=2)
    images = model.embed_images(["cat.jpg", open("dog.png", "rb").read()])   # float32 [2, 512], unit rows
    texts = model.embed_texts(["a photo of a cat", "a photo of a dog"])
    probs = model.zero_shot(["cat.jpg"], ["cat", "dog"])                       # [1, 2], label order
    scores, ids = cliprt.search(texts, images, k=1)                            # fused top-k by cosine

Webdataset shards (img2dataset's layout) are embedded one per call with `embed_shard`, or on a Ray cluster with
`python -m cliprt.ray` (see cliprt.ray). Every error is a `CliprtError`.
"""

from ._cliprt import (
    CliprtError,
    DeviceError,
    ImageError,
    IndexFileError,
    Index,
    InputError,
    Model,
    ModelError,
    __version__,
    embed_shard,
    expand_shards,
    search,
    shard_output_done,
)

__all__ = [
    "CliprtError",
    "DeviceError",
    "ImageError",
    "IndexFileError",
    "Index",
    "InputError",
    "Model",
    "ModelError",
    "__version__",
    "embed_shard",
    "expand_shards",
    "search",
    "shard_output_done",
]
