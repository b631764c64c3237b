//! The training loop: gradient accumulation, clipping, a learning-rate schedule, one JSONL log
//! (`train_log.jsonl`: per update the loss, each of its named parts, the learning rates, the
//! gradient norm and the throughput), and checkpoints from which a killed run resumes bit for
//! bit.
//!
//! The loop asks a closure for the loss of micro-batch `i` (a global index), so that data order
//! and any randomness can be derived from the index alone: a resumed run then sees exactly the
//! batches the uninterrupted run would have seen.

use super::optim::MplugAdamW;
use super::schedule::CosineSchedule;
use super::Trainable;
use crate::data::loader::derive_seed;
use crate::error::{Error, Result};
use crate::model::dropout::{with_dropout, DropoutConfig};
use crate::model::Mplug;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of [`train`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Optimizer updates of the whole run.
    pub steps: u64,
    /// Micro-batches whose gradients are summed (and averaged) per update.
    pub accumulate: u64,
    /// Clip the global gradient norm to this value.
    pub clip_norm: Option<f64>,
    /// Learning-rate multiplier per update (`None`: constant).
    pub schedule: Option<CosineSchedule>,
    /// Write a checkpoint every this many updates (and at the end), when `out_dir` is set.
    pub save_every: u64,
    /// Folder for checkpoints and the JSONL log.
    pub out_dir: Option<PathBuf>,
    /// Samples per micro-batch (for the throughput figure).
    pub batch_size: usize,
    /// Dropout in each micro-batch's forward pass (`None`: off, as in the golden train step).
    pub dropout: Option<DropoutConfig>,
    /// Seed of the dropout masks: micro-batch `i` draws from a generator seeded with this seed
    /// and `i`, so that a resumed run draws the masks the uninterrupted run drew.
    pub seed: u64,
    /// Micro-batches of one update computed at the same time, each on its own thread (1: one
    /// after the other). Gradients are still summed in micro-batch order, so the result does
    /// not depend on this number. Small models gain most with one tensor-math thread per
    /// micro-batch (candle's pool splits their small operations too finely to pay off).
    pub parallel: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 100,
            accumulate: 1,
            clip_norm: None,
            schedule: None,
            save_every: 50,
            out_dir: None,
            batch_size: 1,
            dropout: None,
            seed: 0,
            parallel: 1,
        }
    }
}

/// One micro-batch's loss: the total that is back-propagated, and the parts it sums (each
/// objective's value, or each task's in a multi-task run), which the trainer averages over
/// the update's micro-batches and logs beside the total.
#[derive(Debug, Clone)]
pub struct Loss {
    /// The loss to minimize.
    pub total: Tensor,
    /// Named parts, for the log only.
    pub parts: Vec<(String, f64)>,
}

impl From<Tensor> for Loss {
    fn from(total: Tensor) -> Self {
        Loss {
            total,
            parts: Vec::new(),
        }
    }
}

/// What one update did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepLog {
    /// Updates done, this one included.
    pub step: u64,
    /// Mean loss over its micro-batches.
    pub loss: f64,
    /// Learning rate outside the visual encoder.
    pub lr1: f64,
    /// Learning rate of the visual encoder.
    pub lr2: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Samples per second of this update.
    pub samples_per_s: f64,
    /// The loss's named parts ([`Loss::parts`]), each the mean over the micro-batches that
    /// reported it; written as fields of the log line.
    #[serde(flatten)]
    pub parts: std::collections::BTreeMap<String, f64>,
}

const STATE_FILE: &str = "state.json";

/// Random stream of the dropout masks (see [`derive_seed`]).
const DROPOUT_STREAM: u64 = 0x64726f70; // "drop"

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RunState {
    step: u64,
    micro_batches: u64,
}

/// State a run keeps besides weights and optimizer moments (ITC's momentum encoders and
/// feature queues), saved into every checkpoint folder and restored on resume. Methods take
/// `&self`: the state is also used, mutably, by the loss closure (keep it in a `Mutex`).
pub trait ExtraState {
    /// Writes the state into a checkpoint folder.
    fn save(&self, dir: &Path) -> Result<()>;
    /// Restores the state from a checkpoint folder.
    fn load(&self, dir: &Path) -> Result<()>;
}

/// The momentum encoders and queues of ITC distillation are checkpointed with the weights.
impl ExtraState for std::sync::Mutex<crate::tasks::pretrain::Momentum> {
    fn save(&self, dir: &Path) -> Result<()> {
        // A poisoned lock means a loss closure panicked; the run is over before any save.
        self.lock().unwrap_or_else(|e| e.into_inner()).save(dir)
    }

    fn load(&self, dir: &Path) -> Result<()> {
        self.lock().unwrap_or_else(|e| e.into_inner()).load(dir)
    }
}

