//! `mplug convert`: a released checkpoint (or a ModelScope folder) into a model folder.
//!
//! The folder keeps only the tensors the task's model reads (plus the buffers inference uses):
//! the model is built from the checkpoint first, which checks every tensor's presence and
//! shape, and the checkpoint records what was read. Momentum copies, retrieval queues and the
//! parts another task would use (a caption model's text encoder, for instance) are left out;
//! `--all-tensors` keeps every normalized tensor instead.

use crate::model_args::{locate, ConfigArgs};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use mplug::checkpoint::Checkpoint;
use mplug::model_dir::{
    self, default_vocab, select_tensors, task_fits, tensors_for_folder, ModelCard, ModelSource,
    ParameterCounts,
};
use mplug::tasks::grounding::GroundingTokens;
use mplug::{Mplug, MplugConfig, Task};
use std::path::{Path, PathBuf};

/// `mplug convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The checkpoint: a .pth or .safetensors file, or a folder holding one (model.pth,
    /// pytorch_model.bin, ...; a vocab.txt there is kept).
    pub checkpoint: PathBuf,
    /// The model folder to write.
    pub out: PathBuf,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The task of the weights (default: the checkpoint's keys tell; caption and VQA
    /// checkpoints share a layout, so name `caption` for a captioning model).
    #[arg(long, value_parser = crate::model_args::task_parser())]
    pub task: Option<Task>,
    /// Floating-point type of the written weights.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
    /// The vocabulary to ship (default: vocab.txt beside the checkpoint, else the embedded
    /// BERT uncased vocabulary).
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    /// Keep every normalized tensor, not only those the task's model reads.
    #[arg(long)]
    pub all_tensors: bool,
    /// Replace the files of an existing model folder.
    #[arg(long)]
    pub force: bool,
}

/// A dtype by name: `f32`, `f16` or `bf16` (`convert --dtype`, `bench --dtype`).
pub fn dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => bail!("unknown dtype `{other}` (expected f32, f16 or bf16)"),
    })
}

/// Parameters in millions (or thousands for tiny models), for people.
pub fn human_count(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.1} M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1} k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

/// The README card of a converted folder.
fn card_text(
    out_name: &str,
    source: &Path,
    task: Task,
    cfg: &MplugConfig,
    dtype: &str,
    counts: &ParameterCounts,
    all_tensors: bool,
) -> String {
    let source_name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| source.display().to_string());
    let mut rows = String::new();
    for (part, n) in counts.rows() {
        if n > 0 {
            rows.push_str(&format!("| {part} | {n} |\n"));
        }
    }
    let usage = match task {
        Task::Caption => format!("mplug caption --model {out_name} photo.jpg"),
        Task::Vqa => format!("mplug vqa --model {out_name} photo.jpg \"what is on the table?\""),
        Task::Retrieval => {
            format!("mplug retrieve --model {out_name} --text \"a dog\" --text \"a cat\" photo.jpg")
        }
        Task::Grounding => {
            format!("mplug ground --model {out_name} photo.jpg \"the man on the left\"")
        }
        Task::Pretrain => format!("mplug info {out_name}"),
    };
    format!(
        "# mPLUG {task} model\n\n\
         An mPLUG model folder for [mplug-rs](https://github.com/mplug-rs/mplug-rs), converted \
         with `mplug convert` from `{source_name}`.\n\n\
         - task: **{task}**\n\
         - image: {res} x {res} px, ViT patch {patch}, width {vw}, {vl} layers\n\
         - text: hidden {h}, {tl} encoder layers, {fl} fusion layers (connected attention every \
         {stride}), {dl} decoder layers, vocabulary {vocab}\n\
         - weights: {dtype}, {total} parameters\n\n\
         | part | parameters |\n|---|---|\n{rows}\n\
         ## Files\n\n\
         - `config.json`: the model configuration with its `task`\n\
         - `model.safetensors`: {kept}, in the released checkpoints' (fine-tuned) key layout\n\
         - `vocab.txt`: the BERT uncased WordPiece vocabulary\n\n\
         ## Use\n\n\
         ```sh\n{usage}\nmplug serve {out_name} --addr 127.0.0.1:8080\n```\n\n\
         The weights keep the licence of the checkpoint they were converted from.\n",
        res = cfg.image_res,
        patch = cfg.vision.patch_size,
        vw = cfg.vision.width,
        vl = cfg.vision.layers,
        h = cfg.bert.hidden_size,
        tl = cfg.bert.text_encoder_layers,
        fl = cfg.bert.fusion_layers,
        stride = cfg.bert.stride_layer,
        dl = cfg.bert.text_decode_layers,
        vocab = cfg.bert.vocab_size,
        total = counts.total(),
        kept = if all_tensors {
            "every tensor of the checkpoint but momentum copies and training queues".to_string()
        } else {
            format!("the tensors the {task} model reads")
        },
    )
}

