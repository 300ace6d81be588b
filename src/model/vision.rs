//! The image tower: patch embedding (im2col + GEMM; SigLIP's with a bias), class token (CLIP), position embedding,
//! pre-LN (CLIP), encoder, then the pooling: CLIP's post-LN on the class token and projection without bias, or
//! SigLIP's post-LN on every token and attention-pooling head.

use std::collections::HashMap;

use super::weights::{HeadWeights, PoolWeights, VisionWeights};
use crate::backend::{self, AttnShape, Backend, Epilogue, GemmShape, MlpShape, PatchShape, Rows};
use crate::config::VisionConfig;
use crate::error::{Error, Result};
use crate::model::layers::{
    run_encoder, run_encoder_pooled, EncoderLayer, Pass, PreciseProducts, Reuse, Workspace,
};

/// The image tower prepared for backend `B`.
pub struct VisionTower<B: Backend> {
    config: VisionConfig,
    patch_embedding: B::Linear,
    class_embedding: Option<B::Buf>,
    position_embedding: B::Buf,
    pre_ln: Option<(B::Buf, B::Buf)>,
    layers: Vec<EncoderLayer<B>>,
    post_ln: (B::Buf, B::Buf),
    pool: Pool<B>,
    projection_dim: usize,
    scratch: Reuse<Scratch<B>>,
}

/// The pooling, prepared.
enum Pool<B: Backend> {
    /// CLIP: the class token's row, post-LN, projection.
    ClassToken { projection: B::Linear },
    /// SigLIP: post-LN on every token, then the attention-pooling head.
    AttentionHead(Head<B>),
}

/// SigLIP's attention-pooling head. The probe is one learned query shared by every image, so its projection
/// `q = W_q·probe + b_q` is computed once at load, and the head's in-projection becomes `[0 | W_k | W_v]` with bias
/// `[q | b_k | b_v]`: one GEMM over the tokens gives every row the probe's query beside its own key and value, and
/// the encoder's attention then pools (every query row is the probe's; the tower reads one row per image). This
/// needs no kernel of its own on any backend, at the cost of one D×D product per token (≈ 0.7 % of a B/16 tower).
struct Head<B: Backend> {
    qkv: B::Linear,
    out: B::Linear,
    ln: (B::Buf, B::Buf),
    fc1: B::Linear,
    fc2: B::Linear,
}

