//! The reference's optimizer: AdamW with two learning rates (`lr1` outside the visual encoder,
//! `lr2` inside it) and no weight decay on parameters whose name contains `bias` or
//! `LayerNorm.weight` (the reference's rule, applied to names exactly as it does).

use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// Settings of [`MplugAdamW`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerConfig {
    /// Learning rate outside the visual encoder.
    pub lr1: f64,
    /// Learning rate of the visual encoder.
    pub lr2: f64,
    /// Decoupled weight decay of decayed parameters.
    pub weight_decay: f64,
    /// Adam's first-moment decay.
    pub beta1: f64,
    /// Adam's second-moment decay.
    pub beta2: f64,
    /// Adam's epsilon.
    pub eps: f64,
}

impl Default for OptimizerConfig {
    /// The reference's fine-tuning values for VQA base (`lr1` 3e-5, `lr2` 5e-6, decay 0.02)
    /// with PyTorch's Adam defaults.
    fn default() -> Self {
        OptimizerConfig {
            lr1: 3e-5,
            lr2: 5e-6,
            weight_decay: 0.02,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Whether the reference exempts a parameter from weight decay.
pub fn exempt_from_decay(name: &str) -> bool {
    name.contains("bias") || name.contains("LayerNorm.weight")
}

/// Whether a parameter belongs to the visual encoder (learning rate `lr2`).
pub fn is_visual(name: &str) -> bool {
    name.starts_with("visual_encoder.")
}

struct Param {
    name: String,
    var: Var,
    /// First and second moments, created on the first step that has a gradient.
    moments: Option<(Tensor, Tensor)>,
    visual: bool,
    decayed: bool,
}

/// AdamW as PyTorch computes it, over the reference's parameter groups: learning rate `lr1` or
/// `lr2` by [`is_visual`], weight decay unless [`exempt_from_decay`].
///
/// Written here rather than taken from candle because resuming a run bit for bit needs the
/// moments, which candle's `AdamW` keeps private.
pub struct MplugAdamW {
    params: Vec<Param>,
    config: OptimizerConfig,
    step: u64,
    lr_scale: f64,
    /// Whether [`fused_update`] may run (the tests compare it with the composed update).
    fused: bool,
}

impl std::fmt::Debug for MplugAdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MplugAdamW")
            .field("params", &self.params.len())
            .field("step", &self.step)
            .field("config", &self.config)
            .finish()
    }
}

impl MplugAdamW {
    /// An optimizer over named variables.
    pub fn new(vars: &[(String, Var)], config: OptimizerConfig) -> Result<Self> {
        if vars.is_empty() {
            return Err(Error::invalid("no variables to optimize"));
        }
        let params = vars
            .iter()
            .map(|(name, var)| Param {
                name: name.clone(),
                var: var.clone(),
                moments: None,
                visual: is_visual(name),
                decayed: !exempt_from_decay(name),
            })
            .collect();
        Ok(Self {
            params,
            config,
            step: 0,
            lr_scale: 1.0,
            fused: true,
        })
    }

    /// Updates taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The settings.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Scales both learning rates (for schedules): `lr1 * scale` and `lr2 * scale`.
    pub fn set_lr_scale(&mut self, scale: f64) {
        self.lr_scale = scale;
    }

    /// The current learning rates `(lr1, lr2)`.
    pub fn learning_rates(&self) -> (f64, f64) {
        (
            self.config.lr1 * self.lr_scale,
            self.config.lr2 * self.lr_scale,
        )
    }

    /// One update from the gradients of a backward pass; parameters without a gradient are
    /// left as they are.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_with(|_, var| grads.get(var).cloned())
    }

    /// One update from gradients keyed by parameter name.
    pub fn step_named(&mut self, grads: &HashMap<String, Tensor>) -> Result<()> {
        self.step_with(|name, _| grads.get(name).cloned())
    }

