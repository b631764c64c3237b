//! `mplug pretrain` and `mplug finetune <task>`: training on the reference's annotation files
//! with the library's trainer (accumulation, clipping, cosine schedule with warm-up, JSONL log,
//! atomic checkpoints in `OUT/step-N` with `OUT/latest`, `--resume`), a progress bar on
//! stderr, and the trained weights written as a model folder `OUT/model`.

use crate::model_args::{locate, ConfigArgs};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use mplug::checkpoint::Checkpoint;
use mplug::data::loader::derive_seed;
use mplug::data::{AugmentConfig, Dataset, Loader, LoaderConfig};
use mplug::eval::{BoxFormat, EvalTask};
use mplug::input::{ImageConfig, ImagePreprocessor, Tokenizer};
use mplug::model_dir::{default_vocab, is_buffer, write_folder, ModelCard};
use mplug::tasks::grounding::GroundingTokens;
use mplug::tasks::pretrain::{self, LossWeights, MaskTokens, Momentum, PretrainBatch};
use mplug::tasks::vqa;
use mplug::train::finetune::{TaskLoss, OBJECTIVES_STREAM, RETRIEVAL_WEIGHTS};
use mplug::train::optim::{MplugAdamW, OptimizerConfig};
use mplug::train::schedule::CosineSchedule;
use mplug::train::trainer::{train_with_state, Loss, StepLog, TrainConfig};
use mplug::train::Trainable;
use mplug::{Mplug, MplugConfig, Task};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Options every training command shares.
#[derive(Debug, clap::Args)]
pub struct TrainOpts {
    /// Annotation file (JSON array or JSON Lines, in the reference's format for the task);
    /// `finetune multitask` takes one `--data TASK=FILE` per task.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Folder the annotation's image paths are relative to.
    #[arg(long)]
    pub image_root: PathBuf,
    /// Output folder: checkpoints (step-N, latest), train_log.jsonl and, at the end, model/
    /// (`--output`, as every command names where it writes; `--out` is its older name).
    #[arg(long = "output", alias = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Optimizer updates.
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Samples per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Micro-batches per update (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub accumulate: u64,
    /// Learning rate outside the visual encoder.
    #[arg(long, default_value_t = 1e-5)]
    pub lr1: f64,
    /// Learning rate of the visual encoder.
    #[arg(long, default_value_t = 2e-6)]
    pub lr2: f64,
    /// Weight decay (not applied to biases and LayerNorm weights).
    #[arg(long, default_value_t = 0.02)]
    pub weight_decay: f64,
    /// Updates of linear warm-up before the cosine decay.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Learning-rate multiplier at the end of the cosine decay.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr_scale: f64,
    /// Write a checkpoint every this many updates (and at the end).
    #[arg(long, default_value_t = 500)]
    pub save_every: u64,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub clip: Option<f64>,
    /// Seed of data order, augmentations and sampling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Threads decoding and augmenting images.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Most text tokens, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 30)]
    pub max_len: usize,
    /// Turn the train augmentations off (a plain bicubic resize, as at test time).
    #[arg(long)]
    pub no_augment: bool,
    /// Turn dropout off (by default the configuration's `hidden_dropout_prob` and
    /// `attention_probs_dropout_prob` apply in training, as the reference trains).
    #[arg(long)]
    pub no_dropout: bool,
    /// Continue the run in --output from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Micro-batches of an update computed at the same time, one thread each, with tensor
    /// math on one thread per micro-batch (unless --threads says otherwise). The update is the
    /// same as computed one after the other; small models train nearly N times faster on N
    /// cores. Needs N micro-batches per update: --accumulate N (a multi-task update has one
    /// micro-batch per task already). Not with momentum encoders (--queue-size) or --distill,
    /// whose state changes from one micro-batch to the next.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub data_parallel: u64,
}

impl TrainOpts {
    /// Tensor-math threads to use when the user gave none: one per concurrent micro-batch.
    pub fn math_threads(&self) -> Option<usize> {
        (self.data_parallel > 1).then_some(1)
    }
}

/// `mplug pretrain`.
#[derive(Debug, clap::Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Initialize the text towers from a BERT checkpoint (a Hugging Face folder with
    /// model.safetensors, or the file): layer i of BERT starts text-encoder, fusion and decoder
    /// layer i, as the reference does; cross-attention stays new.
    #[arg(long, conflicts_with = "init")]
    pub init_bert: Option<PathBuf>,
    /// Initialize the visual tower from a CLIP checkpoint (OpenAI `visual.*` or Hugging Face
    /// `vision_model.*` layout; the positional embedding is resized to --config's image size).
    #[arg(long, conflicts_with = "init")]
    pub init_clip: Option<PathBuf>,
    /// Start the visual positional embedding from a 2D sine-cosine table instead of random
    /// values (a fresh model only; a tiny tower trained for minutes otherwise loses where its
    /// patches are).
    #[arg(long, conflicts_with_all = ["init", "init_clip"])]
    pub sincos_positions: bool,
    /// Start from this mPLUG checkpoint (default: random initialization).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Connected attention every this many fusion layers, overriding the configuration
    /// (larger than the fusion depth: never).
    #[arg(long)]
    pub stride_layer: Option<usize>,
    /// The WordPiece vocabulary (vocab.txt) of the model (default: BERT uncased, or its first
    /// entries for a smaller --config vocabulary). Written into the model folder.
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    #[command(flatten)]
    pub train: TrainOpts,
    /// Weight of the image-text contrastive loss (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub itc: f64,
    /// Weight of the image-text matching loss (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub itm: f64,
    /// Weight of the masked language modeling loss (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub mlm: f64,
    /// Weight of the prefix language modeling loss (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub prefix_lm: f64,
    /// ITC feature queue length (0: no momentum encoders, queues or distillation).
    #[arg(long, default_value_t = 65536)]
    pub queue_size: usize,
    /// Distillation weight, ramped from 0 over the first epoch.
    #[arg(long, default_value_t = 0.4)]
    pub alpha: f64,
}

