//! Benchmark evaluation: the reference's annotation files in, predictions and the paper's metrics
//! out.
//!
//! One run reads an annotation file ([`annotations`]), runs a [`Pipeline`] over it in batches and
//! writes, in its output folder:
//! - `predictions.jsonl`: one JSON object per input (per query for retrieval), each with an
//!   `"id"`, appended and flushed as made. Running again with the same folder skips the ids
//!   already there, so an interrupted evaluation resumes where it stopped;
//! - `metrics.json`: the task's metrics (computed from the predictions file, so a resumed run
//!   reports the whole set);
//! - a result file in the benchmark's submission format where it has one: `vqa_result.json`
//!   (`[{question_id, answer}]`, the official VQA v2 form), `caption_result.json` (COCO's
//!   `[{image_id, caption}]`);
//! - `run.json`: the task and annotation file, checked when resuming.
//!
//! | task | annotations | model | metrics |
//! |---|---|---|---|
//! | caption | COCO Karpathy test | caption | BLEU-1..4, ROUGE-L, CIDEr-D |
//! | vqa | `[{question_id, image, question, answer}]` (+ answer list to rank) | vqa | VQA accuracy (per question and answer type when given) |
//! | retrieval | `[{image, caption: [...]}]` | retrieval | TR/IR R@1/5/10 |
//! | grounding | `{image, text, bbox}` or the RefCOCO tuples | grounding | accuracy at IoU 0.5 |
//! | videoqa | MSRVTT-QA JSONL (+ answer list) | vqa | exact-match accuracy (per `question_type` when given) |
//! | videoretrieval | MSRVTT JSONL `{clip_name, caption}` | retrieval | R@1/5/10, median rank |
//!
//! Progress is reported through [`Progress`]; the library draws nothing itself.

pub mod blind;
mod caption;
mod error;
mod grounding;
pub mod output;
mod retrieval;
mod video;
mod vqa;

/// The annotation readers evaluation shares with training.
pub use crate::data::annotations;
pub use annotations::BoxFormat;
pub use error::{EvalError, Result};

use crate::generate::BeamConfig;
use crate::model::Task;
use crate::pipeline::Pipeline;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// The benchmarks `mplug eval` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvalTask {
    /// Image captioning (COCO Karpathy test).
    Caption,
    /// Visual question answering (VQA v2).
    Vqa,
    /// Image-text retrieval (COCO 5k, Flickr30K 1k).
    Retrieval,
    /// Referring-expression grounding (RefCOCO, RefCOCO+, RefCOCOg).
    Grounding,
    /// Video question answering (MSRVTT-QA), zero-shot with a VQA model.
    VideoQa,
    /// Text-video retrieval (MSRVTT 1k-A), zero-shot with a retrieval model.
    VideoRetrieval,
}

impl EvalTask {
    /// Every task.
    pub const ALL: [EvalTask; 6] = [
        EvalTask::Caption,
        EvalTask::Vqa,
        EvalTask::Retrieval,
        EvalTask::Grounding,
        EvalTask::VideoQa,
        EvalTask::VideoRetrieval,
    ];

    /// The name the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            EvalTask::Caption => "caption",
            EvalTask::Vqa => "vqa",
            EvalTask::Retrieval => "retrieval",
            EvalTask::Grounding => "grounding",
            EvalTask::VideoQa => "videoqa",
            EvalTask::VideoRetrieval => "videoretrieval",
        }
    }

    /// Parses a name of [`EvalTask::name`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The fine-tuned model the task runs.
    pub fn model_task(self) -> Task {
        match self {
            EvalTask::Caption => Task::Caption,
            EvalTask::Vqa | EvalTask::VideoQa => Task::Vqa,
            EvalTask::Retrieval | EvalTask::VideoRetrieval => Task::Retrieval,
            EvalTask::Grounding => Task::Grounding,
        }
    }
}

