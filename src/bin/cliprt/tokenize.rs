//! `cliprt tokenize`: the model folder's tokenizer, read as `Clip::load` reads it, without the weights.

use clap::Args;
use cliprt::tokenizer::ModelTokenizer;
use cliprt::Result;

use super::model::ModelArgs;

#[derive(Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    let tok = ModelTokenizer::open(&a.model.model)?;
    let refs: Vec<&str> = a.texts.iter().map(String::as_str).collect();
    let ids = tok.tokenizer.encode_batch(&refs)?;
    if a.json {
        let out: Vec<serde_json::Value> = a
            .texts
            .iter()
            .zip(&ids)
            .map(|(t, ids)| serde_json::json!({"text": t, "ids": ids, "pool": tok.pooling_position(ids)}))
            .collect();
        println!("{}", serde_json::Value::Array(out));
    } else {
        for (t, ids) in a.texts.iter().zip(&ids) {
            let list: Vec<String> = ids.iter().map(u32::to_string).collect();
            println!("{t:?}: [{}]", list.join(", "));
        }
    }
    Ok(())
}
