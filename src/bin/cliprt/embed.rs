//! `cliprt embed` and `cliprt preprocess`.

use std::path::PathBuf;

use clap::Args;
use cliprt::{npy, Error, Result};

use super::model::ModelArgs;

#[derive(Args)]
pub struct EmbedArgs {
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
}

pub fn run(a: EmbedArgs) -> Result<()> {
    let mut texts = a.texts;
    if let Some(f) = &a.text_file {
        texts.extend(cliprt::tokenizer::read_text_file(f)?);
    }
    if a.images.is_empty() && texts.is_empty() {
        return Err(Error::EmptyInput("give --image, --text or --text-file"));
    }
    if a.text_file.is_some() && texts.is_empty() {
        return Err(Error::EmptyInput("the text file holds no texts"));
    }
    let clip = a.model.load()?;
    let finish = |e: cliprt::Embeddings| {
        if a.no_normalize {
            e
        } else {
            e.normalized()
        }
    };
    // Compute everything before writing anything: a failure leaves no output behind.
    let img = if a.images.is_empty() {
        None
    } else {
        Some(finish(clip.embed_image_files(&a.images)?))
    };
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let txt = if texts.is_empty() {
        None
    } else {
        Some(finish(clip.embed_texts(&refs)?))
    };
    // Every output is staged complete before the first is renamed into place: all are written, or none.
    let mut outputs = cliprt::files::Outputs::new();
    let mut wrote = Vec::new();
    for (emb, out, what) in [(&img, &a.out_image, "image"), (&txt, &a.out_text, "text")] {
        let Some(emb) = emb else { continue };
        match out {
            Some(path) => {
                outputs.stage_bytes(path, &npy::to_npy_bytes(&emb.data, &[emb.rows, emb.dim]))?;
                wrote.push(format!(
                    "wrote {what} embeddings [{}, {}] to {}",
                    emb.rows,
                    emb.dim,
                    path.display()
                ));
            }
            None => {
                for i in 0..emb.rows {
                    let row: Vec<String> = emb.row(i).iter().map(|v| format!("{v:.6}")).collect();
                    println!("{what}[{i}] [{}]", row.join(", "));
                }
            }
        }
    }
    outputs.commit()?;
    for line in wrote {
        println!("{line}");
    }
    Ok(())
}

#[derive(Args)]
pub struct PreprocessArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    image: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

pub fn run_preprocess(a: PreprocessArgs) -> Result<()> {
    let clip = a.model.load()?;
    let pixels = clip.preprocess_file(&a.image)?;
    let size = clip.config().vision.image_size;
    npy::write_npy(&a.out, &pixels, &[3, size, size])?;
    println!("wrote pixels [3, {size}, {size}] to {}", a.out.display());
    Ok(())
}
