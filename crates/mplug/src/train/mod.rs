//! Training: models whose weights are trainable variables, and the reference's optimizer.
//! Losses come from [`crate::tasks`], the same code inference uses.

pub mod finetune;
pub mod init;
pub mod optim;
pub mod schedule;
pub mod tower;
pub mod trainer;

use crate::checkpoint::Checkpoint;
use crate::config::MplugConfig;
use crate::error::Result;
use crate::model::{Mplug, Task};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;

/// A model together with the variables that hold its weights.
#[derive(Clone)]
pub struct Trainable {
    /// The model, built on the variables.
    pub model: Mplug,
    /// Its variables, keyed by checkpoint name.
    pub varmap: VarMap,
}

impl std::fmt::Debug for Trainable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainable")
            .field("task", &self.model.task)
            .field("vars", &self.varmap.all_vars().len())
            .finish()
    }
}

impl Trainable {
    /// A freshly initialized model for `task`.
    pub fn new(config: &MplugConfig, task: Task, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let model = Mplug::new(
            config,
            task,
            VarBuilder::from_varmap(&varmap, DType::F32, device),
        )?;
        Ok(Self { model, varmap })
    }

    /// A freshly initialized model whose weights depend only on `seed` (candle's CPU generator
    /// cannot be seeded). Variables are visited by name: constants (LayerNorm weights and
    /// biases, the ITC temperature) keep their value; matrices and kernels are drawn from
    /// N(0, 1/fan_in) with fan_in the product of all but the first dimension; other vectors
    /// (biases, the class embedding) from N(0, 0.02^2).
    pub fn new_seeded(
        config: &MplugConfig,
        task: Task,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let t = Self::new(config, task, device)?;
        draw_seeded(&t.named_vars(), seed)?;
        Ok(t)
    }

    /// The model for `task` with its weights from a checkpoint, as trainable variables.
    pub fn from_checkpoint(
        config: &MplugConfig,
        ckpt: &Checkpoint,
        task: Task,
        device: &Device,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = ckpt.trainable_var_builder(&varmap, DType::F32, device);
        let model = Mplug::new(config, task, vb).map_err(|e| ckpt.error(e))?;
        drop_aliases(&varmap)?;
        Ok(Self { model, varmap })
    }

    /// As [`Trainable::from_checkpoint`], except that variables whose names start with one of
    /// `fresh` may be absent from the checkpoint: those start from [`Trainable::new_seeded`]'s
    /// values for `seed`. Returns the model and the names that started fresh. Any other
    /// missing variable is an error naming it and its shape.
    ///
    /// A model folder written for inference keeps only what its tasks read: a multi-task
    /// folder lacks the pre-training MLM head, which multi-task fine-tuning builds but never
    /// trains.
    pub fn from_checkpoint_with_fresh(
        config: &MplugConfig,
        ckpt: &Checkpoint,
        task: Task,
        device: &Device,
        fresh: &[&str],
        seed: u64,
    ) -> Result<(Self, Vec<String>)> {
        let t = Self::new_seeded(config, task, device, seed)?;
        let tensors: HashMap<String, Tensor> = ckpt
            .keys()
            .into_iter()
            .map(|k| Ok((k.to_string(), ckpt.tensor(k)?)))
            .collect::<Result<_>>()?;
        let report = t.load_partial(&tensors)?;
        if let Some(name) = report
            .missing
            .iter()
            .find(|n| !fresh.iter().any(|p| n.starts_with(p)))
        {
            let shape = t
                .named_vars()
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.dims().to_vec())
                .unwrap_or_default();
            return Err(ckpt.error(format!(
                "missing tensor `{name}` (expected shape {shape:?})"
            )));
        }
        drop_aliases(&t.varmap)?;
        Ok((t, report.missing))
    }

    /// Every variable with its name, sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        named_vars(&self.varmap)
    }
}

