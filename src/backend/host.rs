//! Data-movement operations on host `Vec<f32>` buffers, shared by the CPU and reference backends: they involve no
//! arithmetic beyond one add, so the oracle and the fast path can use the same (obviously correct) code.

use super::PatchShape;

/// Copies each `patch × patch` tile of every channel into one row, in the conv kernel's (channel, y, x) order.
pub fn im2col(out: &mut [f32], pixels: &[f32], s: PatchShape) {
    let (grid, p, size) = (s.grid(), s.patch, s.image_size);
    let patch_dim = s.patch_dim();
    for b in 0..s.batch {
        let image = &pixels[b * s.channels * size * size..];
        for gy in 0..grid {
            for gx in 0..grid {
                let row = &mut out[((b * grid + gy) * grid + gx) * patch_dim..][..patch_dim];
                for c in 0..s.channels {
                    for y in 0..p {
                        let src = &image[(c * size + gy * p + y) * size + gx * p..][..p];
                        row[(c * p + y) * p..][..p].copy_from_slice(src);
                    }
                }
            }
        }
    }
}

/// Prepends the class embedding and adds position embeddings: `out[b, t] = (t == 0 ? class : patches[b, t−1]) + pos[t]`.
pub fn vision_embed(
    out: &mut [f32],
    patches: &[f32],
    class: Option<&[f32]>,
    pos: &[f32],
    batch: usize,
    seq: usize,
    dim: usize,
) {
    let lead = usize::from(class.is_some());
    for b in 0..batch {
        for t in 0..seq {
            let src = match class {
                Some(c) if t == 0 => &c[..dim],
                _ => &patches[(b * (seq - lead) + t - lead) * dim..][..dim],
            };
            let dst = &mut out[(b * seq + t) * dim..][..dim];
            for ((d, s), p) in dst.iter_mut().zip(src).zip(&pos[t * dim..][..dim]) {
                *d = s + p;
            }
        }
    }
}

/// Token plus position embedding for each id of `[batch, seq]` ids.
pub fn text_embed(
    out: &mut [f32],
    ids: &[u32],
    token: &[f32],
    pos: &[f32],
    seq: usize,
    dim: usize,
) {
    for (i, &id) in ids.iter().enumerate() {
        let t = i % seq;
        let dst = &mut out[i * dim..][..dim];
        let tok = &token[id as usize * dim..][..dim];
        for ((d, a), p) in dst.iter_mut().zip(tok).zip(&pos[t * dim..][..dim]) {
            *d = a + p;
        }
    }
}

/// `out[i] = x[rows[i]]`.
pub fn gather_rows(out: &mut [f32], x: &[f32], rows: &[u32], dim: usize) {
    for (i, &r) in rows.iter().enumerate() {
        let r = r as usize;
        out[i * dim..][..dim].copy_from_slice(&x[r * dim..][..dim]);
    }
}

/// Implements the [`Backend`](super::Backend) methods that are the same for every host-memory (`Vec<f32>`)
/// backend: buffer management and the data-movement ops above. Used inside `impl Backend for …`.
macro_rules! host_buffer_ops {
    () => {
        fn alloc(&self, len: usize) -> $crate::error::Result<Vec<f32>> {
            Ok(vec![0.0; len])
        }
        fn upload(&self, data: &[f32]) -> $crate::error::Result<Vec<f32>> {
            Ok(data.to_vec())
        }
        fn write(&self, buf: &mut Vec<f32>, data: &[f32]) -> $crate::error::Result<()> {
            let have = buf.len();
            let dst = buf.get_mut(..data.len()).ok_or_else(|| {
                $crate::error::Error::Shape(format!(
                    "writing {} values into a buffer of {have}",
                    data.len()
                ))
            })?;
            dst.copy_from_slice(data);
            Ok(())
        }
        fn download(&self, buf: &Vec<f32>) -> $crate::error::Result<Vec<f32>> {
            Ok(buf.clone())
        }
        fn len(&self, buf: &Vec<f32>) -> usize {
            buf.len()
        }
        fn im2col_unchecked(
            &self,
            out: &mut Vec<f32>,
            pixels: &Vec<f32>,
            s: $crate::backend::PatchShape,
        ) -> $crate::error::Result<()> {
            $crate::backend::host::im2col(out, pixels, s);
            Ok(())
        }
        fn vision_embed_unchecked(
            &self,
            out: &mut Vec<f32>,
            patches: &Vec<f32>,
            class: Option<&Vec<f32>>,
            pos: &Vec<f32>,
            batch: usize,
            seq: usize,
            dim: usize,
        ) -> $crate::error::Result<()> {
            $crate::backend::host::vision_embed(
                out,
                patches,
                class.map(|c| c.as_slice()),
                pos,
                batch,
                seq,
                dim,
            );
            Ok(())
        }
        fn text_embed_unchecked(
            &self,
            out: &mut Vec<f32>,
            ids: &Vec<u32>,
            n: usize,
            token: &Vec<f32>,
            pos: &Vec<f32>,
            seq: usize,
            dim: usize,
        ) -> $crate::error::Result<()> {
            $crate::backend::host::text_embed(out, &ids[..n], token, pos, seq, dim);
            Ok(())
        }
        fn upload_index(&self, rows: &[u32]) -> $crate::error::Result<Vec<u32>> {
            Ok(rows.to_vec())
        }
        fn write_index(&self, index: &mut Vec<u32>, rows: &[u32]) -> $crate::error::Result<()> {
            let have = index.len();
            index
                .get_mut(..rows.len())
                .ok_or_else(|| {
                    $crate::error::Error::Shape(format!(
                        "writing {} indices into an index of {have}",
                        rows.len()
                    ))
                })?
                .copy_from_slice(rows);
            Ok(())
        }
        fn gather_rows_unchecked(
            &self,
            out: &mut Vec<f32>,
            x: &Vec<f32>,
            rows: &Vec<u32>,
            n: usize,
            dim: usize,
        ) -> $crate::error::Result<()> {
            $crate::backend::host::gather_rows(out, x, &rows[..n], dim);
            Ok(())
        }
        // Host backends have no launch overhead to save: nothing is recorded.
        fn record(
            &self,
            _enqueue: &mut dyn FnMut() -> $crate::error::Result<()>,
        ) -> $crate::error::Result<Option<()>> {
            Ok(None)
        }
        fn replay(&self, _graph: &()) -> $crate::error::Result<()> {
            Ok(())
        }
    };
}
pub(crate) use host_buffer_ops;