    fn step_with(&mut self, grad_of: impl Fn(&str, &Var) -> Option<Tensor>) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        for p in &mut self.params {
            let Some(g) = grad_of(&p.name, &p.var) else {
                continue;
            };
            let g = &g;
            let lr = if p.visual { c.lr2 } else { c.lr1 } * self.lr_scale;
            let coeffs = coefficients(&c, lr, p.decayed, bias1, bias2_sqrt);
            if self.fused && update_in_place(p, g, &coeffs)? {
                continue;
            }
            let fused = if self.fused {
                fused_update(p, g, &coeffs)?
            } else {
                None
            };
            if let Some((theta, m, v)) = fused {
                p.var.set(&theta)?;
                p.moments = Some((m, v));
                continue;
            }
            let theta = p.var.as_tensor();
            let theta = if p.decayed && c.weight_decay != 0.0 {
                (theta * (1.0 - lr * c.weight_decay))?
            } else {
                theta.clone()
            };
            let g_m = (g * (1.0 - c.beta1))?;
            let g_v = (g.sqr()? * (1.0 - c.beta2))?;
            let (m, v) = match &p.moments {
                Some((m, v)) => (((m * c.beta1)? + g_m)?, ((v * c.beta2)? + g_v)?),
                None => (g_m, g_v),
            };
            let denom = ((v.sqrt()? / bias2_sqrt)? + c.eps)?;
            let update = (m.div(&denom)? * (lr / bias1))?;
            p.var.set(&theta.sub(&update)?)?;
            p.moments = Some((m, v));
        }
        Ok(())
    }

    /// The optimizer state: moments as `"{name}.exp_avg"` / `"{name}.exp_avg_sq"` tensors and the
    /// step count.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut tensors = HashMap::new();
        for p in &self.params {
            if let Some((m, v)) = &p.moments {
                tensors.insert(format!("{}.exp_avg", p.name), m.clone());
                tensors.insert(format!("{}.exp_avg_sq", p.name), v.clone());
            }
        }
        (tensors, self.step)
    }

    /// Restores a state written by [`MplugAdamW::state`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for p in &mut self.params {
            let m = tensors.get(&format!("{}.exp_avg", p.name));
            let v = tensors.get(&format!("{}.exp_avg_sq", p.name));
            p.moments = match (m, v) {
                (Some(m), Some(v)) if m.dims() == p.var.dims() && v.dims() == p.var.dims() => {
                    Some((m.to_device(p.var.device())?, v.to_device(p.var.device())?))
                }
                (None, None) => None,
                _ => {
                    return Err(Error::invalid(format!(
                        "optimizer state for `{}` is missing or has the wrong shape",
                        p.name
                    )))
                }
            };
        }
        self.step = step;
        Ok(())
    }
}

use crate::model::kernels::simd::{self, AdamWScalars};

fn coefficients(
    c: &OptimizerConfig,
    lr: f64,
    decayed: bool,
    bias1: f64,
    bias2_sqrt: f64,
) -> AdamWScalars {
    // Each scalar as candle applies an f64 scalar to an f32 tensor (cast, then `x * a + b`).
    AdamWScalars {
        decay: (decayed && c.weight_decay != 0.0).then_some((1.0 - lr * c.weight_decay) as f32),
        one_minus_beta1: (1.0 - c.beta1) as f32,
        one_minus_beta2: (1.0 - c.beta2) as f32,
        beta1: c.beta1 as f32,
        beta2: c.beta2 as f32,
        inv_bias2_sqrt: (1.0 / bias2_sqrt) as f32,
        eps: c.eps as f32,
        step: (lr / bias1) as f32,
    }
}

/// [`fused_update`] after the first step, writing the parameter and its moments where they
/// are instead of into new tensors; `false` (nothing done) where it does not apply: the first
/// step (no moments yet), other dtypes or devices, non-contiguous or shared moment storage.
///
/// Why: a fresh output for every parameter and moment is fresh memory each step, and the
/// kernel zeroes fresh pages; for a base model that zeroing took a quarter of a training step.
fn update_in_place(p: &Param, g: &Tensor, c: &AdamWScalars) -> Result<bool> {
    use crate::model::kernels::{with_values, with_values_mut};
    use rayon::prelude::*;
    let theta = p.var.as_tensor();
    let Some((m, v)) = &p.moments else {
        return Ok(false);
    };
    let fits = |t: &Tensor| {
        t.device().is_cpu()
            && t.dtype() == candle_core::DType::F32
            && t.dims() == theta.dims()
            && t.is_contiguous()
    };
    // Each storage is locked on its own (the gradient for reading), so all four must differ.
    let key = |t: &Tensor| &*t.storage_and_layout().0 as *const candle_core::Storage as usize;
    let mut keys = [key(theta), key(g), key(m), key(v)];
    keys.sort_unstable();
    let distinct = keys.windows(2).all(|w| w[0] != w[1]);
    if !crate::model::kernels::enabled() || ![theta, g, m, v].into_iter().all(fits) || !distinct {
        return Ok(false);
    }
    with_values(g, |gv| {
        with_values_mut(m, |mv| {
            with_values_mut(v, |vv| {
                with_values_mut(theta, |tv| {
                    const CHUNK: usize = 1 << 14;
                    tv.par_chunks_mut(CHUNK)
                        .zip(mv.par_chunks_mut(CHUNK))
                        .zip(vv.par_chunks_mut(CHUNK))
                        .zip(gv.par_chunks(CHUNK))
                        .for_each(|(((t, m), v), g)| simd::adamw_in_place(c, t, g, m, v));
                    Ok(())
                })
            })
        })
    })?;
    Ok(true)
}

