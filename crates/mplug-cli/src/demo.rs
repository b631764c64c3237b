//! `mplug demo`: every task end to end on the bundled examples with the default model,
//! `mplug-tiny-world` (trained by `scripts/train-tiny-world.sh` on the generated world; see
//! its card, `models/mplug-tiny-world/README.md`), and its grounding folder,
//! `mplug-tiny-world-grounding`, for grounding.
//!
//! The examples folder holds pictures and clips of the generated world's test split (never
//! seen in training) and `examples.json`: per image, questions and referring expressions; per
//! clip, questions; and the texts that retrieval ranks.

use crate::model_args::ConfigArgs;
use crate::model_args::{load_model, WeightDtype};
use anyhow::{Context, Result};
use mplug::pipeline::{Pipeline, Visual};
use mplug::{BeamConfig, Task};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of the demo.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The model folder (a multi-task folder, or any folder serving every task; default: the
    /// embedded default model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The model that grounds (default: the folder beside `--model` named like it with
    /// `-grounding` appended, where there is one, as for the default model; else `--model`).
    #[arg(long)]
    pub grounding_model: Option<PathBuf>,
    /// Folder of the examples and their `examples.json` (default: the model's `examples/`).
    #[arg(long)]
    pub examples: Option<PathBuf>,
}

/// One example picture with what to ask about it.
#[derive(Debug, Deserialize)]
struct ImageExample {
    file: String,
    #[serde(default)]
    questions: Vec<String>,
    #[serde(default)]
    expressions: Vec<String>,
}

/// One example clip with what to ask about it.
#[derive(Debug, Deserialize)]
struct ClipExample {
    file: String,
    #[serde(default)]
    questions: Vec<String>,
}

/// `examples.json`.
#[derive(Debug, Deserialize)]
struct Examples {
    images: Vec<ImageExample>,
    #[serde(default)]
    clips: Vec<ClipExample>,
    /// Texts that retrieval ranks for each image.
    #[serde(default)]
    texts: Vec<String>,
    /// Frames sampled per clip.
    #[serde(default = "default_frames")]
    frames: usize,
}

fn default_frames() -> usize {
    8
}

/// The folder that grounds: `--grounding-model`, else `<model>-grounding` beside the model
/// where it exists, else the model itself.
fn grounding_model(a: &DemoArgs, model: &Path) -> PathBuf {
    if let Some(m) = &a.grounding_model {
        return m.clone();
    }
    let mut name = model.file_name().unwrap_or_default().to_os_string();
    name.push("-grounding");
    let sibling = model.with_file_name(name);
    if sibling.join("config.json").is_file() {
        sibling
    } else {
        model.to_path_buf()
    }
}

fn load(model: &Path, task: Task) -> Result<Pipeline> {
    Ok(load_model(model, &ConfigArgs::default(), Some(task), WeightDtype::F32)?.pipeline)
}

fn beam(min: usize, max: usize) -> BeamConfig {
    BeamConfig {
        beam_size: 3,
        min_length: min,
        max_length: max,
        ..Default::default()
    }
}

/// Runs the demo.
pub fn run(a: &DemoArgs) -> Result<()> {
    let start = Instant::now();
    let model = match &a.model {
        Some(m) => m.clone(),
        None => crate::default_model::general()?,
    };
    let dir = a.examples.clone().unwrap_or_else(|| model.join("examples"));
    let path = dir.join("examples.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the examples {}", path.display()))?;
    let ex: Examples =
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    anyhow::ensure!(!ex.images.is_empty(), "{} lists no images", path.display());
    let files: Vec<PathBuf> = ex.images.iter().map(|e| dir.join(&e.file)).collect();
    println!("mplug demo: model {}", model.display());

    let p = load(&model, Task::Caption)?;
    let pixels = p.load_images(&files)?;
    println!("\n== captioning (beam 3)");
    for (e, hyps) in ex.images.iter().zip(p.caption(&pixels, &beam(3, 15))?) {
        println!("{:<16} {}", e.file, hyps[0].text);
    }

    let p = load(&model, Task::Vqa)?;
    println!("\n== visual question answering");
    for (i, e) in ex.images.iter().enumerate() {
        if e.questions.is_empty() {
            continue;
        }
        let one = pixels
            .narrow(0, i, 1)?
            .repeat((e.questions.len(), 1, 1, 1))?;
        let questions: Vec<&str> = e.questions.iter().map(String::as_str).collect();
        for (q, ans) in questions
            .iter()
            .zip(p.answer(&one, &questions, &beam(1, 4))?)
        {
            println!("{:<16} {q:<36} {}", e.file, ans[0].text);
        }
    }

    if !ex.texts.is_empty() {
        let p = load(&model, Task::Retrieval)?;
        let texts: Vec<&str> = ex.texts.iter().map(String::as_str).collect();
        let by_itc = p.similarities(Visual::Images(&pixels), &texts)?;
        let (by_itm, _) = p.retrieve(&pixels, &texts, texts.len().min(4))?;
        println!(
            "\n== retrieval: the best of {} texts by ITC alone, and after ITM re-scores ITC's top 4",
            texts.len()
        );
        let best = |row: &[f32]| {
            (0..row.len())
                .max_by(|&x, &y| row[x].total_cmp(&row[y]))
                .unwrap_or(0)
        };
        for ((e, itc), itm) in ex.images.iter().zip(&by_itc).zip(&by_itm) {
            println!(
                "{:<16} ITC: {:<36} ITM: {}",
                e.file,
                texts[best(itc)],
                texts[best(itm)]
            );
        }
    }

    let grounder = grounding_model(a, &model);
    let p = load(&grounder, Task::Grounding)?;
    println!(
        "\n== grounding (box x0, y0, x1, y1 in pixels; model {})",
        grounder.display()
    );
    for (e, file) in ex.images.iter().zip(&files) {
        if e.expressions.is_empty() {
            continue;
        }
        let paths = vec![file.clone(); e.expressions.len()];
        let exprs: Vec<&str> = e.expressions.iter().map(String::as_str).collect();
        for (x, b) in exprs.iter().zip(p.ground(&paths, &exprs)?) {
            let [x0, y0, x1, y1] = b.xyxy;
            println!("{:<16} {x:<36} {x0:.0}, {y0:.0}, {x1:.0}, {y1:.0}", e.file);
        }
    }

    if !ex.clips.is_empty() {
        let clip_files: Vec<PathBuf> = ex.clips.iter().map(|c| dir.join(&c.file)).collect();
        let p = load(&model, Task::Caption)?;
        let clips = p.load_clips(&clip_files, ex.frames)?;
        println!(
            "\n== zero-shot video ({} frames, tokens concatenated): captions",
            ex.frames
        );
        for (c, hyps) in ex
            .clips
            .iter()
            .zip(p.caption_visual(Visual::Clips(&clips), &beam(3, 15))?)
        {
            println!("{:<16} {}", c.file, hyps[0].text);
        }
        let p = load(&model, Task::Vqa)?;
        println!("== zero-shot video: questions");
        for (i, c) in ex.clips.iter().enumerate() {
            if c.questions.is_empty() {
                continue;
            }
            let one = clips
                .narrow(0, i, 1)?
                .repeat((c.questions.len(), 1, 1, 1, 1))?;
            let questions: Vec<&str> = c.questions.iter().map(String::as_str).collect();
            let answers = p.answer_visual(Visual::Clips(&one), &questions, &beam(1, 4))?;
            for (q, ans) in questions.iter().zip(answers) {
                println!("{:<16} {q:<36} {}", c.file, ans[0].text);
            }
        }
    }
    eprintln!("\ndone in {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}
