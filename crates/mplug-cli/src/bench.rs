//! `mplug bench`: speed of the released model sizes with random weights (no checkpoint needed).
//!
//! Prints, one figure per line (or one JSON object per line with `--json`, named as the anchors
//! of `../shared/bench/refbench.py` name theirs): the visual tower at each `--batch-size` (images/s
//! and GFLOP/s), caption and VQA latency, ITM pairs/s, the process's peak resident memory, and the
//! samples/s of caption fine-tuning steps. Every figure is the median of `--runs` timed runs after
//! one warm-up run.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use mplug::tasks::{caption, retrieval, vqa};
use mplug::{BeamConfig, Mplug, MplugConfig, Task};
use std::time::Instant;

/// Options of the benchmark.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Model size: `base` (ViT-B/16, 384 px), `large` (ViT-L/14, 336 px) or `tiny` (the
    /// default model's size).
    #[arg(long, default_value = "base")]
    pub preset: String,
    /// Timed repetitions of each measurement (after one warm-up run); figures are medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Images per batch for the visual tower, one measurement per value (`1,8`).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch_size: Vec<usize>,
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
    /// Image-text pairs scored by one ITM call (the re-ranking of retrieval's top k).
    #[arg(long, default_value_t = 16)]
    pub itm_pairs: usize,
    /// Weight type of the inference measurements: `f32`; `bf16` (on the CPU, compact weights:
    /// linear layers' weights in bf16, activations f32; products of many rows in bf16 dot
    /// products where the CPU has AVX512-BF16, f32 arithmetic elsewhere); `int8` (linear
    /// layers' weights in int8, activations quantized per row, integer dot products where the
    /// CPU has AVX512-VNNI); or `f16` (candle's f16 arithmetic throughout). Training is always
    /// f32.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Measure only these parts (all by default): `tower`, `caption`, `vqa`, `itm`, `train`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Image side of the training measurement (the preset's grid is rebuilt for it).
    #[arg(long, default_value_t = 256)]
    pub train_res: usize,
    /// Samples per training step.
    #[arg(long, default_value_t = 2)]
    pub train_batch: usize,
    /// Timed training steps (after one warm-up step).
    #[arg(long, default_value_t = 1)]
    pub train_steps: usize,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Benchmark the photo index's stores instead, on this many synthetic unit vectors
    /// (build time, query latency, recall@10 of HNSW, disk size); nothing else runs.
    #[arg(long, value_name = "N")]
    pub index: Option<usize>,
    /// Width of the index benchmark's vectors (the default model's ITC width).
    #[arg(long, default_value_t = 64)]
    pub index_dim: usize,
    /// The PostgreSQL database of the index benchmark (a table is made and dropped there).
    #[arg(long, value_name = "URL", requires = "index")]
    pub store: Option<String>,
}

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The visual tower at each `--batch-size`.
    Tower,
    /// Caption latency, cached and uncached decoding.
    Caption,
    /// VQA latency.
    Vqa,
    /// ITM re-ranking pairs/s.
    Itm,
    /// Caption fine-tuning samples/s (f32).
    Train,
}

