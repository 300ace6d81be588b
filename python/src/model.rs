//! `cliprt.Model`: a loaded model folder, shared by any number of Python threads.

use std::path::PathBuf;

use numpy::{PyArray2, PyArray4, PyArrayMethods};
use pyo3::prelude::*;

use cliprt::{AlphaMode, Clip, Device, Embeddings};

use crate::arrays::{self, ImageInput};
use crate::errors::{self, to_py};
use crate::pools::Pools;

/// A CLIP-family model (HF CLIP, SigLIP / SigLIP2, open_clip ViT) loaded from a folder.
///
/// Model(path, device="cpu", precision="f32", threads=None, drop_alpha=False)
///
/// - device: "cpu", "cuda", "cuda:N", "reference" (the slow f64 oracle) or "cuda-sim".
/// - precision: "f32", "bf16" (AVX512_BF16 or AMX CPUs; f32 runs elsewhere) or "i16" (16-bit fixed-point
///   products: the fast mode of AVX2-only CPUs, and of AVX-512 CPUs with VNNI at bf16's speed with a finer grid;
///   f32 runs where it would not be faster); CUDA always runs fp16.
/// - threads: compute threads per call; None uses all cores. Calls from several Python threads run at once,
///   each on its own `threads` threads.
/// - drop_alpha: drop transparency (OpenAI's transform) instead of compositing onto white (HF's).
///
/// Embeddings are float32 numpy arrays [N, dim], L2-normalized unless normalize=False.
#[pyclass(frozen, module = "cliprt")]
pub struct Model {
    clip: Clip,
    pools: Pools,
    device: String,
    /// The precision and alpha mode as asked: with `device` and the pools' threads, what pickling recreates.
    precision_asked: String,
    drop_alpha: bool,
    /// The model's identity in index and shard outputs, computed on first use.
    identity: std::sync::OnceLock<cliprt::index::ModelIdentity>,
}

impl Model {
    pub fn clip(&self) -> &Clip {
        &self.clip
    }

    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// Runs `f` with the GIL released, on this model's threads.
    pub fn compute<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Clip) -> cliprt::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| self.pools.run(|| f(&self.clip)))?
            .map_err(to_py)
    }

    /// The identity `cliprt index` records for this model (a probe text's embedding).
    pub fn identity(&self, py: Python<'_>) -> PyResult<cliprt::index::ModelIdentity> {
        if let Some(id) = self.identity.get() {
            return Ok(id.clone());
        }
        let id = self.compute(py, cliprt::index::ModelIdentity::of)?;
        Ok(self.identity.get_or_init(|| id).clone())
    }

    pub fn embed_inputs(&self, py: Python<'_>, inputs: &[ImageInput]) -> PyResult<Embeddings> {
        self.compute(py, |clip| clip.embed_each(inputs, |i| pixels_of(clip, i)))
    }
}

/// The `[3, H, W]` pixels of one image input, as `cliprt embed` preprocesses a file.
pub fn pixels_of(clip: &Clip, input: &ImageInput) -> cliprt::Result<Vec<f32>> {
    match input {
        ImageInput::Path(p) => clip.preprocess_file(p),
        ImageInput::Encoded(b) => clip.preprocess_bytes(b, "<bytes>"),
        ImageInput::Pixels(img) => clip.preprocess_image(img),
    }
}

