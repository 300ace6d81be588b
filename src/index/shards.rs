//! Webdataset shards, as img2dataset writes them: `NNNNN.tar` files holding samples `KEY.jpg` (or another image
//! extension), `KEY.txt` (the caption) and `KEY.json` (metadata), a sample's members next to each other. The key
//! is the member path up to the first dot of its file name, as webdataset splits it.
//!
//! Each shard gets its own output in the output folder, named by the shard's file name:
//! - `NAME.npy`: float32 `[rows, dim]`, L2-normalized image embeddings, one row per sample that embedded;
//! - `NAME.json`: the shard, the model's identity, and per row the key, caption and json metadata, then every
//!   sample that was skipped with its reason (a member that does not decode, a sample with no image).
//!
//! Both are staged and renamed into place only when the shard is complete, the JSON last: a shard is finished
//! exactly when its JSON exists and names this model, so a killed or retried job redoes only unfinished shards,
//! and no output is ever half-written. A shard that cannot be read to its end (missing, truncated, corrupt) gets
//! no output; it is listed with the reason and the job goes on with the next.

use std::collections::BTreeSet;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::tar::{Entry, TarError, TarReader};
use super::{ModelIdentity, IMAGE_EXTENSIONS};
use crate::clip::Clip;
use crate::error::{Error, Result};
use crate::limits;

/// The format tag of a shard's JSON.
const FORMAT: &str = "cliprt-shard-1";
/// Caption and json members larger than this are not read (skipped with a reason); real ones are a few KB.
const MAX_TEXT_MEMBER: u64 = 1 << 20;
/// Names a brace pattern may expand to.
const MAX_SHARDS: usize = 1 << 20;

/// One embedded sample's metadata (row `i` of the `.npy`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub key: String,
    /// The `.txt` member, if any (UTF-8; invalid bytes replaced).
    pub caption: Option<String>,
    /// The `.json` member, if any and valid JSON.
    pub json: Option<serde_json::Value>,
}

/// A sample that has no row, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

/// A shard's JSON output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardMeta {
    pub format: String,
    /// The shard as given.
    pub shard: String,
    pub model: ModelIdentity,
    pub rows: usize,
    pub dim: usize,
    pub samples: Vec<Sample>,
    pub skipped: Vec<Skipped>,
}

/// The two output files of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardOutputs {
    pub embeddings: PathBuf,
    pub meta: PathBuf,
}

/// Where the outputs of `shard` go in `out_dir`: its file name without `.tar`, plus `.npy` and `.json`.
pub fn outputs(shard: &str, out_dir: &Path) -> ShardOutputs {
    let file = Path::new(shard)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| shard.to_string());
    let stem = file.strip_suffix(".tar").unwrap_or(&file);
    ShardOutputs {
        embeddings: out_dir.join(format!("{stem}.npy")),
        meta: out_dir.join(format!("{stem}.json")),
    }
}

/// Whether `shard` already has a finished output in `out_dir` from the model `identity`.
pub fn is_done(shard: &str, out_dir: &Path, identity: &ModelIdentity) -> bool {
    read_meta(shard, out_dir).is_some_and(|m| m.model.matches(identity))
}

/// The finished output's metadata of `shard`, if there is one (its JSON and its `.npy` both present, the JSON valid).
pub fn read_meta(shard: &str, out_dir: &Path) -> Option<ShardMeta> {
    let out = outputs(shard, out_dir);
    let bytes =
        crate::files::read_limited(&out.meta, limits::MAX_JSON_BYTES, "shard metadata").ok()?;
    let meta: ShardMeta = serde_json::from_slice(&bytes).ok()?;
    let npy_len = std::fs::metadata(&out.embeddings).ok()?.len();
    // An .npy of `rows × dim` f32 after its header (128 bytes for these shapes, at most a few KB).
    let data = (meta.rows * meta.dim * 4) as u64;
    (meta.format == FORMAT && npy_len >= data && npy_len <= data + 4096).then_some(meta)
}

/// Expands a shard pattern: brace groups `{00000..00099}` (a numeric range, zero-padded as written) and `{a,b,c}`
/// (alternatives), any number of them, as webdataset's braceexpand does. A pattern without braces is one shard.
pub fn expand(pattern: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    expand_into(pattern, &mut out)?;
    Ok(out)
}

fn expand_into(pattern: &str, out: &mut Vec<String>) -> Result<()> {
    let bad = |why: &str| Error::InvalidArgument(format!("shard pattern {pattern:?}: {why}"));
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(bad("a '}' without its '{'"));
        }
        out.push(pattern.to_string());
        return Ok(());
    };
    let close = pattern[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| bad("a '{' without its '}'"))?;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let choices: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (lo, hi) = match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(lo), Ok(hi)) if lo <= hi => (lo, hi),
            _ => return Err(bad("a range must be {LOW..HIGH} with LOW ≤ HIGH")),
        };
        if hi - lo >= MAX_SHARDS as u64 {
            return Err(bad("the range is over a million shards"));
        }
        // Zero-padded as the low end is written ({00000..00099}).
        let width = if a.starts_with('0') { a.len() } else { 0 };
        (lo..=hi).map(|n| format!("{n:0width$}")).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    for c in choices {
        expand_into(&format!("{head}{c}{tail}"), out)?;
        if out.len() > MAX_SHARDS {
            return Err(bad("expands to over a million shards"));
        }
    }
    Ok(())
}