/// The AdamW update of one parameter in one parallel pass over its elements, for f32 CPU
/// tensors of one shape (`None` otherwise, and the composed tensor operations run instead).
///
/// Why by hand: the composed update makes thirteen passes over the parameter, each writing a
/// new tensor (fresh pages), which took more of a base-size training step than the backward
/// pass; this reads the parameter, gradient and moments once and writes each result once.
fn fused_update(
    p: &Param,
    g: &Tensor,
    c: &AdamWScalars,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    use crate::model::kernels::with_values;
    use rayon::prelude::*;
    let theta = p.var.as_tensor();
    let mut operands = vec![theta, g];
    if let Some((m, v)) = &p.moments {
        operands.extend([m, v]);
    }
    let fits = |t: &&Tensor| {
        t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.dims() == theta.dims()
    };
    if !crate::model::kernels::enabled() || !operands.iter().all(fits) {
        return Ok(None);
    }
    let n = theta.elem_count();
    let (mut new_t, mut new_m, mut new_v) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    let mut run = |tv: &[f32], gv: &[f32], moments: Option<(&[f32], &[f32])>| {
        const CHUNK: usize = 1 << 14;
        new_t
            .par_chunks_mut(CHUNK)
            .zip(new_m.par_chunks_mut(CHUNK))
            .zip(new_v.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(i, ((ot, om), ov))| {
                let r = i * CHUNK..i * CHUNK + ot.len();
                let mv = moments.map(|(m, v)| (&m[r.clone()], &v[r.clone()]));
                simd::adamw(c, &tv[r.clone()], &gv[r], mv, ot, om, ov);
            });
        Ok(())
    };
    with_values(theta, |tv| {
        with_values(g, |gv| match &p.moments {
            Some((m, v)) => with_values(m, |mv| with_values(v, |vv| run(tv, gv, Some((mv, vv))))),
            None => run(tv, gv, None),
        })
    })?;
    let (shape, dev) = (theta.shape(), theta.device());
    Ok(Some((
        Tensor::from_vec(new_t, shape, dev)?,
        Tensor::from_vec(new_m, shape, dev)?,
        Tensor::from_vec(new_v, shape, dev)?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The one-pass update gives the composed update's bits: parameters, both moments, over
    /// three steps, for a decayed and an exempt parameter, with zeros and negative zeros.
    #[test]
    fn fused_update_matches_the_composed_one_bit_for_bit() {
        let dev = Device::Cpu;
        let make = || -> Vec<(String, Var)> {
            let mut w: Vec<f32> = (0..5000)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 30.0)
                .collect();
            w[0] = 0.0;
            w[1] = -0.0;
            vec![
                (
                    "text_encoder.w".to_string(),
                    Var::from_vec(w.clone(), (50, 100), &dev).unwrap(),
                ),
                (
                    "visual_encoder.bias".to_string(),
                    Var::from_vec(w[..100].to_vec(), 100, &dev).unwrap(),
                ),
            ]
        };
        let (a, b) = (make(), make());
        let cfg = OptimizerConfig::default();
        let mut fused = MplugAdamW::new(&a, cfg).unwrap();
        let mut composed = MplugAdamW::new(&b, cfg).unwrap();
        composed.fused = false;
        for step in 0..3 {
            let grads = |vars: &[(String, Var)]| -> HashMap<String, Tensor> {
                vars.iter()
                    .map(|(n, v)| {
                        let g: Vec<f32> = (0..v.elem_count())
                            .map(|i| ((i * 13 + step * 7) % 29) as f32 / 7.0 - 2.0)
                            .collect();
                        (n.clone(), Tensor::from_vec(g, v.shape(), &dev).unwrap())
                    })
                    .collect()
            };
            fused.set_lr_scale(1.0 + step as f64);
            composed.set_lr_scale(1.0 + step as f64);
            fused.step_named(&grads(&a)).unwrap();
            composed.step_named(&grads(&b)).unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            };
            for ((_, x), (_, y)) in a.iter().zip(&b) {
                assert_eq!(bits(x.as_tensor()), bits(y.as_tensor()), "step {step}");
            }
            let (sa, _) = fused.state();
            let (sb, _) = composed.state();
            assert_eq!(sa.len(), 4);
            for (k, t) in &sa {
                assert_eq!(bits(t), bits(&sb[k]), "{k} at step {step}");
            }
        }
    }
}
