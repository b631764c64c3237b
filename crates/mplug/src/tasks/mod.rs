//! Inference and training-mode losses for each task, as the reference computes them.

pub mod caption;
pub mod grounding;
pub mod pretrain;
pub mod retrieval;
pub mod video;
pub mod vqa;

use crate::error::Result;
use crate::model::attention::log_softmax;
use candle_core::{DType, Tensor, D};

/// Next-token cross-entropy of teacher-forced decoder `logits (B, L, V)` for `ids (B, L)`:
/// position `t` predicts `ids[t + 1]`; targets equal to `pad` are ignored. Returns the
/// per-token losses `(B, L-1)` (zero at ignored positions) and the mask of counted positions.
pub fn shifted_token_ce(logits: &Tensor, ids: &Tensor, pad: u32) -> Result<(Tensor, Tensor)> {
    let (b, l, v) = logits.dims3()?;
    let targets = ids
        .narrow(1, 1, l - 1)?
        .to_dtype(DType::U32)?
        .contiguous()?;
    let counted = targets.ne(pad)?.to_dtype(DType::F32)?;
    let shifted = logits.narrow(1, 0, l - 1)?.to_dtype(DType::F32)?;
    if let Some(nll) = crate::model::kernels::grad::token_nll(
        &shifted.reshape((b * (l - 1), v))?,
        &targets.flatten_all()?,
    )? {
        let ce = (nll.reshape((b, l - 1))? * &counted)?;
        return Ok((ce, counted));
    }
    let logp = log_softmax(&shifted)?;
    let picked = logp
        .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
        .squeeze(D::Minus1)?;
    let ce = (picked.neg()? * &counted)?;
    debug_assert_eq!(ce.dims(), &[b, l - 1]);
    Ok((ce, counted))
}

/// Repeats rows of `x` along dim 0: row `i` appears `counts[i]` times, in order.
pub fn repeat_rows(x: &Tensor, counts: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = counts
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| std::iter::repeat_n(i as u32, n))
        .collect();
    let n = idx.len();
    Ok(x.index_select(&Tensor::from_vec(idx, n, x.device())?, 0)?)
}

/// Top `k` of each row of `x (B, N)`: indices and values, best first (ties by lower index).
pub fn topk_rows(x: &Tensor, k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
    let rows = x.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut idx: Vec<(usize, f32)> = row.into_iter().enumerate().collect();
            idx.sort_by(|a, b| b.1.total_cmp(&a.1));
            idx.truncate(k);
            idx
        })
        .collect())
}
