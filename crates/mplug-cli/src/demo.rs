//! `mplug demo`: every task end to end on bundled images.
//!
//! Until the project ships a trained default model, the demo runs the tiny random-weight
//! checkpoints of the reference's golden files: the pipeline (decoding images, tokenizing,
//! towers, fusion, decoding, post-processing) is real, the words are not meaningful.

use anyhow::{Context, Result};
use candle_core::Device;
use mplug::pipeline::Pipeline;
use mplug::{BeamConfig, MplugConfig, Task};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of the demo.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Folder of the golden checkpoints (a configuration folder with caption.pth, vqa.pth,
    /// retrieval.pth, grounding.pth and config.json).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/golden/tiny16"))]
    pub model_dir: PathBuf,
    /// Folder of example images.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/golden/io/images"))]
    pub images: PathBuf,
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("png" | "jpg" | "jpeg")
            )
        })
        .collect();
    v.sort();
    anyhow::ensure!(!v.is_empty(), "no images in {}", dir.display());
    Ok(v)
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn run(a: &DemoArgs) -> Result<()> {
    let start = Instant::now();
    let cfg = MplugConfig::from_file(a.model_dir.join("config.json"))?;
    let images = images_in(&a.images)?;
    let load = |task: Task| -> Result<Pipeline> {
        Ok(Pipeline::load(
            &cfg,
            a.model_dir.join(format!("{}.pth", task.name())),
            task,
            &Device::Cpu,
        )?)
    };
    eprintln!(
        "mplug demo: {} (untrained tiny weights: expect arbitrary words)",
        a.model_dir.display()
    );

    let p = load(Task::Caption)?;
    let pixels = p.load_images(&images)?;
    let beam = BeamConfig {
        beam_size: 3,
        min_length: 2,
        max_length: 8,
        ..Default::default()
    };
    println!("== caption (beam 3)");
    for (path, hyps) in images.iter().zip(p.caption(&pixels, &beam)?) {
        println!(
            "{:<18} {:?}  (score {:.3})",
            name(path),
            hyps[0].text,
            hyps[0].score
        );
    }

    let p = load(Task::Vqa)?;
    let questions: Vec<&str> = images.iter().map(|_| "what is in the picture?").collect();
    println!("== vqa: \"{}\"", questions[0]);
    let answers = ["a cat", "a camera", "a rocket", "coffee", "nothing"];
    let ranked = p.rank_answers(&pixels, &questions, &answers, 3)?;
    let free = p.answer(
        &pixels,
        &questions,
        &BeamConfig {
            beam_size: 3,
            min_length: 1,
            max_length: 5,
            ..Default::default()
        },
    )?;
    for ((path, r), f) in images.iter().zip(&ranked).zip(&free) {
        println!(
            "{:<18} ranked: {:?} ({:.2})  generated: {:?}",
            name(path),
            r[0].text,
            r[0].prob,
            f[0].text
        );
    }

    let p = load(Task::Retrieval)?;
    let texts = [
        "a man with a camera",
        "a cat on a sofa",
        "a cup of coffee",
        "a rocket launch",
    ];
    let (i2t, _) = p.retrieve(&pixels, &texts, 2)?;
    println!("== retrieval (ITC top 2 re-scored by ITM)");
    for (path, row) in images.iter().zip(&i2t) {
        let best = (0..row.len())
            .max_by(|&x, &y| row[x].total_cmp(&row[y]))
            .unwrap_or(0);
        println!(
            "{:<18} best text: {:?} (ITM {:.3})",
            name(path),
            texts[best],
            row[best]
        );
    }

    let p = load(Task::Grounding)?;
    let exprs: Vec<&str> = images.iter().map(|_| "the object in the middle").collect();
    println!("== grounding: \"{}\"", exprs[0]);
    for (path, b) in images.iter().zip(p.ground(&images, &exprs)?) {
        println!(
            "{:<18} box (x0, y0, x1, y1) = ({:.0}, {:.0}, {:.0}, {:.0}) px",
            name(path),
            b.xyxy[0],
            b.xyxy[1],
            b.xyxy[2],
            b.xyxy[3]
        );
    }
    eprintln!("done in {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}
