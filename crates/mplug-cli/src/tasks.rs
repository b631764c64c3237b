//! The task subcommands: caption, vqa, ground, retrieve.

use crate::model_args::ModelArgs;
use anyhow::{bail, Result};
use mplug::{BeamConfig, Task};
use serde_json::json;
use std::path::PathBuf;

/// Decoding options shared by generating tasks.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// Beam size (1: greedy).
    #[arg(long, default_value_t = 5)]
    pub beam: usize,
    /// Fewest tokens generated.
    #[arg(long, default_value_t = 5)]
    pub min_len: usize,
    /// Most tokens generated.
    #[arg(long, default_value_t = 20)]
    pub max_len: usize,
    /// Hypotheses printed per input.
    #[arg(long, default_value_t = 1)]
    pub n_best: usize,
    /// Decode without the key/value cache, as the reference does (slower, same result).
    #[arg(long)]
    pub no_cache: bool,
    /// Greedy decoding (beam size 1).
    #[arg(long, conflicts_with = "sample")]
    pub greedy: bool,
    /// Sample one sequence instead of searching (uses --top-k, --top-p, --temperature, --seed).
    #[arg(long)]
    pub sample: bool,
    /// Sampling: keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sampling: keep the most likely tokens until their probability exceeds p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Sampling: temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Sampling: seed of the draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl DecodeArgs {
    fn config(&self) -> BeamConfig {
        let sampling = self.sample.then_some(mplug::generate::Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        });
        let beam_size = if self.greedy || sampling.is_some() {
            1
        } else {
            self.beam
        };
        BeamConfig {
            beam_size,
            min_length: self.min_len,
            max_length: self.max_len,
            n_best: self.n_best.min(beam_size),
            use_cache: !self.no_cache,
            sampling,
            ..Default::default()
        }
    }
}

/// `mplug caption`.
#[derive(Debug, clap::Args)]
pub struct CaptionArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Print one JSON object per image.
    #[arg(long)]
    json: bool,
    /// Image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// `mplug vqa`.
#[derive(Debug, clap::Args)]
pub struct VqaArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Rank the answers of this file (one per line) instead of generating.
    #[arg(long)]
    answers: Option<PathBuf>,
    /// Answers kept when ranking.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The image.
    image: PathBuf,
    /// The question.
    question: String,
}

/// `mplug ground`.
#[derive(Debug, clap::Args)]
pub struct GroundArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also write the image with the box drawn on it to this file (PNG or JPEG by extension).
    #[arg(long)]
    draw: Option<PathBuf>,
    /// The image.
    image: PathBuf,
    /// The referring expression.
    expression: String,
}

/// `mplug video`: zero-shot video tasks with an image-trained model.
#[derive(Debug, clap::Args)]
pub struct VideoArgs {
    #[command(subcommand)]
    command: VideoCommand,
}

#[derive(Debug, clap::Subcommand)]
enum VideoCommand {
    /// Caption clips (frame tokens concatenated, decoder over all of them).
    Caption {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        decode: DecodeArgs,
        /// Frames sampled per clip.
        #[arg(long, default_value_t = 8)]
        frames: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Clips: animated GIFs, folders of frames, or video files (through ffmpeg).
        #[arg(required = true)]
        clips: Vec<PathBuf>,
    },
    /// Answer a question about a clip (free-form, or rank `--answers`).
    Qa {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        decode: DecodeArgs,
        /// Rank the answers of this file (one per line) instead of generating.
        #[arg(long)]
        answers: Option<PathBuf>,
        /// Answers kept when ranking.
        #[arg(long, default_value_t = 5)]
        k: usize,
        /// Frames sampled per clip.
        #[arg(long, default_value_t = 16)]
        frames: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The clip.
        clip: PathBuf,
        /// The question.
        question: String,
    },
    /// Rank texts for clips (ITC of the mean frame feature, top k re-scored by ITM + ITC).
    Retrieve {
        #[command(flatten)]
        model: ModelArgs,
        /// Candidates re-scored by ITM.
        #[arg(long, default_value_t = 16)]
        k: usize,
        /// Frames sampled per clip.
        #[arg(long, default_value_t = 12)]
        frames: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Texts to rank (repeat the option).
        #[arg(long = "text", required = true)]
        texts: Vec<String>,
        /// Clips.
        #[arg(required = true)]
        clips: Vec<PathBuf>,
    },
}