/// `mplug pretrain-tower`.
#[derive(Debug, clap::Args)]
pub struct PretrainTowerArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Start the visual positional embedding from a 2D sine-cosine table instead of random
    /// values.
    #[arg(long, conflicts_with = "init_clip")]
    pub sincos_positions: bool,
    /// Start the tower from a CLIP checkpoint or an mPLUG model's tower (as `mplug pretrain
    /// --init-clip`) instead of random values.
    #[arg(long)]
    pub init_clip: Option<PathBuf>,
    /// --data: labelled images `[{image, labels: [...]}]` (the generated world's
    /// labels_train.json); the head learns every label they name.
    #[command(flatten)]
    pub train: TrainOpts,
    /// Labelled images to score the trained tower on (for example labels_val.json); the scores
    /// are printed and written to OUT/scores.json.
    #[arg(long)]
    pub eval: Option<PathBuf>,
}

/// `mplug finetune <task>`.
#[derive(Debug, clap::Args)]
pub struct FinetuneArgs {
    #[command(subcommand)]
    pub task: FinetuneTask,
}

impl FinetuneArgs {
    /// The training options of whichever task is fine-tuned.
    pub fn train_opts(&self) -> &TrainOpts {
        match &self.task {
            FinetuneTask::Caption(a) => &a.common.train,
            FinetuneTask::Vqa(a) => &a.common.train,
            FinetuneTask::Retrieval(a) => &a.common.train,
            FinetuneTask::Grounding(a) => &a.common.train,
            FinetuneTask::Multitask(a) => &a.common.train,
        }
    }
}

/// The task to fine-tune.
#[derive(Debug, clap::Subcommand)]
pub enum FinetuneTask {
    /// Captioning (decoder cross-entropy); data `[{image, caption}]` or Karpathy's file.
    Caption(CaptionFinetune),
    /// VQA (weighted answer loss); data `[{image, question, answer: [...]}]`.
    Vqa(VqaFinetune),
    /// Retrieval (ITC + ITM, captions of one image all positives); data `[{image, caption}]`.
    Retrieval(RetrievalFinetune),
    /// Grounding (weighted coordinate loss); data `[{image, text, bbox}]` or the split tuples.
    Grounding(GroundingFinetune),
    /// Several tasks at once, one set of weights: every update sums one micro-batch of each
    /// task's loss (retrieval: ITC + ITM without momentum encoders); data `--data TASK=FILE`
    /// per task (caption, vqa, retrieval, grounding, and on clips videoqa, videoretrieval).
    /// Writes a multi-task model folder.
    Multitask(MultitaskFinetune),
}

/// The grounding vocabulary of a run, when the model's vocabulary is not BERT's.
#[derive(Debug, clap::Args)]
pub struct GroundingTokenArgs {
    /// The decoder's start token for boxes; the `--bins + 1` coordinate tokens are the ones
    /// right after it (default: the checkpoint's, else the reference's `[unused339]`).
    #[arg(long, requires = "bins")]
    pub prefix_token: Option<String>,
    /// Coordinate bins (with --prefix-token).
    #[arg(long, requires = "prefix_token")]
    pub bins: Option<u32>,
    /// How the file writes boxes: xywh (RefCOCO) or xyxy.
    #[arg(long, default_value = "xywh")]
    pub box_format: String,
}

/// `mplug finetune multitask`.
#[derive(Debug, clap::Args)]
pub struct MultitaskFinetune {
    #[command(flatten)]
    pub common: CommonFinetune,
    #[command(flatten)]
    pub grounding: GroundingTokenArgs,
    /// Frames sampled per clip for videoqa / videoretrieval data (8, the world's clips' length;
    /// evaluation samples the reference's 16 and 12, see `mplug eval --help`).
    #[arg(long, default_value_t = mplug::tasks::video::CAPTION_FRAMES)]
    pub frames: usize,
    /// Multiplies one task's loss (e.g. `grounding=4`), repeatable; tasks not named weigh 1.
    /// The per-task losses logged stay unweighted.
    #[arg(long = "task-weight", value_name = "TASK=W")]
    pub task_weights: Vec<String>,
}

/// Model and training options of a fine-tuning run.
#[derive(Debug, clap::Args)]
pub struct CommonFinetune {
    /// The model to start from: a model folder or a checkpoint file (default: the embedded
    /// default model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub train: TrainOpts,
}

