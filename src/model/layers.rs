//! The pre-LN transformer encoder layer shared by both towers, and the activation workspace it runs in.

use crate::backend::{self, AttnShape, Backend, Epilogue, GemmShape, MlpShape, Precision, Rows};
use crate::config::EncoderConfig;
use crate::error::Result;
use crate::weights::LayerWeights;

/// One encoder layer's weights, prepared for backend `B`.
pub struct EncoderLayer<B: Backend> {
    ln1_g: B::Buf,
    ln1_b: B::Buf,
    qkv: B::Linear,
    out: B::Linear,
    ln2_g: B::Buf,
    ln2_b: B::Buf,
    fc1: B::Linear,
    fc2: B::Linear,
}

/// Which of a layer's products must not be rounded to bf16 (ARCHITECTURE §7.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreciseProducts {
    /// Every linear as the engine runs it.
    None,
    /// The q/k/v projection through [`Backend::linear_precise`] (no bf16; i16 where it pays): the image tower's
    /// first layer.
    Qkv,
    /// All four linears through [`Backend::linear_f32`] (f32 on every engine): the text tower's first layer on
    /// engines that round to bf16.
    All,
}

impl PreciseProducts {
    /// Layer `index` of the image tower (`text` false) or the text tower, on a backend whose products run in
    /// `precision`. The i16 engines run the text tower's first layer as any other: their finer grid keeps the
    /// fixtures' text at cosine ≥ 0.999995 to f32 with it in i16, while bf16 with it in i16 fell under 0.9999.
    pub fn for_layer(text: bool, index: usize, precision: Precision) -> Self {
        match (text, index) {
            (true, 0) if precision == Precision::I16 => PreciseProducts::None,
            (true, 0) => PreciseProducts::All,
            (false, 0) => PreciseProducts::Qkv,
            _ => PreciseProducts::None,
        }
    }
}

impl<B: Backend> EncoderLayer<B> {
    /// One layer, its products prepared as `precise` says (ARCHITECTURE §7.13).
    pub fn new(
        b: &B,
        w: &LayerWeights,
        c: &EncoderConfig,
        precise: PreciseProducts,
    ) -> Result<Self> {
        let (d, i) = (c.hidden_size, c.intermediate_size);
        let linear = |w: &[f32], n, k, bias: &[f32], kept: PreciseProducts| match kept {
            PreciseProducts::None => b.linear(w, n, k, Some(bias)),
            PreciseProducts::Qkv => b.linear_precise(w, n, k, Some(bias)),
            PreciseProducts::All => b.linear_f32(w, n, k, Some(bias)),
        };
        // The q/k/v projection as `precise` says; the other three only in the text tower's first layer.
        let rest = match precise {
            PreciseProducts::All => PreciseProducts::All,
            _ => PreciseProducts::None,
        };
        Ok(EncoderLayer {
            ln1_g: b.upload(&w.ln1_g)?,
            ln1_b: b.upload(&w.ln1_b)?,
            qkv: linear(&w.qkv_w, 3 * d, d, &w.qkv_b, precise)?,
            out: linear(&w.out_w, d, d, &w.out_b, rest)?,
            ln2_g: b.upload(&w.ln2_g)?,
            ln2_b: b.upload(&w.ln2_b)?,
            fc1: linear(&w.fc1_w, i, d, &w.fc1_b, rest)?,
            fc2: linear(&w.fc2_w, d, i, &w.fc2_b, rest)?,
        })
    }
}

/// Activation buffers for one forward pass of a tower, sized once for `rows = batch · seq` and reused by every
/// layer (no allocation inside the layer loop).
pub struct Workspace<B: Backend> {
    /// Rows the buffers hold (a workspace serves any batch up to this many rows).
    pub rows: usize,
    /// The residual stream `[rows, D]`.
    pub x: B::Buf,
    /// LayerNorm output `[rows, D]`.
    pub(super) norm: B::Buf,
    /// Packed q|k|v `[rows, 3D]`.
    pub(super) qkv: B::Buf,
    /// Attention output `[rows, D]`.
    pub(super) attn: B::Buf,
    /// MLP hidden `[rows, I]`.
    pub(super) mlp: B::Buf,
}

