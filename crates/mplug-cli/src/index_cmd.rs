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
    /// Candidates by ITC similarity re-ranked by ITM.
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
    /// Rank by ITC similarity alone (PostgreSQL store).
    #[arg(long, requires = "store")]
    itc_only: bool,
    /// Only images under this folder (PostgreSQL store).
    #[arg(long, requires = "store")]
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
    let pb = bar(a.quiet);
    let mut on_progress = |done: usize, total: usize| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    };
    let (report, images, where_) = match &a.store {
        Some(url) => {
            let (report, images) =
                index_store(a, url, &identity, &pipeline, tokens, &mut on_progress)?;
            (report, images, "PostgreSQL".to_string())
        }
        None => {
            let mut idx = ImageIndex::open_or_create(&index_dir, &identity, options)?;
            let report = idx
                .add_folder(&pipeline, &a.dir, a.batch_size, &mut on_progress)
                .with_context(|| format!("indexing {}", a.dir.display()))?;
            (report, idx.len(), index_dir.display().to_string())
        }
    };
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
                "index": where_,
                "images": images,
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

/// Indexes `a.dir` into the PostgreSQL store at `url`: the report and the images stored.
#[cfg(feature = "postgres")]
fn index_store(
    a: &IndexArgs,
    url: &str,
    identity: &ModelIdentity,
    pipeline: &Pipeline,
    tokens: TokenStorage,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(mplug::index::AddReport, usize)> {
    let mut idx = mplug::index::postgres::PgIndex::connect(url, identity, tokens, a.rebuild)?;
    let report = idx
        .add_folder(pipeline, &a.dir, a.batch_size, progress)
        .with_context(|| format!("indexing {}", a.dir.display()))?;
    Ok((report, idx.len()?))
}

#[cfg(not(feature = "postgres"))]
fn index_store(
    _: &IndexArgs,
    _: &str,
    _: &ModelIdentity,
    _: &Pipeline,
    _: TokenStorage,
    _: &mut dyn FnMut(usize, usize),
) -> Result<(mplug::index::AddReport, usize)> {
    anyhow::bail!("this mplug was built without the `postgres` feature; --store needs it")
}

/// `mplug search "text"`.
pub fn search(a: &SearchArgs) -> Result<()> {
    let hits = match (&a.store, &a.index) {
        (Some(url), _) => search_store(a, url)?,
        (None, Some(index)) => {
            if !Path::new(index).join(mplug::index::MANIFEST_FILE).is_file() {
                anyhow::bail!(
                    "{} holds no image index; build one with `mplug index DIR --index {}`",
                    index.display(),
                    index.display()
                );
            }
            let (identity, pipeline) = retrieval_model(&a.model)?;
            let idx = ImageIndex::open(index, &identity)?;
            let (hits, score): (_, fn(&mplug::index::Hit) -> f32) = match (&a.image, &a.text) {
                (Some(image), _) => (idx.search_image(&pipeline, image, a.offset + a.top)?, |h| {
                    h.itc
                }),
                (None, Some(text)) => (idx.search(&pipeline, text, a.k, a.offset + a.top)?, |h| {
                    h.itm
                }),
                (None, None) => anyhow::bail!("give a text or --image FILE"),
            };
            hits.into_iter()
                .filter(|h| a.min_score.is_none_or(|m| score(h) >= m))
                .skip(a.offset)
                .take(a.top)
                .collect()
        }
        (None, None) => anyhow::bail!("name the index: --index DIR or --store URL"),
    };
    for (rank, h) in hits.iter().enumerate() {
        if a.json {
            println!(
                "{}",
                json!({"rank": a.offset + rank + 1, "path": h.path,
                       "itm": (!h.itm.is_nan()).then_some(h.itm), "itc": h.itc})
            );
        } else {
            if h.itm.is_nan() {
                println!("{}\t{:.4}", h.path.display(), h.itc);
            } else {
                println!("{}\t{:.4}\t{:.4}", h.path.display(), h.itm, h.itc);
            }
        }
    }
    Ok(())
}

#[cfg(feature = "postgres")]
fn search_store(a: &SearchArgs, url: &str) -> Result<Vec<mplug::index::Hit>> {
    let (identity, pipeline) = retrieval_model(&a.model)?;
    let mut idx =
        mplug::index::postgres::PgIndex::connect(url, &identity, TokenStorage::F16, false)?;
    let opts = mplug::index::postgres::SearchOptions {
        k: a.k,
        limit: a.top,
        offset: a.offset,
        min_score: a.min_score,
        under: a.under.clone(),
        itc_only: a.itc_only,
    };
    Ok(match (&a.image, &a.text) {
        (Some(image), _) => idx.search_image(&pipeline, image, &opts)?,
        (None, Some(text)) => idx.search(&pipeline, text, &opts)?,
        (None, None) => anyhow::bail!("give a text or --image FILE"),
    })
}

#[cfg(not(feature = "postgres"))]
fn search_store(_: &SearchArgs, _: &str) -> Result<Vec<mplug::index::Hit>> {
    anyhow::bail!("this mplug was built without the `postgres` feature; --store needs it")
}
