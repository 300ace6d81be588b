//! `cliprt zero-shot`.

use std::path::PathBuf;

use clap::Args;
use cliprt::Result;

use super::model::ModelArgs;

#[derive(Args)]
pub struct ZeroShotArgs {
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
}

pub fn run(a: ZeroShotArgs) -> Result<()> {
    let clip = a.model.load()?;
    let ranked = clip.zero_shot(&a.images, &a.labels, &a.template)?;
    if a.json {
        let out: Vec<serde_json::Value> = a
            .images
            .iter()
            .zip(&ranked)
            .map(|(path, r)| {
                serde_json::json!({
                    "image": path.display().to_string(),
                    "probability": clip.probability(),
                    "labels": r.iter().map(|(l, p)| serde_json::json!({"label": l, "prob": p})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(out));
    } else {
        let how = match clip.probability() {
            "sigmoid" => "sigmoid per image-label pair (SigLIP): each is its own yes/no, they need not sum to 100%",
            _ => "softmax over the labels (CLIP)",
        };
        println!("probability: {how}");
        for (path, r) in a.images.iter().zip(&ranked) {
            println!("{}", path.display());
            for (rank, (label, p)) in r.iter().enumerate() {
                println!("  {:>2}. {:>7.3}%  {label}", rank + 1, 100.0 * p);
            }
        }
    }
    Ok(())
}
