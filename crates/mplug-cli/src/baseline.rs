//! `mplug baseline`: blind baselines (text only, no image) from the training annotations,
//! scored with the evaluation's metrics (see `mplug::eval::blind`).

use anyhow::{Context, Result};
use mplug::eval::blind;
use mplug::eval::BoxFormat;
use std::path::PathBuf;

/// The benchmark of a blind baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BaselineTask {
    /// The most frequent training caption for every image.
    Caption,
    /// The most frequent training answer of the question.
    Vqa,
    /// Random ranking (expected recall).
    Retrieval,
    /// The mean training box.
    Grounding,
    /// The most frequent training answer of the question, on video QA files.
    Videoqa,
    /// Random ranking of videos (expected recall).
    Videoretrieval,
}

/// `mplug baseline`.
#[derive(Debug, clap::Args)]
pub struct BaselineArgs {
    /// The benchmark.
    #[arg(value_enum)]
    task: BaselineTask,
    /// The test annotations (as `mplug eval` reads them).
    test: PathBuf,
    /// The training annotations the baseline is fitted on (all tasks but retrieval).
    #[arg(long)]
    train: Option<PathBuf>,
    /// How grounding boxes are written: xywh or xyxy.
    #[arg(long, default_value = "xywh")]
    box_format: String,
    /// Print the metrics as JSON instead of one `name<TAB>value` line each.
    #[arg(long)]
    json: bool,
}

/// Runs `mplug baseline`.
pub fn run(a: &BaselineArgs) -> Result<()> {
    let train = || {
        a.train
            .as_deref()
            .with_context(|| format!("the {:?} baseline needs --train FILE", a.task))
    };
    let metrics = match a.task {
        BaselineTask::Caption => blind::caption(train()?, &a.test)?,
        BaselineTask::Vqa => blind::vqa(train()?, &a.test)?,
        BaselineTask::Videoqa => blind::videoqa(train()?, &a.test)?,
        BaselineTask::Grounding => {
            let format = BoxFormat::parse(&a.box_format).with_context(|| {
                format!("--box-format {:?}: expected xywh or xyxy", a.box_format)
            })?;
            blind::grounding(train()?, &a.test, format)?
        }
        BaselineTask::Retrieval => blind::retrieval(&a.test)?,
        BaselineTask::Videoretrieval => blind::video_retrieval(&a.test)?,
    };
    if a.json {
        println!("{metrics}");
    } else {
        crate::eval::print_metrics(&metrics);
    }
    Ok(())
}
