//! A text batch: token rows laid out for a family's text tower. CLIP's causal tower, pooled at the first EOT, takes
//! the batch cut at the longest pooled row (ARCHITECTURE.md, traps 2 and 3): valid only because it is causal.
//! SigLIP's non-causal tower takes every row padded to the context length, the padding masked out of attention as
//! transformers' processor masks it, pooled at the last position.

use crate::config::{ClipConfig, Family, TextConfig};
use crate::error::{Error, Result};
use crate::tokenizer::pooling_position;

/// A batch of token ids laid out for the text tower, every row padded to `seq_len`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextBatch {
    /// Row-major `[batch, seq_len]`.
    pub ids: Vec<u32>,
    pub batch: usize,
    pub seq_len: usize,
    /// The pooled position of each row.
    pub pool: Vec<usize>,
    /// For a masked layout, how many leading ids of each row attention sees (the rest is padding).
    pub key_lens: Option<Vec<u32>>,
    /// For a left-padded layout, where each row of the tower's packed order comes from in `ids` (see
    /// [`TextBatch::padded`]).
    pub order: Option<Vec<u32>>,
    /// Whether the tower's attention is causal.
    pub causal: bool,
}

impl TextBatch {
    /// Lays out `rows` as `config`'s family needs them.
    pub fn for_model(rows: &[Vec<u32>], config: &ClipConfig) -> Result<Self> {
        match config.family {
            Family::Clip => TextBatch::new(rows, &config.text),
            Family::Siglip => TextBatch::padded(rows, &config.text),
        }
    }

    /// CLIP's layout: `seq_len` is the longest pooling position + 1 rather than the context length. The tower is
    /// causal, so tokens after the pooled row cannot change it: the cut batch gives the same embeddings as one
    /// padded to 77, at a fraction of the work. Checks ids against the vocabulary and the context length.
    pub fn new(rows: &[Vec<u32>], config: &TextConfig) -> Result<Self> {
        check_rows(rows, config)?;
        let pool: Vec<usize> = rows
            .iter()
            .map(|row| pooling_position(row, config.eos_token_id))
            .collect();
        let seq_len = pool.iter().map(|p| p + 1).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(rows.len() * seq_len);
        for row in rows {
            let take = row.len().min(seq_len);
            ids.extend_from_slice(&row[..take]);
            // Padding content is irrelevant (causal mask); the EOS id keeps it inside the vocabulary.
            let pad = config.eos_token_id.min(config.vocab_size as u32 - 1);
            ids.extend(std::iter::repeat_n(pad, seq_len - take));
        }
        Ok(TextBatch {
            ids,
            batch: rows.len(),
            seq_len,
            pool,
            key_lens: None,
            order: None,
            causal: true,
        })
    }

    /// SigLIP's layout, as transformers' processor (`padding="max_length"`) and model give it: every row padded to
    /// the context length with the pad id, the padding masked out of attention (the processor's `attention_mask`),
    /// pooled at the last position. Ids a caller passes are all attended: a row already padded to the context is
    /// run as given, as the model runs `input_ids` without a mask.
    ///
    /// The tower runs every row packed to the left (its attended tokens first, then the padding), so that the mask
    /// is a key count. Right padding is packed already. A left-padded row is reordered after its embedding
    /// (`order`): the non-causal tower is equivariant to a reordering of its tokens once their positions are
    /// embedded, so the packed row gives the same outputs, and the last position (the pooled one) is the last
    /// attended token.
    pub fn padded(rows: &[Vec<u32>], config: &TextConfig) -> Result<Self> {
        check_rows(rows, config)?;
        let seq = config.max_position_embeddings;
        let mut ids = Vec::with_capacity(rows.len() * seq);
        let mut pool = Vec::with_capacity(rows.len());
        let mut order = Vec::with_capacity(if config.pad_left { rows.len() * seq } else { 0 });
        for (b, row) in rows.iter().enumerate() {
            let (len, pads) = (row.len(), seq - row.len());
            // Inside the vocabulary: ClipConfig::validate checks it for this family.
            let padding = std::iter::repeat_n(config.pad_token_id, pads);
            if config.pad_left {
                ids.extend(padding);
                ids.extend_from_slice(row);
                // Packed row i: the attended token at position pads + i, then the padding. Rows ≤ 2^14 long
                // (src/limits.rs) and batches of texts far below 2^32 rows.
                let base = b * seq;
                order.extend(
                    (base + pads..base + seq)
                        .chain(base..base + pads)
                        .map(|r| r as u32),
                );
                pool.push(len - 1);
            } else {
                ids.extend_from_slice(row);
                ids.extend(padding);
                pool.push(seq - 1);
            }
        }
        Ok(TextBatch {
            ids,
            batch: rows.len(),
            seq_len: seq,
            pool,
            // Row lengths are at most the context length (checked), far below 2^32 (src/limits.rs).
            key_lens: Some(rows.iter().map(|r| r.len() as u32).collect()),
            order: config.pad_left.then_some(order),
            causal: false,
        })
    }

    /// Rows whose values reach a pooled row: in a causal batch each row up to its pooled position (what the text
    /// tower runs when it packs the batch, ARCHITECTURE §7.15), in a non-causal one every row.
    pub fn needed_rows(&self) -> usize {
        if self.causal {
            self.pool.iter().map(|p| p + 1).sum()
        } else {
            self.batch * self.seq_len
        }
    }
}

/// Every row non-empty, within the context length and the vocabulary.
fn check_rows(rows: &[Vec<u32>], config: &TextConfig) -> Result<()> {
    if rows.is_empty() {
        return Err(Error::EmptyInput("no texts given"));
    }
    for (r, row) in rows.iter().enumerate() {
        if row.is_empty() || row.len() > config.max_position_embeddings {
            return Err(Error::InvalidArgument(format!(
                "token row {r} has {} ids; expected 1 to {} (the context length)",
                row.len(),
                config.max_position_embeddings
            )));
        }
        if let Some(&bad) = row.iter().find(|&&id| id as usize >= config.vocab_size) {
            return Err(Error::InvalidArgument(format!(
                "token row {r} has id {bad}, outside the vocabulary of {}",
                config.vocab_size
            )));
        }
    }
    Ok(())
}
