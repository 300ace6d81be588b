//! The CLIP family's text batch: token rows laid out for a causal tower pooled at the first EOT (ARCHITECTURE.md,
//! traps 2 and 3). Cutting the batch at the longest pooled row is valid only because the tower is causal; a
//! non-causal family lays its batch out to the full context length instead.

use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::tokenizer::pooling_position;

/// A batch of token ids laid out for the text tower: every row padded to `seq_len`, which is the longest pooling
/// position + 1 rather than the context length. The tower is causal, so tokens after the pooled row cannot change
/// it: the cut batch gives the same embeddings as one padded to 77, at a fraction of the work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextBatch {
    /// Row-major `[batch, seq_len]`.
    pub ids: Vec<u32>,
    pub batch: usize,
    pub seq_len: usize,
    /// The pooled position of each row.
    pub pool: Vec<usize>,
}

impl TextBatch {
    /// Lays out `rows` for a model with `config`; checks ids against the vocabulary and the context length.
    pub fn new(rows: &[Vec<u32>], config: &TextConfig) -> Result<Self> {
        if rows.is_empty() {
            return Err(Error::EmptyInput("no texts given"));
        }
        let mut pool = Vec::with_capacity(rows.len());
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
            pool.push(pooling_position(row, config.eos_token_id));
        }
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
        })
    }
}
