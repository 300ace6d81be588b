//! The text tower: token + position embedding, the encoder (causal for CLIP; SigLIP's masks its padding), final
//! LayerNorm and projection (SigLIP: a head with bias) applied to the pooled row of each text only — LayerNorm is
//! row-wise, so normalizing just those rows is exact. The batch's layout comes from the family ([`TextBatch`]).

use std::collections::HashMap;

use super::batch::TextBatch;
use super::weights::TextWeights;
use crate::backend::{self, Backend, Epilogue, GemmShape, Rows};
use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::model::layers::{
    can_pack, run_encoder_pooled, EncoderLayer, Packed, Pass, PreciseProducts, Reuse, Workspace,
};

/// The text tower prepared for backend `B`.
pub struct TextTower<B: Backend> {
    config: TextConfig,
    token_embedding: B::Buf,
    position_embedding: B::Buf,
    layers: Vec<EncoderLayer<B>>,
    final_ln: (B::Buf, B::Buf),
    projection: B::Linear,
    projection_dim: usize,
    scratch: Reuse<Scratch<B>>,
}

/// A forward pass's buffers for up to `texts` texts of `rows` ids in all, kept between calls.
struct Scratch<B: Backend> {
    texts: usize,
    encoder: Workspace<B>,
    /// Token ids `[texts · seq]`, each text's pooled row and its unpadded length (masked layouts), rewritten per
    /// call (outside any graph).
    ids: Rows<B>,
    pool: Rows<B>,
    key_lens: Rows<B>,
    /// A left-padded batch's packing order (rows of `ids` in the tower's order).
    order: Rows<B>,
    /// A packed causal batch's two row maps and each text's packed rows ([`Packed`]).
    spread: Rows<B>,
    pack: Rows<B>,
    packed_lens: Rows<B>,
    /// Pooled rows, after the final LayerNorm `[texts, D]`; projections `[texts, projection_dim]`.
    pooled: B::Buf,
    normed: B::Buf,
    out: B::Buf,
    /// The forward from ids to projections, recorded per layout (CUDA graphs).
    graphs: HashMap<Layout, B::Graph>,
}

/// What a recorded forward depends on: texts, seq, causal, masked, reordered, and the packed rows (0: unpacked).
type Layout = (usize, usize, bool, bool, bool, usize);

/// A causal batch's row maps when packed ([`Packed`]), each text's pooled row in the packed stream and its packed
/// rows.
#[derive(Debug, PartialEq)]
struct PackedRows {
    spread: Vec<u32>,
    pack: Vec<u32>,
    pool: Vec<u32>,
    lens: Vec<u32>,
}

/// The packed layout of a causal batch pooled at `pool` in rows of `seq`, or `None` where packing saves too little.
/// Only rows up to each text's pooled row matter, so a batch of texts of different lengths, cut at the longest,
/// still holds padding: ≈ 20 % of the rows for `cliprt bench`'s 32 prompts (8–11 tokens). Where the backend
/// attends on packed rows (`in_place`), any padding is worth skipping; elsewhere, under 5 % the two row copies per
/// layer would cost about what the skipped rows save, so the batch runs as it is. The caller checked that
/// `pool.len() · seq` rows fit in u32.
fn packing(pool: &[usize], seq: usize, in_place: bool) -> Option<PackedRows> {
    let padded = pool.len() * seq;
    let kept: usize = pool.iter().map(|p| p + 1).sum();
    let worth = if in_place {
        kept < padded
    } else {
        kept * 20 <= padded * 19
    };
    if !worth {
        return None;
    }
    let mut rows = PackedRows {
        spread: Vec::with_capacity(padded),
        pack: Vec::with_capacity(kept),
        pool: Vec::with_capacity(pool.len()),
        lens: Vec::with_capacity(pool.len()),
    };
    let mut first = 0;
    for (item, &p) in pool.iter().enumerate() {
        // Rows past the pooled one take the pooled row's values: finite, and never attended by a kept row.
        rows.spread
            .extend((0..seq).map(|t| (first + t.min(p)) as u32));
        rows.pack.extend((0..=p).map(|t| (item * seq + t) as u32));
        rows.pool.push((first + p) as u32);
        rows.lens.push((p + 1) as u32);
        first += p + 1;
    }
    Some(rows)
}

