//! The `cliprt` command line: one module per subcommand, each parsing its arguments, calling the library and
//! printing. Rules a library user would also need (model identity of an index, the kernel check's pass rule, how a
//! model folder is read) live in the library, not here.

mod bench;
mod embed;
mod index;
mod info;
mod kernels;
mod model;
mod profile;
mod tokenize;
mod zero_shot;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cliprt",
    version,
    about = "CLIP inference runtime: embeddings, zero-shot classification, retrieval, diagnostics"
)]
struct Cli {
    /// Worker threads (default: all cores; RAYON_NUM_THREADS is respected too).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed images and/or texts and write them as f32 .npy arrays [N, D] (L2-normalized unless --no-normalize).
    Embed(embed::EmbedArgs),
    /// Rank labels for each image by probability: a softmax over the labels (CLIP), a per-pair sigmoid (SigLIP).
    ZeroShot(zero_shot::ZeroShotArgs),
    /// Print token ids as the model sees them.
    Tokenize(tokenize::TokenizeArgs),
    /// Write the preprocessed [3, H, W] f32 pixel tensor of an image as .npy.
    Preprocess(embed::PreprocessArgs),
    /// Measure throughput on a synthetic model at real shapes (no download) or a real checkpoint.
    Bench(bench::BenchArgs),
    /// Embed every image under a folder (recursively) into an index file for `search`. Unreadable files are
    /// listed and skipped; an interrupted run resumes where it stopped; the index is written atomically.
    Index(index::IndexArgs),
    /// Rank an index's images against a text or an image.
    Search(index::SearchArgs),
    /// Describe this machine's devices (CPU SIMD tier, matrix engines, CUDA driver, GPU, NVRTC) and, with --model,
    /// a model folder (loaded on --device, so `info --device cuda` checks the GPU path end to end).
    Info(info::InfoArgs),
    /// Every CUDA kernel variant at CLIP's real shapes, side by side: validated against an f64 reference on
    /// sampled outputs first (failures are reported, not timed), then timed with CUDA events (median), with
    /// cuBLAS as a reference row for GEMM. Needs a GPU; `--device cuda-sim` validates every variant at the
    /// real shapes on the CPU simulator without timing (slow: pick one arch and batch 1).
    Profile(profile::ProfileArgs),
    /// The CUDA kernels: --list prints the variant registry; --check compiles every kernel with NVRTC for each
    /// --arch (no GPU needed) and prints registers, shared memory, stack, spills and compile time, failing on any
    /// compile error, spill or stack frame (local memory).
    Kernels(kernels::KernelsArgs),
}

/// The worker thread count: `--threads`, else `RAYON_NUM_THREADS` (which rayon would read itself), checked
/// against the limit before any thread starts.
fn thread_count(flag: Option<usize>) -> cliprt::Result<Option<usize>> {
    let n = match flag {
        Some(n) => n,
        None => match std::env::var("RAYON_NUM_THREADS") {
            Ok(v) => v.trim().parse().map_err(|_| {
                cliprt::Error::InvalidArgument(format!("RAYON_NUM_THREADS={v:?} is not a number"))
            })?,
            Err(_) => return Ok(None),
        },
    };
    if n == 0 {
        return Err(cliprt::Error::InvalidArgument(
            "--threads must be ≥ 1".into(),
        ));
    }
    cliprt::limits::check(
        "--threads (or RAYON_NUM_THREADS)",
        n as u64,
        cliprt::limits::MAX_THREADS as u64,
    )?;
    Ok(Some(n))
}

/// Signal dispositions of a command-line tool: output into a closed pipe (`cliprt info | head`) ends the process
/// quietly as it does for other Unix tools, instead of a panic in `println!`; SIGBUS, which the kernel sends when a
/// memory-mapped index is truncated in place by another program (src/index/mod.rs), ends it with a message.
fn install_signal_handlers() {
    extern "C" fn on_sigbus(_: libc::c_int) {
        const MSG: &[u8] =
            b"error: a memory-mapped file (an index) was truncated by another program while \
cliprt read it (SIGBUS); rebuild or copy the index and retry\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(74);
        }
    }
    // SAFETY: installing handlers at startup, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::signal(
            libc::SIGBUS,
            on_sigbus as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// Parses and checks a command line without running it: the arguments, the thread count, and for `bench` every
/// size and limit. The fuzz harness (fuzz/harness.rs) runs mutated command lines through it.
#[allow(dead_code)]
pub(crate) fn check_args(args: &[OsString]) -> cliprt::Result<()> {
    let cli =
        Cli::try_parse_from(args).map_err(|e| cliprt::Error::InvalidArgument(e.to_string()))?;
    if let Some(n) = cli.threads {
        thread_count(Some(n))?;
    }
    match cli.command {
        Command::Bench(a) => cliprt::bench::check(&bench::config(a)?.0),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    install_signal_handlers();
    let cli = Cli::parse();
    let threads = match thread_count(cli.threads) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(n) = threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: cannot set {n} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Embed(a) => embed::run(a),
        Command::ZeroShot(a) => zero_shot::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Preprocess(a) => embed::run_preprocess(a),
        Command::Bench(a) => bench::run(a),
        Command::Index(a) => index::run(a),
        Command::Search(a) => index::run_search(a),
        Command::Info(a) => info::run(a),
        Command::Profile(a) => profile::run(a),
        Command::Kernels(a) => kernels::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
