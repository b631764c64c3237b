//! `mplug eval`: a benchmark's annotation file in, predictions, metrics and result files out,
//! resumable, with a progress bar on stderr.

use crate::model_args::ModelArgs;
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mplug::eval::{self, BoxFormat, EvalOptions, EvalTask, Progress};
use serde_json::Value;
use std::path::PathBuf;

/// How grounding annotations write their boxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BoxFormatArg {
    /// `[x, y, width, height]` (RefCOCO, RefCOCO+, RefCOCOg).
    Xywh,
    /// `[x0, y0, x1, y1]` (ReferItGame, Flickr30K Entities).
    Xyxy,
}

/// `mplug eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The benchmark: caption (COCO Karpathy test: BLEU, ROUGE-L, CIDEr-D), vqa (VQA v2
    /// accuracy and result file), retrieval (COCO / Flickr30K recall@1/5/10), grounding
    /// (RefCOCO family, accuracy at IoU 0.5), videoqa (MSRVTT-QA with a VQA model),
    /// videoretrieval (MSRVTT with a retrieval model).
    #[arg(value_parser = crate::model_args::benchmark_parser())]
    task: EvalTask,
    #[command(flatten)]
    model: ModelArgs,
    /// The annotation file, in the reference's JSON or JSON Lines form.
    annotations: PathBuf,
    /// The folder the annotation's image (or video) paths are relative to.
    image_root: PathBuf,
    /// Rank the candidate answers of this file instead of generating (vqa: answer_list.json;
    /// videoqa: train_ans2label.json; or one answer per line).
    #[arg(long)]
    answers: Option<PathBuf>,
    /// Folder of predictions.jsonl, metrics.json and result files; running again with the same
    /// folder resumes (default: eval-<task>).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Inputs per model call (retrieval: queries re-ranked per call).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Candidates re-ranked: answers for vqa/videoqa, texts or images per retrieval query.
    #[arg(long, default_value_t = 128)]
    k: usize,
    /// Retrieval and video retrieval: rank candidates by ITC similarity alone, without the ITM
    /// re-scoring of the top k (the reference's protocol re-scores; this reads the ITC
    /// features alone)
    #[arg(long)]
    itc_only: bool,
    /// Beam size for captions and generated answers (1: greedy).
    #[arg(long, default_value_t = 5)]
    beam: usize,
    /// Fewest tokens generated (default: 5 for captions, 1 for answers).
    #[arg(long)]
    min_len: Option<usize>,
    /// Most tokens generated (default: 20 for captions, 10 for answers).
    #[arg(long)]
    max_len: Option<usize>,
    /// Decode without the key/value cache, as the reference does (slower, same result).
    #[arg(long)]
    no_cache: bool,
    #[arg(long, help = mplug::tasks::video::FRAMES_HELP)]
    frames: Option<usize>,
    /// How grounding boxes are written.
    #[arg(long, value_enum, default_value = "xywh")]
    box_format: BoxFormatArg,
    /// Keep only caption entries of this Karpathy split (test, val, ...).
    #[arg(long)]
    split: Option<String>,
    /// Print the metrics as JSON instead of one `name<TAB>value` line each.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// An indicatif bar per stage, on stderr (drawn only on a terminal).
struct Bar {
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl Progress for Bar {
    fn start(&mut self, stage: &str, total: u64, done: u64) {
        self.finish();
        let bar = if self.quiet {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
        } else {
            ProgressBar::new(total)
        };
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(stage.to_string());
        bar.set_position(done);
        bar.reset_eta();
        self.bar = Some(bar);
    }

    fn advance(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

pub fn run(a: &EvalArgs) -> Result<()> {
    let task = a.task;
    if a.answers.is_some() && !matches!(task, EvalTask::Vqa | EvalTask::VideoQa) {
        bail!("--answers applies to vqa and videoqa, not {task}");
    }
    let output = a
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("eval-{task}")));
    let mut opts = EvalOptions::new(task, output);
    opts.batch_size = a.batch_size;
    opts.k = a.k;
    opts.itc_only = a.itc_only;
    opts.beam.beam_size = a.beam;
    if let Some(n) = a.min_len {
        opts.beam.min_length = n;
    }
    if let Some(n) = a.max_len {
        opts.beam.max_length = n;
    }
    opts.beam.use_cache = !a.no_cache;
    if let Some(n) = a.frames {
        opts.num_frames = n;
    }
    opts.answer_list = a.answers.clone();
    opts.box_format = match a.box_format {
        BoxFormatArg::Xywh => BoxFormat::Xywh,
        BoxFormatArg::Xyxy => BoxFormat::Xyxy,
    };
    opts.split = a.split.clone();
    if !a.annotations.is_file() {
        bail!("annotation file {} does not exist", a.annotations.display());
    }
    if !a.image_root.is_dir() {
        bail!("image root {} is not a folder", a.image_root.display());
    }

    let pipeline = a.model.load(task.model_task())?;
    let mut bar = Bar {
        quiet: a.quiet,
        bar: None,
    };
    let report = eval::run(
        task,
        &pipeline,
        &a.annotations,
        &a.image_root,
        &opts,
        &mut bar,
    );
    bar.finish();
    let report = report?;

    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.metrics)?);
    } else {
        print_metrics(&report.metrics);
    }
    eprintln!(
        "{} predictions ({} from an earlier run); wrote {}",
        report.predictions,
        report.resumed,
        report
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Prints metrics one per line, `key<TAB>value`; a nested object's entries as `key.entry`
/// (`per_question_type.how many`).
pub(crate) fn print_metrics(metrics: &Value) {
    let Value::Object(m) = metrics else {
        println!("{metrics}");
        return;
    };
    for (k, v) in m {
        match v {
            Value::Object(inner) => {
                for (k2, v2) in inner {
                    println!("{k}.{k2}\t{v2}");
                }
            }
            _ => println!("{k}\t{v}"),
        }
    }
}
