//! `mplug bench`: speed of the released model sizes with random weights (no checkpoint needed).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mplug::tasks::{caption, vqa};
use mplug::{BeamConfig, Mplug, MplugConfig, Task};
use std::time::Instant;

/// Options of the benchmark.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Model size: `base` (ViT-B/16, 384 px), `large` (ViT-L/14, 336 px) or `tiny` (the
    /// default model's size).
    #[arg(long, default_value = "base")]
    pub preset: String,
    /// Timed repetitions of each measurement (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Images per batch for the visual tower.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Beam size of caption and VQA decoding.
    #[arg(long, default_value_t = 5)]
    pub beam: usize,
    /// Caption length; every run decodes exactly this many tokens (min = max) so that random
    /// weights cannot stop early.
    #[arg(long, default_value_t = 20)]
    pub max_len: usize,
    /// Answer length for VQA, decoded exactly like `--max-len`.
    #[arg(long, default_value_t = 10)]
    pub vqa_len: usize,
    /// Measure training instead: samples/s of caption fine-tuning steps (forward, backward,
    /// AdamW) with random weights at `--train-res` pixels.
    #[arg(long)]
    pub train: bool,
    /// Image side of the training measurement (the preset's grid is rebuilt for it).
    #[arg(long, default_value_t = 256)]
    pub train_res: usize,
    /// Timed training steps (after one warm-up step).
    #[arg(long, default_value_t = 1)]
    pub train_steps: usize,
}

/// `--train`: one warm-up and `train_steps` timed caption fine-tuning steps.
fn run_train(args: &BenchArgs) -> Result<()> {
    use mplug::train::optim::{MplugAdamW, OptimizerConfig};
    use mplug::train::Trainable;
    let mut cfg = MplugConfig::preset(&args.preset)?;
    cfg.image_res = args.train_res;
    let device = Device::Cpu;
    let t = Trainable::new(&cfg, Task::Caption, &device)?;
    let vars = t.named_vars();
    let params: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt = MplugAdamW::new(&vars, OptimizerConfig::default())?;
    let (b, r, len) = (args.batch_size, cfg.image_res, 20);
    let images = Tensor::randn(0f32, 1f32, (b, 3, r, r), &device)?;
    let ids: Vec<u32> = (0..b * len)
        .map(|i| match i % len {
            0 => 101,
            k if k == len - 1 => 102,
            // Word ids past BERT's special tokens, within the preset's vocabulary.
            k => 104 + (k as u32 * 37 + i as u32) % (cfg.bert.vocab_size as u32 - 104),
        })
        .collect();
    let ids = Tensor::from_vec(ids, (b, len), &device)?;
    let mask = Tensor::ones((b, len), DType::U32, &device)?;
    let mut step = || -> Result<()> {
        let embeds = t.model.encode_image(&images)?;
        let loss = caption::loss(&t.model, &embeds, &ids, &mask)?;
        opt.step(&loss.backward()?)?;
        Ok(())
    };
    step()?; // warm-up
    let start = Instant::now();
    let n = args.train_steps.max(1);
    for _ in 0..n {
        step()?;
    }
    let secs = start.elapsed().as_secs_f64() / n as f64;
    println!(
        "preset: {} (image {} px, {} visual tokens), {:.1} M parameters",
        args.preset,
        r,
        cfg.num_visual_tokens(),
        params as f64 / 1e6
    );
    println!("threads: {}", candle_core::utils::get_num_threads());
    println!(
        "training (caption fine-tuning, forward + backward + AdamW): {:.2} samples/s (batch {}, {} tokens, {:.2} s per step)",
        b as f64 / secs,
        b,
        len,
        secs
    );
    Ok(())
}

/// A model of `cfg`'s shapes with random weights held as plain tensors, as a loaded checkpoint
/// holds them: drawn through a `VarMap` (candle's initializers), then detached, so that no
/// operation records a gradient graph (which made an earlier benchmark twice as slow as what
/// users run). Returns the model and its parameter count.
fn random_model(cfg: &MplugConfig, task: Task, device: &Device) -> Result<(Mplug, usize)> {
    let varmap = VarMap::new();
    Mplug::new(
        cfg,
        task,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    let tensors: std::collections::HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("variable map poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let params = tensors.values().map(|t| t.elem_count()).sum();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    Ok((Mplug::new(cfg, task, vb)?, params))
}

fn time<T>(runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?; // warm-up
    let start = Instant::now();
    for _ in 0..runs.max(1) {
        f()?;
    }
    Ok(start.elapsed().as_secs_f64() / runs.max(1) as f64)
}

/// Runs the benchmark and prints one line per figure on stdout.
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.train {
        return run_train(args);
    }
    let cfg = MplugConfig::preset(&args.preset)?;
    let device = Device::Cpu;
    let built = Instant::now();
    let (model, params) = random_model(&cfg, Task::Vqa, &device)?;
    eprintln!(
        "built {} preset with random weights: {:.1} M parameters in {:.1} s",
        args.preset,
        params as f64 / 1e6,
        built.elapsed().as_secs_f64()
    );
    println!(
        "preset: {} (image {} px, {} visual tokens)",
        args.preset,
        cfg.image_res,
        cfg.num_visual_tokens()
    );
    println!("threads: {}", candle_core::utils::get_num_threads());

    let r = cfg.image_res;
    let images = Tensor::randn(0f32, 1f32, (args.batch_size, 3, r, r), &device)?;
    let secs = time(args.runs, || Ok(model.encode_image(&images)?))?;
    println!(
        "visual tower: {:.2} images/s (batch {}, {:.3} s per batch)",
        args.batch_size as f64 / secs,
        args.batch_size,
        secs
    );

    let one = images.narrow(0, 0, 1)?;
    let beam = |len: usize, use_cache: bool| BeamConfig {
        beam_size: args.beam,
        min_length: len,
        max_length: len,
        use_cache,
        ..Default::default()
    };
    let cached = time(args.runs, || {
        let embeds = model.encode_image(&one)?;
        Ok(caption::generate(
            &model,
            &embeds,
            &beam(args.max_len, true),
        )?)
    })?;
    println!(
        "caption latency: {:.3} s per image (beam {}, {} tokens, cached)",
        cached, args.beam, args.max_len
    );
    let uncached = time(args.runs, || {
        let embeds = model.encode_image(&one)?;
        Ok(caption::generate(
            &model,
            &embeds,
            &beam(args.max_len, false),
        )?)
    })?;
    println!(
        "caption latency: {:.3} s per image (beam {}, {} tokens, uncached as the reference)",
        uncached, args.beam, args.max_len
    );
    println!("cached decoding speed-up: {:.2}x", uncached / cached);

    // "what color is the cat?" in BERT's vocabulary; word ids past the special tokens in a
    // smaller one.
    let question: Vec<u32> = if cfg.bert.vocab_size > 4937 {
        vec![101, 2054, 3609, 2003, 1996, 4937, 1029, 102]
    } else {
        vec![101, 104, 105, 106, 107, 108, 109, 102]
    };
    let n = question.len();
    let ids = Tensor::from_vec(question, (1, n), &device)?;
    let mask = Tensor::ones((1, n), DType::U32, &device)?;
    let vqa_secs = time(args.runs, || {
        let embeds = model.encode_image(&one)?;
        let q = vqa::encode_question(&model, &embeds, &ids, &mask)?;
        Ok(vqa::generate(&model, &q, &beam(args.vqa_len, true))?)
    })?;
    println!(
        "vqa latency: {:.3} s per image (beam {}, {} tokens, cached)",
        vqa_secs, args.beam, args.vqa_len
    );
    Ok(())
}
