//! Model folders: what `mplug convert` writes and every command and the server read.
//!
//! A model folder holds
//! - `config.json`: the [`MplugConfig`] JSON (the golden form) plus a `"task"` field naming the
//!   task the weights were fine-tuned for ([`ModelCard`]);
//! - `model.safetensors`: the tensors that task's model reads, keys normalized as
//!   [`Checkpoint`] normalizes them (no `module.` prefix, no momentum copies);
//! - `vocab.txt`: the BERT WordPiece vocabulary the model was trained with;
//! - `README.md`: a card for people (source, task, sizes, usage).
//!
//! [`ModelSource`] finds the configuration, checkpoint and vocabulary of a folder or of a bare
//! checkpoint file, and [`ModelSource::load`] builds a [`Pipeline`] from them, refusing a
//! checkpoint made for another task.

use crate::checkpoint::Checkpoint;
use crate::config::MplugConfig;
use crate::error::{Error, Result};
use crate::input::{Tokenizer, BERT_BASE_UNCASED_VOCAB};
use crate::model::{Mplug, Task};
use crate::pipeline::Pipeline;
use crate::tasks::grounding::GroundingTokens;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// File name of a folder's configuration.
pub const CONFIG_FILE: &str = "config.json";
/// File name of a folder's weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of a folder's vocabulary.
pub const VOCAB_FILE: &str = "vocab.txt";
/// File name of a folder's card.
pub const CARD_FILE: &str = "README.md";

/// Buffers and training state a checkpoint may hold besides parameters (the last segment of
/// their key). They are not counted as parameters.
const BUFFERS: &[&str] = crate::checkpoint::NON_PARAMETERS;

/// Training-only state that a model folder leaves out (retrieval's feature queues).
const TRAINING_STATE: &[&str] = &["image_queue", "text_queue", "idx_queue", "queue_ptr"];

fn last_segment(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// Whether a normalized key names a buffer or training state rather than a parameter.
pub fn is_buffer(key: &str) -> bool {
    BUFFERS.contains(&last_segment(key))
}

/// A folder's `config.json`: the model configuration and the task of its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    /// The model configuration.
    pub config: MplugConfig,
    /// The task the weights were fine-tuned for; `None` in configuration files that predate
    /// model folders (the golden `config.json`) and in multi-task folders.
    pub task: Option<Task>,
    /// The tasks a multi-task model was fine-tuned for jointly (one set of weights serving
    /// each); empty for a single-task model.
    pub tasks: Vec<Task>,
}

/// The JSON form: the configuration's fields with `task` (or `tasks`) beside them.
#[derive(Serialize, Deserialize)]
struct CardJson {
    #[serde(flatten)]
    config: MplugConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tasks: Vec<String>,
}

impl ModelCard {
    /// Parses the JSON text of a `config.json`; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &Path) -> Result<Self> {
        let bad = |e: String| Error::Config(format!("{}: {e}", origin.display()));
        let raw: CardJson = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        raw.config.validate().map_err(bad)?;
        let task = raw
            .task
            .as_deref()
            .map(Task::parse)
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        let tasks = raw
            .tasks
            .iter()
            .map(|t| Task::parse(t))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| bad(e.to_string()))?;
        if task.is_some() && !tasks.is_empty() {
            return Err(bad("give `task` or `tasks`, not both".into()));
        }
        Ok(ModelCard {
            config: raw.config,
            task,
            tasks,
        })
    }

    /// Reads a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// The `config.json` text (pretty-printed, newline-terminated).
    pub fn to_json(&self) -> String {
        let raw = CardJson {
            config: self.config.clone(),
            task: self.task.map(|t| t.name().to_string()),
            tasks: self.tasks.iter().map(|t| t.name().to_string()).collect(),
        };
        // Serializing plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(&raw).unwrap_or_default() + "\n"
    }
}

