//! `cliprt index` and `cliprt search`.

use std::path::PathBuf;

use clap::Args;
use cliprt::index::{Index, IndexOptions};
use cliprt::{Error, Result};

use super::model::ModelArgs;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["images", "shards"])))]
pub struct IndexArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The folder tree to index.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Webdataset shards (tar files as img2dataset writes them), repeatable; brace ranges expand:
    /// `data/{00000..00099}.tar`. Each shard gets its own NAME.npy + NAME.json in --out (a folder); shards
    /// with a finished output of this model are passed over, so a rerun redoes only unfinished ones.
    #[arg(long)]
    shards: Vec<String>,
    /// The index file to write (with --images), or the output folder (with --shards).
    #[arg(long)]
    out: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Rebuild the index if it already exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: IndexArgs) -> Result<()> {
    let Some(images) = &a.images else {
        return run_shards(&a);
    };
    let clip = a.model.load()?;
    let opts = IndexOptions {
        batch: a.batch,
        force: a.force,
    };
    let progress = ProgressLine::new();
    let report = cliprt::index::build(&clip, images, &a.out, &opts, |p| progress.show(p))?;
    progress.finish();
    // Each reason names its file.
    for (_, why) in &report.failed {
        eprintln!("skipped: {why}");
    }
    println!(
        "indexed {} images into {} ({} skipped{})",
        report.indexed,
        a.out.display(),
        report.failed.len(),
        if report.resumed > 0 {
            format!(", {} from the interrupted run resumed", report.resumed)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// `cliprt index --shards`: one output per shard; failed shards are listed and the job goes on. Exits with an
/// error when any shard failed, after doing every other one.
fn run_shards(a: &IndexArgs) -> Result<()> {
    use cliprt::index::shards;
    let mut list = Vec::new();
    for pattern in &a.shards {
        list.extend(shards::expand(pattern)?);
    }
    let clip = a.model.load()?;
    let start = std::time::Instant::now();
    let report = shards::run(&clip, &list, &a.out, a.batch, a.force, |p| {
        eprintln!(
            "{}/{} shards, {} images embedded, {} failed, {:.1} images/s",
            p.finished,
            p.total,
            p.rows,
            p.failed,
            p.rows as f64 / start.elapsed().as_secs_f64().max(1e-9)
        );
    })?;
    for r in &report.embedded {
        for s in &r.skipped {
            eprintln!("skipped: {}:{}: {}", r.shard, s.key, s.reason);
        }
    }
    // Each reason names its shard.
    for (_, why) in &report.failed {
        eprintln!("failed shard: {why}");
    }
    let rows: usize = report.embedded.iter().map(|r| r.rows).sum();
    let skipped: usize = report.embedded.iter().map(|r| r.skipped.len()).sum();
    println!(
        "embedded {} shards ({rows} images, {skipped} samples skipped) into {}; {} already done; {} failed",
        report.embedded.len(),
        a.out.display(),
        report.already_done.len(),
        report.failed.len()
    );
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{} of {} shards failed (listed above); rerun to retry them",
            report.failed.len(),
            list.len()
        )))
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("query").required(true).args(["text", "image"])))]
pub struct SearchArgs {
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
}

pub fn run_search(a: SearchArgs) -> Result<()> {
    let idx = Index::open(&a.index)?;
    let clip = a.model.load()?;
    idx.check_model(&clip, &a.index)?;
    let query = match (&a.text, &a.image) {
        (Some(t), _) => clip.embed_texts(&[t.as_str()])?,
        (None, Some(p)) => clip.embed_image_files(&[p])?,
        (None, None) => return Err(Error::EmptyInput("give --text or --image")),
    };
    let top = idx.search(clip.engine(), &query.data, a.k)?;
    if a.json {
        let rows: Vec<serde_json::Value> = top
            .hits(0)
            .enumerate()
            .map(|(r, (i, s))| {
                let path = idx.path(i);
                let mut row =
                    serde_json::json!({"rank": r + 1, "score": s, "path": path.to_string_lossy()});
                // A name that is not UTF-8 also comes as its exact bytes.
                if path.to_str().is_none() {
                    row["path_bytes"] = cliprt::files::path_bytes(&path).to_vec().into();
                }
                row
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for (r, (i, s)) in top.hits(0).enumerate() {
            println!("{:>4}. {s:.4}  {}", r + 1, idx.path(i).display());
        }
    }
    Ok(())
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
