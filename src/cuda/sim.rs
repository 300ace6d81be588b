//! The CUDA simulator: kernels/*.cu compiled unchanged by the host C++ compiler against `sim/runtime.hpp` (CUDA
//! threads as host threads, warp collectives and mma.sync/ldmatrix with the PTX fragment layouts, deferred
//! cp.async), under AddressSanitizer and UBSan, run as a child process that plays the device: memory, launches,
//! launch errors. [`super::CudaBackend::simulated`] drives it through the same host code as a real GPU, so every
//! kernel, every launch geometry and every argument list is checked on machines without a GPU (CI included).
//!
//! Slow (every CUDA thread is an OS thread): for small shapes. The binary is built once per source version and
//! compiler into the kernel cache folder (`CLIPRT_CACHE_DIR`); `CXX` picks the compiler (default `c++`).

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::kernels;
use crate::error::{Error, Result};

const RUNTIME: &str = include_str!("sim/runtime.hpp");
const SERVER: &str = include_str!("sim/server.cpp");
/// -O1 keeps the build and the run tolerable.
const FLAGS: &[&str] = &[
    "-std=c++20",
    "-O1",
    "-pthread",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-w",
];

/// The sanitizer the simulator is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sanitizer {
    /// AddressSanitizer + UBSan: out-of-bounds global or shared accesses, misaligned vector loads. The default.
    Address,
    /// ThreadSanitizer + UBSan: data races between simulated CUDA threads, i.e. shared or global memory that two
    /// threads touch (one writing) with no barrier, shuffle or other synchronization in between, the hazards
    /// compute-sanitizer's racecheck looks for. Slower: for tiny shapes.
    Thread,
}

impl Sanitizer {
    fn flag(self) -> &'static str {
        match self {
            Sanitizer::Address => "-fsanitize=address,undefined",
            Sanitizer::Thread => "-fsanitize=thread,undefined",
        }
    }
}

/// A kernel argument as cuLaunchKernel receives it.
#[derive(Clone, Copy, Debug)]
pub enum SimArg {
    Ptr(u64),
    I32(i32),
    F32(f32),
}

/// Shared-memory statistics of a simulator since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// 8×8 matrices loaded by ldmatrix.
    pub ldmatrix_matrices: u64,
    /// Wavefronts beyond one per matrix: the cost of shared-memory bank conflicts (0 for a conflict-free layout).
    pub ldmatrix_extra_wavefronts: u64,
}

/// The simulator process.
pub struct Simulator {
    proc: Mutex<Proc>,
    stderr: Arc<Mutex<String>>,
}

struct Proc {
    child: Child,
    tx: BufWriter<ChildStdin>,
    rx: BufReader<ChildStdout>,
    /// Set once the process has failed: every later call returns it.
    dead: Option<String>,
}

/// Device memory of the simulator, freed on drop.
pub struct SimMem {
    sim: Arc<Simulator>,
    ptr: u64,
    bytes: usize,
}