/// Trains for `config.steps` updates, resuming from `out_dir/latest` when a checkpoint is
/// there. `loss_of(model, i)` returns the loss of global micro-batch `i`; with
/// `config.parallel > 1` it is called from several threads at once, so any state it changes
/// sits behind a lock and must not depend on the order of the calls. Each finished update
/// is passed to `on_step`. A non-finite loss stops the run with an error naming the update and
/// the micro-batch.
pub fn train<L: Into<Loss>>(
    trainable: &Trainable,
    optimizer: &mut MplugAdamW,
    config: &TrainConfig,
    loss_of: impl Fn(&Mplug, u64) -> Result<L> + Sync,
    on_step: impl FnMut(&StepLog),
) -> Result<Vec<StepLog>> {
    train_with_state(trainable, optimizer, config, None, loss_of, on_step)
}

/// [`train`] with extra run state saved into and restored from every checkpoint.
pub fn train_with_state<L: Into<Loss>>(
    trainable: &Trainable,
    optimizer: &mut MplugAdamW,
    config: &TrainConfig,
    extra: Option<&dyn ExtraState>,
    loss_of: impl Fn(&Mplug, u64) -> Result<L> + Sync,
    mut on_step: impl FnMut(&StepLog),
) -> Result<Vec<StepLog>> {
    let vars = trainable.named_vars();
    let mut start = 0;
    if let Some(dir) = &config.out_dir {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        if let Some(state) = resume(dir, &vars, optimizer, extra)? {
            start = state.step;
        }
    }
    let mut log_file = match &config.out_dir {
        Some(dir) => {
            let path = dir.join("train_log.jsonl");
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|source| Error::Io { path, source })?,
            )
        }
        None => None,
    };
    let accumulate = config.accumulate.max(1);
    let mut logs = Vec::new();
    for step in start..config.steps {
        let t0 = Instant::now();
        if let Some(s) = &config.schedule {
            optimizer.set_lr_scale(s.scale(step));
        }
        let mut summed: Option<HashMap<String, Tensor>> = None;
        let mut loss_sum = 0.0;
        let mut part_sums: std::collections::BTreeMap<String, (f64, u64)> = Default::default();
        // The loss, its parts and the gradients of global micro-batch `index`.
        type Micro = (f64, Vec<(String, f64)>, GradStore);
        let micro = |index: u64| -> Result<Micro> {
            let Loss { total: loss, parts } = match config.dropout.filter(DropoutConfig::is_active)
            {
                Some(d) => {
                    with_dropout(d, derive_seed(config.seed, DROPOUT_STREAM, index), || {
                        loss_of(&trainable.model, index)
                    })?
                }
                None => loss_of(&trainable.model, index)?,
            }
            .into();
            let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(Error::invalid(format!(
                    "loss is {value} at update {} (micro-batch {index}); stopping",
                    step + 1
                )));
            }
            Ok((value, parts, loss.backward()?))
        };
        let parallel = config.parallel.max(1) as u64;
        for first in (0..accumulate).step_by(parallel as usize) {
            let group: Vec<u64> = (first..(first + parallel).min(accumulate))
                .map(|m| step * accumulate + m)
                .collect();
            let results: Vec<Result<Micro>> = if group.len() == 1 {
                vec![micro(group[0])]
            } else {
                std::thread::scope(|scope| {
                    let micro = &micro;
                    let handles: Vec<_> = group
                        .iter()
                        .map(|&index| scope.spawn(move || micro(index)))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                        .collect()
                })
            };
            // Summed in micro-batch order whatever finished first: the same update as serial.
            for result in results {
                let (value, parts, grads) = result?;
                loss_sum += value;
                for (name, v) in parts {
                    let e = part_sums.entry(name).or_default();
                    e.0 += v;
                    e.1 += 1;
                }
                summed = Some(add_grads(summed, &grads, &vars)?);
            }
        }
        let mut grads = summed.unwrap_or_default();
        if accumulate > 1 {
            for g in grads.values_mut() {
                *g = (&*g / accumulate as f64)?;
            }
        }
        let norm = global_norm(&grads)?;
        if let Some(max) = config.clip_norm {
            if norm > max {
                let scale = max / (norm + 1e-6);
                for g in grads.values_mut() {
                    *g = (&*g * scale)?;
                }
            }
        }
        optimizer.step_named(&grads)?;
        let (lr1, lr2) = optimizer.learning_rates();
        let secs = t0.elapsed().as_secs_f64();
        let log = StepLog {
            step: step + 1,
            loss: loss_sum / accumulate as f64,
            lr1,
            lr2,
            grad_norm: norm,
            samples_per_s: (config.batch_size as u64 * accumulate) as f64 / secs.max(1e-9),
            parts: part_sums
                .into_iter()
                .map(|(name, (sum, n))| (name, sum / n.max(1) as f64))
                .collect(),
        };
        if let Some(f) = log_file.as_mut() {
            let line = serde_json::to_string(&log).map_err(|e| Error::invalid(e.to_string()))?;
            writeln!(f, "{line}").map_err(|source| Error::Io {
                path: PathBuf::from("train_log.jsonl"),
                source,
            })?;
        }
        on_step(&log);
        logs.push(log);
        let done = step + 1;
        if let Some(dir) = &config.out_dir {
            if done % config.save_every.max(1) == 0 || done == config.steps {
                save(
                    dir,
                    &vars,
                    optimizer,
                    extra,
                    &RunState {
                        step: done,
                        micro_batches: done * accumulate,
                    },
                )?;
            }
        }
    }
    Ok(logs)
}

