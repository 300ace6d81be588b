//! Device memory: allocations on a GPU or on the simulator, host↔device copies, f16 conversion at the boundary, and
//! the pinned staging buffers that model inputs upload through.

use cudarc::driver::{CudaSlice, DevicePtr};
use half::f16;

use super::backend::CudaBackend;
use super::launch::Exec;
use super::sim;
use crate::error::{Error, Result};

/// Device memory: a CUDA allocation, or the simulator's ([`CudaBackend::simulated`]). Untyped: the kernels'
/// parameter lists give it a type.
pub struct Mem {
    pub(crate) inner: MemInner,
    /// The device address (what a kernel receives).
    pub(crate) ptr: u64,
    /// Recorded on the main stream after the (stream-ordered) allocation and zeroing: another stream that
    /// writes the memory waits for it first.
    pub(crate) ready: Option<cudarc::driver::CudaEvent>,
}

pub(crate) enum MemInner {
    Cuda(CudaSlice<u8>),
    Sim(sim::SimMem),
}

impl Mem {
    /// The allocation's size.
    pub(crate) fn bytes(&self) -> usize {
        match &self.inner {
            MemInner::Cuda(slice) => slice.len(),
            MemInner::Sim(m) => m.bytes(),
        }
    }
}

/// Halves per pinned staging buffer (16 MB): large enough for full-speed DMA, small enough that converting one
/// piece on the host overlaps copying the previous one.
pub(crate) const STAGE_HALVES: usize = 8 << 20;

/// Two pinned (page-locked) host buffers that model inputs are converted into and copied from, alternately;
/// each remembers when its last copy finishes.
#[derive(Default)]
pub(crate) struct Staging {
    buffers: Vec<(
        cudarc::driver::PinnedHostSlice<f16>,
        Option<cudarc::driver::CudaEvent>,
    )>,
    next: usize,
}

impl Drop for Staging {
    fn drop(&mut self) {
        // A copy still reading a buffer must finish before the buffer is freed.
        for (_, copied) in &self.buffers {
            if let Some(e) = copied {
                let _ = e.synchronize();
            }
        }
    }
}

/// An f16 device buffer of `len` values (the allocation holds at least one, as CUDA cannot allocate zero bytes).
pub struct CudaBuf {
    pub(crate) data: Mem,
    pub(crate) len: usize,
}

/// A linear layer on the device: `w[n, k]` (HF layout, K-contiguous as the GEMM wants) and an optional bias.
pub struct CudaLinear {
    pub(crate) w: Mem,
    pub(crate) bias: Option<Mem>,
    pub(crate) n: usize,
    pub(crate) k: usize,
}

/// f32 → f16 (round to nearest even) on the host, in parallel for large inputs: at ViT-L/14 batch 256 the pixels
/// alone are 38 M values, which one core converts in tens of milliseconds.
pub(crate) fn to_f16(data: &[f32]) -> Vec<f16> {
    let mut out = vec![f16::ZERO; data.len()];
    convert_to_f16(&mut out, data);
    out
}

/// `out[i] = f16(data[i])`, in parallel pieces.
pub(crate) fn convert_to_f16(out: &mut [f16], data: &[f32]) {
    use half::slice::HalfFloatSliceExt;
    use rayon::prelude::*;
    out.par_chunks_mut(1 << 18)
        .zip(data.par_chunks(1 << 18))
        .for_each(|(o, i)| o.convert_from_f32_slice(i));
}

impl CudaBackend {
    /// `bytes` of zeroed device memory (at least one byte: CUDA cannot allocate zero).
    pub(crate) fn alloc_bytes(&self, bytes: usize) -> Result<Mem> {
        let bytes = bytes.max(1);
        Ok(match &self.exec {
            Exec::Cuda { stream, .. } => {
                let slice = stream.alloc_zeros::<u8>(bytes)?;
                let ptr = slice.device_ptr(stream).0;
                Mem {
                    inner: MemInner::Cuda(slice),
                    ptr,
                    ready: Some(stream.record_event(None)?),
                }
            }
            Exec::Sim(sim) => {
                let m = sim.alloc(bytes)?;
                Mem {
                    ptr: m.ptr(),
                    inner: MemInner::Sim(m),
                    ready: None,
                }
            }
        })
    }