/// The BERT uncased vocabulary a model of `config` uses: the embedded one, or its first
/// `vocab_size` entries for a model with a smaller vocabulary (the tiny test models).
pub fn default_vocab(config: &MplugConfig) -> String {
    let mut out = String::new();
    for line in BERT_BASE_UNCASED_VOCAB.lines().take(config.bert.vocab_size) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Parameter counts of a checkpoint by model part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ParameterCounts {
    /// `visual_encoder.*`, `visn_fc.*`, `visn_layer_norm.*`.
    pub visual: usize,
    /// `text_encoder.*`.
    pub text_encoder: usize,
    /// `fusion_encoder.*`.
    pub fusion: usize,
    /// `text_decoder.*`.
    pub decoder: usize,
    /// `vision_proj`, `text_proj`, `itm_head`.
    pub heads: usize,
    /// Any other parameter.
    pub other: usize,
    /// Buffers and training state (`position_ids`, `prefix_ids`, queues, ...), not counted in
    /// [`ParameterCounts::total`].
    pub buffers: usize,
}

impl ParameterCounts {
    /// Counts the elements of every tensor of a checkpoint by part.
    pub fn of(ckpt: &Checkpoint) -> Self {
        let mut c = ParameterCounts::default();
        for key in ckpt.keys() {
            let Some((shape, _)) = ckpt.shape_and_dtype(key) else {
                continue;
            };
            let n: usize = shape.iter().product();
            let slot = if is_buffer(key) {
                &mut c.buffers
            } else {
                match key.split('.').next().unwrap_or("") {
                    "visual_encoder" | "visn_fc" | "visn_layer_norm" => &mut c.visual,
                    "text_encoder" => &mut c.text_encoder,
                    "fusion_encoder" => &mut c.fusion,
                    "text_decoder" => &mut c.decoder,
                    "vision_proj" | "text_proj" | "itm_head" => &mut c.heads,
                    _ => &mut c.other,
                }
            };
            *slot += n;
        }
        c
    }

    /// All parameters (buffers excluded).
    pub fn total(&self) -> usize {
        self.visual + self.text_encoder + self.fusion + self.decoder + self.heads + self.other
    }

    /// `(part name, count)` for each part, buffers last.
    pub fn rows(&self) -> [(&'static str, usize); 7] {
        [
            ("visual", self.visual),
            ("text encoder", self.text_encoder),
            ("fusion", self.fusion),
            ("decoder", self.decoder),
            ("heads", self.heads),
            ("other", self.other),
            ("buffers", self.buffers),
        ]
    }
}

/// Which tensors of a checkpoint a model folder keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Keys the task's model reads, and the buffers inference uses (`prefix_ids`,
    /// `target_ids`, `bbox_prob_mask`, `position_ids`, `temp`), sorted.
    pub keep: Vec<String>,
    /// Parameter keys no part of the task's model reads, sorted.
    pub unread: Vec<String>,
    /// Training-only state left out (retrieval queues), sorted.
    pub training_state: Vec<String>,
}

/// Splits a checkpoint's keys into those a model folder keeps and those it leaves out.
/// Call it after building the task's model from `ckpt` ([`Mplug::load`]): the checkpoint
/// records which tensors were read.
pub fn select_tensors(ckpt: &Checkpoint) -> Selection {
    let unread = ckpt.unused_keys();
    let mut sel = Selection::default();
    for key in ckpt.keys() {
        if TRAINING_STATE.contains(&last_segment(key)) {
            sel.training_state.push(key.to_string());
        } else if unread.binary_search_by(|k| k.as_str().cmp(key)).is_err() {
            sel.keep.push(key.to_string());
        }
    }
    sel.unread = unread;
    sel
}

/// The tensors of `keys`, floating-point ones converted to `dtype`, contiguous, ready for
/// [`candle_core::safetensors::save`]. Integer buffers keep their type.
pub fn tensors_for_folder(
    ckpt: &Checkpoint,
    keys: &[String],
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::with_capacity(keys.len());
    for key in keys {
        let t = ckpt.tensor(key)?;
        let t = if t.dtype().is_float() {
            t.to_dtype(dtype)?
        } else {
            t.clone()
        };
        out.insert(key.clone(), t.contiguous()?);
    }
    Ok(out)
}

/// Writes a model folder: `config.json`, `model.safetensors`, `vocab.txt` and `README.md`.
/// The folder is created if needed; existing files of these names are replaced.
pub fn write_folder(
    dir: &Path,
    card: &ModelCard,
    tensors: &HashMap<String, Tensor>,
    vocab: &str,
    readme: &str,
) -> Result<()> {
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let weights = dir.join(WEIGHTS_FILE);
    candle_core::safetensors::save(tensors, &weights).map_err(|e| Error::Checkpoint {
        path: weights.clone(),
        msg: format!("cannot write: {e}"),
    })?;
    // The writer goes through a private temporary file; the folder is meant to be shared.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&weights, std::fs::Permissions::from_mode(0o644))
            .map_err(io(weights.clone()))?;
    }
    for (name, text) in [
        (CONFIG_FILE, card.to_json()),
        (VOCAB_FILE, vocab.to_string()),
        (CARD_FILE, readme.to_string()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(path.clone()))?;
    }
    Ok(())
}