/// The webdataset key and extension of a member path: `dir/000001.jpg` → (`dir/000001`, `jpg`), split at the first
/// dot of the file name (`a.b.jpg` → (`a`, `b.jpg`)).
fn split_key(name: &str) -> (&str, &str) {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    match name[file_start..].find('.') {
        Some(dot) => (&name[..file_start + dot], &name[file_start + dot + 1..]),
        None => (name, ""),
    }
}

fn is_image(ext: &str) -> bool {
    IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())
}

/// One sample's members as read from the tar.
#[derive(Default)]
struct RawSample {
    key: String,
    image: Option<(String, Vec<u8>)>,
    caption: Option<String>,
    json: Option<serde_json::Value>,
    /// A member that was too large, or a second image.
    problem: Option<String>,
}

/// What embedding one shard gave.
#[derive(Debug)]
pub struct ShardReport {
    pub shard: String,
    pub rows: usize,
    pub skipped: Vec<Skipped>,
}

/// Reads `shard` to its end, embeds every sample's image in batches of `batch`, and writes the shard's outputs
/// into `out_dir` (all or nothing). An unreadable shard is an error and writes nothing.
pub fn embed_shard(
    clip: &Clip,
    identity: &ModelIdentity,
    shard: &str,
    out_dir: &Path,
    batch: usize,
) -> Result<ShardReport> {
    check_batch(batch)?;
    let path = Path::new(shard);
    let file = crate::files::open_regular(path)?;
    let mut reader = TarReader::new(BufReader::with_capacity(1 << 20, file));
    let fail = |e: TarError| Error::InvalidArgument(format!("{shard}: {e}"));
    let dim = clip.config().projection_dim;
    let (mut rows, mut samples, mut skipped) = (Vec::<f32>::new(), Vec::new(), Vec::new());
    let mut pending: Vec<RawSample> = Vec::new();
    let mut current = RawSample::default();
    let max_size = |name: &str| {
        if is_image(split_key(name).1) {
            limits::MAX_IMAGE_FILE_BYTES
        } else {
            MAX_TEXT_MEMBER
        }
    };
    loop {
        let entry = reader.next_entry(max_size).map_err(fail)?;
        let name = match &entry {
            Some(Entry::File { name, .. } | Entry::TooLarge { name, .. }) => Some(name.as_str()),
            None => None,
        };
        let key = name.map(|n| split_key(n).0.to_string());
        if key.as_deref() != Some(current.key.as_str()) {
            let done = std::mem::take(&mut current);
            if !done.key.is_empty() || done.image.is_some() {
                pending.push(done);
            }
            if pending.len() >= batch || (entry.is_none() && !pending.is_empty()) {
                embed_batch(
                    clip,
                    shard,
                    &mut pending,
                    &mut rows,
                    &mut samples,
                    &mut skipped,
                )?;
            }
            current.key = key.unwrap_or_default();
        }
        match entry {
            None => break,
            Some(Entry::TooLarge { name, size }) => {
                current.problem = Some(format!("member {name} is {size} bytes, over the limit"));
            }
            Some(Entry::File { name, data }) => {
                let ext = split_key(&name).1.to_ascii_lowercase();
                if is_image(&ext) {
                    if current.image.is_some() {
                        current.problem = Some(format!("more than one image ({name})"));
                    }
                    current.image = Some((name, data));
                } else if ext == "txt" {
                    current.caption = Some(String::from_utf8_lossy(&data).into_owned());
                } else if ext == "json" {
                    current.json = serde_json::from_slice(&data).ok();
                }
            }
        }
    }
    let meta = ShardMeta {
        format: FORMAT.into(),
        shard: shard.to_string(),
        model: identity.clone(),
        rows: samples.len(),
        dim,
        samples,
        skipped: skipped.clone(),
    };
    let out = outputs(shard, out_dir);
    let mut staged = crate::files::Outputs::new();
    staged.stage_bytes(
        &out.embeddings,
        &crate::npy::to_npy_bytes(&rows, &[meta.rows, dim]),
    )?;
    let json = serde_json::to_vec(&meta).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    staged.stage_bytes(&out.meta, &json)?;
    staged.commit()?;
    Ok(ShardReport {
        shard: shard.to_string(),
        rows: meta.rows,
        skipped,
    })
}

fn check_batch(batch: usize) -> Result<()> {
    if batch == 0 {
        return Err(Error::InvalidArgument("--batch must be ≥ 1".into()));
    }
    limits::check("--batch", batch as u64, limits::MAX_INDEX_BATCH as u64)
}