/// `mplug finetune caption`.
#[derive(Debug, clap::Args)]
pub struct CaptionFinetune {
    #[command(flatten)]
    pub common: CommonFinetune,
    /// Text put before every caption (the reference's `prompt`).
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Read Karpathy's dataset_coco.json and keep this split (e.g. train).
    #[arg(long)]
    pub split: Option<String>,
}

/// `mplug finetune vqa`.
#[derive(Debug, clap::Args)]
pub struct VqaFinetune {
    #[command(flatten)]
    pub common: CommonFinetune,
    /// Momentum distillation as the paper describes it: a momentum copy of the model (EMA
    /// 0.995) gives soft answer targets. The released code's distillation adds nothing to its
    /// loss (its weight never reaches the decoder), so leaving this off is the released
    /// training exactly.
    #[arg(long)]
    pub distill: bool,
    /// Distillation weight with --distill, ramped from 0 over the first epoch.
    #[arg(long, default_value_t = 0.4, requires = "distill")]
    pub alpha: f64,
}

/// `mplug finetune retrieval`.
#[derive(Debug, clap::Args)]
pub struct RetrievalFinetune {
    #[command(flatten)]
    pub common: CommonFinetune,
    /// ITC feature queue length (0: no momentum encoders, queues or distillation).
    #[arg(long, default_value_t = 65536)]
    pub queue_size: usize,
    /// Distillation weight, ramped from 0 over the first epoch.
    #[arg(long, default_value_t = 0.4)]
    pub alpha: f64,
}

/// `mplug finetune grounding`.
#[derive(Debug, clap::Args)]
pub struct GroundingFinetune {
    #[command(flatten)]
    pub common: CommonFinetune,
    #[command(flatten)]
    pub grounding: GroundingTokenArgs,
}

/// Runs `mplug pretrain`.
pub fn pretrain(a: &PretrainArgs) -> Result<()> {
    let mut cfg = a
        .config
        .explicit()?
        .context("pretrain needs --config or --preset")?;
    if let Some(stride) = a.stride_layer {
        cfg.bert.stride_layer = stride;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("--stride-layer {stride}: {e}"))?;
    }
    let device = Device::Cpu;
    let t = &a.train;
    check_out(t)?;
    let trainable = match &a.init {
        Some(path) => {
            let ckpt = Checkpoint::load(path)?;
            Trainable::from_checkpoint(&cfg, &ckpt, Task::Pretrain, &device)?
        }
        None => {
            let fresh = Trainable::new_seeded(&cfg, Task::Pretrain, &device, t.seed)?;
            initialize_from(&fresh, &cfg, a.init_bert.as_deref(), a.init_clip.as_deref())?;
            if a.sincos_positions {
                fresh.init_sincos_positions(&cfg)?;
            }
            fresh
        }
    };
    let vocab = match &a.vocab {
        Some(p) => std::fs::read_to_string(p).with_context(|| p.display().to_string())?,
        None => default_vocab(&cfg),
    };
    let tokenizer = Tokenizer::from_vocab_bytes(vocab.as_bytes(), Path::new("<vocab>"))?
        .with_max_positions(cfg.bert.max_position_embeddings);
    if tokenizer.vocab_size() > cfg.bert.vocab_size {
        bail!(
            "the vocabulary has {} tokens but the model's has {}",
            tokenizer.vocab_size(),
            cfg.bert.vocab_size
        );
    }
    let dataset = Dataset::pretrain(one_data(t)?)?;
    let loader = make_loader(
        dataset,
        t,
        &cfg,
        tokenizer.clone(),
        AugmentConfig::pretrain(),
        "",
    )?;
    let weights = LossWeights {
        itc: a.itc,
        itm: a.itm,
        mlm: a.mlm,
        prefix_lm: a.prefix_lm,
    };
    contrastive_run(
        &trainable,
        &loader,
        t,
        weights,
        a.queue_size,
        a.alpha,
        MaskTokens::of(&tokenizer),
        true,
    )?;
    finish(&trainable, &cfg, &[Task::Pretrain], vocab, None, None, t)
}