impl<B: Backend> Workspace<B> {
    pub fn new(b: &B, rows: usize, c: &EncoderConfig) -> Result<Self> {
        let d = c.hidden_size;
        Ok(Workspace {
            rows,
            x: b.alloc(rows * d)?,
            norm: b.alloc(rows * d)?,
            qkv: b.alloc(rows * 3 * d)?,
            attn: b.alloc(rows * d)?,
            mlp: b.alloc(rows * c.intermediate_size)?,
        })
    }
}

/// Values kept from one forward pass to the next (a tower's activation buffers), so that repeated calls at the
/// same or a smaller shape allocate and page-fault nothing: at ViT-B/32 batch 32 that is ≈ 100 MB per call, a few
/// percent of the forward. Concurrent forwards (parts of one batch, or callers on several threads) each take their
/// own; at most one per rayon thread (and never fewer than `Reuse::MIN_KEPT`) are kept.
pub struct Reuse<T>(std::sync::Mutex<Vec<T>>);

impl<T> Default for Reuse<T> {
    fn default() -> Self {
        Reuse(std::sync::Mutex::new(Vec::new()))
    }
}

impl<T> Reuse<T> {
    /// Kept even on few threads: callers on threads of their own may run forwards beside the pool's.
    const MIN_KEPT: usize = 8;

    /// A kept value that `fits` accepts, else a new one from `make`.
    pub fn take_or(
        &self,
        fits: impl Fn(&T) -> bool,
        make: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        // A poisoned lock only means a panic elsewhere mid-forward: the buffers are plain data, still usable.
        let kept = {
            let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
            match g.iter().position(&fits) {
                Some(i) => Some(g.swap_remove(i)),
                // One value too small for this call is freed rather than kept beside the new one.
                None => g.pop().and(None),
            }
        };
        match kept {
            Some(v) => Ok(v),
            None => make(),
        }
    }

    /// Keeps `v` for a later call.
    pub fn keep(&self, v: T) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // One per concurrent batch part (`Backend::batch_parts`: at most one per thread).
        if g.len() < rayon::current_num_threads().max(Self::MIN_KEPT) {
            g.push(v);
        }
    }
}

/// One forward's layout: `batch` sequences of `seq` tokens, causal or not; with `key_lens`, item b attends only to
/// its first `key_lens[b]` tokens (a padding mask); with `packed`, the stream holds only some of those rows.
pub struct Pass<'a, B: Backend> {
    pub batch: usize,
    pub seq: usize,
    pub causal: bool,
    pub key_lens: Option<&'a Rows<B>>,
    pub packed: Option<Packed<'a, B>>,
}

impl<B: Backend> Pass<'_, B> {
    /// Rows of the residual stream: the packed rows, or every `batch × seq` row.
    pub fn rows(&self) -> usize {
        self.packed
            .as_ref()
            .map_or(self.batch * self.seq, |p| p.rows)
    }
}

/// A causal batch packed to the rows that matter (ARCHITECTURE §7.15): each item's tokens up to its pooled row,
/// back to back, so the row-wise work (LayerNorm, the four products) skips the padding. Attention runs on the
/// packed rows where the backend can ([`Backend::attends_packed`]); elsewhere its q|k|v are spread into the
/// `batch × seq` layout and its output packed back, two row copies per layer.
pub struct Packed<'a, B: Backend> {
    /// Rows of the packed stream.
    pub rows: usize,
    /// Each item's packed rows (its tokens up to its pooled row).
    pub lens: &'a Rows<B>,
    /// For each `batch × seq` row, the packed row it takes (a padding row: any row of its own item; causal
    /// attention never lets it reach a kept row).
    pub spread: &'a Rows<B>,
    /// For each packed row, its `batch × seq` row.
    pub pack: &'a Rows<B>,
}

/// Whether a workspace for `batch × seq` rows can run a packed pass: the spread q|k|v (`batch · seq × 3D`) borrows
/// the MLP buffer (`batch · seq × I`), free during attention.
pub fn can_pack(c: &EncoderConfig) -> bool {
    c.intermediate_size >= 3 * c.hidden_size
}

/// Runs `layers` over the residual stream `ws.x` (`batch × seq` rows):
/// x += out_proj(attention(LN1(x)));  x += fc2(act(fc1(LN2(x)))).
pub fn run_encoder<B: Backend>(
    b: &B,
    layers: &[EncoderLayer<B>],
    c: &EncoderConfig,
    ws: &mut Workspace<B>,
    p: &Pass<B>,
) -> Result<()> {
    for l in layers {
        attend(b, l, c, ws, p)?;
        let Workspace {
            x, norm, attn, mlp, ..
        } = ws;
        residual_blocks(b, l, c, x, attn, norm, mlp, p.rows())?;
    }
    Ok(())
}