/// Whether a checkpoint detected as `found` can serve `wanted`. Caption and VQA checkpoints
/// share one layout (detection answers VQA for both), so a VQA-looking checkpoint may caption;
/// and a pre-trained model may retrieve (see [`declared_task_fits`]).
pub fn task_fits(found: Task, wanted: Task) -> bool {
    declared_task_fits(found, wanted) || (found == Task::Vqa && wanted == Task::Caption)
}

/// Whether a model whose folder declares it `declared` can serve `wanted`: its own task, or
/// retrieval for a pre-trained model, whose ITC projections and ITM head are trained by
/// pre-training itself (zero-shot retrieval, as ALBEF and mPLUG evaluate pre-training).
pub fn declared_task_fits(declared: Task, wanted: Task) -> bool {
    declared == wanted || (declared == Task::Pretrain && wanted == Task::Retrieval)
}

/// Where a model's configuration, weights and vocabulary are.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSource {
    /// The model configuration.
    pub config: MplugConfig,
    /// The task a model folder's `config.json` names, if any.
    pub task: Option<Task>,
    /// The tasks of a multi-task folder (empty otherwise).
    pub tasks: Vec<Task>,
    /// The checkpoint (`.safetensors` or `.pth`).
    pub checkpoint: PathBuf,
    /// A `vocab.txt` beside the checkpoint, if any.
    pub vocab: Option<PathBuf>,
}