/// Runs `mplug pretrain-tower`: the visual tower (with a label head on its class token) learns
/// the images' labels (see [`mplug::train::tower`]); writes OUT/tower.safetensors (the tower as
/// `visual_encoder.visual.*` and the head as `label_head.*`, ready for `mplug pretrain
/// --init-clip`) and OUT/labels.json (the head's labels, in the order of its outputs).
pub fn pretrain_tower(a: &PretrainTowerArgs) -> Result<()> {
    use mplug::train::tower::{label_loss, LabelHead, LabelScores, LABEL_HEAD};
    let cfg = a
        .config
        .explicit()?
        .context("pretrain-tower needs --config or --preset")?;
    let device = Device::Cpu;
    let t = &a.train;
    check_out(t)?;
    let dataset = Dataset::labels(one_data(t)?)?;
    let labels = dataset.label_names();
    if labels.is_empty() {
        bail!(
            "{}: no image has a label; the head needs at least one",
            dataset.source.display()
        );
    }
    let trainable = Trainable::new_seeded(&cfg, Task::Pretrain, &device, t.seed)?;
    initialize_from(&trainable, &cfg, None, a.init_clip.as_deref())?;
    if a.sincos_positions {
        trainable.init_sincos_positions(&cfg)?;
    }
    let vb = candle_nn::VarBuilder::from_varmap(&trainable.varmap, DType::F32, &device);
    let head = LabelHead::new(cfg.vision_width, labels, vb)?;
    let head_vars: Vec<_> = trainable
        .named_vars()
        .into_iter()
        .filter(|(n, _)| n.starts_with(LABEL_HEAD))
        .collect();
    mplug::train::draw_seeded(&head_vars, derive_seed(t.seed, HEAD_STREAM, 0))?;
    let vocab = default_vocab(&cfg);
    let tokenizer = Tokenizer::from_vocab_bytes(vocab.as_bytes(), Path::new("<vocab>"))?;
    let loader = make_loader(dataset, t, &cfg, tokenizer, AugmentConfig::pretrain(), "")?;
    run(&trainable, t, None, 1, |model, i| {
        let b = loader.batch(i)?;
        let logits = head.logits(model, &b.images)?;
        let targets = head.targets(loader.dataset(), &b.samples, &device)?;
        label_loss(&logits, &targets)
    })?;

    let tensors: HashMap<String, Tensor> = trainable
        .named_vars()
        .into_iter()
        .filter(|(n, _)| n.starts_with("visual_encoder.visual.") || n.starts_with(LABEL_HEAD))
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let file = t.out.join("tower.safetensors");
    candle_core::safetensors::save(&tensors, &file).with_context(|| file.display().to_string())?;
    let names = t.out.join("labels.json");
    std::fs::write(&names, serde_json::to_string_pretty(head.labels())? + "\n")
        .with_context(|| names.display().to_string())?;
    println!("{}", file.display());

    if let Some(path) = &a.eval {
        let data = Dataset::labels(path)?;
        let pre = ImagePreprocessor::new(ImageConfig::new(cfg.image_res as u32))?;
        let (mut logits, mut targets) = (Vec::new(), Vec::new());
        let all: Vec<usize> = (0..data.len()).collect();
        for chunk in all.chunks(64) {
            let paths: Vec<PathBuf> = chunk
                .iter()
                .map(|&i| t.image_root.join(&data.samples[i].image))
                .collect();
            let images = pre.preprocess_paths(&paths, &device)?;
            logits.push(head.logits(&trainable.model, &images)?);
            targets.push(head.targets(&data, chunk, &device)?);
        }
        let scores = LabelScores::of(&Tensor::cat(&logits, 0)?, &Tensor::cat(&targets, 0)?)?;
        let text = serde_json::to_string(&scores)?;
        println!("{}: {text}", path.display());
        let out = t.out.join("scores.json");
        std::fs::write(&out, text + "\n").with_context(|| out.display().to_string())?;
    }
    Ok(())
}

/// Random stream of the label head's fresh weights (see [`derive_seed`]).
const HEAD_STREAM: u64 = 0x68656164; // "head"

