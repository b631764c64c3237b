//! Visual grounding: the decoder starts from `[unused339]` and generates four coordinate tokens
//! `[unused340]..[unused676]` (337 bins) giving the box `(cx, cy, w, h)` as fractions of the
//! padded square input.

use super::shifted_token_ce;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::model::Mplug;
use candle_core::{DType, Device, Tensor, D};

/// A box as the model predicts it: centre and size, as fractions of the square input.
pub type BoxCxCyWh = [f32; 4];

/// The grounding vocabulary: prefix token and coordinate tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroundingTokens {
    /// `[unused339]`, the decoder's start token.
    pub prefix: u32,
    /// `[unused340]`, coordinate 0.
    pub first_coordinate: u32,
    /// Coordinate bins: values are `(token - first_coordinate) / bins`, `bins + 1` tokens.
    pub bins: u32,
}

impl Default for GroundingTokens {
    /// The BERT uncased vocabulary of every released model (`[unusedN]` is id `N + 5` for
    /// `N >= 99`) and the reference's 336 bins.
    fn default() -> Self {
        GroundingTokens {
            prefix: 344,
            first_coordinate: 345,
            bins: 336,
        }
    }
}

impl GroundingTokens {
    /// The checkpoint buffers that carry this vocabulary with the weights, as the reference's
    /// grounding checkpoints do and [`GroundingTokens::from_checkpoint`] reads them:
    /// `prefix_ids` (the start token) and `target_ids` (the `bins + 1` coordinate tokens).
    pub fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        let device = candle_core::Device::Cpu;
        let targets: Vec<i64> = (0..=self.bins as i64)
            .map(|k| self.first_coordinate as i64 + k)
            .collect();
        let n = targets.len();
        Ok(vec![
            (
                "prefix_ids".to_string(),
                Tensor::from_vec(vec![self.prefix as i64], 1, &device)?,
            ),
            (
                "target_ids".to_string(),
                Tensor::from_vec(targets, n, &device)?,
            ),
        ])
    }

    /// Reads the `prefix_ids` and `target_ids` buffers of a grounding checkpoint, or the
    /// defaults when it has none.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        let (Some(prefix), Some(targets)) = (ckpt.get("prefix_ids")?, ckpt.get("target_ids")?)
        else {
            return Ok(Self::default());
        };
        let prefix = prefix
            .flatten_all()?
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()?;
        let targets = targets
            .flatten_all()?
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()?;
        let bad = || {
            ckpt.error("`prefix_ids` / `target_ids` buffers are not a prefix token and consecutive coordinate tokens")
        };
        if prefix.len() != 1 || targets.len() < 2 || targets.windows(2).any(|w| w[1] != w[0] + 1) {
            return Err(bad());
        }
        Ok(GroundingTokens {
            prefix: u32::try_from(prefix[0]).map_err(|_| bad())?,
            first_coordinate: u32::try_from(targets[0]).map_err(|_| bad())?,
            bins: (targets.len() - 1) as u32,
        })
    }

    fn check(&self, vocab: usize) -> Result<()> {
        if (self.first_coordinate + self.bins) as usize >= vocab || self.prefix as usize >= vocab {
            return Err(Error::invalid(format!(
                "grounding tokens up to {} fall outside the vocabulary of {vocab}",
                self.first_coordinate + self.bins
            )));
        }
        Ok(())
    }

    /// Additive logit mask `(vocab,)`: 0 on coordinate tokens, -10000 elsewhere.
    fn logit_mask(&self, vocab: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let lo = self.first_coordinate as usize;
        let hi = lo + self.bins as usize;
        let m: Vec<f32> = (0..vocab)
            .map(|v| {
                if (lo..=hi).contains(&v) {
                    0.0
                } else {
                    -10000.0
                }
            })
            .collect();
        Ok(Tensor::from_vec(m, vocab, device)?.to_dtype(dtype)?)
    }

    fn value(&self, token: u32) -> f32 {
        (token as f32 - self.first_coordinate as f32) / self.bins as f32
    }
}

fn fused_states(
    model: &Mplug,
    image_embeds: &Tensor,
    ids: &Tensor,
    mask: &Tensor,
) -> Result<super::vqa::QuestionStates> {
    super::vqa::encode_question(model, image_embeds, ids, mask)
}

