//! The public entry point: a loaded CLIP model with its tokenizer and preprocessing, on a device.

use std::path::{Path, PathBuf};

use image::DynamicImage;
use rayon::prelude::*;

use crate::config::ClipConfig;
use crate::cpu::{CpuBackend, Precision};
pub use crate::engine::Device;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::ClipWeights;
use crate::model::ModelSpec;
use crate::preprocess::{AlphaMode, PreprocessConfig};
use crate::similarity;
use crate::tokenizer::{ClipTokenizer, ModelTokenizer};

/// A batch of embeddings, row-major `[rows, dim]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    pub rows: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Embeddings {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The first row holding a NaN or an infinity, if any.
    pub fn first_non_finite_row(&self) -> Option<usize> {
        self.data
            .chunks(self.dim.max(1))
            .position(|r| r.iter().any(|v| !v.is_finite()))
    }

    /// `self`, or [`Error::NonFinite`] naming the first row that holds a NaN or infinity: a non-finite embedding
    /// is never returned as a result.
    pub fn checked(self) -> Result<Embeddings> {
        match self.first_non_finite_row() {
            None => Ok(self),
            Some(i) => Err(Error::NonFinite(format!(
                "embedding row {i} of {} (the model's activations overflow f32 for this input)",
                self.rows
            ))),
        }
    }

    /// A copy with every row scaled to unit L2 norm.
    pub fn normalized(&self) -> Embeddings {
        let mut data = self.data.clone();
        similarity::normalize_rows(&mut data, self.dim);
        Embeddings { data, ..*self }
    }
}

/// Images per forward pass when embedding many: bounds activation memory, keeps GEMMs large.
const IMAGE_CHUNK: usize = 32;
/// Texts per forward pass.
const TEXT_CHUNK: usize = 256;

/// A loaded CLIP model.
///
/// ```no_run
/// use cliprt::{Clip, Device};
/// let clip = Clip::load("models/clip-vit-base-patch32", Device::Cpu)?;
/// let images = clip.embed_image_files(&["cat.png"])?;
/// let texts = clip.embed_texts(&["a photo of a cat", "a photo of a dog"])?;
/// let logits = clip.logits(&images, &texts)?; // [1, 2], scaled cosine similarities
/// let ranked = clip.zero_shot(&["cat.png"], &["cat", "dog"], "a photo of a {}.")?;
/// println!("{} {:.3}", ranked[0][0].0, ranked[0][0].1);
/// # Ok::<(), cliprt::Error>(())
/// ```
pub struct Clip {
    dir: PathBuf,
    config: ClipConfig,
    tokenizer: ClipTokenizer,
    preprocess: PreprocessConfig,
    engine: Engine,
    logit_scale: f32,
    logit_bias: f32,
    stored_dtype: String,
}