fn finish<'py>(
    py: Python<'py>,
    e: Embeddings,
    normalize: bool,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let e = if normalize { e.normalized() } else { e };
    arrays::matrix(py, e.data, e.rows, e.dim)
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path, device = "cpu", precision = "f32", threads = None, drop_alpha = false))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        precision: &str,
        threads: Option<usize>,
        drop_alpha: bool,
    ) -> PyResult<Model> {
        let dev: Device = device.parse().map_err(to_py)?;
        let precision_name = precision;
        let precision = precision.parse().map_err(to_py)?;
        let pools = Pools::new(threads)?;
        let mut clip = py
            .detach(|| pools.run(|| Clip::load_with(&path, dev, precision)))?
            .map_err(to_py)?;
        if drop_alpha {
            clip.set_alpha_mode(AlphaMode::Drop);
        }
        Ok(Model {
            clip,
            pools,
            device: device.to_string(),
            precision_asked: precision_name.to_string(),
            drop_alpha,
            identity: std::sync::OnceLock::new(),
        })
    }

    /// Image embeddings [N, dim] of a sequence of images: file paths (str or os.PathLike), encoded file bytes
    /// (PNG, JPEG, WebP, BMP, GIF), or uint8 arrays [H, W, 3] (RGB), [H, W, 4] (RGBA) or [H, W] (grey), mixed
    /// freely. Decoded and preprocessed exactly as HF transformers + PIL do.
    #[pyo3(signature = (images, normalize = true))]
    fn embed_images<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        normalize: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let inputs = arrays::images(images)?;
        let e = self.embed_inputs(py, &inputs)?;
        finish(py, e, normalize)
    }

    /// Text embeddings [N, dim] of a sequence of str.
    #[pyo3(signature = (texts, normalize = true))]
    fn embed_texts<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        normalize: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let texts = arrays::texts(texts)?;
        let e = self.compute(py, |clip| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            clip.embed_texts(&refs)
        })?;
        finish(py, e, normalize)
    }

    /// Image embeddings [N, dim] of preprocessed pixels: a C-contiguous float32 array [N, 3, H, W] (what
    /// `preprocess` returns).
    #[pyo3(signature = (pixels, normalize = true))]
    fn embed_pixels<'py>(
        &self,
        py: Python<'py>,
        pixels: &Bound<'py, PyAny>,
        normalize: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (values, shape) = arrays::f32_values(pixels, "pixels")?;
        let size = self.clip.config().vision.image_size;
        if shape.len() != 4 || shape[1..] != [3, size, size] || shape[0] == 0 {
            return Err(errors::input(format!(
                "pixels must be [N ≥ 1, 3, {size}, {size}] for this model, not {shape:?}"
            )));
        }
        let e = self.compute(py, |clip| clip.embed_pixels(&values, shape[0]))?;
        finish(py, e, normalize)
    }

    /// Preprocessed pixels [N, 3, H, W] (float32) of a sequence of images, as HF's image processor returns them.
    fn preprocess<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray4<f32>>> {
        let inputs = arrays::images(images)?;
        let size = self.clip.config().vision.image_size;
        let pixels = self.compute(py, |clip| {
            use rayon::prelude::*;
            let each: Vec<Vec<f32>> = inputs
                .par_iter()
                .map(|i| pixels_of(clip, i))
                .collect::<cliprt::Result<_>>()?;
            Ok(each.concat())
        })?;
        numpy::PyArray1::from_vec(py, pixels).reshape([inputs.len(), 3, size, size])
    }

    /// Token ids [N, context_length] (int64), padded with the model's pad id as its processor pads them.
    fn tokenize<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let texts = arrays::texts(texts)?;
        let ids = self.compute(py, |clip| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            clip.tokenize(&refs)
        })?;
        let text = &self.clip.config().text;
        let (context, pad) = (text.max_position_embeddings, i64::from(text.pad_token_id));
        let mut out = vec![pad; ids.len() * context];
        for (row, ids) in out.chunks_exact_mut(context).zip(&ids) {
            let at = if text.pad_left {
                context.saturating_sub(ids.len())
            } else {
                0
            };
            for (o, &id) in row[at..].iter_mut().zip(ids) {
                *o = i64::from(id);
            }
        }
        arrays::matrix(py, out, ids.len(), context)
    }

    /// Logits [N, M]: exp(logit_scale) · cosine(image i, text j) + logit_bias, from embeddings [N, dim] and
    /// [M, dim] (normalized or not).
    fn logits<'py>(
        &self,
        py: Python<'py>,
        image_embeds: &Bound<'py, PyAny>,
        text_embeds: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (a, ra, da) = arrays::f32_matrix(image_embeds, "image_embeds")?;
        let (b, rb, db) = arrays::f32_matrix(text_embeds, "text_embeds")?;
        let images = Embeddings {
            rows: ra,
            dim: da,
            data: a,
        };
        let texts = Embeddings {
            rows: rb,
            dim: db,
            data: b,
        };
        let logits = self.compute(py, |clip| clip.logits(&images, &texts))?;
        arrays::matrix(py, logits, ra, rb)
    }

    /// Zero-shot probabilities [N images, L labels], in label order: a softmax over the labels for CLIP, a
    /// per-pair sigmoid for SigLIP (see `probability`). Each label is put into `template` at "{}".
    #[pyo3(signature = (images, labels, template = "a photo of a {}."))]
    fn zero_shot<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        labels: &Bound<'py, PyAny>,
        template: &str,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let inputs = arrays::images(images)?;
        let labels = arrays::texts(labels)?;
        let probs = self.compute(py, |clip| {
            clip.zero_shot_each(&inputs, |i| pixels_of(clip, i), &labels, template)
        })?;
        arrays::matrix(py, probs, inputs.len(), labels.len())
    }

    /// Embedding width.
    #[getter]
    fn dim(&self) -> usize {
        self.clip.config().projection_dim
    }

    /// Input image side in pixels.
    #[getter]
    fn image_size(&self) -> usize {
        self.clip.config().vision.image_size
    }

    /// Text context length in tokens.
    #[getter]
    fn context_length(&self) -> usize {
        self.clip.config().text.max_position_embeddings
    }

    /// "clip" or "siglip".
    #[getter]
    fn family(&self) -> String {
        format!("{:?}", self.clip.family()).to_lowercase()
    }

    /// The checkpoint format: "hf" or "open_clip".
    #[getter]
    fn format(&self) -> &'static str {
        match self.clip.config().format {
            cliprt::config::Format::Hf => "hf",
            cliprt::config::Format::OpenClip(_) => "open_clip",
        }
    }

    /// "softmax" (CLIP) or "sigmoid" (SigLIP): how zero_shot turns logits into probabilities.
    #[getter]
    fn probability(&self) -> &'static str {
        self.clip.probability()
    }

    /// The GEMM arithmetic that runs: "f32", "bf16", "f16" or "f64".
    #[getter]
    fn precision(&self) -> &'static str {
        self.clip.engine().info().arithmetic
    }

    /// The matrix engine, e.g. "avx512-bf16", "amx-bf16", "avx2", "cuda-f16".
    #[getter]
    fn engine(&self) -> String {
        self.clip.engine().info().engine
    }

    #[getter]
    fn device(&self) -> &str {
        &self.device
    }

    /// Compute threads per call (None: all cores).
    #[getter]
    fn threads(&self) -> Option<usize> {
        self.pools.threads()
    }

    /// exp(logit_scale) multiplies cosines in `logits`.
    #[getter]
    fn logit_scale(&self) -> f32 {
        self.clip.logit_scale()
    }

    #[getter]
    fn logit_bias(&self) -> f32 {
        self.clip.logit_bias()
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.clip.dir().to_path_buf()
    }

    /// Pickling (multiprocessing with spawn, Ray object refs): the folder and the options; the unpickling process
    /// loads the model again from the same path.
    #[allow(clippy::type_complexity)]
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(
        Bound<'py, pyo3::types::PyType>,
        (PathBuf, String, String, Option<usize>, bool),
    )> {
        let m = slf.get();
        Ok((
            slf.get_type(),
            (
                m.clip.dir().to_path_buf(),
                m.device.clone(),
                m.precision_asked.clone(),
                m.pools.threads(),
                m.drop_alpha,
            ),
        ))
    }

    fn __repr__(&self) -> String {
        let info = self.clip.engine().info();
        format!(
            "cliprt.Model({:?}, family={}, format={}, dim={}, device={}, engine={}, precision={})",
            self.clip.dir().display().to_string(),
            self.family(),
            self.format(),
            self.dim(),
            self.device,
            info.engine,
            info.arithmetic
        )
    }
}