/// [`run_encoder`] for a tower that reads one row per item (CLIP's class token or end-of-text token, SigLIP's
/// last text token): writes the final stream's rows `rows[..batch]` to `pooled` `[batch, D]` and nothing else.
/// The last layer's attention still runs over every token (every key and value is needed), but its
/// out-projection, LayerNorm and MLP are row-wise, so they run on the pooled rows alone: the same values, without
/// ≈ 3/4 of the last layer's FLOPs (ARCHITECTURE §7.14).
pub fn run_encoder_pooled<B: Backend>(
    b: &B,
    layers: &[EncoderLayer<B>],
    c: &EncoderConfig,
    ws: &mut Workspace<B>,
    p: &Pass<B>,
    (rows, pooled): (&Rows<B>, &mut B::Buf),
) -> Result<()> {
    let d = c.hidden_size;
    let Some((last, body)) = layers.split_last() else {
        return backend::gather_rows(b, pooled, &ws.x, rows, p.batch, d);
    };
    run_encoder(b, body, c, ws, p)?;
    attend(b, last, c, ws, p)?;
    let Workspace {
        x,
        norm,
        qkv,
        attn,
        mlp,
        ..
    } = ws;
    backend::gather_rows(b, pooled, x, rows, p.batch, d)?;
    // q/k/v are spent: their buffer holds the pooled rows' attention output.
    backend::gather_rows(b, qkv, attn, rows, p.batch, d)?;
    residual_blocks(b, last, c, pooled, qkv, norm, mlp, p.batch)
}

/// `ws.attn = attention(LN1(ws.x))` over the stream's rows.
fn attend<B: Backend>(
    b: &B,
    l: &EncoderLayer<B>,
    c: &EncoderConfig,
    ws: &mut Workspace<B>,
    p: &Pass<B>,
) -> Result<()> {
    let rows = p.rows();
    let d = c.hidden_size;
    let shape = AttnShape {
        batch: p.batch,
        seq: p.seq,
        heads: c.num_heads,
        head_dim: c.head_dim(),
        causal: p.causal,
    };
    backend::layernorm(
        b,
        &mut ws.norm,
        &ws.x,
        &l.ln1_g,
        &l.ln1_b,
        rows,
        d,
        c.layer_norm_eps,
    )?;
    backend::gemm(
        b,
        &mut ws.qkv,
        &ws.norm,
        &l.qkv,
        GemmShape {
            m: rows,
            n: 3 * d,
            k: d,
        },
        Epilogue::Store,
    )?;
    let Some(packed) = &p.packed else {
        return attention(b, &mut ws.attn, &ws.qkv, shape, p.key_lens);
    };
    if b.attends_packed() {
        return backend::attention_packed(b, &mut ws.attn, &ws.qkv, shape, packed.lens, rows);
    }
    if !can_pack(c) {
        return Err(crate::error::Error::Shape(
            "a packed pass needs an MLP at least 3× the width (layers::can_pack)".into(),
        ));
    }
    // Spread into the batch × seq layout (in the MLP buffer), attend (into `norm`, spent after the q/k/v product),
    // pack the output back.
    let padded = p.batch * p.seq;
    backend::gather_rows(b, &mut ws.mlp, &ws.qkv, packed.spread, padded, 3 * d)?;
    attention(b, &mut ws.norm, &ws.mlp, shape, p.key_lens)?;
    backend::gather_rows(b, &mut ws.attn, &ws.norm, packed.pack, rows, d)
}

/// Attention under the key padding mask `key_lens` where there is one.
fn attention<B: Backend>(
    b: &B,
    out: &mut B::Buf,
    qkv: &B::Buf,
    shape: AttnShape,
    key_lens: Option<&Rows<B>>,
) -> Result<()> {
    match key_lens {
        Some(k) => backend::attention_masked(b, out, qkv, shape, k),
        None => backend::attention(b, out, qkv, shape),
    }
}

