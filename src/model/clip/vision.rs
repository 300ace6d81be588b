//! The image tower: patch embedding (im2col + GEMM, no bias), class token, position embedding, pre-LN, encoder,
//! post-LN on the class token only, projection without bias.

use std::collections::HashMap;

use super::weights::VisionWeights;
use crate::backend::{self, Backend, Epilogue, GemmShape, PatchShape, Rows};
use crate::config::VisionConfig;
use crate::error::{Error, Result};
use crate::model::layers::{run_encoder, EncoderLayer, Reuse, Workspace};

/// The image tower prepared for backend `B`.
pub struct VisionTower<B: Backend> {
    config: VisionConfig,
    patch_embedding: B::Linear,
    class_embedding: B::Buf,
    position_embedding: B::Buf,
    pre_ln: (B::Buf, B::Buf),
    layers: Vec<EncoderLayer<B>>,
    post_ln: (B::Buf, B::Buf),
    projection: B::Linear,
    projection_dim: usize,
    scratch: Reuse<Scratch<B>>,
}

/// A forward pass's buffers for chunks of up to `images` images, kept between calls. Inputs and outputs are
/// double-buffered (chunk parity): one chunk's pixels upload while the previous chunk still runs.
struct Scratch<B: Backend> {
    images: usize,
    /// Pixels `[images, C, size, size]`, one per parity.
    pixels: [B::Buf; 2],
    /// im2col rows `[images · patches, C·p²]`.
    cols: B::Buf,
    /// Patch embeddings `[images · patches, D]`.
    patches: B::Buf,
    /// Class token + patches + positions `[images · seq, D]`.
    embedded: B::Buf,
    encoder: Workspace<B>,
    /// The class token's row of each image (`i · seq`).
    class_rows: Rows<B>,
    /// Class tokens, post-LN class tokens `[images, D]`.
    pooled: B::Buf,
    normed: B::Buf,
    /// Projections `[images, projection_dim]`, one per parity.
    out: [B::Buf; 2],
    /// The forward from pixels to projections, recorded per (chunk size, parity) (CUDA graphs): they hold the
    /// addresses of the buffers above, so they live and die with them.
    graphs: HashMap<(usize, usize), B::Graph>,
}

impl<B: Backend> Scratch<B> {
    fn new(b: &B, c: &VisionConfig, projection_dim: usize, images: usize) -> Result<Self> {
        let (d, size, seq) = (c.encoder.hidden_size, c.image_size, c.seq_len());
        let patches = images * c.grid() * c.grid();
        let class_rows: Vec<usize> = (0..images).map(|i| i * seq).collect();
        Ok(Scratch {
            images,
            pixels: [
                b.alloc(images * c.num_channels * size * size)?,
                b.alloc(images * c.num_channels * size * size)?,
            ],
            cols: b.alloc(patches * c.patch_dim())?,
            patches: b.alloc(patches * d)?,
            embedded: b.alloc(images * seq * d)?,
            encoder: Workspace::new(b, images * seq, &c.encoder)?,
            class_rows: backend::rows(b, &class_rows)?,
            pooled: b.alloc(images * d)?,
            normed: b.alloc(images * d)?,
            out: [
                b.alloc(images * projection_dim)?,
                b.alloc(images * projection_dim)?,
            ],
            graphs: HashMap::new(),
        })
    }
}

impl<B: Backend> VisionTower<B> {
    pub fn new(
        b: &B,
        w: VisionWeights,
        config: &VisionConfig,
        projection_dim: usize,
    ) -> Result<Self> {
        let d = config.encoder.hidden_size;
        Ok(VisionTower {
            config: config.clone(),
            // The conv kernel [D, C, p, p] is exactly a [D, C·p·p] matrix over im2col rows.
            patch_embedding: b.linear(&w.patch_embedding, d, config.patch_dim(), None)?,
            class_embedding: b.upload(&w.class_embedding)?,
            position_embedding: b.upload(&w.position_embedding)?,
            pre_ln: (b.upload(&w.pre_ln_g)?, b.upload(&w.pre_ln_b)?),
            layers: w
                .layers
                .into_iter()
                // Each raw layer is dropped once packed: peak memory stays ≈ one copy of the weights.
                .map(|l| EncoderLayer::new(b, &l, &config.encoder))
                .collect::<Result<_>>()?,
            post_ln: (b.upload(&w.post_ln_g)?, b.upload(&w.post_ln_b)?),
            projection: b.linear(&w.projection, projection_dim, d, None)?,
            projection_dim,
            scratch: Reuse::default(),
        })
    }