impl<B: Backend> Scratch<B> {
    fn new(
        b: &B,
        c: &TextConfig,
        projection_dim: usize,
        texts: usize,
        rows: usize,
    ) -> Result<Self> {
        let d = c.encoder.hidden_size;
        Ok(Scratch {
            texts,
            encoder: Workspace::new(b, rows, &c.encoder)?,
            ids: backend::rows(b, &vec![0; rows])?,
            pool: backend::rows(b, &vec![0; texts])?,
            key_lens: backend::rows(b, &vec![1; texts])?,
            order: backend::rows(b, &vec![0; rows])?,
            spread: backend::rows(b, &vec![0; rows])?,
            pack: backend::rows(b, &vec![0; rows])?,
            packed_lens: backend::rows(b, &vec![1; texts])?,
            pooled: b.alloc(texts * d)?,
            normed: b.alloc(texts * d)?,
            out: b.alloc(texts * projection_dim)?,
            graphs: HashMap::new(),
        })
    }
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
                .enumerate()
                // Each raw layer is dropped once packed: peak memory stays ≈ one copy of the weights.
                .map(|(index, l)| {
                    let precise = PreciseProducts::for_layer(true, index, b.precision());
                    EncoderLayer::new(b, &l, &config.encoder, precise)
                })
                .collect::<Result<_>>()?,
            final_ln: (b.upload(&w.final_ln_g)?, b.upload(&w.final_ln_b)?),
            projection: b.linear(
                &w.projection,
                projection_dim,
                config.encoder.hidden_size,
                w.projection_bias.as_deref(),
            )?,
            projection_dim,
            scratch: Reuse::default(),
        })
    }

    /// Projected (not normalized) embeddings `[batch, projection_dim]`.
    pub fn forward(&self, b: &B, batch: &TextBatch) -> Result<Vec<f32>> {
        let c = &self.config.encoder;
        let d = c.hidden_size;
        let (n, seq) = (batch.batch, batch.seq_len);
        if n == 0 {
            return Err(Error::EmptyInput("no texts given"));
        }
        // Checked here, before the ids reach the device: a recorded graph's replay does not run backend's checks.
        let vocab = b.len(&self.token_embedding) / d;
        if let Some(bad) = batch.ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Shape(format!(
                "token id {bad} outside a vocabulary of {vocab}"
            )));
        }
        let mut s = self.scratch.take_or(
            |s| s.encoder.rows >= n * seq && s.texts >= n,
            || Scratch::new(b, &self.config, self.projection_dim, n, n * seq),
        )?;
        backend::write_rows(b, &mut s.ids, &batch.ids)?;
        if u32::try_from(n * seq).is_err() {
            return Err(Error::Shape("text rows past 32 bits".into()));
        }
        let packing = match batch.causal && batch.key_lens.is_none() && batch.order.is_none() {
            // Attention on the packed rows needs no room for the spread q|k|v.
            true if b.attends_packed() || can_pack(c) => {
                packing(&batch.pool, seq, b.attends_packed())
            }
            _ => None,
        };
        // The pooled rows, in the stream's layout.
        let pool: Vec<u32> = match &packing {
            Some(rows) => rows.pool.clone(),
            None => batch
                .pool
                .iter()
                .enumerate()
                .map(|(i, p)| (i * seq + p) as u32)
                .collect(),
        };
        backend::write_rows(b, &mut s.pool, &pool)?;
        if let Some(rows) = &packing {
            backend::write_rows(b, &mut s.spread, &rows.spread)?;
            backend::write_rows(b, &mut s.pack, &rows.pack)?;
            backend::write_rows(b, &mut s.packed_lens, &rows.lens)?;
        }
        let packed_rows = packing.as_ref().map_or(0, |rows| rows.pack.len());
        if let Some(lens) = &batch.key_lens {
            backend::write_rows(b, &mut s.key_lens, lens)?;
        }
        if let Some(order) = &batch.order {
            backend::write_rows(b, &mut s.order, order)?;
        }
        let (masked, reorder) = (batch.key_lens.is_some(), batch.order.is_some());
        let Scratch {
            encoder: ws,
            ids,
            pool,
            key_lens,
            order,
            spread,
            pack,
            packed_lens,
            pooled,
            normed,
            out,
            graphs,
            ..
        } = &mut s;
        // Everything from the ids to the projections: one graph per layout on a GPU.
        let key = (n, seq, batch.causal, masked, reorder, packed_rows);
        backend::run_recorded(b, graphs, key, &mut || {
            // Left padding: embed in place, then pack each row's attended tokens first (TextBatch::padded).
            // Packed: embed every row, then keep the rows up to each pooled one.
            let gathered = reorder || packed_rows > 0;
            let embedded = if gathered { &mut ws.norm } else { &mut ws.x };
            backend::text_embed(
                b,
                embedded,
                ids,
                &self.token_embedding,
                &self.position_embedding,
                seq,
                d,
            )?;
            if reorder {
                backend::gather_rows(b, &mut ws.x, &ws.norm, order, n * seq, d)?;
            }
            if packed_rows > 0 {
                backend::gather_rows(b, &mut ws.x, &ws.norm, pack, packed_rows, d)?;
            }
            let mask = masked.then_some(&*key_lens);
            let pass = Pass {
                batch: n,
                seq,
                causal: batch.causal,
                key_lens: mask,
                packed: (packed_rows > 0).then_some(Packed {
                    rows: packed_rows,
                    lens: packed_lens,
                    spread,
                    pack,
                }),
            };
            run_encoder_pooled(b, &self.layers, c, ws, &pass, (pool, pooled))?;
            backend::layernorm(
                b,
                normed,
                pooled,
                &self.final_ln.0,
                &self.final_ln.1,
                n,
                d,
                c.layer_norm_eps,
            )?;
            let g = GemmShape {
                m: n,
                n: self.projection_dim,
                k: d,
            };
            backend::gemm(b, out, normed, &self.projection, g, Epilogue::Store)
        })?;
        let mut result = b.download(&s.out)?;
        result.truncate(n * self.projection_dim);
        self.scratch.keep(s);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::packing;

    #[test]
    fn packing_keeps_each_text_up_to_its_pooled_row() {
        for in_place in [false, true] {
            // Pooled at 3, 0 and 2 in rows of 4: 7 of 12 rows kept.
            let rows = packing(&[3, 0, 2], 4, in_place).expect("42 % of the rows saved");
            assert_eq!(rows.pack, [0, 1, 2, 3, 4, 8, 9, 10]);
            // Padded row → packed row; padding takes its own text's pooled row.
            assert_eq!(rows.spread, [0, 1, 2, 3, 4, 4, 4, 4, 5, 6, 7, 7]);
            assert_eq!(rows.pool, [3, 4, 7]);
            assert_eq!(rows.lens, [4, 1, 3]);
            // Every text at full length: nothing to save.
            assert_eq!(packing(&[3, 3], 4, in_place), None);
            assert!(packing(&[9, 9, 8, 8], 10, in_place).is_some());
        }
        // One row of 40 short (2.5 %): worth it only without the two row copies per layer.
        assert_eq!(packing(&[9, 9, 9, 8], 10, false), None);
        assert!(packing(&[9, 9, 9, 8], 10, true).is_some());
    }
}