impl ModelSource {
    /// Finds the checkpoint of `model` (a folder or a checkpoint file) and its configuration:
    /// `config` when given, else the folder's (or the file's neighbouring) `config.json`.
    /// In a folder the checkpoint is `model.safetensors`, `model.pth`, `pytorch_model.bin`
    /// or, when `task` is given, `<task>.safetensors` / `<task>.pth`.
    pub fn locate(model: &Path, config: Option<MplugConfig>, task: Option<Task>) -> Result<Self> {
        let (dir, checkpoint) = if model.is_dir() {
            let mut names = vec![
                WEIGHTS_FILE.to_string(),
                "model.pth".to_string(),
                // A ModelScope download.
                "pytorch_model.bin".to_string(),
            ];
            if let Some(t) = task {
                names.push(format!("{}.safetensors", t.name()));
                names.push(format!("{}.pth", t.name()));
            }
            let found = names
                .iter()
                .map(|n| model.join(n))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{} holds no checkpoint (looked for {})",
                        model.display(),
                        names.join(", ")
                    ))
                })?;
            (model.to_path_buf(), found)
        } else if model.is_file() {
            let dir = model.parent().map(Path::to_path_buf).unwrap_or_default();
            (dir, model.to_path_buf())
        } else {
            return Err(Error::Io {
                path: model.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        };
        let path = dir.join(CONFIG_FILE);
        let (config, card_task, card_tasks) = match config {
            // An explicit configuration still learns the folder's task when it names one.
            Some(c) => {
                let card = path
                    .is_file()
                    .then(|| ModelCard::from_file(&path).ok())
                    .flatten();
                let task = card.as_ref().and_then(|card| card.task);
                let tasks = card.map(|card| card.tasks).unwrap_or_default();
                (c, task, tasks)
            }
            None => {
                if !path.is_file() {
                    return Err(Error::Config(format!(
                        "no {CONFIG_FILE} beside {}; pass --config FILE or --preset base|large",
                        checkpoint.display()
                    )));
                }
                let card = ModelCard::from_file(&path)?;
                (card.config, card.task, card.tasks)
            }
        };
        let vocab = Some(dir.join(VOCAB_FILE)).filter(|p| p.is_file());
        Ok(ModelSource {
            config,
            task: card_task,
            tasks: card_tasks,
            checkpoint,
            vocab,
        })
    }

    /// Takes what the folder of a configuration file read with [`ModelSource::locate`]'s
    /// explicit `config` holds and the source lacks: its `vocab.txt`, and the task or tasks
    /// its `config.json` names when that is a model folder's (a golden `config.json` names
    /// none, and a reference YAML is not one). A training run's `step-N/model.safetensors`
    /// read with `OUT/model/config.json` then loads as the finished folder.
    pub fn with_config_folder(mut self, config_file: &Path) -> Self {
        if self.vocab.is_none() {
            self.vocab = config_file
                .parent()
                .map(|dir| dir.join(VOCAB_FILE))
                .filter(|p| p.is_file());
        }
        if self.task.is_none() && self.tasks.is_empty() {
            if let Ok(card) = ModelCard::from_file(config_file) {
                self.task = card.task;
                self.tasks = card.tasks;
            }
        }
        self
    }

    /// The tokenizer: `vocab.txt` when the source has one, else the embedded BERT uncased
    /// vocabulary (its first entries for a model with a smaller vocabulary), as released
    /// checkpoints and bare configurations expect. A model folder (its `config.json` names a
    /// task) without its `vocab.txt` is an error: every folder mplug writes carries the
    /// vocabulary it was trained with, and BERT's would decode other words.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match &self.vocab {
            Some(path) => Ok(Tokenizer::from_vocab_file(path)?),
            None if self.task.is_some() || !self.tasks.is_empty() => Err(Error::Config(format!(
                "{}: no {VOCAB_FILE} beside it, though its {CONFIG_FILE} makes it a model folder, \
                 which carries the vocabulary it was trained with; copy the folder's {VOCAB_FILE} back",
                self.checkpoint.display()
            ))),
            None => {
                let vocab = default_vocab(&self.config);
                Ok(Tokenizer::from_vocab_bytes(
                    vocab.as_bytes(),
                    Path::new("<embedded>"),
                )?)
            }
        }
    }

    /// Loads the checkpoint and builds the model for `task` (or, when `None`, for the task
    /// the folder names or the checkpoint's keys show). A checkpoint made for another task is
    /// refused with a message naming both.
    pub fn load(&self, task: Option<Task>, device: &Device) -> Result<LoadedModel> {
        self.load_as(task, device, DType::F32)
    }

    /// [`Self::load`] with the weights in `dtype`: `BF16` on the CPU gives compact weights
    /// (linear layers' weights in bf16, activations in f32; see [`Mplug::new`]).
    pub fn load_as(
        &self,
        task: Option<Task>,
        device: &Device,
        dtype: DType,
    ) -> Result<LoadedModel> {
        let ckpt = Checkpoint::load(&self.checkpoint)?;
        let task = if self.tasks.is_empty() {
            self.single_task(task, &ckpt)?
        } else {
            self.one_of_tasks(task, &ckpt)?
        };
        let model = Mplug::load(&self.config, &ckpt, task, dtype, device)?;
        let grounding = GroundingTokens::from_checkpoint(&ckpt)?;
        let pipeline = Pipeline::new(model, self.tokenizer()?, grounding)?;
        Ok(LoadedModel {
            pipeline,
            task,
            checkpoint: ckpt,
        })
    }

    /// The task to build from a multi-task folder: `wanted`, which must be one of its tasks.
    fn one_of_tasks(&self, wanted: Option<Task>, ckpt: &Checkpoint) -> Result<Task> {
        let names = self
            .tasks
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ");
        match wanted {
            Some(w) if self.tasks.contains(&w) => Ok(w),
            Some(w) => Err(ckpt.error(format!(
                "is a multi-task model for {names}, not a {w} model; use a {w} checkpoint"
            ))),
            None => Err(ckpt.error(format!(
                "is a multi-task model ({names}); name the task to run"
            ))),
        }
    }

    /// The task to build from a single-task checkpoint.
    fn single_task(&self, task: Option<Task>, ckpt: &Checkpoint) -> Result<Task> {
        let found = self.task.or_else(|| Task::detect(ckpt));
        Ok(match (task, found) {
            (Some(wanted), Some(found)) => {
                let fits = if self.task.is_some() {
                    declared_task_fits(found, wanted)
                } else {
                    task_fits(found, wanted)
                };
                if !fits {
                    return Err(ckpt.error(format!(
                        "is a {found} model, not a {wanted} model; use a {wanted} checkpoint"
                    )));
                }
                wanted
            }
            (Some(wanted), None) => wanted,
            (None, Some(found)) => found,
            (None, None) => {
                return Err(ckpt.error(
                    "its task cannot be told from its keys; name it (caption, vqa, retrieval \
                     or grounding)",
                ))
            }
        })
    }
}