/// Runs `mplug finetune <task>`.
pub fn finetune(a: &FinetuneArgs) -> Result<()> {
    let (common, task) = match &a.task {
        FinetuneTask::Caption(c) => (&c.common, Task::Caption),
        FinetuneTask::Vqa(c) => (&c.common, Task::Vqa),
        FinetuneTask::Retrieval(c) => (&c.common, Task::Retrieval),
        FinetuneTask::Grounding(c) => (&c.common, Task::Grounding),
        // A multi-task run trains every part, as pre-training does.
        FinetuneTask::Multitask(c) => (&c.common, Task::Pretrain),
    };
    let t = &common.train;
    check_out(t)?;
    let device = Device::Cpu;
    let model = crate::default_model::or_default(common.model.as_deref(), Some(task))?;
    let source = locate(&model, &common.config, Some(task))?;
    let cfg = source.config.clone();
    let ckpt = Checkpoint::load(&source.checkpoint)?;
    // Retrieval fine-tuning runs the ITC and ITM objectives of pre-training on the retrieval
    // model's own parts (projections, ITM head, temperature).
    let trainable = if matches!(a.task, FinetuneTask::Multitask(_)) && !ckpt.has_prefix(MLM_HEAD) {
        // A multi-task model folder keeps only what its tasks read; the MLM head that the
        // pre-training model carries is built but never trained here.
        let (trainable, fresh) =
            Trainable::from_checkpoint_with_fresh(&cfg, &ckpt, task, &device, &[MLM_HEAD], t.seed)?;
        eprintln!(
            "{}: no MLM head; its {} tensors start fresh (multi-task fine-tuning does not train it)",
            source.checkpoint.display(),
            fresh.len()
        );
        trainable
    } else {
        Trainable::from_checkpoint(&cfg, &ckpt, task, &device)?
    };
    let tokenizer = source
        .tokenizer()?
        .with_max_positions(cfg.bert.max_position_embeddings);
    let vocab = match &source.vocab {
        Some(p) => std::fs::read_to_string(p).with_context(|| p.display().to_string())?,
        None => default_vocab(&cfg),
    };
    // The reference's fine-tuning transforms; grounding samples get its grounding transform.
    let aug = AugmentConfig::grounding();
    let mut tokens = None;
    match &a.task {
        FinetuneTask::Caption(c) => {
            let data = Dataset::caption(one_data(t)?, c.split.as_deref())?;
            let loader = make_loader(data, t, &cfg, tokenizer.clone(), aug, &c.prompt)?;
            let losses = TaskLoss::new(&tokenizer, GroundingTokens::default(), t.seed);
            run(&trainable, t, None, 1, |model, i| {
                losses.loss(model, Task::Caption, &loader.batch(i)?)
            })?;
        }
        FinetuneTask::Vqa(v) => {
            let data = Dataset::vqa(one_data(t)?)?;
            let loader = make_loader(data, t, &cfg, tokenizer.clone(), aug, "")?;
            if v.distill {
                distilled_vqa_run(&trainable, &loader, t, v.alpha)?;
            } else {
                let losses = TaskLoss::new(&tokenizer, GroundingTokens::default(), t.seed);
                run(&trainable, t, None, 1, |model, i| {
                    losses.loss(model, Task::Vqa, &loader.batch(i)?)
                })?;
            }
        }
        FinetuneTask::Retrieval(c) => {
            let data = Dataset::retrieval(one_data(t)?)?;
            let loader = make_loader(data, t, &cfg, tokenizer.clone(), aug, "")?;
            contrastive_run(
                &trainable,
                &loader,
                t,
                RETRIEVAL_WEIGHTS,
                c.queue_size,
                c.alpha,
                MaskTokens::of(&tokenizer),
                false,
            )?;
        }
        FinetuneTask::Grounding(g) => {
            let found = grounding_tokens(&g.grounding, &ckpt, &tokenizer)?;
            tokens = Some(found);
            let data = Dataset::grounding(one_data(t)?, box_format(&g.grounding)?)?;
            let loader = make_loader(data, t, &cfg, tokenizer.clone(), aug, "")?;
            let losses = TaskLoss::new(&tokenizer, found, t.seed);
            run(&trainable, t, None, 1, |model, i| {
                losses.loss(model, Task::Grounding, &loader.batch(i)?)
            })?;
        }
        FinetuneTask::Multitask(m) => {
            let found = grounding_tokens(&m.grounding, &ckpt, &tokenizer)?;
            let mut loaders = Vec::new();
            let mut names = Vec::new();
            for spec in &t.data {
                let (name, file) = task_data(spec)?;
                let benchmark = EvalTask::parse(&name).with_context(|| {
                    format!(
                        "--data {}: unknown task `{name}` (expected caption, vqa, retrieval, \
                         grounding, videoqa or videoretrieval)",
                        spec.display()
                    )
                })?;
                let data = match benchmark {
                    EvalTask::Caption => Dataset::caption(&file, None)?,
                    EvalTask::Vqa => Dataset::vqa(&file)?,
                    EvalTask::Retrieval => Dataset::retrieval(&file)?,
                    EvalTask::Grounding => {
                        tokens = Some(found);
                        Dataset::grounding(&file, box_format(&m.grounding)?)?
                    }
                    EvalTask::VideoQa => Dataset::videoqa(&file, m.frames)?,
                    EvalTask::VideoRetrieval => Dataset::video_retrieval(&file, m.frames)?,
                };
                let task = benchmark.model_task();
                if names.contains(&name) {
                    bail!("--data names {name} twice");
                }
                eprintln!("{name}: {} samples from {}", data.len(), file.display());
                names.push(name);
                let loader = make_loader(data, t, &cfg, tokenizer.clone(), aug.clone(), "")?;
                loaders.push((task, loader));
            }
            if tokens.is_some() && cfg.bert.stride_layer < cfg.bert.text_encoder_layers {
                // The grounding model keeps only the first `stride_layer` text layers; joint
                // training with the full text encoder would not match it.
                bail!(
                    "multi-task grounding needs stride_layer ({}) >= text_encoder_layers ({})",
                    cfg.bert.stride_layer,
                    cfg.bert.text_encoder_layers
                );
            }
            let weights = task_weights(&m.task_weights, &names)?;
            let losses = TaskLoss::new(&tokenizer, found, t.seed);
            multitask_run(&trainable, &loaders, &weights, t, &losses)?;
            let mut tasks: Vec<Task> = Vec::new();
            for (task, _) in &loaders {
                if !tasks.contains(task) {
                    tasks.push(*task);
                }
            }
            return finish(&trainable, &cfg, &tasks, vocab, Some(&ckpt), tokens, t);
        }
    }
    finish(&trainable, &cfg, &[task], vocab, Some(&ckpt), tokens, t)
}

/// Key prefix of the pre-training MLM head.
const MLM_HEAD: &str = "fusion_encoder.cls.";

/// Parses `--task-weight TASK=W` for the tasks `names` (in `--data` order): one weight per task.
fn task_weights(specs: &[String], names: &[String]) -> Result<Vec<f64>> {
    let mut weights = vec![1.0; names.len()];
    for spec in specs {
        let (name, value) = spec
            .split_once('=')
            .with_context(|| format!("--task-weight {spec}: expected TASK=W (e.g. grounding=4)"))?;
        let k = names.iter().position(|n| n == name).with_context(|| {
            format!(
                "--task-weight {spec}: no --data for task `{name}` (tasks: {})",
                names.join(", ")
            )
        })?;
        let w: f64 = value
            .parse()
            .ok()
            .filter(|w: &f64| w.is_finite() && *w >= 0.0)
            .with_context(|| {
                format!("--task-weight {spec}: the weight must be a finite number >= 0")
            })?;
        weights[k] = w;
    }
    Ok(weights)
}

