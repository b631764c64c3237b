//! `mplug baseline`: blind baselines (text only, no image) from the training annotations,
//! scored with the evaluation's metrics (see `mplug::eval::blind`).

use anyhow::{Context, Result};
use mplug::eval::blind;
use mplug::eval::{BoxFormat, EvalTask};
use std::path::PathBuf;

/// `mplug baseline`.
#[derive(Debug, clap::Args)]
pub struct BaselineArgs {
    /// The benchmark: caption (the most frequent training caption), vqa and videoqa (the
    /// question's most frequent training answer), retrieval and videoretrieval (random
    /// ranking's expected recall), grounding (the mean training box).
    #[arg(value_parser = crate::model_args::benchmark_parser())]
    task: EvalTask,
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
            .with_context(|| format!("the {} baseline needs --train FILE", a.task))
    };
    let metrics = match a.task {
        EvalTask::Caption => blind::caption(train()?, &a.test)?,
        EvalTask::Vqa => blind::vqa(train()?, &a.test)?,
        EvalTask::VideoQa => blind::videoqa(train()?, &a.test)?,
        EvalTask::Grounding => {
            let format = BoxFormat::parse(&a.box_format).with_context(|| {
                format!("--box-format {:?}: expected xywh or xyxy", a.box_format)
            })?;
            blind::grounding(train()?, &a.test, format)?
        }
        EvalTask::Retrieval => blind::retrieval(&a.test)?,
        EvalTask::VideoRetrieval => blind::video_retrieval(&a.test)?,
    };
    if a.json {
        println!("{metrics}");
    } else {
        crate::eval::print_metrics(&metrics);
    }
    Ok(())
}