/// The variables of `varmap` with their names, sorted by name (the order [`draw_seeded`]
/// needs to give the same values for the same seed).
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Redraws `vars`, in the given order, from a generator seeded with `seed` (candle's CPU
/// generator cannot be seeded): constants (LayerNorm weights and biases, the ITC temperature)
/// keep their value; matrices and kernels are drawn from N(0, 1/fan_in) with fan_in the
/// product of all but the first dimension; other vectors from N(0, 0.02^2). The same names
/// in the same order give the same values, which makes a fresh model a function of the seed
/// ([`Trainable::new_seeded`]; `examples/probe_shape`).
pub fn draw_seeded(vars: &[(String, Var)], seed: u64) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (_, var) in vars {
        let tensor = var.as_tensor();
        let (min, max) = (
            tensor.min_all()?.to_scalar::<f32>()?,
            tensor.max_all()?.to_scalar::<f32>()?,
        );
        if min == max {
            continue;
        }
        let dims = var.dims().to_vec();
        let n = var.elem_count();
        let std = if dims.len() >= 2 {
            (1.0 / (n / dims[0]).max(1) as f32).sqrt()
        } else {
            0.02
        };
        // Box-Muller.
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
                let u2: f32 = rng.random();
                std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect();
        var.set(&candle_core::Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}

/// Removes variables that the reference holds as one parameter with another: the decoder's
/// output matrix when it equals (is tied to) the word embeddings, and `decoder.bias`, which is
/// `predictions.bias`. The model reads the kept variable, so only it receives gradients.
fn drop_aliases(varmap: &VarMap) -> Result<()> {
    let mut data = varmap.data().lock().expect("varmap lock");
    let heads: Vec<String> = data
        .keys()
        .filter_map(|k| {
            k.strip_suffix("cls.predictions.decoder.weight")
                .map(str::to_string)
        })
        .collect();
    for p in heads {
        let out = format!("{p}cls.predictions.decoder.weight");
        let emb = format!("{p}bert.embeddings.word_embeddings.weight");
        if let (Some(o), Some(e)) = (data.get(&out), data.get(&emb)) {
            let same = o.dims() == e.dims()
                && (o.as_tensor() - e.as_tensor())?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?
                    == 0.0;
            if same {
                data.remove(&out);
            }
        }
        let bias = format!("{p}cls.predictions.decoder.bias");
        if data.contains_key(&format!("{p}cls.predictions.bias")) {
            data.remove(&bias);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    fn vars() -> Vec<(String, Var)> {
        let dev = Device::Cpu;
        vec![
            (
                "a.bias".into(),
                Var::from_tensor(&Tensor::rand(-1f32, 1.0, 64, &dev).unwrap()).unwrap(),
            ),
            (
                "a.weight".into(),
                Var::from_tensor(&Tensor::rand(-1f32, 1.0, (400, 100), &dev).unwrap()).unwrap(),
            ),
            ("ln.weight".into(), Var::ones(8, DType::F32, &dev).unwrap()),
        ]
    }

    fn values(vars: &[(String, Var)]) -> Vec<Vec<f32>> {
        vars.iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    #[test]
    fn seeded_draws_are_a_function_of_the_seed() {
        let (x, y, z) = (vars(), vars(), vars());
        draw_seeded(&x, 7).unwrap();
        draw_seeded(&y, 7).unwrap();
        draw_seeded(&z, 8).unwrap();
        assert_eq!(
            values(&x),
            values(&y),
            "candle's unseeded start is replaced"
        );
        assert_ne!(values(&x)[1], values(&z)[1]);
        // Constants keep their value; a matrix has the spread N(0, 1/fan_in), a vector 0.02.
        assert!(values(&x)[2].iter().all(|&v| v == 1.0));
        let std = |v: &[f32]| (v.iter().map(|a| a * a).sum::<f32>() / v.len() as f32).sqrt();
        assert!(
            (std(&values(&x)[1]) - 0.1).abs() < 0.005,
            "{}",
            std(&values(&x)[1])
        );
        assert!(
            (std(&values(&x)[0]) - 0.02).abs() < 0.006,
            "{}",
            std(&values(&x)[0])
        );
    }
}