/// Predicts one box per (image, expression) pair: four greedy steps after the prefix token,
/// restricted to the coordinate tokens.
pub fn predict(
    model: &Mplug,
    image_embeds: &Tensor,
    ids: &Tensor,
    mask: &Tensor,
    tokens: &GroundingTokens,
) -> Result<Vec<BoxCxCyWh>> {
    let decoder = model.decoder()?;
    tokens.check(decoder.vocab_size())?;
    let q = fused_states(model, image_embeds, ids, mask)?;
    let b = q.states.dim(0)?;
    let device = q.states.device();
    let cross = decoder.cross_states(&q.states, Some(&q.mask))?;
    let mut cache = decoder.new_cache();
    let mut next = Tensor::full(tokens.prefix, (b, 1), device)?;
    let lo = tokens.first_coordinate as usize;
    let n = tokens.bins as usize + 1;
    let mut steps: Vec<Vec<u32>> = Vec::with_capacity(4);
    while steps.len() < 4 {
        let logits = decoder.forward(&next, None, &cross, Some(&mut cache))?;
        let coord_logits = logits.squeeze(1)?.narrow(D::Minus1, lo, n)?;
        let best: Vec<u32> = coord_logits
            .argmax(D::Minus1)?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|t| t + tokens.first_coordinate)
            .collect();
        next = Tensor::from_vec(best.clone(), (b, 1), device)?;
        steps.push(best);
    }
    let coords = (0..b)
        .map(|row| std::array::from_fn(|c| tokens.value(steps[c][row])))
        .collect();
    Ok(coords)
}

/// Coordinate tokens of target boxes `(B, 4)` (clamped to [0, 1], floored to bins).
pub fn target_tokens(targets: &Tensor, tokens: &GroundingTokens) -> Result<Tensor> {
    let t = targets.to_dtype(DType::F32)?.clamp(0f32, 1f32)?;
    let bins = (t * tokens.bins as f64)?.floor()?;
    Ok((bins + tokens.first_coordinate as f64)?.to_dtype(DType::U32)?)
}

/// The reference's weighted sequence loss for target boxes `(B, 4)` in `(cx, cy, w, h)`.
///
/// Token cross-entropies (logits restricted to coordinate tokens by a -10000 mask) are weighted
/// by the L1 error (clamped to [0, 5]) and the GIoU loss of the teacher-forced argmax box.
/// The reference multiplies a `(B, 1, 4)` loss by `(B, 4)` and `(B, 1)` weights, which
/// broadcasts to `(B, B, 4)` before the mean; that arithmetic is kept so that losses and
/// gradients match the released training.
pub fn loss(
    model: &Mplug,
    image_embeds: &Tensor,
    ids: &Tensor,
    mask: &Tensor,
    targets: &Tensor,
    tokens: &GroundingTokens,
) -> Result<Tensor> {
    let decoder = model.decoder()?;
    tokens.check(decoder.vocab_size())?;
    let (b, four) = targets.dims2()?;
    if four != 4 {
        return Err(Error::invalid(format!(
            "target boxes have shape {:?}, expected (B, 4)",
            targets.dims()
        )));
    }
    let q = fused_states(model, image_embeds, ids, mask)?;
    let device = q.states.device().clone();
    let prefix = Tensor::full(tokens.prefix, (b, 1), &device)?;
    let seq = Tensor::cat(&[&prefix, &target_tokens(targets, tokens)?], 1)?; // (B, 5)
    let cross = decoder.cross_states(&q.states, Some(&q.mask))?;
    let logits = decoder.forward(&seq, None, &cross, None)?;
    let logits = logits.broadcast_add(&tokens.logit_mask(
        decoder.vocab_size(),
        logits.dtype(),
        &device,
    )?)?;
    // Every target is a coordinate token, never padding: use an id outside the vocabulary.
    let (ce, _) = shifted_token_ce(&logits, &seq, u32::MAX)?; // (B, 4)

    let pred_tokens = logits
        .narrow(1, 0, 4)?
        .argmax(D::Minus1)?
        .to_dtype(DType::U32)?
        .to_vec2::<u32>()?;
    let pred: Vec<BoxCxCyWh> = pred_tokens
        .iter()
        .map(|r| {
            [
                tokens.value(r[0]),
                tokens.value(r[1]),
                tokens.value(r[2]),
                tokens.value(r[3]),
            ]
        })
        .collect();
    let tgt = targets.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut w_l1 = Vec::with_capacity(b * 4);
    let mut w_giou = Vec::with_capacity(b);
    for (p, t) in pred.iter().zip(&tgt) {
        w_l1.extend((0..4).map(|c| (p[c] - t[c]).abs().clamp(0.0, 5.0)));
        w_giou.push(
            1.0 - generalized_iou(
                &cxcywh_to_xyxy(p),
                &cxcywh_to_xyxy(&[t[0], t[1], t[2], t[3]]),
            ),
        );
    }
    let w_l1 = Tensor::from_vec(w_l1, (1, b, 4), &device)?;
    let w_giou = Tensor::from_vec(w_giou, (1, b, 1), &device)?;
    let weighted = ce
        .reshape((b, 1, 4))?
        .broadcast_mul(&w_l1)?
        .broadcast_mul(&w_giou)?; // (B, B, 4)
    Ok(weighted.mean_all()?)
}