/// `mplug retrieve`.
#[derive(Debug, clap::Args)]
pub struct RetrieveArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Candidates re-scored by ITM.
    #[arg(long, default_value_t = 16)]
    k: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Texts to rank (repeat the option).
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    /// Image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn caption(a: &CaptionArgs) -> Result<()> {
    let p = a.model.load(Task::Caption)?;
    for (path, hyps) in a
        .images
        .iter()
        .zip(p.caption(&p.load_images(&a.images)?, &a.decode.config())?)
    {
        if a.json {
            let h: Vec<_> = hyps
                .iter()
                .map(|h| json!({"caption": h.text, "score": h.score}))
                .collect();
            println!("{}", json!({"image": path, "captions": h}));
        } else {
            for h in hyps {
                println!("{}\t{}", path.display(), h.text);
            }
        }
    }
    Ok(())
}

pub fn vqa(a: &VqaArgs) -> Result<()> {
    let p = a.model.load(Task::Vqa)?;
    let images = p.load_images(std::slice::from_ref(&a.image))?;
    let questions = [a.question.as_str()];
    if let Some(file) = &a.answers {
        let answers = answers_file(file)?;
        let ranked = p
            .rank_answers(&images, &questions, &answers, a.k)?
            .remove(0);
        if a.json {
            let r: Vec<_> = ranked
                .iter()
                .map(|r| json!({"answer": r.text, "prob": r.prob}))
                .collect();
            println!("{}", json!({"question": a.question, "answers": r}));
        } else {
            for r in ranked {
                println!("{:.4}\t{}", r.prob, r.text);
            }
        }
    } else {
        let hyps = p.answer(&images, &questions, &a.decode.config())?.remove(0);
        if a.json {
            let h: Vec<_> = hyps
                .iter()
                .map(|h| json!({"answer": h.text, "score": h.score}))
                .collect();
            println!("{}", json!({"question": a.question, "answers": h}));
        } else {
            for h in hyps {
                println!("{}", h.text);
            }
        }
    }
    Ok(())
}

pub fn ground(a: &GroundArgs) -> Result<()> {
    let p = a.model.load(Task::Grounding)?;
    let b = p.ground(std::slice::from_ref(&a.image), &[a.expression.as_str()])?[0];
    if let Some(out) = &a.draw {
        let mut img = mplug::input::DecodeOptions::default().load(&a.image)?;
        draw_box(&mut img, b.xyxy);
        img.save(out)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    }
    if a.json {
        println!(
            "{}",
            json!({"expression": a.expression, "box_xyxy": b.xyxy, "box_cxcywh_fraction": b.cxcywh})
        );
    } else {
        println!(
            "{:.1} {:.1} {:.1} {:.1}",
            b.xyxy[0], b.xyxy[1], b.xyxy[2], b.xyxy[3]
        );
    }
    Ok(())
}

pub fn retrieve(a: &RetrieveArgs) -> Result<()> {
    let p = a.model.load(Task::Retrieval)?;
    let images = p.load_images(&a.images)?;
    let (i2t, _) = p.retrieve(&images, &a.texts, a.k)?;
    for (path, row) in a.images.iter().zip(&i2t) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
        if a.json {
            let r: Vec<_> = order
                .iter()
                .map(|&j| json!({"text": a.texts[j], "score": row[j]}))
                .collect();
            println!("{}", json!({"image": path, "texts": r}));
        } else {
            for j in order {
                println!("{}\t{:.4}\t{}", path.display(), row[j], a.texts[j]);
            }
        }
    }
    Ok(())
}

