//! The task subcommands: caption, vqa, ground, retrieve.

use crate::model_args::ModelArgs;
use anyhow::{bail, Result};
use mplug::pipeline::Visual;
use mplug::{BeamConfig, Task};
use serde_json::json;
use std::path::PathBuf;

/// Decoding options shared by generating tasks.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// Beam size (1: greedy).
    #[arg(long, default_value_t = 5)]
    pub beam: usize,
    /// Fewest tokens generated (default: 5 for captions, 1 for answers, as the reference).
    #[arg(long)]
    pub min_len: Option<usize>,
    /// Most tokens generated (default: 20 for captions, 10 for answers).
    #[arg(long)]
    pub max_len: Option<usize>,
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
    /// The decoding settings: the task's `reference` ([`BeamConfig::caption`],
    /// [`BeamConfig::answer`]) with what the command line gives. A `--max-len` below the
    /// reference's minimum lowers the minimum with it; an explicit `--min-len` above the
    /// maximum is an error.
    fn config(&self, reference: BeamConfig) -> Result<BeamConfig> {
        let max_length = self.max_len.unwrap_or(reference.max_length);
        let min_length = match self.min_len {
            Some(min) if min > max_length => anyhow::bail!(
                "--min-len {min} is above the maximum length {max_length} (--max-len)"
            ),
            Some(min) => min,
            None => reference.min_length.min(max_length),
        };
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
        Ok(BeamConfig {
            beam_size,
            min_length,
            max_length,
            n_best: self.n_best.min(beam_size),
            use_cache: !self.no_cache,
            sampling,
            ..reference
        })
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
    #[command(flatten)]
    batch: BatchArgs,
    /// Image files, folders of images (searched recursively), or list files (`.txt`, one path
    /// per line, relative to the list).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// Batching and output options of subcommands that take many images.
#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// Images processed per batch (a progress bar shows on a terminal when there are several).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Write one JSON object per image to this file (JSON lines) instead of printing results.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

impl BatchArgs {
    /// Runs `f` on `images` (files, folders searched recursively, list files) in batches of
    /// `--batch-size`, every batch's results written through one sink (stdout, or `--output`
    /// when the whole run succeeds), with a progress bar: the loop of every command that
    /// takes many images.
    fn over_images(
        &self,
        images: &[PathBuf],
        mut f: impl FnMut(&[PathBuf], &mut Sink) -> Result<()>,
    ) -> Result<()> {
        let size = self.size()?;
        let images = expand_images(images)?;
        let mut sink = Sink::new(self.output.as_deref())?;
        let bar = batch_bar(images.len(), size);
        for chunk in images.chunks(size) {
            f(chunk, &mut sink)?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        sink.finish()
    }
}

/// Where per-image results go: stdout, or a JSON lines file. The file is written beside its
/// destination under a temporary name and moved into place by [`Sink::finish`], so a run that
/// fails (bad input found late, a kill, a full disk) leaves an existing file as it was and no
/// half-written one.
struct Sink {
    file: Option<PartialFile>,
}

/// A file being written to `tmp`, renamed to `path` when complete; removed if dropped before.
struct PartialFile {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<std::io::BufWriter<std::fs::File>>,
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Sink {
    fn new(output: Option<&std::path::Path>) -> Result<Self> {
        let file = match output {
            Some(path) => {
                let name = path
                    .file_name()
                    .ok_or_else(|| anyhow::anyhow!("--output {} names no file", path.display()))?;
                let mut tmp_name = std::ffi::OsString::from(".");
                tmp_name.push(name);
                tmp_name.push(format!(".partial-{}", std::process::id()));
                let tmp = path.with_file_name(tmp_name);
                let f = std::fs::File::create(&tmp)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                Some(PartialFile {
                    path: path.to_path_buf(),
                    tmp,
                    writer: Some(std::io::BufWriter::new(f)),
                })
            }
            None => None,
        };
        Ok(Self { file })
    }

    /// Writes `value` as a line to the file, or prints `text()` (or `value` when `json`).
    fn emit(
        &mut self,
        json: bool,
        value: &serde_json::Value,
        text: impl FnOnce() -> String,
    ) -> Result<()> {
        use std::io::Write;
        match &mut self.file {
            Some(PartialFile {
                path,
                writer: Some(f),
                ..
            }) => writeln!(f, "{value}")
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display())),
            Some(_) => Ok(()),
            None if json => {
                println!("{value}");
                Ok(())
            }
            None => {
                print!("{}", text());
                Ok(())
            }
        }
    }

    /// Completes the output: the file is flushed to disk and moved over its destination.
    fn finish(self) -> Result<()> {
        if let Some(mut file) = self.file {
            let cannot =
                |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", file.path.display());
            if let Some(w) = file.writer.take() {
                let f = w.into_inner().map_err(|e| cannot(e.into_error()))?;
                let done = f
                    .sync_all()
                    .and_then(|_| std::fs::rename(&file.tmp, &file.path));
                if let Err(e) = done {
                    let _ = std::fs::remove_file(&file.tmp);
                    return Err(cannot(e));
                }
            }
        }
        Ok(())
    }
}

/// A progress bar over `n` images on stderr, drawn when stderr is a terminal and there is
/// more than one batch.
fn batch_bar(n: usize, batch_size: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if n <= batch_size || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "[{bar:30}] {pos}/{len} images ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

impl BatchArgs {
    fn size(&self) -> Result<usize> {
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        Ok(self.batch_size)
    }
}

/// Closed-list answering options shared by `vqa` and `video qa`.
#[derive(Debug, clap::Args)]
pub struct RankArgs {
    /// Rank the answers of this file instead of generating: a JSON array of answers (VQA's
    /// `answer_list.json`, as `mplug eval` reads) or one answer per line.
    #[arg(long)]
    answers: Option<PathBuf>,
    /// Answers kept when ranking.
    #[arg(long, default_value_t = 5)]
    k: usize,
}

/// `mplug vqa`.
#[derive(Debug, clap::Args)]
pub struct VqaArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    #[command(flatten)]
    rank: RankArgs,
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
        #[arg(long, help = mplug::tasks::video::FRAMES_HELP, default_value_t = mplug::tasks::video::CAPTION_FRAMES)]
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
        #[command(flatten)]
        rank: RankArgs,
        #[arg(long, help = mplug::tasks::video::FRAMES_HELP, default_value_t = mplug::tasks::video::QA_FRAMES)]
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
        /// Rank every text by ITC similarity alone, without ITM re-scoring.
        #[arg(long)]
        itc_only: bool,
        #[arg(long, help = mplug::tasks::video::FRAMES_HELP, default_value_t = mplug::tasks::video::RETRIEVAL_FRAMES)]
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
    /// Rank every text by ITC similarity alone, without ITM re-scoring (for a model whose ITM
    /// head ranks worse than its ITC features).
    #[arg(long)]
    itc_only: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    batch: BatchArgs,
    /// Texts to rank (repeat the option).
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    /// Image files, folders of images (searched recursively), or list files (`.txt`, one path
    /// per line, relative to the list).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// `mplug classify`.
#[derive(Debug, clap::Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A candidate label (repeat the option).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// A file of candidate labels: one per line, or a JSON array.
    #[arg(long)]
    labels_file: Option<PathBuf>,
    /// The prompt each label is written into (`{}` is the label).
    #[arg(long, default_value = mplug::pipeline::DEFAULT_LABEL_TEMPLATE)]
    template: String,
    /// Labels printed per image, best first (0: all).
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Also score each label by the ITM head's match probability, and order by it (the
    /// retrieval protocol's re-scoring; slower: one fusion pass per image and label).
    #[arg(long)]
    itm: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    batch: BatchArgs,
    /// Image files, folders of images (searched recursively), or list files (`.txt`, one path
    /// per line, relative to the list).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// `mplug classify`: zero-shot labels of images with their probabilities.
pub fn classify(a: &ClassifyArgs) -> Result<()> {
    let mut labels = a.labels.clone();
    if let Some(file) = &a.labels_file {
        labels.extend(answers_file(file)?);
    }
    if labels.is_empty() {
        anyhow::bail!("no labels: give --label LABEL (repeated) or --labels-file FILE");
    }
    a.batch.size()?;
    let p = a.model.load(Task::Retrieval)?;
    let top = if a.top == 0 { labels.len() } else { a.top };
    a.batch.over_images(&a.images, |chunk, sink| {
        let scored = p.classify(
            Visual::Images(&p.load_images(chunk)?),
            &labels,
            &a.template,
            a.itm,
        )?;
        for (path, row) in chunk.iter().zip(&scored) {
            let kept = &row[..top.min(row.len())];
            let r: Vec<_> = kept
                .iter()
                .map(|l| {
                    let mut v =
                        json!({"label": l.label, "score": l.score, "similarity": l.similarity});
                    if let Some(m) = l.match_prob {
                        v["match_prob"] = json!(m);
                    }
                    v
                })
                .collect();
            sink.emit(a.json, &json!({"image": path, "labels": r}), || {
                let shown_labels: Vec<String> = kept
                    .iter()
                    .map(|l| match l.match_prob {
                        Some(m) => format!(
                            "{} {:.4} (match {m:.4})",
                            escape_controls(&l.label),
                            l.score
                        ),
                        None => format!("{} {:.4}", escape_controls(&l.label), l.score),
                    })
                    .collect();
                format!("{}\t{}\n", shown(path), shown_labels.join("\t"))
            })?;
        }
        Ok(())
    })
}

pub fn caption(a: &CaptionArgs) -> Result<()> {
    a.batch.size()?;
    let p = a.model.load(Task::Caption)?;
    a.batch.over_images(&a.images, |chunk, sink| {
        let captions = p.caption(
            &p.load_images(chunk)?,
            &a.decode.config(BeamConfig::caption())?,
        )?;
        for (path, hyps) in chunk.iter().zip(captions) {
            let h: Vec<_> = hyps
                .iter()
                .map(|h| json!({"caption": h.text, "score": h.score, "prob": h.prob}))
                .collect();
            sink.emit(a.json, &json!({"image": path, "captions": h}), || {
                hyps.iter()
                    .map(|h| format!("{}\t{}\n", shown(path), h.text))
                    .collect()
            })?;
        }
        Ok(())
    })
}

pub fn vqa(a: &VqaArgs) -> Result<()> {
    let p = a.model.load(Task::Vqa)?;
    let images = p.load_images(std::slice::from_ref(&a.image))?;
    answer(
        &p,
        Visual::Images(&images),
        &a.question,
        &a.rank,
        &a.decode,
        a.json,
    )
}

/// Answers one question about one image or clip: ranked from `--answers`, or generated.
fn answer(
    p: &mplug::pipeline::Pipeline,
    visual: Visual,
    question: &str,
    rank: &RankArgs,
    decode: &DecodeArgs,
    json: bool,
) -> Result<()> {
    let questions = [question];
    // (answer, score, prob): ranked answers have their probability among the candidates,
    // generated ones their length-penalized score and the probability of their tokens.
    let rows: Vec<(String, Option<f32>, f32)> = match &rank.answers {
        Some(file) => {
            let list = answers_file(file)?;
            p.rank_answers_visual(visual, &questions, &list, rank.k)?
                .remove(0)
                .into_iter()
                .map(|r| (r.text, None, r.prob))
                .collect()
        }
        None => p
            .answer_visual(visual, &questions, &decode.config(BeamConfig::answer())?)?
            .remove(0)
            .into_iter()
            .map(|h| (h.text, Some(h.score), h.prob))
            .collect(),
    };
    let ranked = rank.answers.is_some();
    if json {
        let r: Vec<_> = rows
            .iter()
            .map(|(t, score, prob)| match score {
                Some(score) => json!({"answer": t, "score": score, "prob": prob}),
                None => json!({"answer": t, "prob": prob}),
            })
            .collect();
        println!("{}", json!({"question": question, "answers": r}));
    } else {
        for (text, _, v) in rows {
            if ranked {
                println!("{v:.4}\t{text}");
            } else {
                println!("{text}");
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
    a.batch.size()?;
    let p = a.model.load(Task::Retrieval)?;
    // Texts are encoded once; each image's top k texts (k at most the number of texts) are
    // re-scored by ITM, so the rows do not depend on the batch size.
    let texts = p.text_side(&a.texts)?;
    a.batch.over_images(&a.images, |chunk, sink| {
        let side = p.image_side(Visual::Images(&p.load_images(chunk)?))?;
        let i2t = if a.itc_only {
            mplug::tasks::retrieval::similarity_rows(&side, &texts)?
        } else {
            p.rank_texts(&side, &texts, a.k)?
        };
        for (path, row) in chunk.iter().zip(&i2t) {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
            let r: Vec<_> = order
                .iter()
                .map(|&j| json!({"text": a.texts[j], "score": row[j]}))
                .collect();
            sink.emit(a.json, &json!({"image": path, "texts": r}), || {
                order
                    .iter()
                    .map(|&j| format!("{}\t{:.4}\t{}\n", shown(path), row[j], a.texts[j]))
                    .collect()
            })?;
        }
        Ok(())
    })
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

/// The candidate answers of `--answers`: the format `mplug eval` reads (a JSON array or object
/// of answers, as VQA's `answer_list.json`, or one answer per line; a byte-order mark is
/// skipped; a file with no answer is an error).
fn answers_file(file: &std::path::Path) -> Result<Vec<String>> {
    Ok(mplug::eval::annotations::read_answer_list(file)?)
}

/// A path for a line of text output: control characters (an escape sequence in a file name
/// would reach the terminal raw) written as escapes, as `{:?}` writes them.
pub fn shown(path: &std::path::Path) -> String {
    escape_controls(&path.display().to_string())
}

/// `text` with every control character written as its escape (`\n`, `\u{1b}`).
pub fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub fn video(a: &VideoArgs) -> Result<()> {
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
                .zip(p.caption_visual(Visual::Clips(&t), &decode.config(BeamConfig::caption())?)?)
            {
                if *json {
                    let h: Vec<_> = hyps
                        .iter()
                        .map(|h| json!({"caption": h.text, "score": h.score, "prob": h.prob}))
                        .collect();
                    println!("{}", json!({"clip": path, "captions": h}));
                } else {
                    for h in hyps {
                        println!("{}\t{}", shown(path), h.text);
                    }
                }
            }
        }
        VideoCommand::Qa {
            model,
            decode,
            rank,
            frames,
            json,
            clip,
            question,
        } => {
            let p = model.load(Task::Vqa)?;
            let t = p.load_clips(std::slice::from_ref(clip), *frames)?;
            answer(&p, Visual::Clips(&t), question, rank, decode, *json)?;
        }
        VideoCommand::Retrieve {
            model,
            k,
            itc_only,
            frames,
            json,
            texts,
            clips,
        } => {
            let p = model.load(Task::Retrieval)?;
            let t = p.load_clips(clips, *frames)?;
            let v2t = if *itc_only {
                p.similarities(Visual::Clips(&t), texts)?
            } else {
                p.retrieve_visual(Visual::Clips(&t), texts, *k)?.0
            };
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
                        println!("{}\t{:.4}\t{}", shown(path), row[j], texts[j]);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Expands the image arguments: a folder gives its image files (recursively, sorted, hidden
/// entries skipped, as `mplug index` reads folders), a `.txt` / `.lst` file gives the paths it
/// lists (one per line, relative to the list's folder), anything else is taken as an image file.
fn expand_images(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        let ext = a.extension().and_then(|e| e.to_str()).unwrap_or("");
        if a.is_dir() {
            let files = mplug::input::image_files(a)?;
            if files.is_empty() {
                bail!("folder {} holds no images", a.display());
            }
            out.extend(files.into_iter().map(|(_, path)| path));
        } else if ext == "txt" || ext == "lst" {
            let text =
                std::fs::read_to_string(a).map_err(|e| anyhow::anyhow!("{}: {e}", a.display()))?;
            let base = a
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            // A byte-order mark (Windows editors write one) is not part of the first name.
            let listed: Vec<PathBuf> = text
                .trim_start_matches('\u{feff}')
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| base.join(l))
                .collect();
            if listed.is_empty() {
                bail!("{} lists no images", a.display());
            }
            out.extend(listed);
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}