/// Embeds the images of `pending` (emptying it): rows and sample metadata for those that embed, a [`Skipped`]
/// for the rest.
fn embed_batch(
    clip: &Clip,
    shard: &str,
    pending: &mut Vec<RawSample>,
    rows: &mut Vec<f32>,
    samples: &mut Vec<Sample>,
    skipped: &mut Vec<Skipped>,
) -> Result<()> {
    let taken = std::mem::take(pending);
    let pixels: Vec<Result<Vec<f32>>> = taken
        .par_iter()
        .map(|s| match (&s.problem, &s.image) {
            (Some(p), _) => Err(Error::InvalidArgument(p.clone())),
            (None, None) => Err(Error::InvalidArgument("no image member".into())),
            (None, Some((name, bytes))) => clip.preprocess_bytes(bytes, &format!("{shard}:{name}")),
        })
        .collect();
    let mut ok = Vec::new();
    let mut batch_pixels = Vec::new();
    for (s, p) in taken.into_iter().zip(pixels) {
        match p {
            Ok(p) => {
                batch_pixels.extend(p);
                ok.push(s);
            }
            Err(e) => skipped.push(Skipped {
                key: s.key,
                reason: e.to_string(),
            }),
        }
    }
    if ok.is_empty() {
        return Ok(());
    }
    let e = clip.embed_pixels_unchecked(&batch_pixels, ok.len())?;
    for (i, s) in ok.into_iter().enumerate() {
        let row = e.row(i);
        if row.iter().any(|v| !v.is_finite()) {
            skipped.push(Skipped {
                key: s.key,
                reason: "the embedding is not finite (the model overflows f32 on this image)"
                    .into(),
            });
            continue;
        }
        let mut row = row.to_vec();
        crate::similarity::normalize_rows(&mut row, e.dim);
        rows.extend(row);
        samples.push(Sample {
            key: s.key,
            caption: s.caption,
            json: s.json,
        });
    }
    Ok(())
}

/// What a shard job did.
#[derive(Debug, Default)]
pub struct ShardsReport {
    /// Shards embedded in this run.
    pub embedded: Vec<ShardReport>,
    /// Shards that already had a finished output from this model.
    pub already_done: Vec<String>,
    /// Shards that could not be read (missing, truncated, corrupt), with the reason; they have no output.
    pub failed: Vec<(String, String)>,
}

/// Progress of a shard job, after each shard.
#[derive(Clone, Debug)]
pub struct ShardProgress {
    pub finished: usize,
    pub total: usize,
    pub rows: usize,
    pub failed: usize,
}

/// Checks a shard list before a job: no two shards may share an output name.
pub fn check_names(shards: &[String]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for s in shards {
        let out = outputs(s, Path::new(""));
        if !seen.insert(out.meta.clone()) {
            return Err(Error::InvalidArgument(format!(
                "two shards would write the same output {} (shard file names must differ)",
                out.meta.display()
            )));
        }
    }
    Ok(())
}

/// Embeds every shard of `shards` that has no finished output of this model in `out_dir` (all of them with
/// `force`), one after another; shards that fail are listed and passed over.
pub fn run(
    clip: &Clip,
    shards: &[String],
    out_dir: &Path,
    batch: usize,
    force: bool,
    mut progress: impl FnMut(&ShardProgress),
) -> Result<ShardsReport> {
    check_batch(batch)?;
    if shards.is_empty() {
        return Err(Error::EmptyInput("no shards given"));
    }
    check_names(shards)?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let identity = ModelIdentity::of(clip)?;
    let mut report = ShardsReport::default();
    let mut rows = 0;
    for (i, shard) in shards.iter().enumerate() {
        if !force && is_done(shard, out_dir, &identity) {
            report.already_done.push(shard.clone());
        } else {
            match embed_shard(clip, &identity, shard, out_dir, batch) {
                Ok(r) => {
                    rows += r.rows;
                    report.embedded.push(r);
                }
                Err(e) => report.failed.push((shard.clone(), e.to_string())),
            }
        }
        progress(&ShardProgress {
            finished: i + 1,
            total: shards.len(),
            rows,
            failed: report.failed.len(),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brace_patterns() {
        assert_eq!(
            expand("a/{00008..00011}.tar").unwrap(),
            ["a/00008.tar", "a/00009.tar", "a/00010.tar", "a/00011.tar"]
        );
        assert_eq!(
            expand("{x,y}-{1..2}.tar").unwrap(),
            ["x-1.tar", "x-2.tar", "y-1.tar", "y-2.tar"]
        );
        assert_eq!(expand("plain.tar").unwrap(), ["plain.tar"]);
        for bad in ["{3..1}.tar", "{1..x}", "a{b", "a}b", "{0..99999999}"] {
            assert!(expand(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_split_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_key("d.x/000001.jpg"), ("d.x/000001", "jpg"));
        assert_eq!(split_key("a.b.jpg"), ("a", "b.jpg"));
        assert_eq!(split_key("noext"), ("noext", ""));
        assert_eq!(
            outputs("/data/00001.tar", Path::new("out")),
            ShardOutputs {
                embeddings: PathBuf::from("out/00001.npy"),
                meta: PathBuf::from("out/00001.json"),
            }
        );
        assert!(check_names(&["a/1.tar".into(), "b/1.tar".into()]).is_err());
    }
}
