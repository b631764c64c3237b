//! `mplug info`: a model's configuration, task and parameter counts per part.

use crate::convert::human_count;
use crate::model_args::{locate, ConfigArgs};
use anyhow::Result;
use mplug::checkpoint::Checkpoint;
use mplug::model_dir::{ParameterCounts, VOCAB_FILE};
use mplug::Task;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `mplug info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// A model folder or a checkpoint file (default: the embedded default model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The model as a bare argument (the older form of `--model`).
    #[arg(conflicts_with = "model", hide = true, value_name = "MODEL")]
    pub model_path: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `mplug info`.
pub fn run(a: &InfoArgs) -> Result<()> {
    let model =
        crate::default_model::or_default(a.model.as_deref().or(a.model_path.as_deref()), None)?;
    let source = locate(&model, &a.config, None)?;
    let ckpt = Checkpoint::load(&source.checkpoint)?;
    let (task, task_from) = match (source.task, Task::detect(&ckpt)) {
        _ if !source.tasks.is_empty() => (None, "multi-task"),
        (Some(t), _) => (Some(t), "config.json"),
        (None, Some(t)) => (Some(t), "detected from the keys"),
        (None, None) => (None, "unknown"),
    };
    let counts = ParameterCounts::of(&ckpt);
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for key in ckpt.keys() {
        if let Some((_, dtype)) = ckpt.shape_and_dtype(key) {
            *dtypes
                .entry(format!("{dtype:?}").to_lowercase())
                .or_default() += 1;
        }
    }
    let tokenizer = source.tokenizer()?;
    let vocab = match &source.vocab {
        Some(p) => p.display().to_string(),
        None => "embedded BERT uncased".to_string(),
    };
    let cfg = &source.config;
    let bytes = std::fs::metadata(&source.checkpoint)
        .map(|m| m.len())
        .unwrap_or(0);

    if a.json {
        let parts: serde_json::Map<String, serde_json::Value> = counts
            .rows()
            .iter()
            .map(|(k, v)| (k.replace(' ', "_"), json!(v)))
            .collect();
        println!(
            "{}",
            json!({
                "model": model,
                "checkpoint": source.checkpoint,
                "checkpoint_bytes": bytes,
                "task": task.map(Task::name),
                "task_from": task_from,
                "tasks": source.tasks.iter().map(|t| t.name()).collect::<Vec<_>>(),
                "config": cfg,
                "vocabulary": vocab,
                "vocabulary_tokens": tokenizer.vocab_size(),
                "tensors": ckpt.keys().len(),
                "dtypes": dtypes,
                "momentum_copies_skipped": ckpt.skipped(),
                "parameters": parts,
                "parameters_total": counts.total(),
            })
        );
        return Ok(());
    }
    let dtypes: Vec<String> = dtypes.iter().map(|(d, n)| format!("{d} x{n}")).collect();
    let b = &cfg.bert;
    println!("model        {}", model.display());
    println!(
        "checkpoint   {} ({:.1} MB, {} tensors: {})",
        source.checkpoint.display(),
        bytes as f64 / 1e6,
        ckpt.keys().len(),
        dtypes.join(", ")
    );
    println!(
        "task         {} ({task_from})",
        if source.tasks.is_empty() {
            task.map(Task::name).unwrap_or("?").to_string()
        } else {
            source
                .tasks
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!(
        "vocabulary   {vocab} ({} tokens{})",
        tokenizer.vocab_size(),
        if source.vocab.is_none() {
            format!("; no {VOCAB_FILE}")
        } else {
            String::new()
        }
    );
    println!(
        "image        {} px, ViT patch {}, width {}, {} layers, {} heads ({} visual tokens{})",
        cfg.image_res,
        cfg.vision.patch_size,
        cfg.vision.width,
        cfg.vision.layers,
        cfg.vision.heads,
        cfg.num_visual_tokens(),
        if cfg.has_visn_fc() { ", visn_fc" } else { "" }
    );
    println!(
        "text         hidden {}, {} heads, feed-forward {}, vocabulary {}, {} positions",
        b.hidden_size,
        b.num_attention_heads,
        b.intermediate_size,
        b.vocab_size,
        b.max_position_embeddings
    );
    println!(
        "layers       text encoder {}, fusion {} of {} (connected attention every {}), decoder {}",
        b.text_encoder_layers,
        b.fusion_layers,
        b.num_hidden_layers,
        b.stride_layer,
        b.text_decode_layers
    );
    println!("ITC size     {}", cfg.embed_dim);
    if ckpt.skipped() > 0 {
        println!("momentum     {} copies skipped", ckpt.skipped());
    }
    println!("parameters");
    for (part, n) in counts.rows() {
        println!("  {part:<13} {n:>13}  {}", human_count(n));
    }
    println!(
        "  {:<13} {:>13}  {}",
        "total",
        counts.total(),
        human_count(counts.total())
    );
    Ok(())
}
