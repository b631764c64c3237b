//! Finding a model: a folder (`config.json` + checkpoint) or a checkpoint file with its
//! configuration.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use mplug::pipeline::Pipeline;
use mplug::{MplugConfig, Task};
use std::path::{Path, PathBuf};

/// Where the model comes from.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// A model folder (config.json + model.safetensors / model.pth / <task>.pth) or a checkpoint
    /// file (.pth or .safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// The configuration (default: config.json beside the checkpoint).
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A named configuration instead of a file: base or large.
    #[arg(long)]
    pub preset: Option<String>,
}

impl ModelArgs {
    /// The configuration and checkpoint for `task`.
    pub fn resolve(&self, task: Task) -> Result<(MplugConfig, PathBuf)> {
        let (dir, checkpoint) = if self.model.is_dir() {
            let dir = self.model.clone();
            let candidates = [
                "model.safetensors".to_string(),
                "model.pth".to_string(),
                format!("{}.safetensors", task.name()),
                format!("{}.pth", task.name()),
            ];
            let ckpt = candidates
                .iter()
                .map(|c| dir.join(c))
                .find(|p| p.is_file())
                .with_context(|| {
                    format!(
                        "{} holds no checkpoint (looked for {})",
                        dir.display(),
                        candidates.join(", ")
                    )
                })?;
            (dir, ckpt)
        } else if self.model.is_file() {
            let dir = self
                .model
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            (dir, self.model.clone())
        } else {
            bail!("model {} does not exist", self.model.display());
        };
        let config = match (&self.config, &self.preset) {
            (Some(c), _) => MplugConfig::from_file(c)?,
            (None, Some(p)) => MplugConfig::preset(p)?,
            (None, None) => {
                let c = dir.join("config.json");
                if !c.is_file() {
                    bail!(
                        "no config.json beside {}; pass --config FILE or --preset base|large",
                        checkpoint.display()
                    );
                }
                MplugConfig::from_file(c)?
            }
        };
        Ok((config, checkpoint))
    }

    /// Loads the pipeline for `task` on the CPU.
    pub fn load(&self, task: Task) -> Result<Pipeline> {
        let (config, checkpoint) = self.resolve(task)?;
        Ok(Pipeline::load(&config, &checkpoint, task, &Device::Cpu)?)
    }
}
