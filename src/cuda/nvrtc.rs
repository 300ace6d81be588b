//! NVRTC, loaded by hand: the CUDA C++ → CUBIN compiler library, used with no GPU present.
//!
//! Why not cudarc's NVRTC module: with a fixed CUDA feature (cuda-12080) cudarc only tries `libnvrtc.so`,
//! `.so.12`, `.so.11`, … — never `libnvrtc.so.13`, the only name a CUDA 13 install or the cu13 wheel provides — and
//! it panics when none loads. Here the names of both majors are tried (newest first), `CLIPRT_NVRTC` can name the
//! library file, and a miss is an [`Error::DeviceUnavailable`]. The handful of NVRTC entry points used have had
//! the same C signatures since CUDA 11.1, so one binding serves 12.x and 13.x.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;

use crate::error::{Error, Result};

type Program = *mut c_void;
type Status = c_int;

/// The NVRTC entry points cliprt calls, resolved once.
pub struct Nvrtc {
    version: (i32, i32),
    path: String,
    get_error_string: unsafe extern "C" fn(Status) -> *const c_char,
    create_program: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Status,
    destroy_program: unsafe extern "C" fn(*mut Program) -> Status,
    compile_program: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status,
    get_cubin_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    get_cubin: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    get_log_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    get_log: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    // Keeps the library mapped for as long as the function pointers above live (for the process: `OnceLock`).
    _lib: libloading::Library,
}

/// The file names tried, newest CUDA major first; `CLIPRT_NVRTC` (a path or a name) goes before them.
fn candidates() -> Vec<String> {
    let mut names: Vec<String> = std::env::var("CLIPRT_NVRTC").into_iter().collect();
    names.extend(
        [
            "libnvrtc.so.13",
            "libnvrtc.so.12",
            "libnvrtc.so",
            "nvrtc64_130_0.dll",
            "nvrtc64_120_0.dll",
        ]
        .map(String::from),
    );
    names
}

/// A CUBIN and the compiler's log (the ptxas report when `--ptxas-options=-v` was passed).
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
}

impl Nvrtc {
    /// The process-wide NVRTC, loaded on first use.
    pub fn get() -> Result<&'static Nvrtc> {
        static NVRTC: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
        NVRTC
            .get_or_init(Nvrtc::load)
            .as_ref()
            .map_err(|e| Error::DeviceUnavailable(e.clone()))
    }

    fn load() -> std::result::Result<Nvrtc, String> {
        let names = candidates();
        let mut last = String::new();
        for name in &names {
            // SAFETY: loading NVRTC runs only its (side-effect free) library constructors.
            match unsafe { libloading::Library::new(name.as_str()) } {
                Ok(lib) => return Nvrtc::bind(lib, name).map_err(|e| format!("{name}: {e}")),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!(
            "NVRTC (the CUDA runtime compiler) not found: tried {} (last error: {last}). Install it, e.g. \
             `pip install nvidia-cuda-nvrtc-cu12`, and add its lib folder to LD_LIBRARY_PATH, or set CLIPRT_NVRTC \
             to the library's path",
            names.join(", ")
        ))
    }

    fn bind(lib: libloading::Library, name: &str) -> std::result::Result<Nvrtc, libloading::Error> {
        // SAFETY: each symbol is declared with its C signature from nvrtc.h (stable since CUDA 11.1).
        unsafe {
            let version: libloading::Symbol<
                unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status,
            > = lib.get("nvrtcVersion")?;
            let (mut major, mut minor) = (0, 0);
            version(&mut major, &mut minor);
            let nvrtc = Nvrtc {
                version: (major, minor),
                path: name.to_string(),
                get_error_string: *lib.get("nvrtcGetErrorString")?,
                create_program: *lib.get("nvrtcCreateProgram")?,
                destroy_program: *lib.get("nvrtcDestroyProgram")?,
                compile_program: *lib.get("nvrtcCompileProgram")?,
                get_cubin_size: *lib.get("nvrtcGetCUBINSize")?,
                get_cubin: *lib.get("nvrtcGetCUBIN")?,
                get_log_size: *lib.get("nvrtcGetProgramLogSize")?,
                get_log: *lib.get("nvrtcGetProgramLog")?,
                _lib: lib,
            };
            Ok(nvrtc)
        }
    }

    /// NVRTC's (major, minor) version.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// The library name or path that loaded.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn status(&self, s: Status, what: &str) -> std::result::Result<(), String> {
        if s == 0 {
            return Ok(());
        }
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any status.
        let msg = unsafe { CStr::from_ptr((self.get_error_string)(s)) };
        Err(format!("{what}: {}", msg.to_string_lossy()))
    }

    /// Compiles `source` (named `name` in messages) to a CUBIN for `arch` (e.g. `sm_90`). A compile error comes
    /// back as [`Error::KernelCompile`] with NVRTC's log.
    pub fn compile(
        &self,
        name: &str,
        source: &str,
        arch: &str,
        extra: &[&str],
    ) -> Result<Compiled> {
        let fail = |log: String| Error::KernelCompile {
            kernel: format!("{name} ({arch})"),
            log,
        };
        let src = CString::new(source).map_err(|_| fail("source holds a NUL byte".into()))?;
        let cname =
            CString::new(format!("{name}.cu")).map_err(|_| fail("bad module name".into()))?;
        let mut opts = vec![format!("--gpu-architecture={arch}"), "-std=c++17".into()];
        opts.extend(extra.iter().map(|s| s.to_string()));
        let opts: Vec<CString> = opts
            .into_iter()
            .map(CString::new)
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| fail("an option holds a NUL byte".into()))?;
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();

        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: every pointer passed is valid for the call; `prog` is destroyed on every path below.
        unsafe {
            let s = (self.create_program)(
                &mut prog,
                src.as_ptr(),
                cname.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            );
            self.status(s, "nvrtcCreateProgram").map_err(fail)?;
            let result = self.compile_program(prog, &opt_ptrs);
            (self.destroy_program)(&mut prog);
            result.map_err(fail)
        }
    }

    /// Compiles an existing program and reads back its CUBIN and log.
    unsafe fn compile_program(
        &self,
        prog: Program,
        opts: &[*const c_char],
    ) -> std::result::Result<Compiled, String> {
        let compiled = (self.compile_program)(prog, opts.len() as c_int, opts.as_ptr());
        let mut log_len = 0usize;
        self.status(
            (self.get_log_size)(prog, &mut log_len),
            "nvrtcGetProgramLogSize",
        )?;
        let mut log = vec![0u8; log_len.max(1)];
        self.status(
            (self.get_log)(prog, log.as_mut_ptr().cast()),
            "nvrtcGetProgramLog",
        )?;
        let log = String::from_utf8_lossy(&log[..log_len.saturating_sub(1)]).into_owned();
        if compiled != 0 {
            let status = self
                .status(compiled, "nvrtcCompileProgram")
                .err()
                .unwrap_or_default();
            return Err(format!("{status}\n{log}"));
        }
        let mut size = 0usize;
        self.status((self.get_cubin_size)(prog, &mut size), "nvrtcGetCUBINSize")?;
        let mut cubin = vec![0u8; size];
        self.status(
            (self.get_cubin)(prog, cubin.as_mut_ptr().cast()),
            "nvrtcGetCUBIN",
        )?;
        Ok(Compiled { cubin, log })
    }
}
