//! Multi-head attention arithmetic shared by every tower, and the additive masks the reference
//! uses (0 where attended, -10000 where masked).

use candle_core::{DType, Result, Tensor, D};

/// Value added to the scores of masked positions, as in the reference.
pub const MASKED: f64 = -10000.0;

/// `(B, L, H*d)` -> `(B, H, L, d)`, contiguous.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, w) = x.dims3()?;
    x.reshape((b, l, heads, w / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// `(B, H, L, d)` -> `(B, L, H*d)`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, l, h * d))
}

/// Scaled dot-product attention, `softmax(q k^T / sqrt(d) + mask) v`, over `heads` heads.
///
/// `q` is `(Bq, Lq, H*d)`; `k` and `v` are `(Bk, Lk, H*d)` (or `(Bk, Lk, H, d)`, see
/// [`super::cache::LayerKv::head_major`]) with `Bq = Bk * G`: each key row
/// serves `G` consecutive query rows (beams of one image, or candidate answers of one question)
/// without being copied. The additive `mask` broadcasts to `(Bk, 1, G*Lq, Lk)` when `G > 1` and
/// to `(Bq, H, Lq, Lk)` otherwise. Returns `(Bq, Lq, H*d)`. Untracked f32 CPU inputs run the
/// fused kernel ([`super::kernels::attention`]); the rest, candle's operations per head.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    attend_impl(q, k, v, heads, mask, false, false)
}

/// [`attend`] for models with compact (bf16) weights: the fused kernel's products in bf16 dot
/// products where the CPU has them ([`super::kernels::attention_bf16`]); otherwise as
/// [`attend`].
pub fn attend_bf16(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    attend_impl(q, k, v, heads, mask, false, true)
}

/// [`attend`] with dropout of the attention probabilities in training (see
/// [`super::dropout`]), as BERT's attention has; CLIP's has none.
pub fn attend_with_dropout(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    attend_impl(q, k, v, heads, mask, true, false)
}

fn attend_impl(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    dropout: bool,
    bf16: bool,
) -> Result<Tensor> {
    let fused = super::kernels::applies(&[q, k, v])
        && mask.is_none_or(|m| super::kernels::applies(&[m]))
        && !(dropout && super::dropout::active());
    if fused && bf16 {
        return super::kernels::attention_bf16(q, k, v, heads, mask);
    }
    if fused {
        return super::kernels::attention(q, k, v, heads, mask);
    }
    // Keys and values stored head after head (`(B, L, H, d)`, see `LayerKv::head_major`) side
    // by side again for the operations below.
    let side_by_side = |t: &Tensor| -> Result<Tensor> {
        match *t.dims() {
            [b, l, h, d] => t.contiguous()?.reshape((b, l, h * d)),
            _ => Ok(t.clone()),
        }
    };
    let (k, v) = (&side_by_side(k)?, &side_by_side(v)?);
    if !(dropout && super::dropout::active()) {
        if let Some(out) = super::kernels::grad::attention(q, k, v, heads, mask)? {
            return Ok(out);
        }
    }
    let (q, k, v) = (
        split_heads(q, heads)?,
        split_heads(k, heads)?,
        split_heads(v, heads)?,
    );
    merge_heads(&attend_heads(&q, &k, &v, mask, dropout)?)
}

/// [`attend`] on split heads: `q (Bq, H, Lq, d)`, `k`, `v (Bk, H, Lk, d)` -> `(Bq, H, Lq, d)`.
fn attend_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    dropout: bool,
) -> Result<Tensor> {
    let probs_of = |scores: &Tensor| -> Result<Tensor> {
        let p = super::ops::softmax_last_dim(scores)?;
        if dropout {
            super::dropout::attention(&p)
        } else {
            Ok(p)
        }
    };
    let (bq, h, lq, d) = q.dims4()?;
    let bk = k.dim(0)?;
    let scale = 1.0 / (d as f64).sqrt();
    if bq == bk {
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        return probs_of(&scores)?.matmul(v);
    }
    let g = super::kernels::group_size(bq, bk)?;
    let q = q
        .reshape((bk, g, h, lq, d))?
        .transpose(1, 2)?
        .reshape((bk, h, g * lq, d))?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    probs_of(&scores)?
        .matmul(v)?
        .reshape((bk, h, g, lq, d))?
        .transpose(1, 2)?
        .reshape((bq, h, lq, d))
}

/// A padding mask `(B, L)` of ones and zeros (any dtype) -> additive `(B, 1, 1, L)`.
pub fn padding_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, l) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    ((1.0 - m)? * MASKED)?
        .to_dtype(dtype)?
        .reshape((b, 1, 1, l))
}

/// Causal mask for `lq` new tokens after `past` cached ones, combined with an optional padding
/// mask `(B, past + lq)`: additive `(B or 1, 1, lq, past + lq)`.
pub fn causal_mask(
    lq: usize,
    past: usize,
    padding: Option<&Tensor>,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let lk = past + lq;
    let allowed: Vec<f32> = (0..lq)
        .flat_map(|i| (0..lk).map(move |j| if j <= past + i { 1.0 } else { 0.0 }))
        .collect();
    let causal = Tensor::from_vec(allowed, (1, 1, lq, lk), device)?;
    let allowed = match padding {
        Some(p) => {
            let (b, l) = p.dims2()?;
            if l != lk {
                candle_core::bail!("attention mask covers {l} tokens, expected {lk}");
            }
            let p = p.to_dtype(DType::F32)?.reshape((b, 1, 1, lk))?;
            causal.broadcast_mul(&p)?
        }
        None => causal,
    };
    ((1.0 - allowed)? * MASKED)?.to_dtype(dtype)
}

/// Softmax over the last dimension in log space.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::log_softmax(x, D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused kernel against candle's per-head operations, with beams sharing key rows
    /// (G = 3) and a padding mask, and with a causal mask and no sharing.
    #[test]
    fn fused_kernel_matches_candle_per_head() {
        let dev = Device::Cpu;
        let (bk, g, lq, lk, heads, d) = (2, 3, 2, 5, 4, 8);
        let w = heads * d;
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 37 + seed * 11) % 23) as f32 - 11.0) / 7.0)
                .collect()
        };
        let q = Tensor::from_vec(values(bk * g * lq * w, 1), (bk * g, lq, w), &dev).unwrap();
        let k = Tensor::from_vec(values(bk * lk * w, 2), (bk, lk, w), &dev).unwrap();
        let v = Tensor::from_vec(values(bk * lk * w, 3), (bk, lk, w), &dev).unwrap();
        let pad = Tensor::from_vec(
            vec![1f32, 1., 1., 0., 0., 1., 1., 1., 1., 0.],
            (bk, lk),
            &dev,
        )
        .unwrap();
        let pad = padding_mask(&pad, DType::F32).unwrap();
        let causal = causal_mask(lq, lk - lq, None, DType::F32, &dev).unwrap();
        let kq = Tensor::from_vec(values(bk * lq * w, 4), (bk, lq, w), &dev).unwrap();
        for (q, mask) in [(&q, &pad), (&kq, &causal)] {
            let fused = crate::model::kernels::attention(q, &k, &v, heads, Some(mask)).unwrap();
            let split = |t: &Tensor| split_heads(t, heads).unwrap();
            let plain = merge_heads(
                &attend_heads(&split(q), &split(&k), &split(&v), Some(mask), false).unwrap(),
            )
            .unwrap();
            let worst = crate::model::max_abs_diff(&fused, &plain);
            assert!(
                worst < 1e-5,
                "fused and per-head attention differ by {worst}"
            );
        }
    }
}
