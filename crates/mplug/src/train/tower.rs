//! Pre-training the visual tower on its own, before mPLUG's pre-training: multi-label image
//! classification from the tower's class token (`mplug pretrain-tower`).
//!
//! The released models start their tower from CLIP, which learned what images hold from 400
//! million image-text pairs; a tower trained from scratch together with the text towers, on a
//! few thousand images, learns little of it (README, "What the table says"). This stage is the
//! small-scale stand-in: a linear head on the class token of `visual_encoder.visual` (the ViT
//! alone, before `visn_fc`) learns which labels apply to an image, each label a yes/no
//! question answered by a sigmoid (binary cross-entropy), so that an image may hold several.
//! The trained tower then starts `mplug pretrain --init-clip` like CLIP's.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::Mplug;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};

/// Checkpoint prefix of the label head's weights (`label_head.weight`, `label_head.bias`).
pub const LABEL_HEAD: &str = "label_head";

/// A linear classifier of image labels on the class token of the visual tower.
#[derive(Debug, Clone)]
pub struct LabelHead {
    linear: Linear,
    labels: Vec<String>,
}

impl LabelHead {
    /// A head for `labels` on a tower of `width` channels, its weights read (or, from a
    /// `VarMap` builder, created) under `label_head`.
    pub fn new(width: usize, labels: Vec<String>, vb: VarBuilder) -> Result<Self> {
        if labels.is_empty() {
            return Err(Error::invalid("a label head needs at least one label"));
        }
        let linear = candle_nn::linear(width, labels.len(), vb.pp(LABEL_HEAD))?;
        Ok(Self { linear, labels })
    }

    /// The labels, in the order of the logits.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Label logits `(B, labels)` of normalized images `(B, 3, R, R)`: the head on the class
    /// token of `model`'s vision transformer.
    pub fn logits(&self, model: &Mplug, images: &Tensor) -> Result<Tensor> {
        let tokens = model
            .visual
            .visual
            .forward(&images.to_dtype(model.dtype())?)?;
        let class = tokens.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(self.linear.forward(&class)?)
    }

    /// Targets `(B, labels)` of the dataset samples `samples`: 1 where the label applies, 0
    /// elsewhere. A sample's label that the head does not know is an error naming it.
    pub fn targets(&self, dataset: &Dataset, samples: &[usize], device: &Device) -> Result<Tensor> {
        let n = self.labels.len();
        let mut t = vec![0f32; samples.len() * n];
        for (row, &i) in samples.iter().enumerate() {
            let s = &dataset.samples[i];
            for label in &s.labels {
                let k = self.labels.binary_search(label).map_err(|_| {
                    Error::invalid(format!(
                        "{}: image {} has the label {label:?}, which the head does not know \
                         (it knows {} labels)",
                        dataset.source.display(),
                        s.image,
                        n
                    ))
                })?;
                t[row * n + k] = 1.0;
            }
        }
        Ok(Tensor::from_vec(t, (samples.len(), n), device)?)
    }
}

/// Binary cross-entropy of `logits` against 0/1 `targets` (both `(B, labels)`), averaged over
/// images and labels, computed stably as `max(x, 0) - x t + log(1 + exp(-|x|))`.
pub fn label_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let x = logits.to_dtype(DType::F32)?;
    let t = targets.to_dtype(DType::F32)?;
    let softplus = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    let loss = ((x.relu()? - (&x * &t)?)? + softplus)?;
    Ok(loss.mean_all()?)
}

/// How well label logits (label applies where the logit is positive) match the targets.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LabelScores {
    /// Images scored.
    pub images: usize,
    /// Share of images whose predicted label set is exactly their true one.
    pub exact: f64,
    /// Share of predicted labels that apply.
    pub precision: f64,
    /// Share of applying labels that are predicted.
    pub recall: f64,
}

impl LabelScores {
    /// Scores logits `(B, labels)` against 0/1 targets of the same shape.
    pub fn of(logits: &Tensor, targets: &Tensor) -> Result<Self> {
        let predicted = logits.gt(0.0)?.to_dtype(DType::F32)?;
        let t = targets.to_dtype(DType::F32)?;
        let hits = (&predicted * &t)?.sum_all()?.to_scalar::<f32>()? as f64;
        let n_predicted = predicted.sum_all()?.to_scalar::<f32>()? as f64;
        let n_true = t.sum_all()?.to_scalar::<f32>()? as f64;
        let wrong = predicted.ne(&t)?.to_dtype(DType::F32)?.sum(D::Minus1)?;
        let exact = wrong.eq(0f32)?.to_dtype(DType::F32)?.sum_all()?;
        let images = logits.dim(0)?;
        Ok(Self {
            images,
            exact: exact.to_scalar::<f32>()? as f64 / images.max(1) as f64,
            precision: hits / n_predicted.max(1.0),
            recall: hits / n_true.max(1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_is_binary_cross_entropy() {
        let d = Device::Cpu;
        let x = Tensor::new(&[[2f32, -1.0], [0.0, 30.0]], &d).unwrap();
        let t = Tensor::new(&[[1f32, 0.0], [1.0, 0.0]], &d).unwrap();
        // -ln sigmoid(x) for a label that applies, -ln(1 - sigmoid(x)) = softplus(x) for one
        // that does not; softplus written out in f64 so that x = 30 keeps its precision.
        let softplus = |v: f64| v.max(0.0) + (-v.abs()).exp().ln_1p();
        let want = (softplus(-2.0) + softplus(-1.0) + softplus(-0.0) + softplus(30.0)) / 4.0;
        let got = label_loss(&x, &t).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn scores_count_exact_sets_and_labels() {
        let d = Device::Cpu;
        let x = Tensor::new(&[[2f32, -1.0, 1.0], [-3.0, 1.0, -1.0]], &d).unwrap();
        let t = Tensor::new(&[[1f32, 0.0, 1.0], [1.0, 1.0, 0.0]], &d).unwrap();
        let s = LabelScores::of(&x, &t).unwrap();
        assert_eq!(s.images, 2);
        assert!((s.exact - 0.5).abs() < 1e-12);
        assert!((s.precision - 1.0).abs() < 1e-12);
        assert!((s.recall - 0.75).abs() < 1e-12);
    }
}