impl BenchArgs {
    fn wants(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// Floating-point operations of one image through the visual tower, counting a multiply-add as
/// two and only the matrix products (LayerNorm, softmax and activations are a fraction of a
/// percent):
///
/// `F = 2 (T - 1) 3 p² D  +  N (24 T D²  +  4 T² D)`
///
/// with `T = (R / p)² + 1` tokens (patches and the class token), image side `R`, patch `p`, width
/// `D` and `N` blocks. The first term is the patch embedding; per block, `24 T D²` is the q/k/v
/// projection (`6 T D²`), the output projection (`2 T D²`) and the MLP of width `4 D`
/// (`16 T D²`), and `4 T² D` is attention's `Q Kᵀ` and `P V`. ViT-B/16 at 384 px: 111 GFLOP.
/// The projection to the text width (`visn_fc`, ViT-L) adds `2 T D Dt`.
pub fn vision_flops(cfg: &MplugConfig) -> f64 {
    let v = &cfg.vision;
    let (p, d, n) = (v.patch_size as f64, v.width as f64, v.layers as f64);
    let t = cfg.num_visual_tokens() as f64;
    let mut f = 2.0 * (t - 1.0) * 3.0 * p * p * d + n * (24.0 * t * d * d + 4.0 * t * t * d);
    if cfg.has_visn_fc() {
        f += 2.0 * t * d * cfg.bert.hidden_size as f64;
    }
    f
}

/// The process's peak resident memory in bytes (Linux `VmHWM`), if the system reports it.
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One printed figure: a name (the anchors' where they have one), the median and fastest time,
/// and a sentence for the text form.
struct Figure {
    name: String,
    median_s: f64,
    min_s: f64,
    text: String,
    /// More JSON fields (an object), or `Null`.
    extra: serde_json::Value,
}

/// Prints figures as text or JSON lines.
struct Report {
    json: bool,
}

impl Report {
    fn line(&self, name: &str, text: String, fields: serde_json::Value) {
        if self.json {
            let mut obj = serde_json::Map::new();
            obj.insert("name".into(), name.into());
            if let serde_json::Value::Object(m) = fields {
                obj.extend(m);
            }
            println!("{}", serde_json::Value::Object(obj));
        } else {
            println!("{text}");
        }
    }

    fn figure(&self, f: Figure) {
        let mut fields = serde_json::json!({ "median_s": f.median_s, "min_s": f.min_s });
        if let (serde_json::Value::Object(m), serde_json::Value::Object(extra)) =
            (&mut fields, f.extra)
        {
            m.extend(extra);
        }
        self.line(&f.name, f.text, fields);
    }

    fn peak(&self, after: &str) {
        let peak = peak_memory();
        let text = match peak {
            Some(b) => format!("peak memory after {after}: {:.2} GB", b as f64 / 1e9),
            None => format!("peak memory after {after}: not reported by this system"),
        };
        self.line(
            &format!("peak_memory_after_{after}"),
            text,
            serde_json::json!({ "bytes": peak }),
        );
    }
}

/// Median and minimum seconds of `runs` timed calls after one warm-up call.
fn time<T>(runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, f64)> {
    f()?; // warm-up
    let mut secs = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        f()?;
        secs.push(start.elapsed().as_secs_f64());
    }
    secs.sort_by(f64::total_cmp);
    Ok((secs[secs.len() / 2], secs[0]))
}

/// [`time`] on a thread of the tensor-math pool, as `Pipeline` and beam search run inference
/// (see `mplug::model::kernels::on_pool`).
fn time_on_pool<T>(runs: usize, f: impl FnMut() -> Result<T> + Send) -> Result<(f64, f64)> {
    mplug::model::kernels::on_pool(|| time(runs, f))
}

/// A model of `cfg`'s shapes with random weights held as plain tensors of `dtype`, as a loaded
/// checkpoint holds them ([`mplug::model::random_tensors`]: drawn by candle's initializers,
/// then detached), so that no operation records a gradient graph (which made an earlier
/// benchmark twice as slow as what users run). Returns the model and its parameter count.
fn random_model(
    cfg: &MplugConfig,
    task: Task,
    dtype: DType,
    device: &Device,
) -> Result<(Mplug, usize)> {
    let tensors = mplug::model::random_tensors(cfg, task, dtype)?;
    let params = tensors.values().map(|t| t.elem_count()).sum();
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    Ok((Mplug::new(cfg, task, vb)?, params))
}

/// Token ids `(b, len)`: [CLS], word ids past BERT's special tokens within the vocabulary, [SEP].
fn token_ids(cfg: &MplugConfig, b: usize, len: usize, device: &Device) -> Result<Tensor> {
    let vocab = cfg.bert.vocab_size as u32;
    let ids: Vec<u32> = (0..b * len)
        .map(|i| match i % len {
            0 => 101,
            k if k == len - 1 => 102,
            k => 104 + (k as u32 * 37 + i as u32) % (vocab - 104),
        })
        .collect();
    Ok(Tensor::from_vec(ids, (b, len), device)?)
}

/// Training: one warm-up and `train_steps` timed caption fine-tuning steps (forward, backward,
/// AdamW), f32, at `train_res` pixels, batch `train_batch`, 20-token captions (the reference's
/// `refbench.py REF THREADS train`).
fn run_train(args: &BenchArgs, report: &Report) -> Result<()> {
    use mplug::train::optim::{MplugAdamW, OptimizerConfig};
    use mplug::train::Trainable;
    let mut cfg = MplugConfig::preset(&args.preset)?;
    cfg.image_res = args.train_res;
    let device = Device::Cpu;
    let t = Trainable::new(&cfg, Task::Caption, &device)?;
    let vars = t.named_vars();
    let mut opt = MplugAdamW::new(&vars, OptimizerConfig::default())?;
    let (b, r, len) = (args.train_batch.max(1), cfg.image_res, 20);
    let images = Tensor::randn(0f32, 1f32, (b, 3, r, r), &device)?;
    let ids = token_ids(&cfg, b, len, &device)?;
    let mask = Tensor::ones((b, len), DType::U32, &device)?;
    let (median, min) = time(args.train_steps, || {
        let embeds = t.model.encode_image(&images)?;
        let loss = caption::loss(&t.model, &embeds, &ids, &mask)?;
        opt.step(&loss.backward()?)?;
        Ok(())
    })?;
    report.figure(Figure {
        name: format!("caption_train_step_{r}_b{b}"),
        median_s: median,
        min_s: min,
        text: format!(
            "training (caption fine-tuning, forward + backward + AdamW, f32): {:.2} samples/s (batch {b}, {r} px, {len} tokens, {median:.2} s per step)",
            b as f64 / median
        ),
        extra: serde_json::json!({ "samples": b, "samples_per_s": b as f64 / median })

    });
    report.peak("training");
    Ok(())
}

/// Runs the benchmark and prints one line per figure on stdout.
pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(n) = args.index {
        return crate::bench_index::run(n, args.index_dim, args.store.as_deref());
    }
    let report = Report { json: args.json };
    let cfg = MplugConfig::preset(&args.preset)?;
    // int8 is a way of holding f32 weights, not a tensor dtype.
    let int8 = args.dtype == "int8";
    let dtype = match args.dtype.as_str() {
        "int8" => DType::F32,
        "f32" | "bf16" | "f16" => crate::convert::dtype(&args.dtype)?,
        other => bail!("unknown --dtype `{other}` (expected f32, bf16, int8 or f16)"),
    };
    if args.batch_size.contains(&0) {
        bail!("--batch-size must be at least 1");
    }
    report.line(
        "setup",
        format!(
            "preset: {} (image {} px, {} visual tokens), {}, threads: {}",
            args.preset,
            cfg.image_res,
            cfg.num_visual_tokens(),
            args.dtype,
            candle_core::utils::get_num_threads()
        ),
        serde_json::json!({
            "preset": args.preset,
            "image_res": cfg.image_res,
            "dtype": args.dtype,
            "threads": candle_core::utils::get_num_threads(),
        }),
    );
    let inference = [Part::Tower, Part::Caption, Part::Vqa, Part::Itm];
    if !inference.iter().any(|&p| args.wants(p)) {
        return run_train(args, &report);
    }
    let device = Device::Cpu;
    let built = Instant::now();
    // The pre-training model holds every part: tower, text encoder, fusion, ITM head, decoder.
    let build = || random_model(&cfg, Task::Pretrain, dtype, &device);
    let (model, params) = if int8 {
        mplug::model::ops::with_int8_weights(build)?
    } else {
        build()?
    };
    eprintln!(
        "built {} preset with random weights: {:.1} M parameters in {:.1} s",
        args.preset,
        params as f64 / 1e6,
        built.elapsed().as_secs_f64()
    );

    let r = cfg.image_res;
    let flops = vision_flops(&cfg);
    let max_batch = args.batch_size.iter().copied().max().unwrap_or(1);
    let images =
        Tensor::randn(0f32, 1f32, (max_batch, 3, r, r), &device)?.to_dtype(model.dtype())?;
    for &b in args.batch_size.iter().filter(|_| args.wants(Part::Tower)) {
        let batch = images.narrow(0, 0, b)?;
        let (median, min) = time_on_pool(args.runs, || Ok(model.encode_image(&batch)?))?;
        let gflops = flops * b as f64 / median / 1e9;
        report.figure(Figure {
            name: format!("vision_b{b}_{r}"),
            median_s: median,
            min_s: min,
            text: format!(
                "visual tower, batch {b}: {:.2} images/s, {gflops:.0} GFLOP/s ({median:.3} s per batch, {:.1} GFLOP per image)",
                b as f64 / median,
                flops / 1e9
            ),
            extra: serde_json::json!({ "images": b, "gflop_per_s": gflops })

        });
    }

    let one = images.narrow(0, 0, 1)?;
    let beam = |len: usize, use_cache: bool| BeamConfig {
        beam_size: args.beam,
        min_length: len,
        max_length: len,
        use_cache,
        ..Default::default()
    };
    for use_cache in [true, false]
        .into_iter()
        .filter(|_| args.wants(Part::Caption))
    {
        let (median, min) = time_on_pool(args.runs, || {
            let embeds = model.encode_image(&one)?;
            Ok(caption::generate(
                &model,
                &embeds,
                &beam(args.max_len, use_cache),
            )?)
        })?;
        let (name, how) = if use_cache {
            (
                format!("caption_beam{}_len{}_b1", args.beam, args.max_len),
                "cached",
            )
        } else {
            (
                format!("caption_beam{}_len{}_b1_uncached", args.beam, args.max_len),
                "uncached as the reference decodes",
            )
        };
        report.figure(Figure {
            name,
            median_s: median,
            min_s: min,
            text: format!(
                "caption latency: {median:.3} s per image, tower included (beam {}, {} tokens, {how})",
                args.beam, args.max_len
            ),
            extra: serde_json::Value::Null,
        });
    }

    if args.wants(Part::Vqa) {
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
        let (median, min) = time_on_pool(args.runs, || {
            let embeds = model.encode_image(&one)?;
            let q = vqa::encode_question(&model, &embeds, &ids, &mask)?;
            Ok(vqa::generate(&model, &q, &beam(args.vqa_len, true))?)
        })?;
        report.figure(Figure {
            name: format!("vqa_beam{}_len{}_b1", args.beam, args.vqa_len),
            median_s: median,
            min_s: min,
            text: format!(
                "vqa latency: {median:.3} s per image, tower included (beam {}, {} tokens, cached)",
                args.beam, args.vqa_len
            ),
            extra: serde_json::Value::Null,
        });
    }
    if args.wants(Part::Itm) {
        // ITM re-ranking: one image's visual tokens against `itm_pairs` 30-token texts, the
        // fusion encoder and ITM head only (the towers' outputs are computed once, as retrieval does).
        let pairs = args.itm_pairs.max(1);
        let image_side = retrieval::encode_images(&model, &one)?;
        let text_ids = token_ids(&cfg, pairs, 30, &device)?;
        let text_mask = Tensor::ones((pairs, 30), DType::U32, &device)?;
        let text_side = retrieval::encode_texts(&model, &text_ids, &text_mask)?;
        let list: Vec<(usize, usize)> = (0..pairs).map(|t| (0, t)).collect();
        let (median, min) = time_on_pool(args.runs, || {
            Ok(retrieval::itm_positive(
                &model,
                &image_side,
                &text_side,
                &list,
            )?)
        })?;
        report.figure(Figure {
            name: format!("itm_pairs{pairs}_len30"),
            median_s: median,
            min_s: min,
            text: format!(
                "ITM re-ranking: {:.1} pairs/s ({pairs} pairs of 30-token texts, {median:.3} s per call)",
                pairs as f64 / median
            ),
            extra: serde_json::json!({ "pairs": pairs, "pairs_per_s": pairs as f64 / median })

        });
    }
    report.peak("inference");
    drop(model);

    if args.wants(Part::Train) {
        run_train(args, &report)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vision_flops_follow_the_formula() {
        // ViT-B/16 at 384 px: 577 tokens, width 768, 12 blocks.
        let f = vision_flops(&MplugConfig::base());
        let (t, d) = (577.0f64, 768.0f64);
        let expect = 2.0 * 576.0 * 768.0 * d + 12.0 * (24.0 * t * d * d + 4.0 * t * t * d);
        assert!((f - expect).abs() < 1.0, "{f} vs {expect}");
        assert!((f / 1e9 - 111.0).abs() < 1.0, "{}", f / 1e9);
        // A wider image has more tokens and costs more.
        let mut big = MplugConfig::base();
        big.image_res = 448;
        assert!(vision_flops(&big) > f);
    }
}