impl<B: Backend> Head<B> {
    fn new(b: &B, w: &HeadWeights, d: usize, i: usize) -> Result<Self> {
        let mut qkv_w = w.in_proj_w.clone();
        let mut qkv_b = w.in_proj_b.clone();
        if w.probe.len() != d || qkv_w.len() != 3 * d * d || qkv_b.len() != 3 * d {
            return Err(Error::Shape(format!(
                "attention-pooling head: probe {}, in-projection {}, bias {} for width {d}",
                w.probe.len(),
                qkv_w.len(),
                qkv_b.len()
            )));
        }
        for (r, bias) in qkv_b[..d].iter_mut().enumerate() {
            // f64 sum: the probe's query once, as exact as f32 storage allows.
            let row = &qkv_w[r * d..(r + 1) * d];
            let q: f64 = row
                .iter()
                .zip(&w.probe)
                .map(|(&a, &p)| f64::from(a) * f64::from(p))
                .sum();
            *bias = (q + f64::from(*bias)) as f32;
        }
        qkv_w[..d * d].fill(0.0);
        Ok(Head {
            qkv: b.linear(&qkv_w, 3 * d, d, Some(&qkv_b))?,
            out: b.linear(&w.out_w, d, d, Some(&w.out_b))?,
            ln: (b.upload(&w.ln_g)?, b.upload(&w.ln_b)?),
            fc1: b.linear(&w.fc1_w, i, d, Some(&w.fc1_b))?,
            fc2: b.linear(&w.fc2_w, d, i, Some(&w.fc2_b))?,
        })
    }
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
    /// Class token + patches + positions `[images · seq, D]` (before the pre-LN); the post-LN tokens for an
    /// attention head.
    embedded: B::Buf,
    encoder: Workspace<B>,
    /// The first row of each image (`i · seq`): its class token, or its pooled row for an attention head.
    class_rows: Rows<B>,
    /// Pooled rows, their LayerNorm `[images, D]`.
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
        if w.class_embedding.is_some() != config.class_token {
            return Err(Error::Shape(
                "class token weights do not match the config's class_token".into(),
            ));
        }
        let pool = match &w.pool {
            PoolWeights::ClassToken { projection } => Pool::ClassToken {
                projection: b.linear(projection, projection_dim, d, None)?,
            },
            PoolWeights::AttentionHead(h) => {
                if projection_dim != d {
                    return Err(Error::Shape(format!(
                        "an attention-pooling head embeds at the width {d}, not {projection_dim}"
                    )));
                }
                Pool::AttentionHead(Head::new(b, h, d, config.encoder.intermediate_size)?)
            }
        };
        Ok(VisionTower {
            config: config.clone(),
            // The conv kernel [D, C, p, p] is exactly a [D, C·p·p] matrix over im2col rows; never rounded to bf16
            // (ARCHITECTURE §7.13).
            patch_embedding: b.linear_precise(
                &w.patch_embedding,
                d,
                config.patch_dim(),
                w.patch_bias.as_deref(),
            )?,
            class_embedding: w
                .class_embedding
                .as_deref()
                .map(|c| b.upload(c))
                .transpose()?,
            position_embedding: b.upload(&w.position_embedding)?,
            pre_ln: match &w.pre_ln {
                Some((g, be)) => Some((b.upload(g)?, b.upload(be)?)),
                None => None,
            },
            layers: w
                .layers
                .into_iter()
                .enumerate()
                // Each raw layer is dropped once packed: peak memory stays ≈ one copy of the weights.
                .map(|(index, l)| {
                    let precise = PreciseProducts::for_layer(false, index, b.precision());
                    EncoderLayer::new(b, &l, &config.encoder, precise)
                })
                .collect::<Result<_>>()?,
            post_ln: (b.upload(&w.post_ln_g)?, b.upload(&w.post_ln_b)?),
            pool,
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
            let embed_out = if self.pre_ln.is_some() {
                &mut *embedded
            } else {
                &mut ws.x
            };
            backend::vision_embed(
                b,
                embed_out,
                patches,
                self.class_embedding.as_ref(),
                &self.position_embedding,
                batch,
                seq,
                d,
            )?;
            if let Some((g, be)) = &self.pre_ln {
                backend::layernorm(b, &mut ws.x, embedded, g, be, batch * seq, d, eps)?;
            }
            let (post_g, post_b) = &self.post_ln;
            let (e, layers) = (&c.encoder, &self.layers);
            let pass = Pass {
                batch,
                seq,
                causal: false,
                key_lens: None,
                packed: None,
            };
            match &self.pool {
                Pool::ClassToken { projection } => {
                    run_encoder_pooled(b, layers, e, ws, &pass, (class_rows, pooled))?;
                    backend::layernorm(b, normed, pooled, post_g, post_b, batch, d, eps)?;
                    let g = GemmShape {
                        m: batch,
                        n: self.projection_dim,
                        k: d,
                    };
                    backend::gemm(b, out, normed, projection, g, Epilogue::Store)
                }
                Pool::AttentionHead(h) => {
                    // The head attends over every token: the whole last layer is needed.
                    run_encoder(b, layers, e, ws, &pass)?;
                    let rows = batch * seq;
                    backend::layernorm(b, embedded, &ws.x, post_g, post_b, rows, d, eps)?;
                    let g = GemmShape {
                        m: rows,
                        n: 3 * d,
                        k: d,
                    };
                    backend::gemm(b, &mut ws.qkv, embedded, &h.qkv, g, Epilogue::Store)?;
                    let a = AttnShape {
                        batch,
                        seq,
                        heads: c.encoder.num_heads,
                        head_dim: c.encoder.head_dim(),
                        causal: false,
                    };
                    backend::attention(b, &mut ws.attn, &ws.qkv, a)?;
                    // Every row of an image holds the pooled value; keep the first.
                    backend::gather_rows(b, pooled, &ws.attn, class_rows, batch, d)?;
                    let g = GemmShape {
                        m: batch,
                        n: d,
                        k: d,
                    };
                    backend::gemm(b, out, pooled, &h.out, g, Epilogue::Store)?;
                    backend::layernorm(b, normed, out, &h.ln.0, &h.ln.1, batch, d, eps)?;
                    let m = MlpShape {
                        rows: batch,
                        dim: d,
                        hidden: c.encoder.intermediate_size,
                    };
                    // h + MLP(LN(h)), the residual accumulated into the output.
                    backend::mlp(
                        b,
                        out,
                        &mut ws.mlp,
                        normed,
                        &h.fc1,
                        &h.fc2,
                        m,
                        c.encoder.activation,
                    )
                }
            }
        })
    }
}
