"""Type stubs of cliprt's Rust extension (python/src)."""

import os
from typing import Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

ImageLike = Union[str, os.PathLike, bytes, bytearray, npt.NDArray[np.uint8]]
"""A file path, an encoded file's bytes, or a uint8 array [H, W, 3] (RGB), [H, W, 4] (RGBA) or [H, W] (grey)."""

class CliprtError(Exception):
    """Base class of every error cliprt raises."""

class ModelError(CliprtError):
    """The model folder cannot be loaded."""

class ImageError(CliprtError):
    """An image cannot be decoded, or is over the size limits."""

class InputError(CliprtError):
    """A bad argument: wrong array dtype, shape or order, an empty batch, an over-limit request."""

class IndexFileError(CliprtError):
    """An index or shard output cannot be read, written or locked."""

class DeviceError(CliprtError):
    """The device is unavailable or failed."""

class Model:
    """A CLIP-family model (HF CLIP, SigLIP / SigLIP2, open_clip ViT) loaded from a folder."""

    def __init__(
        self,
        path: Union[str, os.PathLike],
        device: str = "cpu",
        precision: str = "f32",
        threads: Optional[int] = None,
        drop_alpha: bool = False,
    ) -> None: ...
    def embed_images(self, images: Sequence[ImageLike], normalize: bool = True) -> npt.NDArray[np.float32]:
        """Image embeddings [N, dim], decoded and preprocessed exactly as HF transformers + PIL do."""
    def embed_texts(self, texts: Sequence[str], normalize: bool = True) -> npt.NDArray[np.float32]:
        """Text embeddings [N, dim]."""
    def embed_pixels(self, pixels: npt.NDArray[np.float32], normalize: bool = True) -> npt.NDArray[np.float32]:
        """Image embeddings [N, dim] of preprocessed pixels [N, 3, H, W] (C-contiguous float32)."""
    def preprocess(self, images: Sequence[ImageLike]) -> npt.NDArray[np.float32]:
        """Pixels [N, 3, H, W] as HF's image processor returns them."""
    def tokenize(self, texts: Sequence[str]) -> npt.NDArray[np.int64]:
        """Token ids [N, context_length], padded with the model's pad id."""
    def logits(
        self, image_embeds: npt.NDArray[np.float32], text_embeds: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """exp(logit_scale) · cosine + logit_bias, [N, M]."""
    def zero_shot(
        self, images: Sequence[ImageLike], labels: Sequence[str], template: str = "a photo of a {}."
    ) -> npt.NDArray[np.float32]:
        """Probabilities [N, L] in label order (softmax for CLIP, sigmoid for SigLIP)."""
    @property
    def dim(self) -> int: ...
    @property
    def image_size(self) -> int: ...
    @property
    def context_length(self) -> int: ...
    @property
    def family(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def probability(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def engine(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def threads(self) -> Optional[int]: ...
    @property
    def logit_scale(self) -> float: ...
    @property
    def logit_bias(self) -> float: ...
    @property
    def path(self) -> str: ...

class Index:
    """An index file written by `cliprt index`, memory-mapped."""

    def __init__(self, path: Union[str, os.PathLike]) -> None: ...
    def __len__(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def paths(self) -> list[str]: ...
    def path(self, i: int) -> str: ...
    def embeddings(self) -> npt.NDArray[np.float32]: ...
    def search(
        self, queries: npt.NDArray[np.float32], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
    def search_texts(
        self, model: Model, texts: Sequence[str], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
    def search_images(
        self, model: Model, images: Sequence[ImageLike], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...

def search(
    queries: npt.NDArray[np.float32], gallery: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The k best gallery rows per query by cosine: (scores [Q, k'], ids [Q, k']), k' = min(k, N)."""

def expand_shards(patterns: Union[str, Sequence[str]]) -> list[str]:
    """Expands brace patterns such as "data/{00000..00099}.tar"."""

def shard_output_done(model: Model, shard: str, out_dir: Union[str, os.PathLike]) -> bool:
    """Whether the shard has a finished output from this model in out_dir."""

def check_shard_names(shards: Sequence[str]) -> None:
    """Raises InputError when two shards would write the same output file."""

def embed_shard(
    model: Model, shard: str, out_dir: Union[str, os.PathLike], batch: int = 32, force: bool = False
) -> dict:
    """Embeds one shard into out_dir/NAME.npy + NAME.json (all or nothing)."""