/// Parses `--data TASK=FILE`.
fn task_data(spec: &Path) -> Result<(String, PathBuf)> {
    let text = spec.to_string_lossy();
    let (name, file) = text
        .split_once('=')
        .with_context(|| format!("--data {text}: expected TASK=FILE (e.g. vqa=vqa_train.json)"))?;
    Ok((name.to_string(), PathBuf::from(file)))
}

/// A multi-task run: micro-batch `i` is batch `i / n` of task `i % n`, and an update
/// accumulates `--accumulate` micro-batches of every task, each task's loss multiplied by its
/// weight in `weights`. Each task's unweighted loss is logged by its name.
fn multitask_run(
    trainable: &Trainable,
    loaders: &[(Task, Loader)],
    weights: &[f64],
    t: &TrainOpts,
    losses: &TaskLoss,
) -> Result<()> {
    let n = loaders.len() as u64;
    run(trainable, t, None, n, |model, i| {
        let k = (i % n) as usize;
        let (task, loader) = &loaders[k];
        let loss = losses.loss(model, *task, &loader.batch(i / n)?)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let total = if weights[k] == 1.0 {
            loss
        } else {
            (loss * weights[k])?
        };
        Ok(Loss {
            total,
            parts: vec![(task.name().to_string(), value)],
        })
    })
}

/// Refuses to mix runs: an output folder with a checkpoint needs `--resume`, and `--resume`
/// needs one.
fn check_out(t: &TrainOpts) -> Result<()> {
    let has_run = t.out.join("latest").is_file();
    if has_run && !t.resume {
        bail!(
            "{} already holds a training run; pass --resume to continue it or choose another --output",
            t.out.display()
        );
    }
    if t.resume && !has_run {
        bail!(
            "--resume: {} holds no checkpoint (no `latest` file)",
            t.out.display()
        );
    }
    if t.steps == 0 {
        bail!("--steps must be at least 1");
    }
    Ok(())
}

/// The one annotation file of a single-task run.
fn one_data(t: &TrainOpts) -> Result<&Path> {
    match t.data.as_slice() {
        [one] => Ok(one),
        _ => bail!("give one --data file (only `finetune multitask` takes several)"),
    }
}

/// The grounding vocabulary: `--prefix-token` and `--bins`, else the checkpoint's.
fn grounding_tokens(
    a: &GroundingTokenArgs,
    ckpt: &Checkpoint,
    tokenizer: &Tokenizer,
) -> Result<GroundingTokens> {
    let (Some(prefix), Some(bins)) = (&a.prefix_token, a.bins) else {
        return Ok(GroundingTokens::from_checkpoint(ckpt)?);
    };
    let id = tokenizer
        .token_to_id(prefix)
        .with_context(|| format!("--prefix-token {prefix:?} is not in the vocabulary"))?;
    let last = id as usize + 1 + bins as usize;
    if bins == 0 || last >= tokenizer.vocab_size() {
        bail!(
            "--prefix-token {prefix:?} (id {id}) with --bins {bins} needs tokens up to id {last}, \
             past the vocabulary's {}",
            tokenizer.vocab_size()
        );
    }
    Ok(GroundingTokens {
        prefix: id,
        first_coordinate: id + 1,
        bins,
    })
}

fn box_format(a: &GroundingTokenArgs) -> Result<BoxFormat> {
    BoxFormat::parse(&a.box_format)
        .with_context(|| format!("--box-format {:?}: expected xywh or xyxy", a.box_format))
}

fn make_loader(
    data: Dataset,
    t: &TrainOpts,
    cfg: &MplugConfig,
    tokenizer: Tokenizer,
    augment: AugmentConfig,
    prompt: &str,
) -> Result<Loader> {
    let config = LoaderConfig {
        batch_size: t.batch_size,
        seed: t.seed,
        resolution: cfg.image_res as u32,
        max_text_len: t.max_len.min(cfg.bert.max_position_embeddings),
        augment: (!t.no_augment).then_some(augment),
        workers: t.workers.max(1),
        prompt: prompt.to_string(),
    };
    Ok(Loader::new(
        data,
        &t.image_root,
        tokenizer,
        config,
        &Device::Cpu,
    )?)
}

fn train_config(t: &TrainOpts, cfg: &MplugConfig) -> TrainConfig {
    TrainConfig {
        steps: t.steps,
        accumulate: t.accumulate.max(1),
        clip_norm: t.clip,
        schedule: Some(CosineSchedule {
            warmup_steps: t.warmup,
            warmup_start: if t.warmup > 0 { 0.0 } else { 1.0 },
            total_steps: t.steps,
            min_scale: t.min_lr_scale,
        }),
        save_every: t.save_every.max(1),
        out_dir: Some(t.out.clone()),
        batch_size: t.batch_size,
        dropout: (!t.no_dropout).then(|| cfg.dropout()),
        seed: t.seed,
        parallel: t.data_parallel as usize,
    }
}