    /// Projected (not normalized) embeddings `[batch, projection_dim]` of `pixels[batch, C, size, size]`.
    pub fn forward(&self, b: &B, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        let c = &self.config;
        let size = c.image_size;
        let per_image = c.num_channels * size * size;
        if batch == 0 {
            return Err(Error::EmptyInput("no images given"));
        }
        if pixels.len() != batch * per_image {
            return Err(Error::Shape(format!(
                "pixel tensor has {} values; {batch} images of {}×{size}×{size} need {}",
                pixels.len(),
                c.num_channels,
                batch * per_image
            )));
        }
        let chunk = b.image_chunk().clamp(1, batch);
        let mut s = self.scratch.take_or(
            |s| s.images >= chunk,
            || Scratch::new(b, c, self.projection_dim, chunk),
        )?;
        let pd = self.projection_dim;
        let mut result = Vec::with_capacity(batch * pd);
        // Chunk k's pixels are converted and uploaded while chunk k − 1 runs; then chunk k − 1's outputs are
        // downloaded (waiting for it) and chunk k is queued. Parity k % 2 was last used by chunk k − 2, which had
        // finished before chunk k − 1 was queued.
        let mut pending: Option<(usize, usize)> = None;
        for (k, start) in (0..batch).step_by(chunk).enumerate() {
            let (n, parity) = (chunk.min(batch - start), k % 2);
            b.write_input(
                &mut s.pixels[parity],
                &pixels[start * per_image..(start + n) * per_image],
            )?;
            if let Some((n, parity)) = pending.take() {
                result.extend_from_slice(&b.download(&s.out[parity])?[..n * pd]);
            }
            self.enqueue(b, &mut s, n, parity)?;
            pending = Some((n, parity));
        }
        if let Some((n, parity)) = pending {
            result.extend_from_slice(&b.download(&s.out[parity])?[..n * pd]);
        }
        self.scratch.keep(s);
        Ok(result)
    }

    /// Queues the forward of `batch` images from `s.pixels[parity]` to `s.out[parity]`: one recorded graph per
    /// (batch, parity) on backends that record.
    fn enqueue(&self, b: &B, s: &mut Scratch<B>, batch: usize, parity: usize) -> Result<()> {
        let c = &self.config;
        let d = c.encoder.hidden_size;
        let ps = PatchShape {
            batch,
            channels: c.num_channels,
            image_size: c.image_size,
            patch: c.patch_size,
        };
        let (np, seq) = (ps.patches(), c.seq_len());
        let Scratch {
            pixels,
            cols,
            patches,
            embedded,
            encoder: ws,
            class_rows,
            pooled,
            normed,
            out,
            graphs,
            ..
        } = s;
        let (pixels, out) = (&pixels[parity], &mut out[parity]);
        let eps = c.encoder.layer_norm_eps;
        backend::run_recorded(b, graphs, (batch, parity), &mut || {
            backend::im2col(b, cols, pixels, ps)?;
            let g = GemmShape {
                m: batch * np,
                n: d,
                k: ps.patch_dim(),
            };
            backend::gemm(b, patches, cols, &self.patch_embedding, g, Epilogue::Store)?;
            backend::vision_embed(
                b,
                embedded,
                patches,
                Some(&self.class_embedding),
                &self.position_embedding,
                batch,
                seq,
                d,
            )?;
            backend::layernorm(
                b,
                &mut ws.x,
                embedded,
                &self.pre_ln.0,
                &self.pre_ln.1,
                batch * seq,
                d,
                eps,
            )?;
            run_encoder(b, &self.layers, &c.encoder, ws, batch, seq, false)?;
            backend::gather_rows(b, pooled, &ws.x, class_rows, batch, d)?;
            backend::layernorm(
                b,
                normed,
                pooled,
                &self.post_ln.0,
                &self.post_ln.1,
                batch,
                d,
                eps,
            )?;
            let g = GemmShape {
                m: batch,
                n: self.projection_dim,
                k: d,
            };
            backend::gemm(b, out, normed, &self.projection, g, Epilogue::Store)
        })
    }
}