impl SimMem {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for SimMem {
    fn drop(&mut self) {
        let mut req = vec![b'F'];
        req.extend_from_slice(&self.ptr.to_le_bytes());
        // A dead simulator has nothing left to free.
        let _ = self.sim.request(&req, 0);
    }
}

fn compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

/// Rewrites `extern __shared__ [__align__(n)] T name[];` (dynamic shared memory) into a pointer to the
/// simulator's per-block buffer: function-local statics stand for static shared memory, but an extern array
/// cannot be one.
fn rewrite_dynamic_shared(src: &str) -> Result<String> {
    const DECL: &str = "extern __shared__";
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(at) = rest.find(DECL) {
        out.push_str(&rest[..at]);
        let end = rest[at..]
            .find(';')
            .map(|e| at + e)
            .ok_or_else(|| Error::Cuda("sim: unterminated extern __shared__ declaration".into()))?;
        let tokens: Vec<&str> = rest[at + DECL.len()..end]
            .split_whitespace()
            .filter(|t| !t.starts_with("__align__"))
            .collect();
        let (name, ty) = match tokens.split_last() {
            Some((last, ty)) if last.ends_with("[]") && !ty.is_empty() => {
                (last.trim_end_matches("[]"), ty.join(" "))
            }
            _ => {
                return Err(Error::Cuda(format!(
                    "sim: cannot read the declaration {:?}",
                    &rest[at..=end]
                )))
            }
        };
        out.push_str(&format!("{ty}* {name} = ({ty}*)sim::dynamic_shared();"));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The C++ translation unit of one kernel module: the runtime, common.cuh and the module, then one registration
/// per kernel symbol of the module.
fn translation_unit(module: &str) -> Result<String> {
    let src = kernels::module_source(module)
        .ok_or_else(|| Error::Cuda(format!("sim: no kernel module {module}")))?;
    let mut tu = format!(
        "#include \"runtime.hpp\"\n{}\n",
        rewrite_dynamic_shared(&src)?
    );
    for op in kernels::OPS.iter().filter(|o| o.module == module) {
        for v in op.variants {
            tu.push_str(&format!("SIM_REGISTER({})\n", v.symbol));
        }
    }
    Ok(tu)
}

/// The simulator binary, built at most once per process and sanitizer (parallel tests share it).
fn binary(sanitizer: Sanitizer) -> Result<PathBuf> {
    type Built = std::sync::OnceLock<std::result::Result<PathBuf, String>>;
    static ADDRESS: Built = Built::new();
    static THREAD: Built = Built::new();
    let cell = match sanitizer {
        Sanitizer::Address => &ADDRESS,
        Sanitizer::Thread => &THREAD,
    };
    cell.get_or_init(|| find_or_build(sanitizer).map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::DeviceUnavailable)
}

/// The simulator binary for the current sources: from the cache, or built now (and cached).
fn find_or_build(sanitizer: Sanitizer) -> Result<PathBuf> {
    let cxx = compiler();
    let version = Command::new(&cxx).arg("--version").output().map_err(|e| {
        Error::DeviceUnavailable(format!(
            "CUDA simulator: no C++ compiler {cxx:?} ({e}); set CXX"
        ))
    })?;
    let mut units: Vec<(String, String)> = vec![("server".into(), SERVER.into())];
    for m in kernels::modules() {
        units.push((m.to_string(), translation_unit(m)?));
    }
    let mut h = crate::checksum::FNV_START;
    for part in [
        RUNTIME.as_bytes(),
        &version.stdout,
        FLAGS.join(" ").as_bytes(),
        sanitizer.flag().as_bytes(),
    ] {
        h = crate::checksum::fnv1a(h, part);
    }
    for (name, text) in &units {
        h = crate::checksum::fnv1a(h, name.as_bytes());
        h = crate::checksum::fnv1a(h, text.as_bytes());
    }
    let cache = super::cache::dir();
    let target = cache
        .as_ref()
        .map(|d| d.join(format!("cliprt-sim-{h:016x}")));
    if let Some(t) = &target {
        if t.is_file() {
            return Ok(t.clone());
        }
    }
    // A private build folder, created exclusively with a random name (mode 0700): concurrent builds (parallel
    // tests) never see each other's half-written files, and no other user can plant or swap anything in it.
    let work = tempfile::Builder::new()
        .prefix(&format!("cliprt-sim-build-{h:016x}-"))
        .tempdir()
        .map_err(|e| Error::Cuda(format!("sim build folder: {e}")))?
        .keep();
    let built = build(&cxx, sanitizer, &work, &units);
    let result = built.map(|bin| match &target {
        Some(t) => {
            if let Some(parent) = t.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            // Atomic: another process either sees the old state or the whole binary.
            match std::fs::rename(&bin, t) {
                Ok(()) => t.clone(),
                Err(_) => bin,
            }
        }
        None => bin,
    });
    if target.is_some() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

/// Compiles every unit (two at a time) and links them into `work/cliprt-sim`.
fn build(
    cxx: &str,
    sanitizer: Sanitizer,
    work: &Path,
    units: &[(String, String)],
) -> Result<PathBuf> {
    let io = |e: std::io::Error| Error::Cuda(format!("sim build in {}: {e}", work.display()));
    std::fs::create_dir_all(work).map_err(io)?;
    std::fs::write(work.join("runtime.hpp"), RUNTIME).map_err(io)?;
    let mut objects = Vec::new();
    for chunk in units.chunks(2) {
        let mut running = Vec::new();
        for (name, text) in chunk {
            let src = work.join(format!("{name}.cpp"));
            let obj = work.join(format!("{name}.o"));
            std::fs::write(&src, text).map_err(io)?;
            let child = Command::new(cxx)
                .args(FLAGS)
                .arg(sanitizer.flag())
                .arg("-c")
                .arg(&src)
                .arg("-o")
                .arg(&obj)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(io)?;
            running.push((name, child));
            objects.push(obj);
        }
        for (name, child) in running {
            let out = child.wait_with_output().map_err(io)?;
            if !out.status.success() {
                return Err(Error::KernelCompile {
                    kernel: format!("{name} (simulator build)"),
                    log: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
        }
    }
    let bin = work.join("cliprt-sim");
    let out = Command::new(cxx)
        .args(FLAGS)
        .arg(sanitizer.flag())
        .args(&objects)
        .arg("-o")
        .arg(&bin)
        .output()
        .map_err(io)?;
    if !out.status.success() {
        return Err(Error::KernelCompile {
            kernel: "simulator link".into(),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(bin)
}

impl Simulator {
    /// Builds (or finds) the simulator with AddressSanitizer and starts it. `CLIPRT_SIM=0` switches it off (a GPU
    /// machine's test run, where the simulator would only cost time).
    pub fn start() -> Result<Arc<Simulator>> {
        Simulator::start_with(Sanitizer::Address)
    }

    /// [`Simulator::start`] with the given sanitizer.
    pub fn start_with(sanitizer: Sanitizer) -> Result<Arc<Simulator>> {
        if std::env::var("CLIPRT_SIM").as_deref() == Ok("0") {
            return Err(Error::DeviceUnavailable(
                "the CUDA simulator is off (CLIPRT_SIM=0)".into(),
            ));
        }
        let bin = binary(sanitizer)?;
        let mut child = Command::new(&bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::DeviceUnavailable(format!("CUDA simulator {}: {e}", bin.display()))
            })?;
        let io = || Error::DeviceUnavailable("CUDA simulator: no pipes".into());
        let tx = BufWriter::new(child.stdin.take().ok_or_else(io)?);
        let rx = BufReader::new(child.stdout.take().ok_or_else(io)?);
        let mut err = child.stderr.take().ok_or_else(io)?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        // Keeps the last 16 KiB of the server's reports (sanitizer reports can be long).
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if s.len() > 16384 {
                        let cut = s.len() - 16384;
                        let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                        s.drain(..cut);
                    }
                }
            }
        });
        Ok(Arc::new(Simulator {
            proc: Mutex::new(Proc {
                child,
                tx,
                rx,
                dead: None,
            }),
            stderr,
        }))
    }

    /// Sends one request and reads `reply` bytes back. A broken pipe means the server died: its report becomes
    /// the error, now and for every later call.
    fn request(&self, req: &[u8], reply: usize) -> Result<Vec<u8>> {
        let mut p = self
            .proc
            .lock()
            .map_err(|_| Error::Cuda("simulator lock poisoned".into()))?;
        if let Some(why) = &p.dead {
            return Err(Error::Cuda(why.clone()));
        }
        let mut out = vec![0u8; reply];
        let ok = p.tx.write_all(req).and_then(|_| p.tx.flush()).is_ok()
            && (reply == 0 || p.rx.read_exact(&mut out).is_ok());
        if ok {
            return Ok(out);
        }
        let status = p.child.wait().ok();
        // The stderr reader may still be draining the report.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let report = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let why = format!(
            "CUDA simulator failed ({}): {}",
            status.map_or("unknown status".into(), |s| s.to_string()),
            report.trim()
        );
        p.dead = Some(why.clone());
        Err(Error::Cuda(why))
    }

    /// Reads a status reply (u8 status, u32 length, message) after `req`.
    fn status_request(&self, req: &[u8]) -> Result<()> {
        let head = self.request(req, 5)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let msg = if len > 0 {
            String::from_utf8_lossy(&self.request(&[], len)?).into_owned()
        } else {
            String::new()
        };
        match head[0] {
            0 => Ok(()),
            _ => Err(Error::Cuda(format!("simulated launch: {msg}"))),
        }
    }

    /// `bytes` of zeroed device memory.
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<SimMem> {
        let mut req = vec![b'A'];
        req.extend_from_slice(&(bytes as u64).to_le_bytes());
        let r = self.request(&req, 8)?;
        let ptr = u64::from_le_bytes(r.try_into().map_err(|_| Error::Cuda("sim reply".into()))?);
        if ptr == 0 {
            return Err(Error::Cuda(format!(
                "simulator: out of memory for {bytes} bytes"
            )));
        }
        let mem = SimMem {
            sim: self.clone(),
            ptr,
            bytes,
        };
        self.write(&mem, 0, &vec![0u8; bytes])?;
        Ok(mem)
    }

    pub fn write(&self, mem: &SimMem, offset: usize, data: &[u8]) -> Result<()> {
        let mut req = Vec::with_capacity(25 + data.len());
        req.push(b'W');
        for v in [mem.ptr, offset as u64, data.len() as u64] {
            req.extend_from_slice(&v.to_le_bytes());
        }
        req.extend_from_slice(data);
        self.request(&req, 0).map(|_| ())
    }

    pub fn read(&self, mem: &SimMem, offset: usize, len: usize) -> Result<Vec<u8>> {
        let mut req = vec![b'R'];
        for v in [mem.ptr, offset as u64, len as u64] {
            req.extend_from_slice(&v.to_le_bytes());
        }
        self.request(&req, len)
    }

    fn named(op: u8, name: &str) -> Vec<u8> {
        let mut req = vec![op];
        req.extend_from_slice(&(name.len() as u16).to_le_bytes());
        req.extend_from_slice(name.as_bytes());
        req
    }

    /// The shared-memory statistics so far.
    pub fn stats(&self) -> Result<SimStats> {
        let r = self.request(b"S", 16)?;
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&r[8 * i..8 * i + 8]);
            u64::from_le_bytes(b)
        };
        Ok(SimStats {
            ldmatrix_matrices: word(0),
            ldmatrix_extra_wavefronts: word(1),
        })
    }

    /// The kernel's dynamic shared memory limit (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
    pub fn set_max_dynamic_smem(&self, kernel: &str, bytes: u32) -> Result<()> {
        let mut req = Self::named(b'M', kernel);
        req.extend_from_slice(&bytes.to_le_bytes());
        self.status_request(&req)
    }

    /// Runs `kernel` to completion. Wrong argument kinds or counts, bad geometry and too much shared memory are
    /// errors, as cuLaunchKernel reports them.
    pub fn launch(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[SimArg],
    ) -> Result<()> {
        let mut req = Self::named(b'L', kernel);
        for v in [grid.0, grid.1, grid.2, block.0, block.1, block.2, smem] {
            req.extend_from_slice(&v.to_le_bytes());
        }
        req.extend_from_slice(&(args.len() as u32).to_le_bytes());
        for a in args {
            let (kind, bits) = match *a {
                SimArg::Ptr(p) => (b'p', p),
                SimArg::I32(v) => (b'i', u64::from(v as u32)),
                SimArg::F32(v) => (b'f', u64::from(v.to_bits())),
            };
            req.push(kind);
            req.extend_from_slice(&bits.to_le_bytes());
        }
        self.status_request(&req)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Closing stdin ends the server; reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_shared_declarations_become_pointers() {
        let src = "a; extern __shared__ __align__(16) half_t smem[]; b; extern __shared__ float sq[];  // x";
        assert_eq!(
            rewrite_dynamic_shared(src).unwrap(),
            "a; half_t* smem = (half_t*)sim::dynamic_shared(); b; float* sq = (float*)sim::dynamic_shared();  // x"
        );
        assert!(rewrite_dynamic_shared("extern __shared__ float x;").is_err());
        assert!(rewrite_dynamic_shared("extern __shared__ float x[]").is_err());
    }

    #[test]
    fn every_module_registers_its_kernels() {
        let tu = translation_unit("gemm").unwrap();
        assert!(
            tu.contains("SIM_REGISTER(gemm_f16_v1)") && tu.contains("SIM_REGISTER(gemm_f16_v2)")
        );
        assert!(tu.starts_with("#include \"runtime.hpp\""));
    }
}