    /// Device memory holding `data`.
    pub(crate) fn upload_bytes(&self, data: &[u8]) -> Result<Mem> {
        let mut m = self.alloc_bytes(data.len())?;
        self.write_bytes(&mut m, data)?;
        Ok(m)
    }

    /// Overwrites the first `data.len()` bytes of `m`.
    pub(crate) fn write_bytes(&self, m: &mut Mem, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        match (&self.exec, &mut m.inner) {
            (Exec::Cuda { stream, .. }, MemInner::Cuda(slice)) => {
                let mut dst = slice.slice_mut(0..data.len());
                Ok(stream.memcpy_htod(data, &mut dst)?)
            }
            (Exec::Sim(sim), MemInner::Sim(mem)) => sim.write(mem, 0, data),
            _ => Err(Error::InvalidArgument("memory of another device".into())),
        }
    }

    /// The first `len` bytes of `m`.
    pub(crate) fn download_bytes(&self, m: &Mem, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        match (&self.exec, &m.inner) {
            (Exec::Cuda { stream, .. }, MemInner::Cuda(slice)) => {
                Ok(stream.clone_dtoh(&slice.slice(0..len))?)
            }
            (Exec::Sim(sim), MemInner::Sim(mem)) => sim.read(mem, 0, len),
            _ => Err(Error::InvalidArgument("memory of another device".into())),
        }
    }

    pub(crate) fn download_pod<T: bytemuck::Pod>(&self, m: &Mem, count: usize) -> Result<Vec<T>> {
        let bytes = self.download_bytes(m, count * std::mem::size_of::<T>())?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// [`crate::backend::Backend::write_input`] on a GPU: `data` converted into pinned staging buffers and copied
    /// asynchronously on the copy stream, ordered before the launches that follow.
    pub(crate) fn write_input_staged(&self, buf: &mut CudaBuf, data: &[f32]) -> Result<()> {
        let (
            Exec::Cuda {
                stream,
                copy_stream,
                staging,
                ..
            },
            MemInner::Cuda(dst),
        ) = (&self.exec, &mut buf.data.inner)
        else {
            return crate::backend::Backend::write(self, buf, data);
        };
        // After the buffer's allocation and zeroing on the main stream (not after the main stream's later work,
        // which the copy is meant to overlap).
        if let Some(ready) = &buf.data.ready {
            copy_stream.wait(ready)?;
        }
        if data.len() > buf.len {
            return Err(Error::Shape(format!(
                "writing {} values into a buffer of {}",
                data.len(),
                buf.len
            )));
        }
        let mut st = staging
            .lock()
            .map_err(|_| Error::Cuda("staging buffers poisoned".into()))?;
        if st.buffers.is_empty() {
            for _ in 0..2 {
                // SAFETY: pinned memory starts uninitialized; every piece is written before it is copied.
                let host = unsafe { stream.context().alloc_pinned::<f16>(STAGE_HALVES) }?;
                st.buffers.push((host, None));
            }
        }
        for (i, piece) in data.chunks(STAGE_HALVES).enumerate() {
            let b = st.next;
            st.next = (b + 1) % st.buffers.len();
            let (host, copied) = &mut st.buffers[b];
            // The previous copy out of this buffer must be done before it is overwritten.
            if let Some(e) = copied.take() {
                e.synchronize()?;
            }
            let host = &mut host.as_mut_slice()?[..piece.len()];
            convert_to_f16(host, piece);
            let at = 2 * i * STAGE_HALVES;
            let mut dst = dst.slice_mut(at..at + 2 * piece.len());
            // An asynchronous DMA from page-locked memory: the host goes on converting the next piece.
            copy_stream.memcpy_htod(bytemuck::cast_slice::<f16, u8>(host), &mut dst)?;
            *copied = Some(copy_stream.record_event(None)?);
        }
        // Launches queued from now on run after the upload.
        stream.join(copy_stream)?;
        Ok(())
    }
}
