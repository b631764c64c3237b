//! The reference's optimizer: AdamW with two learning rates (`lr1` outside the visual encoder,
//! `lr2` inside it) and no weight decay on parameters whose name contains `bias` or
//! `LayerNorm.weight` (the reference's rule, applied to names exactly as it does).

use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::Var;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

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

struct Group {
    visual: bool,
    optimizer: AdamW,
}

/// AdamW over four parameter groups: (visual or not) x (decayed or not).
pub struct MplugAdamW {
    groups: Vec<Group>,
    config: OptimizerConfig,
}

impl std::fmt::Debug for MplugAdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MplugAdamW")
            .field("groups", &self.groups.len())
            .field("config", &self.config)
            .finish()
    }
}

impl MplugAdamW {
    /// Groups named variables and builds one AdamW per non-empty group.
    pub fn new(vars: &[(String, Var)], config: OptimizerConfig) -> Result<Self> {
        if vars.is_empty() {
            return Err(Error::invalid("no variables to optimize"));
        }
        let mut groups = Vec::new();
        for visual in [false, true] {
            for decayed in [true, false] {
                let members: Vec<Var> = vars
                    .iter()
                    .filter(|(n, _)| is_visual(n) == visual && exempt_from_decay(n) != decayed)
                    .map(|(_, v)| v.clone())
                    .collect();
                if members.is_empty() {
                    continue;
                }
                let params = ParamsAdamW {
                    lr: if visual { config.lr2 } else { config.lr1 },
                    beta1: config.beta1,
                    beta2: config.beta2,
                    eps: config.eps,
                    weight_decay: if decayed { config.weight_decay } else { 0.0 },
                };
                groups.push(Group {
                    visual,
                    optimizer: AdamW::new(members, params)?,
                });
            }
        }
        Ok(Self { groups, config })
    }

    /// One update from the gradients of a backward pass.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for g in &mut self.groups {
            g.optimizer.step(grads)?;
        }
        Ok(())
    }

    /// Scales both learning rates (for schedules): `lr1 * scale` and `lr2 * scale`.
    pub fn set_lr_scale(&mut self, scale: f64) {
        for g in &mut self.groups {
            let base = if g.visual {
                self.config.lr2
            } else {
                self.config.lr1
            };
            g.optimizer.set_learning_rate(base * scale);
        }
    }
}
