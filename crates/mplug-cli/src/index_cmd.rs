//! `mplug index DIR` and `mplug search "text"`: a photo collection's ITC features on disk,
//! searched by ITC similarity and re-ranked by ITM.

use crate::model_args::{load_model, locate, ModelArgs};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mplug::index::{
    AddOptions, Location, ModelIdentity, OpenOptions, Query, SearchOptions, TokenStorage,
    DEFAULT_INDEX_DIR,
};
use mplug::pipeline::Pipeline;
use mplug::Task;
use serde_json::json;
use std::path::PathBuf;

/// `mplug index`.
#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The index folder (default: DIR/.mplug-index).
    #[arg(long, conflicts_with = "store")]
    index: Option<PathBuf>,
    /// Keep the index in PostgreSQL with pgvector instead of a folder:
    /// `postgres://user@host/db` or `host=/socket/dir dbname=db` (several machines may index
    /// into one database).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
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
    /// Caption each new or changed image (and each indexed one without a caption) with the
    /// default caption model, or the one of --caption-model; search prints the captions.
    #[arg(long)]
    captions: bool,
    /// The caption model for --captions (a model folder or checkpoint; implies --captions).
    #[arg(long, value_name = "MODEL")]
    caption_model: Option<PathBuf>,
    /// Seconds between commits of a folder index while indexing (it commits less often as
    /// commits grow; PostgreSQL commits every batch).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    commit_every: f64,
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
    #[arg(long, required_unless_present = "store", conflicts_with = "store")]
    index: Option<PathBuf>,
    /// The index in PostgreSQL (as `mplug index --store` made it).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Candidates by ITC similarity re-ranked by ITM (pages go through these).
    #[arg(long, default_value_t = 16)]
    k: usize,
    /// Results printed (a page; `--limit` is the same).
    #[arg(long, alias = "limit", default_value_t = 10)]
    top: usize,
    /// Results skipped before the page.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Leave out results scoring below this (the ITM logit, often negative; the ITC
    /// similarity with --itc-only or --image).
    #[arg(long, allow_hyphen_values = true)]
    min_score: Option<f32>,
    /// Rank by ITC similarity alone (no ITM re-ranking; faster, less precise).
    #[arg(long)]
    itc_only: bool,
    /// Only images under this folder.
    #[arg(long)]
    under: Option<PathBuf>,
    /// Print one JSON object per result.
    #[arg(long)]
    json: bool,
    /// Search by this image instead of a text: the images most like it by ITC similarity.
    #[arg(long, conflicts_with = "text", value_name = "FILE")]
    image: Option<PathBuf>,
    /// The query.
    #[arg(required_unless_present = "image")]
    text: Option<String>,
}

/// The retrieval model of `args` with its identity.
fn retrieval_model(args: &ModelArgs) -> Result<(ModelIdentity, Pipeline)> {
    let source = locate(
        &args.path(Task::Retrieval)?,
        &args.config,
        Some(Task::Retrieval),
    )?;
    let identity =
        ModelIdentity::of_checkpoint(&source.config, &source.checkpoint, args.dtype.format())?;
    let pipeline = args.dtype.load(&source, Some(Task::Retrieval))?.pipeline;
    Ok((identity, pipeline))
}