/// A model ready for inference, with what it was loaded from.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The model with its input processing.
    pub pipeline: Pipeline,
    /// The task the model was built for.
    pub task: Task,
    /// The checkpoint, which records the tensors the model read.
    pub checkpoint: Checkpoint,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_folder_lends_its_vocabulary_and_tasks() {
        let dir = std::env::temp_dir().join(format!("mplug-config-folder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let card = ModelCard {
            config: MplugConfig::tiny(),
            task: None,
            tasks: vec![Task::Caption, Task::Vqa],
        };
        std::fs::write(dir.join(CONFIG_FILE), card.to_json()).unwrap();
        std::fs::write(dir.join(VOCAB_FILE), "[PAD]\n").unwrap();
        let bare = ModelSource {
            config: MplugConfig::tiny(),
            task: None,
            tasks: vec![],
            checkpoint: PathBuf::from("step-100/model.safetensors"),
            vocab: None,
        };
        let lent = bare.clone().with_config_folder(&dir.join(CONFIG_FILE));
        assert_eq!(lent.vocab, Some(dir.join(VOCAB_FILE)));
        assert_eq!(lent.tasks, vec![Task::Caption, Task::Vqa]);
        // What the source has of its own stays.
        let own = ModelSource {
            vocab: Some(PathBuf::from("own/vocab.txt")),
            task: Some(Task::Retrieval),
            ..bare
        }
        .with_config_folder(&dir.join(CONFIG_FILE));
        assert_eq!(own.vocab, Some(PathBuf::from("own/vocab.txt")));
        assert_eq!((own.task, own.tasks.len()), (Some(Task::Retrieval), 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn card_round_trips_with_task() {
        let card = ModelCard {
            config: MplugConfig::base(),
            task: Some(Task::Grounding),
            tasks: vec![],
        };
        let text = card.to_json();
        assert!(text.contains("\"task\": \"grounding\""));
        let back = ModelCard::from_json(&text, Path::new("config.json")).unwrap();
        assert_eq!(back, card);
    }

    #[test]
    fn multi_task_card_round_trips() {
        let card = ModelCard {
            config: MplugConfig::tiny(),
            task: None,
            tasks: vec![Task::Caption, Task::Vqa, Task::Grounding],
        };
        let text = card.to_json();
        assert!(text.contains("\"tasks\""), "{text}");
        assert!(!text.contains("\"task\""), "{text}");
        let back = ModelCard::from_json(&text, Path::new("config.json")).unwrap();
        assert_eq!(back, card);
        let both = text.replacen("{", "{\"task\": \"vqa\",", 1);
        let err = ModelCard::from_json(&both, Path::new("config.json")).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
    }

    #[test]
    fn card_without_task_reads_golden_form() {
        let text = serde_json::to_string(&MplugConfig::large()).unwrap();
        let card = ModelCard::from_json(&text, Path::new("c.json")).unwrap();
        assert_eq!(card.task, None);
        assert_eq!(card.config, MplugConfig::large());
    }

    #[test]
    fn unknown_task_is_an_error() {
        let mut v = serde_json::to_value(MplugConfig::base()).unwrap();
        v["task"] = "painting".into();
        let err = ModelCard::from_json(&v.to_string(), Path::new("c.json")).unwrap_err();
        assert!(err.to_string().contains("painting"), "{err}");
    }

    /// A model folder without its vocabulary is an error naming the file; a bare checkpoint
    /// (no task in its configuration, as released ones and the golden folders) takes BERT's.
    #[test]
    fn a_model_folder_needs_its_own_vocabulary() {
        let bare = ModelSource {
            config: MplugConfig::tiny(),
            task: None,
            tasks: vec![],
            checkpoint: PathBuf::from("m/model.safetensors"),
            vocab: None,
        };
        assert!(bare.tokenizer().is_ok());
        for folder in [
            ModelSource {
                task: Some(Task::Caption),
                ..bare.clone()
            },
            ModelSource {
                tasks: vec![Task::Caption, Task::Vqa],
                ..bare.clone()
            },
        ] {
            let err = folder.tokenizer().unwrap_err().to_string();
            assert!(
                err.contains(VOCAB_FILE) && err.contains("m/model.safetensors"),
                "{err}"
            );
        }
    }

    #[test]
    fn default_vocab_is_truncated_to_the_model() {
        let mut cfg = MplugConfig::base();
        cfg.bert.vocab_size = 1024;
        assert_eq!(default_vocab(&cfg).lines().count(), 1024);
        assert_eq!(
            default_vocab(&MplugConfig::base()).lines().count(),
            BERT_BASE_UNCASED_VOCAB.lines().count()
        );
    }

    #[test]
    fn buffers_are_recognized() {
        assert!(is_buffer("text_encoder.embeddings.position_ids"));
        assert!(is_buffer("image_queue"));
        assert!(!is_buffer("itm_head.weight"));
        assert!(task_fits(Task::Vqa, Task::Caption));
        assert!(!task_fits(Task::Grounding, Task::Vqa));
        assert!(task_fits(Task::Pretrain, Task::Retrieval));
        assert!(!declared_task_fits(Task::Pretrain, Task::Vqa));
        assert!(!declared_task_fits(Task::Retrieval, Task::Pretrain));
    }
}