/// Groups keys by their first segment with counts: `text_encoder (12), fusion_encoder (3)`.
fn grouped(keys: &[String]) -> String {
    let mut groups: Vec<(&str, usize)> = Vec::new();
    for k in keys {
        let g = k.split('.').next().unwrap_or(k);
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, n)) => *n += 1,
            None => groups.push((g, 1)),
        }
    }
    groups
        .iter()
        .map(|(g, n)| format!("{g} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `mplug convert`.
pub fn run(a: &ConvertArgs) -> Result<()> {
    let dtype = dtype(&a.dtype)?;
    let wanted = a.task;
    let holds_model = [model_dir::CONFIG_FILE, model_dir::WEIGHTS_FILE]
        .iter()
        .any(|f| a.out.join(f).exists());
    if holds_model && !a.force {
        bail!(
            "{} already holds a model; pass --force to replace it",
            a.out.display()
        );
    }
    let source = locate(&a.checkpoint, &a.config, wanted)?;
    let ckpt = Checkpoint::load(&source.checkpoint)?;
    // A multi-task folder converts as a multi-task folder unless one task is asked for.
    let multi = if wanted.is_none() {
        source.tasks.clone()
    } else {
        vec![]
    };
    let detected = source
        .task
        .or_else(|| multi.first().copied())
        .or_else(|| Task::detect(&ckpt));
    let task = match (wanted, detected) {
        (Some(w), Some(d)) if !task_fits(d, w) => {
            bail!(
                "{} is a {d} checkpoint, not a {w} checkpoint",
                source.checkpoint.display()
            )
        }
        (Some(w), _) => w,
        (None, Some(d)) => {
            if d == Task::Vqa {
                eprintln!(
                    "note: caption and VQA checkpoints share a layout; converting as vqa \
                     (pass --task caption for a captioning model)"
                );
            }
            d
        }
        (None, None) => bail!(
            "the task of {} cannot be told from its keys; pass --task",
            source.checkpoint.display()
        ),
    };
    // Building the model checks every tensor it needs and records what it read.
    for t in multi.iter().chain(multi.is_empty().then_some(&task)) {
        Mplug::load(&source.config, &ckpt, *t, DType::F32, &Device::Cpu)?;
    }
    GroundingTokens::from_checkpoint(&ckpt)?;
    let selection = select_tensors(&ckpt);
    let keep = if a.all_tensors {
        let mut all = selection.keep.clone();
        all.extend(selection.unread.iter().cloned());
        all.sort();
        all
    } else {
        selection.keep.clone()
    };
    let tensors = tensors_for_folder(&ckpt, &keep, dtype)?;

    let vocab = match a.vocab.as_ref().or(source.vocab.as_ref()) {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read vocabulary {}", path.display()))?,
        None => default_vocab(&source.config),
    };
    let tokens = mplug::input::Tokenizer::from_vocab_bytes(vocab.as_bytes(), Path::new("vocab"))?
        .vocab_size();
    if tokens > source.config.bert.vocab_size {
        bail!(
            "the vocabulary has {tokens} tokens but the model's has {}",
            source.config.bert.vocab_size
        );
    }

    let counts = ParameterCounts::of(&Checkpoint::from_tensors(&a.out, tensors.clone()));
    let card = ModelCard {
        config: source.config.clone(),
        task: multi.is_empty().then_some(task),
        tasks: multi.clone(),
    };
    // The card names the folder as a user beside it would.
    let out_name = a
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| a.out.display().to_string());
    let readme = card_text(
        &out_name,
        &source.checkpoint,
        task,
        &source.config,
        &a.dtype,
        &counts,
        a.all_tensors,
    );
    model_dir::write_folder(&a.out, &card, &tensors, &vocab, &readme)?;

    // The folder must load as it will be used.
    for t in multi.iter().chain(multi.is_empty().then_some(&task)) {
        ModelSource::locate(&a.out, None, Some(*t))?
            .load(Some(*t), &Device::Cpu)
            .with_context(|| format!("the written folder {} does not load", a.out.display()))?;
    }

    let what = if multi.is_empty() {
        format!("{task} model")
    } else {
        let names: Vec<&str> = multi.iter().map(|t| t.name()).collect();
        format!("multi-task model ({})", names.join(", "))
    };
    eprintln!(
        "wrote {}: {what}, {} tensors, {} parameters, {}",
        a.out.display(),
        tensors.len(),
        human_count(counts.total()),
        a.dtype
    );
    if !a.all_tensors && !selection.unread.is_empty() {
        eprintln!(
            "left out {} tensors the {what} does not read: {}",
            selection.unread.len(),
            grouped(&selection.unread)
        );
    }
    if ckpt.skipped() > 0 {
        eprintln!("left out {} momentum copies", ckpt.skipped());
    }
    if !selection.training_state.is_empty() {
        eprintln!(
            "left out training state: {}",
            selection.training_state.join(", ")
        );
    }
    println!("{}", a.out.display());
    Ok(())
}