fn add_grads(
    acc: Option<HashMap<String, Tensor>>,
    grads: &GradStore,
    vars: &[(String, Var)],
) -> Result<HashMap<String, Tensor>> {
    let mut acc = acc.unwrap_or_default();
    for (name, var) in vars {
        if let Some(g) = grads.get(var) {
            let g = match acc.remove(name) {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            };
            acc.insert(name.clone(), g);
        }
    }
    Ok(acc)
}

fn global_norm(grads: &HashMap<String, Tensor>) -> Result<f64> {
    let mut sum = 0.0;
    for g in grads.values() {
        sum += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(sum.sqrt())
}

/// Writes weights, optimizer state and run position into `dir/step-N`, then points
/// `dir/latest` at it; each file is written under a temporary name and renamed, so a run
/// killed mid-write leaves the previous checkpoint intact.
fn save(
    dir: &Path,
    vars: &[(String, Var)],
    optimizer: &MplugAdamW,
    extra: Option<&dyn ExtraState>,
    state: &RunState,
) -> Result<()> {
    let target = dir.join(format!("step-{}", state.step));
    let tmp = dir.join(format!(".tmp-step-{}", state.step));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let weights: HashMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&weights, tmp.join("model.safetensors"))?;
    let (moments, steps) = optimizer.state();
    candle_core::safetensors::save(&moments, tmp.join("optimizer.safetensors"))?;
    let json = serde_json::json!({ "step": state.step, "micro_batches": state.micro_batches, "optimizer_steps": steps });
    std::fs::write(tmp.join(STATE_FILE), json.to_string()).map_err(io(&tmp))?;
    if let Some(extra) = extra {
        extra.save(&tmp)?;
    }
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(io(&target))?;
    }
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    let latest_tmp = dir.join(".latest.tmp");
    std::fs::write(&latest_tmp, format!("step-{}\n", state.step)).map_err(io(&latest_tmp))?;
    std::fs::rename(&latest_tmp, dir.join("latest")).map_err(io(dir))?;
    Ok(())
}

fn resume(
    dir: &Path,
    vars: &[(String, Var)],
    optimizer: &mut MplugAdamW,
    extra: Option<&dyn ExtraState>,
) -> Result<Option<RunState>> {
    let latest = dir.join("latest");
    let Ok(name) = std::fs::read_to_string(&latest) else {
        return Ok(None);
    };
    let ckpt = dir.join(name.trim());
    let bad = |msg: String| Error::Checkpoint {
        path: ckpt.clone(),
        msg,
    };
    let text = std::fs::read_to_string(ckpt.join(STATE_FILE))
        .map_err(|e| bad(format!("{STATE_FILE}: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("{STATE_FILE}: {e}")))?;
    let step = json["step"]
        .as_u64()
        .ok_or_else(|| bad("no step in state.json".into()))?;
    let micro_batches = json["micro_batches"].as_u64().unwrap_or(0);
    let opt_steps = json["optimizer_steps"].as_u64().unwrap_or(step);
    let weights =
        candle_core::safetensors::load(ckpt.join("model.safetensors"), &candle_core::Device::Cpu)?;
    for (name, var) in vars {
        let t = weights
            .get(name)
            .ok_or_else(|| bad(format!("model.safetensors lacks `{name}`")))?;
        if t.dims() != var.dims() {
            return Err(bad(format!(
                "`{name}` has shape {:?}, expected {:?}",
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    let moments = candle_core::safetensors::load(
        ckpt.join("optimizer.safetensors"),
        &candle_core::Device::Cpu,
    )?;
    optimizer.load_state(&moments, opt_steps)?;
    if let Some(extra) = extra {
        extra.load(&ckpt)?;
    }
    Ok(Some(RunState {
        step,
        micro_batches,
    }))
}
