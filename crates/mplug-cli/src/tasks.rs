//! The task subcommands: caption, vqa, ground, retrieve.

use crate::model_args::ModelArgs;
use anyhow::{bail, Result};
use mplug::{BeamConfig, Task};
use serde_json::json;
use std::path::PathBuf;

/// Decoding options shared by generating tasks.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// Beam size (1: greedy).
    #[arg(long, default_value_t = 5)]
    pub beam: usize,
    /// Fewest tokens generated.
    #[arg(long, default_value_t = 5)]
    pub min_len: usize,
    /// Most tokens generated.
    #[arg(long, default_value_t = 20)]
    pub max_len: usize,
    /// Hypotheses printed per input.
    #[arg(long, default_value_t = 1)]
    pub n_best: usize,
    /// Decode without the key/value cache, as the reference does (slower, same result).
    #[arg(long)]
    pub no_cache: bool,
}

impl DecodeArgs {
    fn config(&self) -> BeamConfig {
        BeamConfig {
            beam_size: self.beam,
            min_length: self.min_len,
            max_length: self.max_len,
            n_best: self.n_best.min(self.beam),
            use_cache: !self.no_cache,
            ..Default::default()
        }
    }
}

/// `mplug caption`.
#[derive(Debug, clap::Args)]
pub struct CaptionArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Print one JSON object per image.
    #[arg(long)]
    json: bool,
    /// Image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// `mplug vqa`.
#[derive(Debug, clap::Args)]
pub struct VqaArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Rank the answers of this file (one per line) instead of generating.
    #[arg(long)]
    answers: Option<PathBuf>,
    /// Answers kept when ranking.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The image.
    image: PathBuf,
    /// The question.
    question: String,
}

/// `mplug ground`.
#[derive(Debug, clap::Args)]
pub struct GroundArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The image.
    image: PathBuf,
    /// The referring expression.
    expression: String,
}

/// `mplug retrieve`.
#[derive(Debug, clap::Args)]
pub struct RetrieveArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Candidates re-scored by ITM.
    #[arg(long, default_value_t = 16)]
    k: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Texts to rank (repeat the option).
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    /// Image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn caption(a: &CaptionArgs) -> Result<()> {
    let p = a.model.load(Task::Caption)?;
    for (path, hyps) in a
        .images
        .iter()
        .zip(p.caption(&p.load_images(&a.images)?, &a.decode.config())?)
    {
        if a.json {
            let h: Vec<_> = hyps
                .iter()
                .map(|h| json!({"caption": h.text, "score": h.score}))
                .collect();
            println!("{}", json!({"image": path, "captions": h}));
        } else {
            for h in hyps {
                println!("{}\t{}", path.display(), h.text);
            }
        }
    }
    Ok(())
}

pub fn vqa(a: &VqaArgs) -> Result<()> {
    let p = a.model.load(Task::Vqa)?;
    let images = p.load_images(std::slice::from_ref(&a.image))?;
    let questions = [a.question.as_str()];
    if let Some(file) = &a.answers {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let answers: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if answers.is_empty() {
            bail!("{} lists no answers", file.display());
        }
        let ranked = p
            .rank_answers(&images, &questions, &answers, a.k)?
            .remove(0);
        if a.json {
            let r: Vec<_> = ranked
                .iter()
                .map(|r| json!({"answer": r.text, "prob": r.prob}))
                .collect();
            println!("{}", json!({"question": a.question, "answers": r}));
        } else {
            for r in ranked {
                println!("{:.4}\t{}", r.prob, r.text);
            }
        }
    } else {
        let hyps = p.answer(&images, &questions, &a.decode.config())?.remove(0);
        if a.json {
            let h: Vec<_> = hyps
                .iter()
                .map(|h| json!({"answer": h.text, "score": h.score}))
                .collect();
            println!("{}", json!({"question": a.question, "answers": h}));
        } else {
            for h in hyps {
                println!("{}", h.text);
            }
        }
    }
    Ok(())
}

pub fn ground(a: &GroundArgs) -> Result<()> {
    let p = a.model.load(Task::Grounding)?;
    let b = p.ground(std::slice::from_ref(&a.image), &[a.expression.as_str()])?[0];
    if a.json {
        println!(
            "{}",
            json!({"expression": a.expression, "box_xyxy": b.xyxy, "box_cxcywh_fraction": b.cxcywh})
        );
    } else {
        println!(
            "{:.1} {:.1} {:.1} {:.1}",
            b.xyxy[0], b.xyxy[1], b.xyxy[2], b.xyxy[3]
        );
    }
    Ok(())
}

pub fn retrieve(a: &RetrieveArgs) -> Result<()> {
    let p = a.model.load(Task::Retrieval)?;
    let images = p.load_images(&a.images)?;
    let (i2t, _) = p.retrieve(&images, &a.texts, a.k)?;
    for (path, row) in a.images.iter().zip(&i2t) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
        if a.json {
            let r: Vec<_> = order
                .iter()
                .map(|&j| json!({"text": a.texts[j], "score": row[j]}))
                .collect();
            println!("{}", json!({"image": path, "texts": r}));
        } else {
            for j in order {
                println!("{}\t{:.4}\t{}", path.display(), row[j], a.texts[j]);
            }
        }
    }
    Ok(())
}
