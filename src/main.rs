//! The `cliprt` command line: embed, zero-shot, tokenize, preprocess, bench, info, kernels.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use cliprt::cpu::{MatrixEngine, Precision};
use cliprt::{npy, AlphaMode, Clip, Device, Error, Result};

#[derive(Parser)]
#[command(
    name = "cliprt",
    version,
    about = "CLIP inference runtime: embeddings, zero-shot classification, diagnostics"
)]
struct Cli {
    /// Worker threads (default: all cores; RAYON_NUM_THREADS is respected too).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ModelArgs {
    /// HF-format CLIP folder (config.json, model.safetensors, tokenizer.json, [preprocessor_config.json]).
    #[arg(long)]
    model: PathBuf,
    /// cpu, reference (slow f64 oracle), cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Drop the alpha channel (OpenAI's transform) instead of compositing onto white (HF's).
    #[arg(long)]
    drop_alpha: bool,
    /// GEMM precision: f32, or bf16 (needs AVX512_BF16; f32 runs elsewhere).
    #[arg(long, default_value = "f32")]
    precision: String,
}

impl ModelArgs {
    fn load(&self) -> Result<Clip> {
        let device: Device = self.device.parse()?;
        let mut clip = Clip::load_with(&self.model, device, self.precision.parse()?)?;
        if self.drop_alpha {
            clip.set_alpha_mode(AlphaMode::Drop);
        }
        Ok(clip)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Embed images and/or texts and write them as f32 .npy arrays [N, D] (L2-normalized unless --no-normalize).
    Embed {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long = "image")]
        images: Vec<PathBuf>,
        #[arg(long = "text")]
        texts: Vec<String>,
        /// A UTF-8 file with one text per line (blank lines are skipped).
        #[arg(long)]
        text_file: Option<PathBuf>,
        #[arg(long)]
        out_image: Option<PathBuf>,
        #[arg(long)]
        out_text: Option<PathBuf>,
        /// Write the projected embeddings before L2 normalization.
        #[arg(long)]
        no_normalize: bool,
    },
    /// Rank labels for each image by CLIP's softmax probability.
    ZeroShot {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long = "image", required = true)]
        images: Vec<PathBuf>,
        #[arg(long = "label", required = true)]
        labels: Vec<String>,
        /// Prompt template; `{}` is replaced by the label.
        #[arg(long, default_value = "a photo of a {}.")]
        template: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print token ids as the model sees them.
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long = "text", required = true)]
        texts: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write the preprocessed [3, H, W] f32 pixel tensor of an image as .npy.
    Preprocess {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        image: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure throughput on a synthetic model at real shapes (no download) or a real checkpoint.
    Bench {
        /// Preset for the synthetic model: vit-b-32, vit-b-16, vit-l-14, vit-l-14-336, vit-h-14.
        #[arg(long, default_value = "vit-b-32")]
        arch: String,
        /// A real HF-format checkpoint folder instead of a synthetic model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Comma-separated: image, text, similarity, search (search needs no model: a random gallery).
        #[arg(long, default_value = "image,text", value_delimiter = ',')]
        workload: Vec<String>,
        /// Search: gallery rows, comma-separated.
        #[arg(long, default_value = "100000", value_delimiter = ',')]
        gallery: Vec<usize>,
        /// Search: embedding width, comma-separated.
        #[arg(long, default_value = "512", value_delimiter = ',')]
        dim: Vec<usize>,
        /// Search: queries per search (the items of items/s), comma-separated.
        #[arg(long, default_value = "1,64", value_delimiter = ',')]
        queries: Vec<usize>,
        /// Search: results per query, comma-separated.
        #[arg(long, default_value = "10", value_delimiter = ',')]
        k: Vec<usize>,
        /// Comma-separated batch sizes.
        #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
        batch: Vec<usize>,
        /// Text rows of exactly N tokens (SOT and EOT included) instead of the built-in real prompts.
        #[arg(long)]
        prompt_len: Option<usize>,
        /// cpu, reference or cuda[:N].
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32, or bf16 (bf16 GEMMs with f32 accumulation; needs AVX512_BF16, else f32 runs and is reported).
        #[arg(long, default_value = "f32")]
        precision: String,
        /// Untimed runs per measurement.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Timed runs per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// The machine's peak GFLOP/s for the %peak column (default: measured with an FMA loop).
        #[arg(long)]
        peak_gflops: Option<f64>,
        /// One JSON object per line per measurement instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Embed every image under a folder (recursively) into an index file for `search`. Unreadable files are
    /// listed and skipped; an interrupted run resumes where it stopped; the index is written atomically.
    Index {
        #[command(flatten)]
        model: ModelArgs,
        /// The folder tree to index.
        #[arg(long)]
        images: PathBuf,
        /// The index file to write.
        #[arg(long)]
        out: PathBuf,
        /// Images per forward pass.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Rebuild the index if it already exists.
        #[arg(long)]
        force: bool,
    },
    /// Rank an index's images against a text or an image.
    #[command(group(clap::ArgGroup::new("query").required(true).args(["text", "image"])))]
    Search {
        #[command(flatten)]
        model: ModelArgs,
        /// The index file (from `cliprt index`).
        #[arg(long)]
        index: PathBuf,
        #[arg(long)]
        text: Option<String>,
        #[arg(long)]
        image: Option<PathBuf>,
        /// Results to show.
        #[arg(short, long, default_value_t = 10)]
        k: usize,
        /// JSON: [{"rank", "score", "path"}], score = cosine similarity.
        #[arg(long)]
        json: bool,
    },
    /// Describe this machine's devices (CPU SIMD tier, CUDA driver, GPU, NVRTC) and, with --model, a model folder
    /// (loaded on --device, so `info --device cuda` checks the GPU path end to end).
    Info {
        /// HF-format CLIP folder to describe.
        #[arg(long)]
        model: Option<PathBuf>,
        /// cpu, reference, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Every CUDA kernel variant at CLIP's real shapes, side by side: validated against an f64 reference on
    /// sampled outputs first (failures are reported, not timed), then timed with CUDA events (median), with
    /// cuBLAS as a reference row for GEMM. Needs a GPU; `--device cuda-sim` validates every variant at the
    /// real shapes on the CPU simulator without timing (slow: pick one arch and batch 1).
    Profile {
        /// Comma-separated: gemm, attention, layernorm, all.
        #[arg(long, default_value = "all", value_delimiter = ',')]
        op: Vec<String>,
        /// Presets whose shapes are profiled, comma-separated.
        #[arg(long, default_value = "vit-b-32,vit-l-14", value_delimiter = ',')]
        arch: Vec<String>,
        /// Batch sizes, comma-separated (text runs at 77 and 16 tokens per batch).
        #[arg(long, default_value = "1,32,256", value_delimiter = ',')]
        batch: Vec<usize>,
        /// Timed launches per row (the median is reported).
        #[arg(long, default_value_t = 50)]
        reps: usize,
        /// cuda, cuda:N, or cuda-sim (validation only)
        #[arg(long, default_value = "cuda")]
        device: String,
        /// One JSON object per row.
        #[arg(long)]
        json: bool,
    },
    /// The CUDA kernels: --list prints the variant registry; --check compiles every kernel with NVRTC for each
    /// --arch (no GPU needed) and prints registers, shared memory, stack, spills and compile time, failing on any
    /// compile error, spill or stack frame (local memory).
    Kernels {
        #[arg(long)]
        list: bool,
        #[arg(long)]
        check: bool,
        /// Comma-separated targets for --check.
        #[arg(long, default_value = "sm_80,sm_90", value_delimiter = ',')]
        arch: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: cannot set {n} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn describe(e: &cliprt::config::EncoderConfig) -> String {
    format!(
        "{} layers, width {}, {} heads (head dim {}), mlp {}, {}, eps {:e}",
        e.num_layers,
        e.hidden_size,
        e.num_heads,
        e.head_dim(),
        e.intermediate_size,
        e.activation.name(),
        e.layer_norm_eps
    )
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Embed {
            model,
            images,
            mut texts,
            text_file,
            out_image,
            out_text,
            no_normalize,
        } => {
            if let Some(f) = &text_file {
                texts.extend(cliprt::tokenizer::read_text_file(f)?);
            }
            if images.is_empty() && texts.is_empty() {
                return Err(Error::EmptyInput("give --image, --text or --text-file"));
            }
            if text_file.is_some() && texts.is_empty() {
                return Err(Error::EmptyInput("the text file holds no texts"));
            }
            let clip = model.load()?;
            let finish = |e: cliprt::Embeddings| if no_normalize { e } else { e.normalized() };
            // Compute everything before writing anything: a failure leaves no output behind.
            let img = if images.is_empty() {
                None
            } else {
                Some(finish(clip.embed_image_files(&images)?))
            };
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let txt = if texts.is_empty() {
                None
            } else {
                Some(finish(clip.embed_texts(&refs)?))
            };
            for (emb, out, what) in [(img, out_image, "image"), (txt, out_text, "text")] {
                let Some(emb) = emb else { continue };
                match out {
                    Some(path) => {
                        npy::write_npy(&path, &emb.data, &[emb.rows, emb.dim])?;
                        println!(
                            "wrote {what} embeddings [{}, {}] to {}",
                            emb.rows,
                            emb.dim,
                            path.display()
                        );
                    }
                    None => {
                        for i in 0..emb.rows {
                            let row: Vec<String> =
                                emb.row(i).iter().map(|v| format!("{v:.6}")).collect();
                            println!("{what}[{i}] [{}]", row.join(", "));
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Bench {
            arch,
            model,
            workload,
            gallery,
            dim,
            queries,
            k,
            batch,
            prompt_len,
            device,
            precision,
            warmup,
            reps,
            peak_gflops,
            json,
        } => {
            let cfg = cliprt::bench::BenchConfig {
                arch,
                model,
                workloads: workload.iter().map(|w| w.parse()).collect::<Result<_>>()?,
                batches: batch,
                prompt_len,
                device: device.parse()?,
                precision: precision.parse()?,
                warmup,
                reps,
                peak_gflops,
                search: cliprt::bench::SearchSizes {
                    galleries: gallery,
                    dims: dim,
                    queries,
                    ks: k,
                },
            };
            let mut first = true;
            cliprt::bench::run(&cfg, |m| {
                if json {
                    println!("{}", serde_json::to_string(m).unwrap_or_default());
                    return;
                }
                if first {
                    first = false;
                    println!(
                        "cliprt {} on {} ({}, engine {}, {} threads, peak {:.0} GFLOP/s {}); \
                         model built in {:.2} s, weights {:.0} MB f32",
                        env!("CARGO_PKG_VERSION"),
                        m.device,
                        m.isa,
                        m.engine,
                        m.threads,
                        m.peak_gflops,
                        if peak_gflops.is_some() {
                            "given"
                        } else {
                            "measured"
                        },
                        m.load_s,
                        m.weights_mb
                    );
                    if !m.engine_reason.is_empty() {
                        println!("engine {}: {}", m.engine, m.engine_reason);
                    }
                    println!("{}", cliprt::bench::table_header());
                }
                println!("{}", cliprt::bench::table_row(m));
            })?;
            if !json {
                if let Some(mb) = cliprt::bench::peak_rss_mb() {
                    println!("peak memory (RSS): {mb:.0} MB");
                }
            }
            Ok(())
        }
        Command::ZeroShot {
            model,
            images,
            labels,
            template,
            json,
        } => {
            let clip = model.load()?;
            let ranked = clip.zero_shot(&images, &labels, &template)?;
            if json {
                let out: Vec<serde_json::Value> = images
                    .iter()
                    .zip(&ranked)
                    .map(|(path, r)| {
                        serde_json::json!({
                            "image": path.display().to_string(),
                            "labels": r.iter().map(|(l, p)| serde_json::json!({"label": l, "prob": p})).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(out));
            } else {
                for (path, r) in images.iter().zip(&ranked) {
                    println!("{}", path.display());
                    for (rank, (label, p)) in r.iter().enumerate() {
                        println!("  {:>2}. {:>7.3}%  {label}", rank + 1, 100.0 * p);
                    }
                }
            }
            Ok(())
        }
        Command::Tokenize { model, texts, json } => {
            let config = model.model.join("config.json");
            let cfg = cliprt::ClipConfig::from_file(&config)?;
            let tok = cliprt::tokenizer::ClipTokenizer::from_file(
                &model.model.join("tokenizer.json"),
                cfg.text.max_position_embeddings,
            )?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let ids = tok.encode_batch(&refs)?;
            if json {
                let out: Vec<serde_json::Value> = texts
                    .iter()
                    .zip(&ids)
                    .map(|(t, ids)| {
                        let pool = cliprt::tokenizer::pooling_position(ids, cfg.text.eos_token_id);
                        serde_json::json!({"text": t, "ids": ids, "pool": pool})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(out));
            } else {
                for (t, ids) in texts.iter().zip(&ids) {
                    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
                    println!("{t:?}: [{}]", list.join(", "));
                }
            }
            Ok(())
        }
        Command::Preprocess { model, image, out } => {
            let clip = model.load()?;
            let pixels = clip.preprocess_file(&image)?;
            let size = clip.config().vision.image_size;
            npy::write_npy(&out, &pixels, &[3, size, size])?;
            println!("wrote pixels [3, {size}, {size}] to {}", out.display());
            Ok(())
        }
        Command::Info { model, device } => {
            let device: Device = device.parse()?;
            print_devices(device);
            if let Device::Cuda(n) = device {
                // The device the user asked for must work: its error is the command's error.
                cuda_status(n)?;
            }
            let Some(model) = model else {
                return Ok(());
            };
            let clip = Clip::load(&model, device)?;
            let c = clip.config();
            let (t, v) = (&c.text, &c.vision);
            println!("model:            {}", clip.dir().display());
            println!("parameters:       {}", c.parameter_count());
            println!("stored dtype:     {}", clip.stored_dtype());
            println!("embedding dim:    {}", c.projection_dim);
            println!("logit scale:      {:.4}", clip.logit_scale());
            println!("vision:           {}", describe(&v.encoder));
            println!(
                "image size:       {} (patch {}, {} tokens)",
                v.image_size,
                v.patch_size,
                v.seq_len()
            );
            println!("text:             {}", describe(&t.encoder));
            println!(
                "context length:   {} (vocab {}, eos id {})",
                t.max_position_embeddings, t.vocab_size, t.eos_token_id
            );
            println!("preprocessing:    {:?}", clip.preprocess_config());
            Ok(())
        }
        Command::Kernels { list, check, arch } => kernels(list, check, &arch),
        Command::Profile {
            op,
            arch,
            batch,
            reps,
            device,
            json,
        } => profile(op, arch, batch, reps, &device, json),
        Command::Index {
            model,
            images,
            out,
            batch,
            force,
        } => {
            let clip = model.load()?;
            let opts = cliprt::index::IndexOptions { batch, force };
            let progress = ProgressLine::new();
            let report = cliprt::index::build(&clip, &images, &out, &opts, |p| progress.show(p))?;
            progress.finish();
            // Each reason names its file.
            for (_, why) in &report.failed {
                eprintln!("skipped: {why}");
            }
            println!(
                "indexed {} images into {} ({} skipped{})",
                report.indexed,
                out.display(),
                report.failed.len(),
                if report.resumed > 0 {
                    format!(", {} from the interrupted run resumed", report.resumed)
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        Command::Search {
            model,
            index,
            text,
            image,
            k,
            json,
        } => {
            let idx = cliprt::index::Index::open(&index)?;
            let clip = model.load()?;
            let identity = cliprt::index::ModelIdentity::of(&clip)?;
            if !idx.identity.matches(&identity) {
                return Err(Error::InvalidArgument(format!(
                    "{} was built with another model ({}); search it with that model",
                    index.display(),
                    idx.identity.model
                )));
            }
            let query = match (&text, &image) {
                (Some(t), _) => clip.embed_texts(&[t.as_str()])?,
                (None, Some(p)) => clip.embed_image_files(&[p])?,
                (None, None) => return Err(Error::EmptyInput("give --text or --image")),
            };
            let gallery = cliprt::search::Gallery::new(
                cliprt::search::Storage::F32(idx.embeddings()),
                idx.dim(),
                true,
            )?;
            let top = cliprt::search::search(&gallery, &query.data, k, 1.0)?;
            if json {
                let rows: Vec<serde_json::Value> = top
                    .hits(0)
                    .enumerate()
                    .map(|(r, (i, s))| serde_json::json!({"rank": r + 1, "score": s, "path": idx.path(i)}))
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for (r, (i, s)) in top.hits(0).enumerate() {
                    println!("{:>4}. {s:.4}  {}", r + 1, idx.path(i));
                }
            }
            Ok(())
        }
    }
}

/// The CPU's model name from /proc/cpuinfo (Linux), e.g. "AMD EPYC 9B45".
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// Prints the CPU tier and the CUDA status (the latter never fails here; see `cuda_status`).
fn print_devices(device: Device) {
    let isa = cliprt::cpu::Isa::best();
    let bf16 = if cliprt::cpu::isa::has_avx512_bf16() {
        ", AVX512_BF16"
    } else {
        ""
    };
    println!(
        "cpu:              {} ({} SIMD{bf16}, {} threads)",
        cpu_model().unwrap_or_else(|| "unknown model".into()),
        isa.name(),
        rayon::current_num_threads()
    );
    println!(
        "amx:              {}",
        cliprt::cpu::amx::support().describe()
    );
    let engines: Vec<_> = MatrixEngine::available_engines()
        .iter()
        .map(|e| e.name())
        .collect();
    println!("cpu engines:      {}", engines.join(", "));
    for p in [Precision::F32, Precision::Bf16] {
        let c = cliprt::cpu::engine::choose(isa, p);
        println!(
            "{:<18}{} ({})",
            format!("{} engine:", p.name()),
            c.engine.name(),
            c.reason
        );
    }
    let n = match device {
        Device::Cuda(n) => n,
        _ => 0,
    };
    match cuda_status(n) {
        Ok(line) => println!("cuda:             {line}"),
        Err(Error::DeviceUnavailable(why)) => println!("cuda:             unavailable: {why}"),
        Err(e) => println!("cuda:             unavailable: {e}"),
    }
}

#[cfg(feature = "cuda")]
fn cuda_status(n: usize) -> Result<String> {
    let info = cliprt::cuda::probe(n)?;
    let (v, path) = cliprt::cuda::nvrtc_info()?;
    Ok(format!(
        "cuda:{n} {} (compute {}.{}, {}, {:.1} GiB); NVRTC {}.{} from {path}",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.arch,
        info.memory_bytes as f64 / (1u64 << 30) as f64,
        v.0,
        v.1
    ))
}

#[cfg(not(feature = "cuda"))]
fn cuda_status(_n: usize) -> Result<String> {
    Err(Error::DeviceUnavailable(
        "this build of cliprt has no CUDA support (feature `cuda` is off)".into(),
    ))
}

#[cfg(feature = "cuda")]
fn kernels(list: bool, check: bool, archs: &[String]) -> Result<()> {
    use cliprt::cuda::kernels;
    if !list && !check {
        return Err(Error::InvalidArgument("give --list and/or --check".into()));
    }
    if list {
        println!(
            "{:<14} {:<14} {:<8} {:<24} about",
            "op", "module", "variant", "symbol"
        );
        for op in kernels::OPS {
            for v in op.variants {
                let mark = if v.name == op.default { "*" } else { " " };
                println!(
                    "{:<14} {:<14} {:<8} {:<24} {}",
                    op.name,
                    format!("{}.cu", op.module),
                    format!("{}{mark}", v.name),
                    v.symbol,
                    v.about
                );
            }
        }
        println!("(* default; override with CLIPRT_KERNEL_<OP>=vN, e.g. CLIPRT_KERNEL_GEMM=v1)");
    }
    if !check {
        return Ok(());
    }
    if archs.is_empty() {
        return Err(Error::InvalidArgument("--arch lists no target".into()));
    }
    let (v, path) = cliprt::cuda::nvrtc_info()?;
    println!("NVRTC {}.{} ({path})", v.0, v.1);
    println!(
        "{:<12} {:<7} {:<24} {:>5} {:>9} {:>6} {:>12} {:>11}",
        "module", "arch", "kernel", "regs", "smem B", "stack", "spill st/ld", "compile ms"
    );
    let mut failures = Vec::new();
    for arch in archs {
        for report in cliprt::cuda::check(arch) {
            let r = match report {
                Ok(r) => r,
                Err(e) => {
                    println!("{e}");
                    let what = match &e {
                        Error::KernelCompile { kernel, .. } => format!("{kernel} did not compile"),
                        other => other.to_string(),
                    };
                    failures.push(what);
                    continue;
                }
            };
            if r.kernels.is_empty() {
                failures.push(format!(
                    "{}.cu ({arch}): ptxas reported no kernel",
                    r.module
                ));
            }
            for k in &r.kernels {
                println!(
                    "{:<12} {:<7} {:<24} {:>5} {:>9} {:>6} {:>12} {:>11.1}",
                    r.module,
                    r.arch,
                    k.symbol,
                    k.registers,
                    k.smem_bytes,
                    k.stack_bytes,
                    format!("{}/{}", k.spill_stores, k.spill_loads),
                    r.compile_ms
                );
                if k.spill_stores > 0 || k.spill_loads > 0 {
                    failures.push(format!("{} ({arch}) spills registers", k.symbol));
                }
                // A stack frame without spills is a register array indexed at run time: local memory too.
                if k.stack_bytes > 0 {
                    failures.push(format!(
                        "{} ({arch}) uses {} bytes of stack",
                        k.symbol, k.stack_bytes
                    ));
                }
            }
        }
    }
    if failures.is_empty() {
        println!(
            "ok: every kernel compiled for {} with no spills and no stack",
            archs.join(", ")
        );
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "kernel check failed: {}",
            failures.join("; ")
        )))
    }
}

#[cfg(not(feature = "cuda"))]
fn kernels(_list: bool, _check: bool, _archs: &[String]) -> Result<()> {
    Err(Error::DeviceUnavailable(
        "this build of cliprt has no CUDA support (feature `cuda` is off)".into(),
    ))
}

/// The `index` progress line on stderr: items/s and ETA, redrawn in place on a terminal, one line every few
/// seconds otherwise (logs stay readable).
struct ProgressLine {
    tty: bool,
    last: std::cell::Cell<Option<std::time::Instant>>,
}

impl ProgressLine {
    fn new() -> ProgressLine {
        use std::io::IsTerminal;
        ProgressLine {
            tty: std::io::stderr().is_terminal(),
            last: std::cell::Cell::new(None),
        }
    }

    fn show(&self, p: &cliprt::index::Progress) {
        let now = std::time::Instant::now();
        let due = self.tty
            || p.done == p.total
            || self
                .last
                .get()
                .is_none_or(|t| now.duration_since(t).as_secs_f64() >= 5.0);
        if !due {
            return;
        }
        self.last.set(Some(now));
        let left = (p.total - p.done) as f64 / p.rate.max(1e-9);
        let eta = format!("{}m{:02}s", (left / 60.0) as u64, (left % 60.0) as u64);
        let line = format!(
            "{}/{} images ({} skipped), {:.1} images/s, ETA {eta}",
            p.done, p.total, p.failed, p.rate
        );
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

#[cfg(feature = "cuda")]
fn profile(
    ops: Vec<String>,
    archs: Vec<String>,
    batches: Vec<usize>,
    reps: usize,
    device: &str,
    json: bool,
) -> Result<()> {
    let target = match device.parse()? {
        Device::Cuda(n) => cliprt::cuda::profile::Target::Gpu(n),
        Device::CudaSim => cliprt::cuda::profile::Target::Simulator,
        _ => return Err(Error::InvalidArgument(
            "profile runs on a cuda device (cuda, cuda:N, or cuda-sim to validate without timing)"
                .into(),
        )),
    };
    if batches.is_empty() || batches.contains(&0) {
        return Err(Error::InvalidArgument("batch sizes must be ≥ 1".into()));
    }
    let cfg = cliprt::cuda::profile::ProfileConfig {
        target,
        ops,
        archs,
        batches,
        reps,
    };
    let opt = |v: Option<f64>, f: fn(f64) -> String| v.map_or("-".to_string(), f);
    let mut first = true;
    cliprt::cuda::profile::run(&cfg, |r| {
        if json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
            return;
        }
        if std::mem::take(&mut first) {
            println!(
                "{:<10} {:<34} {:<7} {:>9} {:>9} {:>9} {:>7} {:>9}  status",
                "op", "shape", "variant", "median ms", "min ms", "rate", "%peak", "×default"
            );
        }
        println!(
            "{:<10} {:<34} {:<7} {:>9} {:>9} {:>9} {:>7} {:>9}  {}",
            r.op,
            r.shape,
            r.variant,
            opt(r.median_ms, |v| format!("{v:.4}")),
            opt(r.min_ms, |v| format!("{v:.4}")),
            opt(r.rate, |v| format!("{v:.1}")),
            opt(r.peak_fraction, |v| format!("{:.1}%", 100.0 * v)),
            opt(r.vs_default, |v| format!("{v:.2}")),
            if r.status == "ok" {
                r.unit.to_string()
            } else {
                format!("{} {}", r.unit, r.status)
            }
        );
    })
}

#[cfg(not(feature = "cuda"))]
fn profile(
    _: Vec<String>,
    _: Vec<String>,
    _: Vec<usize>,
    _: usize,
    _: &str,
    _: bool,
) -> Result<()> {
    Err(Error::DeviceUnavailable(
        "this build of cliprt has no CUDA support (feature `cuda` is off)".into(),
    ))
}
