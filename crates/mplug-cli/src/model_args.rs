//! Finding a model: a model folder (`config.json` with its task, `model.safetensors`,
//! `vocab.txt`), a folder of per-task checkpoints, or a checkpoint file with its configuration.

use crate::default_model;
use anyhow::Result;
use candle_core::{DType, Device};
use mplug::model_dir::{LoadedModel, ModelSource};
use mplug::pipeline::Pipeline;
use mplug::{MplugConfig, Task};
use std::path::{Path, PathBuf};

/// A command-line parser for one of the library's vocabularies ([`Task::ALL`],
/// [`mplug::eval::EvalTask::ALL`]): its names are the possible values, listed in `--help` and
/// in the error for any other.
pub fn vocabulary<T: Copy + Send + Sync + 'static>(
    all: &'static [T],
    name: fn(T) -> &'static str,
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(all.iter().map(|&t| name(t))).try_map(
        move |s: String| {
            all.iter()
                .copied()
                .find(|&t| name(t) == s)
                .ok_or_else(|| format!("unknown name {s:?}"))
        },
    )
}

/// `--task`'s parser: a model task's name.
pub fn task_parser() -> impl clap::builder::TypedValueParser<Value = Task> {
    vocabulary(&Task::ALL, Task::name)
}

/// A benchmark's name, as `mplug eval` and `mplug baseline` take it.
pub fn benchmark_parser() -> impl clap::builder::TypedValueParser<Value = mplug::eval::EvalTask> {
    vocabulary(&mplug::eval::EvalTask::ALL, mplug::eval::EvalTask::name)
}

/// Where the model comes from.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// A model folder (config.json + model.safetensors / model.pth / <task>.pth, vocab.txt when
    /// present) or a checkpoint file (.pth or .safetensors). Default: the embedded default model
    /// (`mplug-tiny-world`; its grounding round for grounding).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Weights in memory: `f32`, or `bf16` (linear layers' weights rounded to bf16, half the
    /// memory and faster decoding; on CPUs with AVX512-BF16 the products of many rows and the
    /// image tower's attention also round their inputs to bf16, about twice as fast; sums stay
    /// f32, results differ by the rounding), or `int8` (linear layers' weights quantized to
    /// int8 per output, a quarter of the memory; each layer quantizes its input rows and sums
    /// in integers, on CPUs with AVX512-VNNI about three times as fast as f32; elsewhere a
    /// slow portable loop; results differ by the quantization).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: WeightDtype,
}

/// The weight type of `--dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightDtype {
    /// As the checkpoint's values, in f32.
    F32,
    /// Linear layers' weights in bf16.
    Bf16,
    /// Linear layers' weights in int8.
    Int8,
}

impl WeightDtype {
    /// The name `--dtype` takes.
    pub fn name(self) -> &'static str {
        self.format().name()
    }

    /// How the library holds the linear layers' weights for it.
    pub fn format(self) -> mplug::model::ops::WeightFormat {
        use mplug::model::ops::WeightFormat;
        match self {
            WeightDtype::F32 => WeightFormat::F32,
            WeightDtype::Bf16 => WeightFormat::Bf16,
            WeightDtype::Int8 => WeightFormat::Int8,
        }
    }

    fn dtype(self) -> DType {
        match self {
            WeightDtype::F32 | WeightDtype::Int8 => DType::F32,
            WeightDtype::Bf16 => DType::BF16,
        }
    }

    /// Loads `source` for `task` (or the task it names or its keys show) on the CPU, its
    /// weights held this way.
    pub fn load(self, source: &ModelSource, task: Option<Task>) -> Result<LoadedModel> {
        let load = || source.load_as(task, &Device::Cpu, self.dtype());
        Ok(if self == WeightDtype::Int8 {
            if !mplug::model::kernels::int8_dots::available() {
                eprintln!(
                    "note: this CPU has no AVX512-VNNI; int8 weights run in a slow portable loop"
                );
            }
            mplug::model::ops::with_int8_weights(load)?
        } else {
            load()?
        })
    }
}

/// Where the configuration comes from when not from the model folder.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// The configuration: a config.json (golden or model-folder form) or the reference's task
    /// YAML (its bert_config is read from beside it). Default: config.json beside the checkpoint.
    /// A checkpoint with no vocab.txt beside it reads the one beside this file, else BERT
    /// uncased's (its first vocab_size entries); a model folder's config.json here also gives
    /// its task or tasks.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A named configuration instead of a file: base, large or tiny.
    #[arg(long)]
    pub preset: Option<String>,
}

impl ConfigArgs {
    /// The configuration given on the command line, if any.
    pub fn explicit(&self) -> Result<Option<MplugConfig>> {
        match (&self.config, &self.preset) {
            (Some(path), _) => Ok(Some(read_config(path)?)),
            (None, Some(p)) => Ok(Some(MplugConfig::preset(p)?)),
            (None, None) => Ok(None),
        }
    }
}

/// Reads a configuration file: the reference's YAML (`.yaml` / `.yml`) or a JSON
/// configuration.
pub fn read_config(path: &Path) -> Result<MplugConfig> {
    let is_yaml = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    Ok(if is_yaml {
        let dir = path.parent().unwrap_or(Path::new("."));
        MplugConfig::from_reference_yaml(path, dir)?
    } else {
        MplugConfig::from_file(path)?
    })
}

/// Locates the configuration, checkpoint and vocabulary of `model`. With no `vocab.txt`
/// beside the checkpoint, the one beside a `--config` file is used, and a `--config` that is
/// a model folder's `config.json` gives its task or tasks too (so a training run's `step-N/`
/// checkpoint read with `--config OUT/model/config.json` loads as that folder); with neither, the
/// embedded BERT vocabulary (its first `vocab_size` entries, as the golden test models use).
pub fn locate(model: &Path, config: &ConfigArgs, task: Option<Task>) -> Result<ModelSource> {
    if !model.exists() {
        anyhow::bail!("model {} does not exist", model.display());
    }
    let source = ModelSource::locate(model, config.explicit()?, task)?;
    Ok(match config.config.as_deref() {
        Some(path) => source.with_config_folder(path),
        None => source,
    })
}

/// Loads `model` for `task` (or the task its folder names or its keys show) on the CPU, its
/// weights held as `dtype` says.
pub fn load_model(
    model: &Path,
    config: &ConfigArgs,
    task: Option<Task>,
    dtype: WeightDtype,
) -> Result<LoadedModel> {
    // Library errors name the checkpoint file; no context needed.
    dtype.load(&locate(model, config, task)?, task)
}

impl ModelArgs {
    /// The model for `task`: `--model`, else the embedded default's folder for it.
    pub fn path(&self, task: Task) -> Result<PathBuf> {
        default_model::or_default(self.model.as_deref(), Some(task))
    }

    /// Loads the pipeline for `task` on the CPU; a model made for another task is refused.
    pub fn load(&self, task: Task) -> Result<Pipeline> {
        Ok(load_model(&self.path(task)?, &self.config, Some(task), self.dtype)?.pipeline)
    }
}