impl Clip {
    /// Loads a model folder: HF format (`config.json`, `model.safetensors` or shards with
    /// `model.safetensors.index.json`, `tokenizer.json` or SigLIP's `spiece.model`, optionally
    /// `preprocessor_config.json`), or open_clip format (`open_clip_config.json`, `open_clip_model.safetensors`;
    /// open_clip's tokenizer is built in). Where both are present the HF files are read.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Clip> {
        Clip::load_with(dir, device, Precision::F32)
    }

    /// [`Clip::load`] with the GEMM precision: [`Precision::Bf16`] stores the weights in bf16 and multiplies in bf16
    /// with f32 sums on CPUs with AVX512_BF16 (about 1.7× faster, cosine ≥ 0.999 to f32); elsewhere, and on the
    /// reference device, it runs f32. A CUDA device always runs fp16 with f32 accumulation. [`Clip::precision`]
    /// says what runs.
    pub fn load_with(dir: impl AsRef<Path>, device: Device, precision: Precision) -> Result<Clip> {
        Clip::load_opened(dir.as_ref(), || Engine::open(device, precision))
    }

    /// [`Clip::load`] on an opened [`Engine`] (any backend: a CPU engine of your choice, a CUDA backend with chosen
    /// kernel variants).
    pub fn load_on(dir: impl AsRef<Path>, engine: Engine) -> Result<Clip> {
        Clip::load_opened(dir.as_ref(), || Ok(engine))
    }

    /// [`Clip::load`] on a given CPU backend, e.g. one engine of [`crate::cpu::MatrixEngine`]
    /// (`CpuBackend::with_engine`): what the tests use to run every engine, the AMX emulator included.
    pub fn load_on_cpu(dir: impl AsRef<Path>, cpu: CpuBackend) -> Result<Clip> {
        Clip::load_on(dir, Engine::on(cpu))
    }

    /// The matrix engine of a CPU model (`None` on other devices).
    pub fn cpu_engine(&self) -> Option<crate::cpu::MatrixEngine> {
        self.engine.backend::<CpuBackend>().map(CpuBackend::engine)
    }

    fn load_opened(dir: &Path, open: impl FnOnce() -> Result<Engine>) -> Result<Clip> {
        if !dir.exists() {
            return Err(Error::NotFound(dir.to_path_buf()));
        }
        if !dir.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{}: not a folder",
                dir.display()
            )));
        }
        let (mut config, config_path) = ClipConfig::from_dir(dir)?;
        let open_clip = matches!(config.format, crate::config::Format::OpenClip(_));
        let tokenizer = ModelTokenizer::for_config(dir, &config)?.tokenizer;
        // The processor pads with the tokenizer's pad token on its side; the padded tower must see the same.
        if let Some(pad) = tokenizer.pad_id() {
            config.text.pad_token_id = pad;
        }
        config.text.pad_left = tokenizer.pad_left();
        config
            .validate()
            .map_err(|msg| Error::config(&config_path, msg))?;
        let size = config.vision.image_size;
        let preprocess = if open_clip {
            PreprocessConfig::from_open_clip(&config_path, size)?
        } else {
            let pre_path = dir.join("preprocessor_config.json");
            let defaults = PreprocessConfig::for_family(config.family, size);
            if pre_path.exists() {
                PreprocessConfig::from_file_over(&pre_path, defaults)?
            } else {
                defaults
            }
        };
        let engine = open()?;
        // An unsupported model fails before any weight is read.
        engine.supports(&config)?;
        let weights = ClipWeights::from_dir(dir, &config)?;
        let (logit_scale, logit_bias, stored_dtype) = (
            weights.logit_scale_log.exp(),
            weights.logit_bias,
            weights.stored_dtype.clone(),
        );
        let engine = engine.load(ModelSpec::Clip {
            config: config.clone(),
            weights,
        })?;
        Ok(Clip {
            dir: dir.to_path_buf(),
            logit_scale,
            logit_bias,
            stored_dtype,
            config,
            tokenizer,
            preprocess,
            engine,
        })
    }

    /// The precision the model's GEMMs run in.
    pub fn precision(&self) -> Precision {
        self.engine.precision()
    }

    /// The engine the model runs on (its device and matrix engine, logits, search).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The folder the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The architecture.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }
    /// The image preprocessing in use.
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }
    /// Chooses how transparent images become RGB (HF composites onto white; OpenAI drops alpha).
    pub fn set_alpha_mode(&mut self, alpha: AlphaMode) {
        self.preprocess.alpha = alpha;
    }
    /// exp(logit_scale) from the weights: the factor on cosine similarities.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }
    /// The logit bias added after the scale (SigLIP's `logit_bias`; 0 for CLIP).
    pub fn logit_bias(&self) -> f32 {
        self.logit_bias
    }
    /// The checkpoint format the folder was read in.
    pub fn format(&self) -> &'static str {
        self.config.format.name()
    }
    /// The architecture family (CLIP or SigLIP).
    pub fn family(&self) -> crate::config::Family {
        self.config.family
    }
    /// How [`Clip::zero_shot`] turns logits into probabilities: "sigmoid" (SigLIP: each image–label pair on its
    /// own) or "softmax" (CLIP: over the labels).
    pub fn probability(&self) -> &'static str {
        if self.config.family.sigmoid_probabilities() {
            "sigmoid"
        } else {
            "softmax"
        }
    }
    /// The dtype the checkpoint stores its weights in (computation is f32 regardless).
    pub fn stored_dtype(&self) -> &str {
        &self.stored_dtype
    }

    /// Token ids of each text, as the model sees them (SOT … EOT, truncated to the context length).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        self.tokenizer.encode_batch(texts)
    }

    /// The `[3, H, W]` pixel tensor of an image file.
    pub fn preprocess_file(&self, path: impl AsRef<Path>) -> Result<Vec<f32>> {
        let size = self.config.vision.image_size;
        let (h, w) = self.preprocess.output_size(size, size);
        // Any input gives the crop size when there is a crop; without one, check the real output below.
        if self.preprocess.crop.is_some() && (h, w) != (size, size) {
            return Err(self.wrong_output_size(h, w));
        }
        let (pixels, (h, w)) = self.preprocess.apply_file(path.as_ref())?;
        if (h, w) != (size, size) {
            return Err(self.wrong_output_size(h, w));
        }
        Ok(pixels)
    }

    /// The `[3, H, W]` pixel tensor of an encoded image in memory (the bytes of a file: PNG, JPEG, WebP, BMP,
    /// GIF), exactly as [`Clip::preprocess_file`] gives for that file. `label` names it in errors.
    pub fn preprocess_bytes(&self, bytes: &[u8], label: &str) -> Result<Vec<f32>> {
        let size = self.config.vision.image_size;
        let (pixels, (h, w)) = self.preprocess.apply_bytes(bytes, Path::new(label))?;
        if (h, w) != (size, size) {
            return Err(self.wrong_output_size(h, w));
        }
        Ok(pixels)
    }

    fn wrong_output_size(&self, h: usize, w: usize) -> Error {
        let size = self.config.vision.image_size;
        Error::Shape(format!(
            "preprocessing gives {h}x{w} pixels but the model takes {size}x{size} \
             (check size/crop_size in preprocessor_config.json)"
        ))
    }

    /// The pixel tensors of image files, decoded and preprocessed in parallel (one image alone on this thread, so
    /// that its resize runs in parallel: src/resample.rs says why that is only safe off the pool).
    pub fn preprocess_files<P: AsRef<Path> + Sync>(&self, paths: &[P]) -> Vec<Result<Vec<f32>>> {
        match paths {
            [one] => vec![self.preprocess_file(one)],
            _ => paths.par_iter().map(|p| self.preprocess_file(p)).collect(),
        }
    }

    /// The `[3, H, W]` pixel tensor of a decoded image.
    pub fn preprocess_image(&self, img: &DynamicImage) -> Result<Vec<f32>> {
        let size = self.config.vision.image_size;
        let (h, w) = self
            .preprocess
            .output_size(img.width() as usize, img.height() as usize);
        if (h, w) != (size, size) {
            return Err(self.wrong_output_size(h, w));
        }
        self.preprocess.apply_image(img.clone())
    }

    /// Projected image embeddings of image files (decoded and preprocessed in parallel). Not normalized.
    pub fn embed_image_files<P: AsRef<Path> + Sync>(&self, paths: &[P]) -> Result<Embeddings> {
        self.embed_each(paths, |p| self.preprocess_file(p))
    }

    /// Projected image embeddings of any kind of image input, each turned into its `[3, H, W]` pixel tensor by
    /// `pixels` (in parallel, a forward pass of at most 32 images at a time, so memory stays bounded however many
    /// are given). Not normalized. [`Clip::embed_image_files`] is this with [`Clip::preprocess_file`].
    pub fn embed_each<T: Sync>(
        &self,
        items: &[T],
        pixels: impl Fn(&T) -> Result<Vec<f32>> + Sync,
    ) -> Result<Embeddings> {
        if items.is_empty() {
            return Err(Error::EmptyInput("no images given"));
        }
        let mut data = Vec::with_capacity(items.len() * self.config.projection_dim);
        for chunk in items.chunks(IMAGE_CHUNK) {
            // One image alone stays on this thread, so that its resize runs in parallel (src/resample.rs says why
            // that is only safe off the pool).
            let tensors = match chunk {
                [one] => vec![pixels(one)?],
                _ => chunk.par_iter().map(&pixels).collect::<Result<Vec<_>>>()?,
            };
            data.extend(self.engine.encode_images(&tensors.concat(), chunk.len())?);
        }
        self.embeddings(data, items.len()).checked()
    }

    /// Projected image embeddings of decoded images. Not normalized.
    pub fn embed_images(&self, images: &[DynamicImage]) -> Result<Embeddings> {
        if images.is_empty() {
            return Err(Error::EmptyInput("no images given"));
        }
        let pixels: Vec<Vec<f32>> = images
            .par_iter()
            .map(|i| self.preprocess_image(i))
            .collect::<Result<_>>()?;
        self.embed_pixels(&pixels.concat(), images.len())
    }

    /// Projected image embeddings of already preprocessed pixels `[batch, 3, H, W]`. Not normalized.
    pub fn embed_pixels(&self, pixels: &[f32], batch: usize) -> Result<Embeddings> {
        self.embed_pixels_unchecked(pixels, batch)?.checked()
    }

    /// [`Clip::embed_pixels`] whose rows may be non-finite: for callers that check each row (the index records a
    /// non-finite row as that file's failure).
    pub(crate) fn embed_pixels_unchecked(
        &self,
        pixels: &[f32],
        batch: usize,
    ) -> Result<Embeddings> {
        if batch == 0 {
            return Err(Error::EmptyInput("no images given"));
        }
        let per_image = pixels.len() / batch;
        if per_image * batch != pixels.len() {
            return Err(Error::Shape(format!(
                "{} pixel values are not {batch} equal images",
                pixels.len()
            )));
        }
        let mut data = Vec::with_capacity(batch * self.config.projection_dim);
        for chunk in pixels.chunks(per_image.max(1) * IMAGE_CHUNK) {
            data.extend(
                self.engine
                    .encode_images(chunk, chunk.len() / per_image.max(1))?,
            );
        }
        Ok(self.embeddings(data, batch))
    }

    /// Projected text embeddings. Not normalized.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Embeddings> {
        let ids = self.tokenize(texts)?;
        self.embed_token_ids(&ids)
    }

    /// Projected text embeddings of token id rows (each SOT … EOT, at most the context length). Not normalized.
    pub fn embed_token_ids(&self, ids: &[Vec<u32>]) -> Result<Embeddings> {
        if ids.is_empty() {
            return Err(Error::EmptyInput("no texts given"));
        }
        let mut data = Vec::with_capacity(ids.len() * self.config.projection_dim);
        for chunk in ids.chunks(TEXT_CHUNK) {
            data.extend(self.engine.encode_texts(chunk)?);
        }
        self.embeddings(data, ids.len()).checked()
    }

    fn embeddings(&self, data: Vec<f32>, rows: usize) -> Embeddings {
        Embeddings {
            rows,
            dim: self.config.projection_dim,
            data,
        }
    }

    /// Scaled cosine similarities plus the logit bias, `[images.rows, texts.rows]` (`logits_per_image`: CLIP's
    /// bias is 0).
    pub fn logits(&self, images: &Embeddings, texts: &Embeddings) -> Result<Vec<f32>> {
        if images.dim != texts.dim {
            return Err(Error::Shape(format!(
                "embedding widths differ: {} vs {}",
                images.dim, texts.dim
            )));
        }
        let mut logits = self.engine.logits(
            &images.data,
            images.rows,
            &texts.data,
            texts.rows,
            images.dim,
            self.logit_scale,
        )?;
        if self.logit_bias != 0.0 {
            logits.iter_mut().for_each(|l| *l += self.logit_bias);
        }
        Ok(logits)
    }

    /// Zero-shot probabilities from logits `[rows, labels]` (row-major): a softmax over each row for CLIP, a
    /// sigmoid of each logit for SigLIP ([`Clip::probability`]).
    pub fn probabilities(&self, logits: &[f32], labels: usize) -> Result<Vec<f32>> {
        if labels == 0 || !logits.len().is_multiple_of(labels) {
            return Err(Error::Shape(format!(
                "{} logits are not rows of {labels} labels",
                logits.len()
            )));
        }
        Ok(if self.config.family.sigmoid_probabilities() {
            logits.iter().map(|&l| similarity::sigmoid(l)).collect()
        } else {
            similarity::softmax_rows(logits, labels)
        })
    }

    /// Zero-shot probabilities `[images, labels]` (row-major, in label order) of any kind of image input, each
    /// turned into its pixels by `pixels` as in [`Clip::embed_each`]; see [`Clip::zero_shot`].
    pub fn zero_shot_each<T: Sync, S: AsRef<str>>(
        &self,
        images: &[T],
        pixels: impl Fn(&T) -> Result<Vec<f32>> + Sync,
        labels: &[S],
        template: &str,
    ) -> Result<Vec<f32>> {
        if labels.is_empty() {
            return Err(Error::EmptyInput("no labels given"));
        }
        if !template.contains("{}") {
            return Err(Error::InvalidArgument(format!(
                "template {template:?} has no {{}} for the label"
            )));
        }
        let prompts: Vec<String> = labels
            .iter()
            .map(|l| template.replacen("{}", l.as_ref(), 1))
            .collect();
        let prompt_refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let text = self.embed_texts(&prompt_refs)?;
        let img = self.embed_each(images, pixels)?;
        self.probabilities(&self.logits(&img, &text)?, labels.len())
    }

    /// Zero-shot classification: for each image, every label with its probability, most likely first: a softmax
    /// over the labels for CLIP, a per-pair sigmoid for SigLIP (probabilities then need not sum to 1; see
    /// [`Clip::probability`]). Each label is put into `template` at `{}` (use `"{}"` for the bare label).
    pub fn zero_shot<P: AsRef<Path> + Sync, S: AsRef<str>>(
        &self,
        images: &[P],
        labels: &[S],
        template: &str,
    ) -> Result<Vec<Vec<(String, f32)>>> {
        let probs = self.zero_shot_each(images, |p| self.preprocess_file(p), labels, template)?;
        Ok(probs
            .chunks_exact(labels.len())
            .map(|row| {
                let mut ranked: Vec<(String, f32)> = labels
                    .iter()
                    .zip(row)
                    .map(|(l, &p)| (l.as_ref().to_string(), p))
                    .collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
                ranked
            })
            .collect())
    }
}