/// Where `--index DIR` / `--store URL` put the index (the two conflict), if either is given.
pub fn location(index: &Option<PathBuf>, store: &Option<String>) -> Option<Location> {
    match (store, index) {
        (Some(url), _) => Some(Location::Postgres(url.clone())),
        (None, Some(dir)) => Some(Location::Folder(dir.clone())),
        (None, None) => None,
    }
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
    let at = location(&a.index, &a.store)
        .unwrap_or_else(|| Location::Folder(a.dir.join(DEFAULT_INDEX_DIR)));
    let (identity, pipeline) = retrieval_model(&a.model)?;
    let captioner = match (&a.caption_model, a.captions) {
        (Some(path), _) => Some(load_model(
            path,
            &a.model.config,
            Some(Task::Caption),
            a.model.dtype,
        )?),
        (None, true) => Some(load_model(
            &crate::default_model::for_task(Some(Task::Caption))?,
            &a.model.config,
            Some(Task::Caption),
            a.model.dtype,
        )?),
        (None, false) => None,
    };
    if let Some(c) = &captioner {
        if c.task != Task::Caption {
            anyhow::bail!(
                "--caption-model must be a caption model, not a {} model",
                c.task
            );
        }
    }
    let tokens = match (a.no_tokens, a.tokens_dtype.as_str()) {
        (true, _) => TokenStorage::None,
        (false, "f32") => TokenStorage::F32,
        _ => TokenStorage::F16,
    };
    if !(a.commit_every.is_finite() && a.commit_every >= 0.0) {
        anyhow::bail!(
            "--commit-every must be a number of seconds, not {}",
            a.commit_every
        );
    }
    let options = OpenOptions {
        tokens,
        rebuild: a.rebuild,
        existing: false,
        commit_every: Some(std::time::Duration::from_secs_f64(a.commit_every.min(1e9))),
    };
    let mut store = mplug::index::open(&at, &identity, options)?;
    let pb = bar(a.quiet);
    let mut on_progress = |done: usize, total: usize| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    };
    let add = AddOptions {
        batch_size: a.batch_size,
        captioner: captioner.as_ref().map(|c| &c.pipeline),
        ..AddOptions::default()
    };
    let report = store
        .add_folder(&pipeline, &a.dir, &add, &mut on_progress)
        .with_context(|| format!("indexing {}", a.dir.display()))?;
    pb.finish_and_clear();
    let images = store.len()?;
    let where_ = store.location();
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
                "index": where_,
                "images": images,
                "added": report.added,
                "updated": report.updated,
                "removed": report.removed,
                "unchanged": report.unchanged,
                "captioned": report.captioned,
                "skipped": skipped,
            })
        );
    } else {
        let captioned = if captioner.is_some() {
            format!(", {} captioned", report.captioned)
        } else {
            String::new()
        };
        println!(
            "{}: {} images ({} new, {} changed, {} removed, {} unchanged, {} skipped{captioned})",
            where_,
            images,
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
    let Some(at) = location(&a.index, &a.store) else {
        anyhow::bail!("name the index: --index DIR or --store URL");
    };
    if let Location::Folder(dir) = &at {
        if !dir.join(mplug::index::folder::MANIFEST_FILE).is_file() {
            anyhow::bail!(
                "{} holds no image index; build one with `mplug index DIR --index {}`",
                dir.display(),
                dir.display()
            );
        }
    }
    let (identity, pipeline) = retrieval_model(&a.model)?;
    let options = OpenOptions {
        existing: true,
        ..OpenOptions::default()
    };
    let mut store = mplug::index::open(&at, &identity, options)?;
    let query = match (&a.image, &a.text) {
        (Some(image), _) => Query::ImageFile(image),
        (None, Some(text)) => Query::Text(text),
        (None, None) => anyhow::bail!("give a text or --image FILE"),
    };
    let opts = SearchOptions {
        k: a.k,
        limit: a.top,
        offset: a.offset,
        min_score: a.min_score,
        under: a.under.clone(),
        itc_only: a.itc_only,
    };
    let hits = store.search(&pipeline, query, &opts)?;
    for (rank, h) in hits.iter().enumerate() {
        if a.json {
            println!(
                "{}",
                json!({"rank": a.offset + rank + 1, "path": h.path, "score": h.score(),
                       "itm": (!h.itm.is_nan()).then_some(h.itm), "itc": h.itc,
                       "caption": h.caption})
            );
        } else {
            let mut line = h.path.display().to_string();
            if !h.itm.is_nan() {
                line.push_str(&format!("\t{:.4}", h.itm));
            }
            line.push_str(&format!("\t{:.4}", h.itc));
            if let Some(c) = &h.caption {
                line.push_str(&format!("\t{c}"));
            }
            println!("{line}");
        }
    }
    Ok(())
}