/// Which of the `grid x grid` patch tokens (after the class token) overlap a box
/// `(cx, cy, w, h)` given as fractions of the square input: `1 + grid^2` values, row-major,
/// 1 inside and 0 outside, the class token's 1.
pub fn box_patch_mask(target: &BoxCxCyWh, grid: usize) -> Vec<f32> {
    let [x0, y0, x1, y1] = cxcywh_to_xyxy(target);
    let g = grid as f32;
    let overlaps = |i: usize, lo: f32, hi: f32| (i as f32) / g < hi && (i as f32 + 1.0) / g > lo;
    let mut out = Vec::with_capacity(1 + grid * grid);
    out.push(1.0);
    for row in 0..grid {
        for col in 0..grid {
            let inside = overlaps(row, y0, y1) && overlaps(col, x0, x1);
            out.push(if inside { 1.0 } else { 0.0 });
        }
    }
    out
}

/// `(cx, cy, w, h)` -> `(x0, y0, x1, y1)`.
pub fn cxcywh_to_xyxy(b: &[f32; 4]) -> [f32; 4] {
    [
        b[0] - 0.5 * b[2],
        b[1] - 0.5 * b[3],
        b[0] + 0.5 * b[2],
        b[1] + 0.5 * b[3],
    ]
}

/// Generalized IoU of two `(x0, y0, x1, y1)` boxes, with the reference's 1e-5 guards.
pub fn generalized_iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area = |x: &[f32; 4]| (x[2] - x[0]) * (x[3] - x[1]);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = area(a) + area(b) - inter;
    let iou = inter / (union + 1e-5);
    let ew = (a[2].max(b[2]) - a[0].min(b[0])).max(0.0);
    let eh = (a[3].max(b[3]) - a[1].min(b[1])).max(0.0);
    let enclosing = ew * eh;
    iou - (enclosing - union) / (enclosing + 1e-5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn giou_of_identical_and_disjoint_boxes() {
        let a = [0.0, 0.0, 1.0, 1.0];
        assert!((generalized_iou(&a, &a) - 1.0).abs() < 1e-4);
        let b = [2.0, 0.0, 3.0, 1.0];
        // enclosing 3, union 2: iou 0 - (3 - 2) / 3
        assert!((generalized_iou(&a, &b) + 1.0 / 3.0).abs() < 1e-4);
    }

    #[test]
    fn box_patch_mask_marks_the_overlapped_patches_row_major() {
        // x in [0.25, 0.5] is column 1 of 4; y in [0.1, 0.6] rows 0, 1 and 2.
        let m = box_patch_mask(&[0.375, 0.35, 0.25, 0.5], 4);
        assert_eq!(m.len(), 17);
        assert_eq!(m[0], 1.0, "the class token stays visible");
        let inside: Vec<usize> = (0..16).filter(|&p| m[1 + p] == 1.0).collect();
        assert_eq!(inside, vec![1, 5, 9]);
        // A box that only touches a patch's edge does not overlap it.
        let m = box_patch_mask(&[0.5, 0.5, 0.5, 0.5], 2);
        assert_eq!(m, vec![1.0; 5]);
        let m = box_patch_mask(&[0.25, 0.25, 0.5, 0.5], 2);
        assert_eq!(m, vec![1.0, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn box_conversion() {
        assert_eq!(cxcywh_to_xyxy(&[0.5, 0.5, 0.2, 0.4]), [0.4, 0.3, 0.6, 0.7]);
    }
}