/// Refuses a `--data-parallel` that the run cannot use: more concurrent micro-batches than an
/// update has, or state carried from one micro-batch to the next (momentum encoders).
fn check_parallel(config: &TrainConfig, stateful: bool) -> Result<()> {
    let n = config.parallel;
    if n > 1 && (n as u64) > config.accumulate {
        bail!(
            "--data-parallel {n}: an update here has {} micro-batch(es); raise --accumulate to {n} \
             or more",
            config.accumulate
        );
    }
    if n > 1 && stateful {
        bail!(
            "--data-parallel {n}: this run updates momentum encoders before every micro-batch, \
             in order; run it with --data-parallel 1 (or --queue-size 0 without --distill)"
        );
    }
    Ok(())
}

fn optimizer(trainable: &Trainable, t: &TrainOpts) -> Result<MplugAdamW> {
    Ok(MplugAdamW::new(
        &trainable.named_vars(),
        OptimizerConfig {
            lr1: t.lr1,
            lr2: t.lr2,
            weight_decay: t.weight_decay,
            ..Default::default()
        },
    )?)
}

fn progress(t: &TrainOpts) -> ProgressBar {
    let bar = ProgressBar::new(t.steps);
    bar.set_style(
        ProgressStyle::with_template("train [{bar:30}] {pos}/{len} {msg} ({eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// The value behind a lock shared by the loss closures of concurrent micro-batches. A lock is
/// poisoned only by a panicking closure, which ends the run anyway; its data stays usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn step_message(log: &StepLog) -> String {
    let mut msg = format!(
        "loss {:.4} lr {:.2e} {:.1} samples/s",
        log.loss, log.lr1, log.samples_per_s
    );
    for (name, value) in &log.parts {
        msg.push_str(&format!(" {name} {value:.3}"));
    }
    msg
}

fn report(logs: &[StepLog], t: &TrainOpts) {
    match logs.last() {
        Some(last) => eprintln!(
            "trained to update {} of {}: {}",
            last.step,
            t.steps,
            step_message(last)
        ),
        None => eprintln!(
            "nothing to train: the run in {} is complete",
            t.out.display()
        ),
    }
}

/// The one training driver: `loss_of(model, i)` gives the loss of global micro-batch `i`;
/// `tasks` micro-batches (one per task of a multi-task run) make one of `--accumulate`'s. The
/// trainer logs each update, the loss's named parts included, to `OUT/train_log.jsonl`; the
/// progress bar shows the same figures. `extra` is state saved with every checkpoint
/// (momentum encoders), which also rules out computing micro-batches in parallel.
fn run<L: Into<Loss>>(
    trainable: &Trainable,
    t: &TrainOpts,
    extra: Option<&dyn mplug::train::trainer::ExtraState>,
    tasks: u64,
    loss_of: impl Fn(&Mplug, u64) -> mplug::Result<L> + Sync,
) -> Result<()> {
    let mut config = train_config(t, &trainable.model.config);
    config.accumulate *= tasks.max(1);
    check_parallel(&config, extra.is_some())?;
    let mut opt = optimizer(trainable, t)?;
    let bar = progress(t);
    let logs = train_with_state(trainable, &mut opt, &config, extra, loss_of, |log| {
        bar.set_position(log.step);
        bar.set_message(step_message(log));
    })?;
    bar.finish_and_clear();
    report(&logs, t);
    Ok(())
}

/// VQA fine-tuning with momentum distillation: before each micro-batch the momentum copy
/// moves towards the trained weights (EMA), then gives the answers' soft targets; the
/// distillation weight ramps from 0 to `alpha` over the first epoch. The momentum weights are
/// saved into every checkpoint and restored on resume.
fn distilled_vqa_run(
    trainable: &Trainable,
    loader: &Loader,
    t: &TrainOpts,
    alpha: f64,
) -> Result<()> {
    if !(0.0..=1.0).contains(&alpha) {
        bail!("--alpha {alpha}: expected a weight in [0, 1]");
    }
    let vars = trainable.named_vars();
    let momentum = Mutex::new(Momentum::new(&trainable.model, &vars, 0, t.seed)?);
    let epoch_batches = loader.batches_per_epoch().max(1) as f64;
    run(trainable, t, Some(&momentum), 1, |model, i| {
        let b = &loader.batch(i)?;
        let missing = || mplug::Error::invalid("a VQA batch without answers");
        let answer_ids = b.answer_ids.as_ref().ok_or_else(missing)?;
        let answer_mask = b.answer_mask.as_ref().ok_or_else(missing)?;
        let weights = b.answer_weights.as_ref().ok_or_else(missing)?;
        let mut m = lock(&momentum);
        m.update(&vars)?;
        let teacher = {
            let embeds = m.model.encode_image(&b.images)?;
            let q = vqa::encode_question(&m.model, &embeds, &b.ids, &b.mask)?;
            vqa::answer_logits(
                &m.model,
                &q,
                answer_ids,
                answer_mask,
                &b.answer_counts,
                weights,
            )?
            .detach()
        };
        let embeds = model.encode_image(&b.images)?;
        let q = vqa::encode_question(model, &embeds, &b.ids, &b.mask)?;
        // `b.index` is the global micro-batch index.
        let a = alpha * (b.index as f64 / epoch_batches).min(1.0);
        vqa::distillation_loss(
            model,
            &q,
            answer_ids,
            answer_mask,
            &b.answer_counts,
            weights,
            &teacher,
            a,
        )
    })
}

/// A run of the pre-training objectives (pre-training, or retrieval fine-tuning with image
/// ids); each objective's value is logged by its name (`itc`, `itm`, `mlm`, `prefix_lm`).
#[allow(clippy::too_many_arguments)]
fn contrastive_run(
    trainable: &Trainable,
    loader: &Loader,
    t: &TrainOpts,
    weights: LossWeights,
    queue_size: usize,
    alpha: f64,
    tokens: MaskTokens,
    pretraining: bool,
) -> Result<()> {
    if t.batch_size < 2 {
        bail!("--batch-size must be at least 2 for the contrastive and matching losses");
    }
    let vars = trainable.named_vars();
    // Momentum encoders and queues are saved into every checkpoint and restored on resume.
    let momentum = if queue_size > 0 && weights.itc > 0.0 {
        Some(Mutex::new(Momentum::new(
            &trainable.model,
            &vars,
            queue_size,
            t.seed,
        )?))
    } else {
        None
    };
    let epoch_batches = loader.batches_per_epoch().max(1) as f64;
    let extra = momentum
        .as_ref()
        .map(|m| m as &dyn mplug::train::trainer::ExtraState);
    run(trainable, t, extra, 1, |model, i| {
        let b = loader.batch(i)?;
        let mut guard = momentum.as_ref().map(lock);
        if let Some(m) = guard.as_mut() {
            m.update(&vars)?;
        }
        let a = alpha * (i as f64 / epoch_batches).min(1.0);
        let batch = PretrainBatch {
            images: b.images,
            ids: b.ids,
            mask: b.mask,
            image_ids: (!pretraining).then_some(b.image_ids),
        };
        let l = pretrain::losses(
            model,
            guard.as_deref_mut(),
            &batch,
            &weights,
            a,
            &tokens,
            derive_seed(t.seed, OBJECTIVES_STREAM, i),
        )?;
        Ok(Loss {
            parts: l.parts(),
            total: l.total,
        })
    })
}

/// Writes the trained weights as a model folder `OUT/model` (config.json with the task,
/// model.safetensors, vocab.txt, README.md), with the source checkpoint's buffers.
fn finish(
    trainable: &Trainable,
    cfg: &MplugConfig,
    tasks: &[Task],
    vocab: String,
    source: Option<&Checkpoint>,
    grounding: Option<GroundingTokens>,
    t: &TrainOpts,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = trainable
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    if let Some(ckpt) = source {
        for key in ckpt.keys() {
            if is_buffer(key) && !tensors.contains_key(key) {
                if let Some(v) = ckpt.get(key)? {
                    tensors.insert(key.to_string(), v);
                }
            }
        }
    }
    if let Some(g) = grounding {
        // The grounding vocabulary travels with the weights, as in the reference's checkpoints.
        tensors.extend(g.buffers()?);
    }
    let dir = t.out.join("model");
    let (card, what) = match tasks {
        [one] => (
            ModelCard {
                config: cfg.clone(),
                task: Some(*one),
                tasks: vec![],
            },
            if *one == Task::Pretrain {
                "pretrain".to_string()
            } else {
                format!("finetune {one}")
            },
        ),
        many => (
            ModelCard {
                config: cfg.clone(),
                task: None,
                tasks: many.to_vec(),
            },
            "finetune multitask".to_string(),
        ),
    };
    let names: Vec<&str> = tasks.iter().map(|t| t.name()).collect();
    let data: Vec<String> = t.data.iter().map(|d| d.display().to_string()).collect();
    let readme = format!(
        "# mPLUG {} model\n\nTrained by `mplug {what}` for {} updates on {}.\n",
        names.join(" + "),
        t.steps,
        data.join(", ")
    );
    write_folder(&dir, &card, &tensors, &vocab, &readme)?;
    println!("{}", dir.display());
    Ok(())
}

/// Loads `--init-bert` and `--init-clip` into a fresh model and says how much they covered.
fn initialize_from(
    trainable: &Trainable,
    cfg: &MplugConfig,
    bert: Option<&std::path::Path>,
    clip: Option<&std::path::Path>,
) -> Result<()> {
    use mplug::train::init::{bert_tensors, clip_tensors, fit_positional_embedding};
    let open = |p: &std::path::Path| -> Result<Checkpoint> {
        let file = if p.is_dir() {
            p.join("model.safetensors")
        } else {
            p.to_path_buf()
        };
        Ok(Checkpoint::load(&file)?)
    };
    let mut tensors = std::collections::HashMap::new();
    if let Some(p) = bert {
        tensors.extend(bert_tensors(&open(p)?, cfg)?);
    }
    if let Some(p) = clip {
        tensors.extend(clip_tensors(&open(p)?)?);
    }
    if tensors.is_empty() {
        return Ok(());
    }
    fit_positional_embedding(&mut tensors, cfg)?;
    let report = trainable.load_partial(&tensors)?;
    eprintln!(
        "initialized {} tensors from BERT/CLIP; {} keep their fresh initialization",
        report.loaded.len(),
        report.missing.len()
    );
    Ok(())
}