impl fmt::Display for EvalTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of an evaluation run. [`EvalOptions::new`] gives the reference's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Folder of the predictions, metrics and result files (created if missing).
    pub output_dir: PathBuf,
    /// Inputs per model call (for retrieval: queries re-ranked per call).
    pub batch_size: usize,
    /// Candidates kept: answers re-ranked for VQA / video QA (`k_test`, 128), texts or images
    /// re-scored by ITM per retrieval query (`k_test`, 128). Capped by the number available.
    pub k: usize,
    /// Retrieval and video retrieval: rank the top `k` candidates by ITC similarity alone,
    /// with no ITM re-scoring (not the reference's protocol; for a model whose ITM head ranks
    /// worse than its ITC features). The metrics say which (`rescore`).
    pub itc_only: bool,
    /// Decoding of captions and free-form answers.
    pub beam: BeamConfig,
    /// Candidate answers to rank (VQA, video QA); `None` generates answers freely.
    pub answer_list: Option<PathBuf>,
    /// Frames per clip (video tasks).
    pub num_frames: usize,
    /// How grounding boxes are written.
    pub box_format: BoxFormat,
    /// Keep only caption entries of this Karpathy split (`test`, `val`, ...).
    pub split: Option<String>,
}

impl EvalOptions {
    /// The reference's settings for `task`: batch 8, `k` 128, beam 5 with lengths 5..=20 for
    /// captions and 1..=10 for answers, 16 frames for video QA and 12 for video retrieval.
    pub fn new(task: EvalTask, output_dir: impl Into<PathBuf>) -> Self {
        let beam = match task {
            EvalTask::Vqa | EvalTask::VideoQa => BeamConfig::answer(),
            _ => BeamConfig::caption(),
        };
        Self {
            output_dir: output_dir.into(),
            batch_size: 8,
            k: 128,
            itc_only: false,
            beam,
            answer_list: None,
            num_frames: if task == EvalTask::VideoRetrieval {
                crate::tasks::video::RETRIEVAL_FRAMES
            } else {
                crate::tasks::video::QA_FRAMES
            },
            box_format: BoxFormat::Xywh,
            split: None,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(EvalError::Options(
                "the batch size must be at least 1".into(),
            ));
        }
        if self.k == 0 {
            return Err(EvalError::Options("k must be at least 1".into()));
        }
        if self.num_frames == 0 {
            return Err(EvalError::Options("a clip needs at least 1 frame".into()));
        }
        Ok(())
    }
}

/// Receives the progress of a run: stages (encoding, re-ranking, ...) of known size.
pub trait Progress {
    /// A stage of `total` units starts, `done` of which an earlier run already finished.
    fn start(&mut self, stage: &str, total: u64, done: u64) {
        let _ = (stage, total, done);
    }
    /// `n` more units are finished.
    fn advance(&mut self, n: u64) {
        let _ = n;
    }
    /// The current stage is over.
    fn finish(&mut self) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// What a run did and found.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// The task.
    pub task: EvalTask,
    /// Predictions in the predictions file: inputs, or queries for retrieval.
    pub predictions: usize,
    /// How many of them an earlier run had written (skipped by this one).
    pub resumed: usize,
    /// The contents of `metrics.json`.
    pub metrics: Value,
    /// The files written.
    pub files: Vec<PathBuf>,
}

