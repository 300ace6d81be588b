//! The text tower: token + position embedding, causal encoder, final LayerNorm and projection applied to the
//! pooled (end-of-text) row of each text only — LayerNorm is row-wise, so normalizing just those rows is exact.

use crate::backend::{self, Backend, Epilogue, GemmShape};
use crate::config::TextConfig;
use crate::error::Result;
use crate::model::layers::{run_encoder, EncoderLayer, Reuse, Workspace};
use crate::tokenizer::TextBatch;
use crate::weights::TextWeights;

/// The text tower prepared for backend `B`.
pub struct TextTower<B: Backend> {
    config: TextConfig,
    token_embedding: B::Buf,
    position_embedding: B::Buf,
    layers: Vec<EncoderLayer<B>>,
    final_ln: (B::Buf, B::Buf),
    projection: B::Linear,
    projection_dim: usize,
    workspace: Reuse<Workspace<B>>,
}

impl<B: Backend> TextTower<B> {
    pub fn new(b: &B, w: TextWeights, config: &TextConfig, projection_dim: usize) -> Result<Self> {
        Ok(TextTower {
            config: config.clone(),
            token_embedding: b.upload(&w.token_embedding)?,
            position_embedding: b.upload(&w.position_embedding)?,
            layers: w
                .layers
                .into_iter()
                // Each raw layer is dropped once packed: peak memory stays ≈ one copy of the weights.
                .map(|l| EncoderLayer::new(b, &l, &config.encoder))
                .collect::<Result<_>>()?,
            final_ln: (b.upload(&w.final_ln_g)?, b.upload(&w.final_ln_b)?),
            projection: b.linear(
                &w.projection,
                projection_dim,
                config.encoder.hidden_size,
                None,
            )?,
            projection_dim,
            workspace: Reuse::default(),
        })
    }

    /// Projected (not normalized) embeddings `[batch, projection_dim]`.
    pub fn forward(&self, b: &B, batch: &TextBatch) -> Result<Vec<f32>> {
        let c = &self.config.encoder;
        let d = c.hidden_size;
        let (n, seq) = (batch.batch, batch.seq_len);
        let mut ws = self
            .workspace
            .take_or(|w| w.rows >= n * seq, || Workspace::new(b, n * seq, c))?;
        backend::text_embed(
            b,
            &mut ws.x,
            &batch.ids,
            &self.token_embedding,
            &self.position_embedding,
            seq,
            d,
        )?;
        run_encoder(b, &self.layers, c, &mut ws, n, seq, true)?;

        let rows: Vec<usize> = batch
            .pool
            .iter()
            .enumerate()
            .map(|(i, p)| i * seq + p)
            .collect();
        let rows = backend::rows(b, &rows)?;
        let mut pooled = b.alloc(n * d)?;
        backend::gather_rows(b, &mut pooled, &ws.x, &rows, n, d)?;
        let mut normed = b.alloc(n * d)?;
        backend::layernorm(
            b,
            &mut normed,
            &pooled,
            &self.final_ln.0,
            &self.final_ln.1,
            n,
            d,
            c.layer_norm_eps,
        )?;
        let mut out = b.alloc(n * self.projection_dim)?;
        let g = GemmShape {
            m: n,
            n: self.projection_dim,
            k: d,
        };
        backend::gemm(b, &mut out, &normed, &self.projection, g, Epilogue::Store)?;
        self.workspace.keep(ws);
        b.download(&out)
    }
}