/// Draws a 3-pixel red rectangle `(x0, y0, x1, y1)` (pixels) on an image.
fn draw_box(img: &mut mplug::input::RgbImage, xyxy: [f32; 4]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    if w == 0 || h == 0 {
        return;
    }
    let clamp = |v: f32, hi: i64| (v.round() as i64).clamp(0, hi - 1);
    let (x0, y0, x1, y1) = (
        clamp(xyxy[0], w),
        clamp(xyxy[1], h),
        clamp(xyxy[2], w),
        clamp(xyxy[3], h),
    );
    let red = image::Rgb([255u8, 0, 0]);
    for t in 0..3 {
        for x in x0..=x1 {
            for y in [y0 + t, y1 - t] {
                if (0..h).contains(&y) {
                    img.put_pixel(x as u32, y as u32, red);
                }
            }
        }
        for y in y0..=y1 {
            for x in [x0 + t, x1 - t] {
                if (0..w).contains(&x) {
                    img.put_pixel(x as u32, y as u32, red);
                }
            }
        }
    }
}

fn answers_file(file: &std::path::Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let answers: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if answers.is_empty() {
        bail!("{} lists no answers", file.display());
    }
    Ok(answers)
}

pub fn video(a: &VideoArgs) -> Result<()> {
    use mplug::pipeline::Visual;
    match &a.command {
        VideoCommand::Caption {
            model,
            decode,
            frames,
            json,
            clips,
        } => {
            let p = model.load(Task::Caption)?;
            let t = p.load_clips(clips, *frames)?;
            for (path, hyps) in clips
                .iter()
                .zip(p.caption_visual(Visual::Clips(&t), &decode.config())?)
            {
                if *json {
                    let h: Vec<_> = hyps
                        .iter()
                        .map(|h| json!({"caption": h.text, "score": h.score}))
                        .collect();
                    println!("{}", json!({"clip": path, "captions": h}));
                } else {
                    for h in hyps {
                        println!("{}\t{}", path.display(), h.text);
                    }
                }
            }
        }
        VideoCommand::Qa {
            model,
            decode,
            answers,
            k,
            frames,
            json,
            clip,
            question,
        } => {
            let p = model.load(Task::Vqa)?;
            let t = p.load_clips(std::slice::from_ref(clip), *frames)?;
            let questions = [question.as_str()];
            if let Some(file) = answers {
                let list = answers_file(file)?;
                let ranked = p
                    .rank_answers_visual(Visual::Clips(&t), &questions, &list, *k)?
                    .remove(0);
                for r in ranked {
                    if *json {
                        println!("{}", json!({"answer": r.text, "prob": r.prob}));
                    } else {
                        println!("{:.4}\t{}", r.prob, r.text);
                    }
                }
            } else {
                for h in p
                    .answer_visual(Visual::Clips(&t), &questions, &decode.config())?
                    .remove(0)
                {
                    if *json {
                        println!("{}", json!({"answer": h.text, "score": h.score}));
                    } else {
                        println!("{}", h.text);
                    }
                }
            }
        }
        VideoCommand::Retrieve {
            model,
            k,
            frames,
            json,
            texts,
            clips,
        } => {
            let p = model.load(Task::Retrieval)?;
            let t = p.load_clips(clips, *frames)?;
            let (v2t, _) = p.retrieve_visual(Visual::Clips(&t), texts, *k)?;
            for (path, row) in clips.iter().zip(&v2t) {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
                if *json {
                    let r: Vec<_> = order
                        .iter()
                        .map(|&j| json!({"text": texts[j], "score": row[j]}))
                        .collect();
                    println!("{}", json!({"clip": path, "texts": r}));
                } else {
                    for j in order {
                        println!("{}\t{:.4}\t{}", path.display(), row[j], texts[j]);
                    }
                }
            }
        }
    }
    Ok(())
}