/// The rest of a layer on `rows` rows, all row-wise: x += out_proj(attn); x += fc2(act(fc1(LN2(x)))), with `norm`
/// and `hidden` as scratch.
#[allow(clippy::too_many_arguments)]
fn residual_blocks<B: Backend>(
    b: &B,
    l: &EncoderLayer<B>,
    c: &EncoderConfig,
    x: &mut B::Buf,
    attn: &B::Buf,
    norm: &mut B::Buf,
    hidden: &mut B::Buf,
    rows: usize,
) -> Result<()> {
    let (d, i) = (c.hidden_size, c.intermediate_size);
    backend::gemm(
        b,
        x,
        attn,
        &l.out,
        GemmShape {
            m: rows,
            n: d,
            k: d,
        },
        Epilogue::Accumulate,
    )?;
    backend::layernorm(b, norm, x, &l.ln2_g, &l.ln2_b, rows, d, c.layer_norm_eps)?;
    let mlp = MlpShape {
        rows,
        dim: d,
        hidden: i,
    };
    backend::mlp(b, x, hidden, norm, &l.fc1, &l.fc2, mlp, c.activation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{reference::ReferenceBackend, Activation};
    use crate::cpu::{CpuBackend, MatrixEngine};
    use crate::weights::LayerWeights;

    /// Uniform values in [-scale, scale) from a seeded LCG.
    fn values(seed: &mut u64, len: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn layer(seed: &mut u64, d: usize, i: usize) -> LayerWeights {
        let (sd, si) = (1.0 / (d as f32).sqrt(), 1.0 / (i as f32).sqrt());
        LayerWeights {
            qkv_w: values(seed, 3 * d * d, sd),
            qkv_b: values(seed, 3 * d, 0.1),
            out_w: values(seed, d * d, sd),
            out_b: values(seed, d, 0.1),
            ln1_g: values(seed, d, 0.5).iter().map(|v| 1.0 + v).collect(),
            ln1_b: values(seed, d, 0.1),
            ln2_g: values(seed, d, 0.5).iter().map(|v| 1.0 + v).collect(),
            ln2_b: values(seed, d, 0.1),
            fc1_w: values(seed, i * d, sd),
            fc1_b: values(seed, i, 0.1),
            fc2_w: values(seed, d * i, si),
            fc2_b: values(seed, d, 0.1),
        }
    }

    /// The pooled rows of the final stream, through the full encoder + a gather, and through
    /// `run_encoder_pooled`.
    fn both_ways<B: Backend>(b: &B, causal: bool, masked: bool) -> (Vec<f32>, Vec<f32>) {
        // Awkward widths: 5 heads of 8, an MLP of 72, 3 sequences of 7, pooled at different positions.
        let c = EncoderConfig {
            hidden_size: 40,
            intermediate_size: 72,
            num_layers: 3,
            num_heads: 5,
            layer_norm_eps: 1e-5,
            activation: Activation::QuickGelu,
        };
        let (batch, seq, d) = (3, 7, 40);
        let mut seed = 0x5eed;
        let layers: Vec<_> = (0..c.num_layers)
            .map(|index| {
                let precise = PreciseProducts::for_layer(causal, index, b.precision());
                EncoderLayer::new(b, &layer(&mut seed, d, 72), &c, precise).unwrap()
            })
            .collect();
        let x = values(&mut seed, batch * seq * d, 1.0);
        let pool = backend::rows(b, &[6, seq + 2, 2 * seq + 4]).unwrap();
        let lens = backend::rows(b, &[7, 3, 5]).unwrap();
        let mask = masked.then_some(&lens);

        let mut ws = Workspace::new(b, batch * seq, &c).unwrap();
        ws.x = b.upload(&x).unwrap();
        let pass = Pass {
            batch,
            seq,
            causal,
            key_lens: mask,
            packed: None,
        };
        run_encoder(b, &layers, &c, &mut ws, &pass).unwrap();
        let mut full = b.alloc(batch * d).unwrap();
        backend::gather_rows(b, &mut full, &ws.x, &pool, batch, d).unwrap();

        let mut ws = Workspace::new(b, batch * seq, &c).unwrap();
        ws.x = b.upload(&x).unwrap();
        let mut pooled = b.upload(&vec![f32::NAN; batch * d]).unwrap();
        run_encoder_pooled(b, &layers, &c, &mut ws, &pass, (&pool, &mut pooled)).unwrap();
        (b.download(&full).unwrap(), b.download(&pooled).unwrap())
    }

    fn assert_same(what: &str, (full, pooled): (Vec<f32>, Vec<f32>), tol: f32) {
        assert_eq!(full.len(), pooled.len());
        for (i, (f, p)) in full.iter().zip(&pooled).enumerate() {
            assert!(
                (f - p).abs() <= tol * (1.0 + f.abs()),
                "{what}: value {i}: full encoder {f}, pooled {p}"
            );
        }
    }

    /// A causal batch's pooled rows, run padded and run packed (each item's rows up to its pooled one).
    fn padded_and_packed<B: Backend>(b: &B) -> (Vec<f32>, Vec<f32>) {
        // 3 heads of 8; an MLP of 80 ≥ 3 × 24, as packing needs; 3 sequences of 7 pooled at 6, 2 and 4.
        let c = EncoderConfig {
            hidden_size: 24,
            intermediate_size: 80,
            num_layers: 3,
            num_heads: 3,
            layer_norm_eps: 1e-5,
            activation: Activation::QuickGelu,
        };
        assert!(can_pack(&c));
        let (batch, seq, d, lens) = (3, 7, 24, [7usize, 3, 5]);
        let mut seed = 0xfeed;
        let layers: Vec<_> = (0..c.num_layers)
            .map(|index| {
                let precise = PreciseProducts::for_layer(true, index, b.precision());
                EncoderLayer::new(b, &layer(&mut seed, d, 80), &c, precise).unwrap()
            })
            .collect();
        let x = values(&mut seed, batch * seq * d, 1.0);
        let run = |x: &[f32], pool: &[usize], packed: Option<Packed<B>>| {
            let mut ws = Workspace::new(b, batch * seq, &c).unwrap();
            ws.x = b
                .upload(&[x, &vec![f32::NAN; (batch * seq) * d - x.len()]].concat())
                .unwrap();
            let pass = Pass {
                batch,
                seq,
                causal: true,
                key_lens: None,
                packed,
            };
            let pool = backend::rows(b, pool).unwrap();
            let mut pooled = b.upload(&vec![f32::NAN; batch * d]).unwrap();
            run_encoder_pooled(b, &layers, &c, &mut ws, &pass, (&pool, &mut pooled)).unwrap();
            b.download(&pooled).unwrap()
        };
        let padded = run(&x, &[6, seq + 2, 2 * seq + 4], None);

        // The packed rows by hand: item i's first lens[i] rows, back to back; a padding row takes its item's last.
        let (mut pack, mut spread, mut pool, mut first) = (vec![], vec![], vec![], 0);
        for (i, &len) in lens.iter().enumerate() {
            pack.extend((0..len).map(|t| i * seq + t));
            spread.extend((0..seq).map(|t| first + t.min(len - 1)));
            pool.push(first + len - 1);
            first += len;
        }
        let xp: Vec<f32> = pack
            .iter()
            .flat_map(|&r| x[r * d..(r + 1) * d].to_vec())
            .collect();
        let (spread, pack_rows, lens) = (
            backend::rows(b, &spread).unwrap(),
            backend::rows(b, &pack).unwrap(),
            backend::rows(b, &lens).unwrap(),
        );
        let packed = Packed {
            rows: pack.len(),
            lens: &lens,
            spread: &spread,
            pack: &pack_rows,
        };
        (padded, run(&xp, &pool, Some(packed)))
    }

    #[test]
    fn packed_causal_pass_matches_the_padded_pass() {
        // The reference spreads q|k|v and packs the output back; the CPU engines attend on the packed rows.
        assert!(!ReferenceBackend.attends_packed());
        assert_same("reference", padded_and_packed(&ReferenceBackend), 0.0);
        for engine in MatrixEngine::ALL.into_iter().filter(|e| e.available()) {
            let b = CpuBackend::with_engine(engine).unwrap();
            // 15 rows instead of 21 tile differently: the same sums, within f32 rounding.
            assert_same(engine.name(), padded_and_packed(&b), 1e-5);
        }
    }

    #[test]
    fn pooled_encoder_matches_the_full_encoder_gathered() {
        for (causal, masked) in [(false, false), (true, false), (false, true)] {
            let what = format!("causal {causal}, masked {masked}");
            // The reference backend's products are row by row: the same values exactly.
            assert_same(
                &format!("reference, {what}"),
                both_ways(&ReferenceBackend, causal, masked),
                0.0,
            );
            // Packed kernels may tile 3 rows differently from 21: the same sums, so within f32 rounding.
            for engine in MatrixEngine::ALL.into_iter().filter(|e| e.available()) {
                let b = CpuBackend::with_engine(engine).unwrap();
                assert_same(
                    &format!("{}, {what}", engine.name()),
                    both_ways(&b, causal, masked),
                    1e-5,
                );
            }
        }
    }
}