/// Reads `annotations`, evaluates `pipeline` on it (inputs under `root`) and writes the
/// predictions, metrics and result files into `opts.output_dir`.
pub fn run(
    task: EvalTask,
    pipeline: &Pipeline,
    annotations: &Path,
    root: &Path,
    opts: &EvalOptions,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    opts.validate()?;
    if opts.itc_only && !matches!(task, EvalTask::Retrieval | EvalTask::VideoRetrieval) {
        return Err(EvalError::Options(format!(
            "ranking by ITC alone applies to retrieval and videoretrieval, not {task}"
        )));
    }
    let have = pipeline.model().task;
    if have != task.model_task() {
        return Err(EvalError::Options(format!(
            "the {task} evaluation needs a {} model, this one was loaded for {}",
            task.model_task().name(),
            have.name()
        )));
    }
    let answers = match &opts.answer_list {
        Some(p) => Some(annotations::read_answer_list(p)?),
        None => None,
    };
    // Annotations are read before the output folder is touched.
    let prepare = || Output::prepare(task, annotations, &opts.output_dir);
    match task {
        EvalTask::Caption => {
            let samples = annotations::read_caption(annotations, opts.split.as_deref())?;
            let out = prepare()?;
            caption::run(pipeline, &samples, root, opts, &out, progress)
        }
        EvalTask::Vqa => {
            let samples = annotations::read_vqa(annotations)?;
            let out = prepare()?;
            vqa::run(
                pipeline,
                &samples,
                answers.as_deref(),
                root,
                opts,
                &out,
                progress,
            )
        }
        EvalTask::Retrieval => {
            let samples = annotations::read_retrieval(annotations)?;
            let out = prepare()?;
            retrieval::run(pipeline, &samples, root, opts, &out, progress)
        }
        EvalTask::Grounding => {
            let samples = annotations::read_grounding(annotations, opts.box_format)?;
            let out = prepare()?;
            grounding::run(pipeline, &samples, root, opts, &out, progress)
        }
        EvalTask::VideoQa => {
            let samples = annotations::read_videoqa(annotations)?;
            let out = prepare()?;
            video::run_qa(
                pipeline,
                &samples,
                answers.as_deref(),
                root,
                opts,
                &out,
                progress,
            )
        }
        EvalTask::VideoRetrieval => {
            let samples = annotations::read_video_retrieval(annotations)?;
            let out = prepare()?;
            video::run_retrieval(pipeline, &samples, root, opts, &out, progress)
        }
    }
}

/// The output folder of a run.
struct Output {
    task: EvalTask,
    dir: PathBuf,
}

impl Output {
    /// Creates the folder; refuses one that holds a run of another task.
    fn prepare(task: EvalTask, annotations: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
        let run = dir.join("run.json");
        if run.exists() {
            let text = std::fs::read_to_string(&run).map_err(|e| EvalError::io(&run, e))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| EvalError::Output {
                path: run.clone(),
                msg: format!("not valid JSON ({e})"),
            })?;
            let earlier = v.get("task").and_then(Value::as_str).unwrap_or("?");
            if earlier != task.name() {
                return Err(EvalError::Output {
                    path: run,
                    msg: format!(
                        "this folder holds a {earlier} evaluation, not {task}; choose another \
                         output folder"
                    ),
                });
            }
        }
        output::write_json(
            &run,
            &json!({"task": task.name(), "annotations": annotations.display().to_string()}),
        )?;
        Ok(Self {
            task,
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Opens the predictions log and checks that its ids belong to `ids`.
    fn log<'a>(&self, ids: impl IntoIterator<Item = &'a Value>) -> Result<output::PredictionLog> {
        let log = output::PredictionLog::open(self.path("predictions.jsonl"))?;
        let expected: HashSet<String> = ids.into_iter().map(output::id_key).collect();
        log.check_ids(&expected)?;
        Ok(log)
    }

    /// Writes `metrics.json` (with the task and counts added) and returns the report.
    fn finish(
        &self,
        log: &output::PredictionLog,
        resumed: usize,
        mut metrics: Value,
        mut files: Vec<PathBuf>,
    ) -> Result<EvalReport> {
        if let Value::Object(m) = &mut metrics {
            m.insert("task".into(), json!(self.task.name()));
        }
        let path = self.path("metrics.json");
        output::write_json(&path, &metrics)?;
        files.insert(0, log.path().to_path_buf());
        files.push(path);
        Ok(EvalReport {
            task: self.task,
            predictions: log.len(),
            resumed,
            metrics,
            files,
        })
    }
}

/// A short description of a batch for error messages: its ids and files.
fn describe<'a>(items: impl IntoIterator<Item = (&'a Value, &'a str)>) -> String {
    let items: Vec<(&Value, &str)> = items.into_iter().collect();
    let shown: Vec<String> = items
        .iter()
        .take(4)
        .map(|(id, file)| format!("id {id} ({file})"))
        .collect();
    let more = items.len().saturating_sub(shown.len());
    if more > 0 {
        format!(
            "batch of {}, {} and {more} more",
            items.len(),
            shown.join(", ")
        )
    } else {
        format!("batch of {}", shown.join(", "))
    }
}

/// An f32 as JSON (`null` when not finite).
fn num(x: f32) -> Value {
    json!(x)
}
