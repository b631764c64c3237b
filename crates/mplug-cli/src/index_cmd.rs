//! `mplug index DIR` and `mplug search "text"`: a photo collection's ITC features on disk,
//! searched by ITC similarity and re-ranked by ITM.

use crate::model_args::{locate, ModelArgs};
use anyhow::{Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mplug::index::{ImageIndex, IndexOptions, ModelIdentity, TokenStorage, DEFAULT_INDEX_DIR};
use mplug::pipeline::Pipeline;
use mplug::Task;
use serde_json::json;
use std::path::{Path, PathBuf};

/// `mplug index`.
#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The index folder (default: DIR/.mplug-index).
    #[arg(long)]
    index: Option<PathBuf>,
    /// Images encoded per batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Do not store visual tokens (a much smaller index; search encodes its top k images again).
    #[arg(long)]
    no_tokens: bool,
    /// Precision of stored visual tokens: f16 (half the size) or f32 (ITM scores exactly as
    /// `mplug retrieve` computes them).
    #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
    tokens_dtype: String,
    /// Start the index afresh (another model, another folder, or a damaged index).
    #[arg(long)]
    rebuild: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// The folder of images (searched recursively; hidden files and folders are left out).
    dir: PathBuf,
}

/// `mplug search`.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The index folder (made by `mplug index`).
    #[arg(long)]
    index: PathBuf,
    /// Candidates by ITC similarity re-ranked by ITM.
    #[arg(long, default_value_t = 16)]
    k: usize,
    /// Results printed.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Print one JSON object per result.
    #[arg(long)]
    json: bool,
    /// The query.
    text: String,
}

/// The retrieval model of `args` with its identity.
fn retrieval_model(args: &ModelArgs) -> Result<(ModelIdentity, Pipeline)> {
    let source = locate(
        &args.path(Task::Retrieval)?,
        &args.config,
        Some(Task::Retrieval),
    )?;
    let identity = ModelIdentity::of_checkpoint(&source.config, &source.checkpoint)?;
    let pipeline = source.load(Some(Task::Retrieval), &Device::Cpu)?.pipeline;
    Ok((identity, pipeline))
}

/// A bar on stderr, drawn only on a terminal and when not `quiet`.
fn bar(quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(0)
    };
    if let Ok(style) = ProgressStyle::with_template(
        "encoding [{bar:30}] {pos}/{len} images ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// `mplug index DIR`.
pub fn index(a: &IndexArgs) -> Result<()> {
    if !a.dir.is_dir() {
        anyhow::bail!("{} is not a folder", a.dir.display());
    }
    if a.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    let index_dir = a
        .index
        .clone()
        .unwrap_or_else(|| a.dir.join(DEFAULT_INDEX_DIR));
    let (identity, pipeline) = retrieval_model(&a.model)?;
    let tokens = match (a.no_tokens, a.tokens_dtype.as_str()) {
        (true, _) => TokenStorage::None,
        (false, "f32") => TokenStorage::F32,
        _ => TokenStorage::F16,
    };
    let options = IndexOptions {
        tokens,
        rebuild: a.rebuild,
    };
    let mut idx = ImageIndex::open_or_create(&index_dir, &identity, options)?;
    let pb = bar(a.quiet);
    let report = idx
        .add_folder(&pipeline, &a.dir, a.batch_size, &mut |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        })
        .with_context(|| format!("indexing {}", a.dir.display()))?;
    pb.finish_and_clear();
    for s in &report.skipped {
        let path = s.path.display().to_string();
        if s.reason.contains(&path) {
            eprintln!("warning: skipped: {}", s.reason);
        } else {
            eprintln!("warning: skipped {path}: {}", s.reason);
        }
    }
    if a.json {
        let skipped: Vec<_> = report
            .skipped
            .iter()
            .map(|s| json!({"path": s.path, "error": s.reason}))
            .collect();
        println!(
            "{}",
            json!({
                "index": index_dir,
                "images": idx.len(),
                "added": report.added,
                "updated": report.updated,
                "removed": report.removed,
                "unchanged": report.unchanged,
                "skipped": skipped,
            })
        );
    } else {
        println!(
            "{}: {} images ({} new, {} changed, {} removed, {} unchanged, {} skipped)",
            index_dir.display(),
            idx.len(),
            report.added,
            report.updated,
            report.removed,
            report.unchanged,
            report.skipped.len()
        );
    }
    Ok(())
}

/// `mplug search "text"`.
pub fn search(a: &SearchArgs) -> Result<()> {
    if !Path::new(&a.index)
        .join(mplug::index::MANIFEST_FILE)
        .is_file()
    {
        anyhow::bail!(
            "{} holds no image index; build one with `mplug index DIR --index {}`",
            a.index.display(),
            a.index.display()
        );
    }
    let (identity, pipeline) = retrieval_model(&a.model)?;
    let idx = ImageIndex::open(&a.index, &identity)?;
    let hits = idx.search(&pipeline, &a.text, a.k, a.top)?;
    for (rank, h) in hits.iter().enumerate() {
        if a.json {
            println!(
                "{}",
                json!({"rank": rank + 1, "path": h.path, "itm": h.itm, "itc": h.itc})
            );
        } else {
            println!("{}\t{:.4}\t{:.4}", h.path.display(), h.itm, h.itc);
        }
    }
    Ok(())
}
