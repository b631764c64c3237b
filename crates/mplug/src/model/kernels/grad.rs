//! Differentiable fused operations for training on the CPU: linear layers, LayerNorm, softmax
//! and the activations as candle custom operations with their own backward passes.
//!
//! Why by hand: candle differentiates the composed forms operation by operation. A linear
//! layer's backward there transposes the weight's gradient through a strided copy, sums the
//! bias's gradient through a broadcast reduction and starts every gradient from a zeroed tensor;
//! LayerNorm is nine operations and softmax five, each a pass over memory forward and again
//! backward. For a base-size caption fine-tuning step the backward pass took four times the
//! forward. Here each operation is one pass forward and one backward, and the products run in
//! the same `gemm` kernels as inference ([`super::matmul`]).
//!
//! The values are those of the composed forms up to rounding (the tests below compare outputs
//! and gradients). `MPLUG_CANDLE_OPS=1` turns these off along with the inference kernels.

use super::{matmul, simd, with_values, Activation};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// Whether the training kernels take these tensors: f32 on the CPU, kernels on.
pub fn applies(ts: &[&Tensor]) -> bool {
    super::enabled()
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The contiguous f32 elements a custom operation's operand addresses.
fn operand<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("training kernel: expected an f32 CPU tensor");
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("training kernel: expected a contiguous tensor");
    };
    Ok(&v[start..end])
}

fn tensor(v: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

/// Rows per parallel task over `rows` rows: a few tasks per thread.
fn chunk_rows(rows: usize) -> usize {
    rows.div_ceil(matmul::threads() * 4).max(1)
}

/// `x W^T + b` for `x (m, k)`, `w (n, k)`, `b (n,)`.
struct LinearOp {
    m: usize,
    k: usize,
    n: usize,
}

impl LinearOp {
    fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> (CpuStorage, Shape) {
        let y = matmul::linear(
            x,
            self.m,
            self.k,
            matmul::Weight::Rows(w),
            self.n,
            b,
            Activation::None,
            None,
        );
        (CpuStorage::F32(y), Shape::from((self.m, self.n)))
    }

    /// `(dx, dw, db)` from the output's gradient: `dx = dy W`, `dw = dy^T x`, `db` the column
    /// sums of `dy`; `dx` only when `x` needs it.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        bias: bool,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let (m, k, n) = (self.m, self.k, self.n);
        let threads = matmul::threads();
        with_values(dy, |dy| {
            let dx = if x.track_op() {
                let mut dx = Vec::<f32>::with_capacity(m * k);
                with_values(w, |w| {
                    // SAFETY: `dx` has room for (m, k); `dy` is (m, n), `w` (n, k); every
                    // element is written before `set_len`.
                    unsafe {
                        matmul::gemm(
                            m,
                            k,
                            n,
                            dx.as_mut_ptr(),
                            k,
                            dy.as_ptr(),
                            n,
                            w.as_ptr(),
                            k,
                            1,
                            threads,
                        );
                        dx.set_len(m * k);
                    }
                    Ok(())
                })?;
                Some(tensor(dx, (m, k))?)
            } else {
                None
            };
            let mut dw = Vec::<f32>::with_capacity(n * k);
            with_values(x, |x| {
                // SAFETY: `dw` has room for (n, k); `dy` read transposed is (n, m), `x` (m, k).
                unsafe {
                    matmul::gemm_strided(
                        n,
                        k,
                        m,
                        dw.as_mut_ptr(),
                        k,
                        dy.as_ptr(),
                        1,
                        n,
                        x.as_ptr(),
                        k,
                        1,
                        threads,
                    );
                    dw.set_len(n * k);
                }
                Ok(())
            })?;
            let db = if bias {
                let mut db = vec![0f32; n];
                for row in dy.chunks_exact(n) {
                    db.iter_mut().zip(row).for_each(|(s, g)| *s += *g);
                }
                Some(tensor(db, n)?)
            } else {
                None
            };
            Ok((dx, tensor(dw, (n, k))?, db))
        })
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok(self.forward(operand(s1, l1)?, operand(s2, l2)?, None))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, dy, false)?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok(self.forward(operand(s1, l1)?, operand(s2, l2)?, Some(operand(s3, l3)?)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, dy, true)?;
        Ok((dx, Some(dw), db))
    }
}

/// `x W^T + b` for `x (..., in)`, a `(out, in)` weight and an optional `(out,)` bias, with the
/// backward pass of [`LinearOp`]; `None` when the operands do not fit the kernel (not f32 on
/// the CPU, a weight that is not a contiguous matrix).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    let mut all = vec![x, w];
    all.extend(b);
    if !applies(&all) || w.rank() != 2 || !w.is_contiguous() {
        return Ok(None);
    }
    let (n, k) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&k) || b.is_some_and(|b| b.dims() != [n]) {
        return Ok(None);
    }
    let m = x.elem_count() / k.max(1);
    let op = LinearOp { m, k, n };
    let x2 = x.reshape((m, k))?.contiguous()?;
    let y = match b {
        Some(b) => x2.apply_op3(w, &b.contiguous()?, op)?,
        None => x2.apply_op2(w, op)?,
    };
    let mut out = dims.to_vec();
    *out.last_mut().expect("non-empty") = n;
    Ok(Some(y.reshape(out)?))
}

/// An activation with its backward pass.
struct ActivationOp(Activation);

impl CustomOp1 for ActivationOp {
    fn name(&self) -> &'static str {
        "activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut y = operand(s, l)?.to_vec();
        y.par_chunks_mut(1 << 14)
            .for_each(|c| simd::activate_in_place(c, self.0));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, z: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let mut g = dy.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        with_values(z, |z| {
            g.par_chunks_mut(1 << 14)
                .zip(z.par_chunks(1 << 14))
                .for_each(|(g, z)| simd::activation_grad(z, g, self.0));
            Ok(())
        })?;
        Ok(Some(tensor(g, z.shape().clone())?))
    }
}

/// `act(z)` with its backward pass; `None` when `z` does not fit the kernel.
pub fn activation(z: &Tensor, act: Activation) -> Result<Option<Tensor>> {
    if !applies(&[z]) {
        return Ok(None);
    }
    if act == Activation::None {
        return Ok(Some(z.clone()));
    }
    Ok(Some(z.contiguous()?.apply_op1(ActivationOp(act))?))
}

/// Softmax over the last dimension with its backward pass.
struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let width = l.dims().last().copied().unwrap_or(1).max(1);
        let mut y = operand(s, l)?.to_vec();
        let rows = chunk_rows(y.len() / width);
        y.par_chunks_mut(rows * width)
            .for_each(|c| simd::softmax_rows(c, width, 1.0, &|_| None));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let width = y.dims().last().copied().unwrap_or(1).max(1);
        let mut g = dy.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        with_values(y, |y| {
            let rows = chunk_rows(y.len() / width);
            g.par_chunks_mut(rows * width)
                .zip(y.par_chunks(rows * width))
                .for_each(|(g, y)| simd::softmax_grad(y, g, width));
            Ok(())
        })?;
        Ok(Some(tensor(g, y.shape().clone())?))
    }
}

/// Softmax over the last dimension with its backward pass; `None` when `x` does not fit.
pub fn softmax_last_dim(x: &Tensor) -> Result<Option<Tensor>> {
    if !applies(&[x]) || x.rank() == 0 {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1(SoftmaxOp)?))
}

/// LayerNorm over the last dimension with weight and bias, and its backward pass.
struct LayerNormOp {
    eps: f32,
}

/// Rows per task of LayerNorm's backward pass.
const LAYER_NORM_ROWS: usize = 32;

/// Mean and `1 / sqrt(variance + eps)` of a row (sums in f64).
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row
        .iter()
        .map(|&v| {
            let d = v as f64 - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (operand(s1, l1)?, operand(s2, l2)?, operand(s3, l3)?);
        let width = gamma.len().max(1);
        let mut y = vec![0f32; x.len()];
        let rows = chunk_rows(x.len() / width);
        y.par_chunks_mut(rows * width)
            .zip(x.par_chunks(rows * width))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
                    let (mean, rstd) = moments(x, self.eps);
                    for (((y, x), g), b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
                        *y = (x - mean) * rstd * g + b;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let width = gamma.elem_count().max(1);
        let shape = x.shape().clone();
        let mut dx = vec![0f32; x.elem_count()];
        // Per task: the partial sums of dgamma and dbeta over its rows, added at the end in
        // order. Tasks of a fixed number of rows, not one per thread, so that the sums are the
        // same bits whatever the thread count (data-parallel training relies on it).
        let partials: Vec<(Vec<f32>, Vec<f32>)> = with_values(x, |x| {
            with_values(gamma, |gamma| {
                with_values(dy, |dy| {
                    let rows = LAYER_NORM_ROWS;
                    Ok(dx
                        .par_chunks_mut(rows * width)
                        .zip(x.par_chunks(rows * width))
                        .zip(dy.par_chunks(rows * width))
                        .map(|((dx, x), dy)| {
                            let (mut dg, mut db) = (vec![0f32; width], vec![0f32; width]);
                            let mut xhat = vec![0f32; width];
                            for ((dx, x), dy) in dx
                                .chunks_exact_mut(width)
                                .zip(x.chunks_exact(width))
                                .zip(dy.chunks_exact(width))
                            {
                                let (mean, rstd) = moments(x, self.eps);
                                let (mut a, mut b) = (0f32, 0f32);
                                for i in 0..width {
                                    xhat[i] = (x[i] - mean) * rstd;
                                    let g = dy[i] * gamma[i];
                                    a += g;
                                    b += g * xhat[i];
                                    dg[i] += dy[i] * xhat[i];
                                    db[i] += dy[i];
                                }
                                let (a, b) = (a / width as f32, b / width as f32);
                                for i in 0..width {
                                    dx[i] = rstd * (dy[i] * gamma[i] - a - xhat[i] * b);
                                }
                            }
                            (dg, db)
                        })
                        .collect())
                })
            })
        })?;
        let (mut dg, mut db) = (vec![0f32; width], vec![0f32; width]);
        for (g, b) in partials {
            dg.iter_mut().zip(g).for_each(|(s, v)| *s += v);
            db.iter_mut().zip(b).for_each(|(s, v)| *s += v);
        }
        Ok((
            Some(tensor(dx, shape)?),
            Some(tensor(dg, width)?),
            Some(tensor(db, width)?),
        ))
    }
}

/// LayerNorm over the last dimension with its backward pass; `None` when the operands do not
/// fit the kernel.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let width = gamma.elem_count();
    if !applies(&[x, gamma, beta])
        || x.dims().last() != Some(&width)
        || beta.elem_count() != width
        || gamma.rank() != 1
        || beta.rank() != 1
    {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )?))
}

/// The negative log-likelihood of each row's target under a softmax of the row, with its
/// backward pass `softmax - onehot(target)` (scaled by each row's gradient).
struct TokenNllOp {
    width: usize,
}

/// A row's `log sum exp` (the maximum subtracted, the sum in f64).
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

fn targets_of<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    let CpuStorage::U32(v) = s else {
        candle_core::bail!("token loss: targets must be u32");
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("token loss: targets must be contiguous");
    };
    Ok(&v[start..end])
}

impl CustomOp2 for TokenNllOp {
    fn name(&self) -> &'static str {
        "token-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, t) = (operand(s1, l1)?, targets_of(s2, l2)?);
        let w = self.width;
        if let Some(&bad) = t.iter().find(|&&t| t as usize >= w) {
            candle_core::bail!("token loss: target {bad} outside a vocabulary of {w}");
        }
        let nll: Vec<f32> = x
            .par_chunks(w)
            .zip(t.par_iter())
            .map(|(row, &t)| log_sum_exp(row) - row[t as usize])
            .collect();
        let n = nll.len();
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        t: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let w = self.width;
        let targets = t.to_vec1::<u32>()?;
        let scale = dy.to_vec1::<f32>()?;
        let mut dx = vec![0f32; x.elem_count()];
        with_values(x, |x| {
            dx.par_chunks_mut(w)
                .zip(x.par_chunks(w))
                .zip(targets.par_iter().zip(scale.par_iter()))
                .for_each(|((d, row), (&t, &g))| {
                    let lse = log_sum_exp(row);
                    d.iter_mut()
                        .zip(row)
                        .for_each(|(d, &v)| *d = g * (v - lse).exp());
                    d[t as usize] -= g;
                });
            Ok(())
        })?;
        Ok((Some(tensor(dx, x.shape().clone())?), None))
    }
}

/// `-log softmax(logits)[target]` for each row of `logits (N, V)` and `targets (N,)` (u32),
/// `(N,)`, with its backward pass; `None` when the operands do not fit the kernel.
///
/// Why by hand: the composed form (log-softmax, gather) keeps the `(N, V)` log-probabilities
/// and its backward makes several passes over them and a scatter into zeros; this is one pass
/// each way. (It was written while chasing a slow decoder backward whose cause turned out to
/// be denormal gradients, see [`super::flush_denormals`]; it makes no measurable difference to
/// a base caption step, whose vocabulary pass is small beside the layers.)
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Option<Tensor>> {
    if !applies(&[logits]) || logits.rank() != 2 || targets.dtype() != DType::U32 {
        return Ok(None);
    }
    let (n, width) = logits.dims2()?;
    if targets.dims() != [n] || width == 0 {
        return Ok(None);
    }
    Ok(Some(
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, TokenNllOp { width })?,
    ))
}

/// Multi-head attention `softmax(q k^T / sqrt(d) + mask) v` of contiguous `q`, `k`, `v` `(B, L,
/// H*d)` (as many query as key batch entries), with its backward pass. The forward pass is the
/// inference kernel ([`super::attention::attention`]); the backward pass recomputes each head's
/// probabilities from `q` and `k` (as flash attention does) instead of keeping them.
struct AttentionOp {
    heads: usize,
    /// The additive mask broadcast to `(B, H, Lq, Lk)`.
    mask: Option<Tensor>,
}

/// A contiguous `(B, L, W)` operand of heads `d` wide as [`super::attention::Rows`].
fn rows(data: &[f32], l: usize, w: usize, d: usize) -> super::attention::Rows<'_> {
    super::attention::Rows {
        data,
        offset: 0,
        batch: l * w,
        row: w,
        head: d,
    }
}

impl AttentionOp {
    /// Runs `f` with the mask's view, if any.
    fn with_mask<R>(
        &self,
        f: impl FnOnce(Option<super::attention::Mask>) -> Result<R>,
    ) -> Result<R> {
        match &self.mask {
            None => f(None),
            Some(m) => {
                let (s, _) = m.storage_and_layout();
                f(Some(super::mask_view(&s, m)?))
            }
        }
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, lq, w) = l1.shape().dims3()?;
        let lk = l2.dims()[1];
        let (q, k, v) = (operand(s1, l1)?, operand(s2, l2)?, operand(s3, l3)?);
        let dims = super::attention::Dims {
            bq: b,
            bk: b,
            lq,
            lk,
            heads: self.heads,
            d: w / self.heads,
        };
        let out = self.with_mask(|mask| {
            Ok(super::attention::attention(
                rows(q, lq, w, dims.d),
                rows(k, lk, w, dims.d),
                rows(v, lk, w, dims.d),
                mask,
                dims,
            ))
        })?;
        Ok((CpuStorage::F32(out), Shape::from((b, lq, w))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, lq, w) = q.dims3()?;
        let lk = k.dim(1)?;
        let (heads, d) = (self.heads, w / self.heads);
        let scale = 1.0 / (d as f32).sqrt();
        let mut dq = vec![0f32; b * lq * w];
        let mut dk = vec![0f32; b * lk * w];
        let mut dv = vec![0f32; b * lk * w];
        let (dq_at, dk_at, dv_at) = (
            matmul::SendPtr(dq.as_mut_ptr()),
            matmul::SendPtr(dk.as_mut_ptr()),
            matmul::SendPtr(dv.as_mut_ptr()),
        );
        with_values(q, |q| {
            with_values(k, |k| {
                with_values(v, |v| {
                    with_values(dout, |dout| {
                        self.with_mask(|mask| {
                            (0..b * heads).into_par_iter().for_each(|task| {
                                // Capture the wrappers whole so that the closure is Send.
                                #[allow(clippy::redundant_locals)]
                                let (dq_at, dk_at, dv_at) = (dq_at, dk_at, dv_at);
                                let (bi, h) = (task / heads, task % heads);
                                let qo = bi * lq * w + h * d;
                                let ko = bi * lk * w + h * d;
                                let mut p = vec![0f32; lq * lk];
                                let mut dp = vec![0f32; lq * lk];
                                // SAFETY (every product below): the offsets address head `h` of
                                // batch entry `bi` inside operands of the checked shapes, and
                                // each task writes only its own head's columns of the results.
                                unsafe {
                                    // P = softmax(scale q k^T + mask)
                                    matmul::gemm(
                                        lq,
                                        lk,
                                        d,
                                        p.as_mut_ptr(),
                                        lk,
                                        q.as_ptr().add(qo),
                                        w,
                                        k.as_ptr().add(ko),
                                        1,
                                        w,
                                        1,
                                    );
                                }
                                let mask_row = |r: usize| mask.map(|m| m.row(bi, h, r));
                                simd::softmax_rows(&mut p, lk, scale, &mask_row);
                                unsafe {
                                    // dV = P^T dO
                                    matmul::gemm_strided(
                                        lk,
                                        d,
                                        lq,
                                        dv_at.0.add(ko),
                                        w,
                                        p.as_ptr(),
                                        1,
                                        lk,
                                        dout.as_ptr().add(qo),
                                        w,
                                        1,
                                        1,
                                    );
                                    // dP = dO V^T
                                    matmul::gemm(
                                        lq,
                                        lk,
                                        d,
                                        dp.as_mut_ptr(),
                                        lk,
                                        dout.as_ptr().add(qo),
                                        w,
                                        v.as_ptr().add(ko),
                                        1,
                                        w,
                                        1,
                                    );
                                }
                                // dS = P (dP - rowsum(dP P)), scaled for both products below.
                                simd::softmax_grad(&p, &mut dp, lk);
                                dp.iter_mut().for_each(|g| *g *= scale);
                                unsafe {
                                    // dQ = dS K
                                    matmul::gemm(
                                        lq,
                                        d,
                                        lk,
                                        dq_at.0.add(qo),
                                        w,
                                        dp.as_ptr(),
                                        lk,
                                        k.as_ptr().add(ko),
                                        w,
                                        1,
                                        1,
                                    );
                                    // dK = dS^T Q
                                    matmul::gemm_strided(
                                        lk,
                                        d,
                                        lq,
                                        dk_at.0.add(ko),
                                        w,
                                        dp.as_ptr(),
                                        1,
                                        lk,
                                        q.as_ptr().add(qo),
                                        w,
                                        1,
                                        1,
                                    );
                                }
                            });
                            Ok(())
                        })
                    })
                })
            })
        })?;
        Ok((
            Some(tensor(dq, (b, lq, w))?),
            Some(tensor(dk, (b, lk, w))?),
            Some(tensor(dv, (b, lk, w))?),
        ))
    }
}

/// Multi-head attention over `heads` heads of `q (B, Lq, H*d)`, `k`, `v (B, Lk, H*d)` with an
/// additive `mask` that broadcasts to `(B, H, Lq, Lk)`, and its backward pass; `None` when the
/// operands do not fit the kernel (not f32 on the CPU, key rows shared by several query rows).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let mut all = vec![q, k, v];
    all.extend(mask);
    if !applies(&all) || q.rank() != 3 || k.rank() != 3 {
        return Ok(None);
    }
    let (b, lq, w) = q.dims3()?;
    let (bk, lk, kw) = k.dims3()?;
    if bk != b || kw != w || v.dims() != k.dims() || heads == 0 || !w.is_multiple_of(heads) {
        return Ok(None);
    }
    let mask = match mask {
        Some(m) => match m.broadcast_as((b, heads, lq, lk)) {
            Ok(m) => Some(m),
            Err(_) => return Ok(None),
        },
        None => None,
    };
    let op = AttentionOp { heads, mask };
    Ok(Some(q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        op,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 37 + seed * 11) % 29) as f32 - 14.0) / 9.0)
            .collect()
    }

    fn worst(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Forward values and every gradient of `fused` against `composed` on the same variables,
    /// under a loss that weights each output element differently.
    fn check(
        vars: &[Var],
        fused: impl Fn(&[Var]) -> Tensor,
        composed: impl Fn(&[Var]) -> Tensor,
        tol: f32,
    ) {
        let (a, b) = (fused(vars), composed(vars));
        assert!(worst(&a, &b) < tol, "outputs differ by {}", worst(&a, &b));
        let weights =
            Tensor::from_vec(values(a.elem_count(), 7), a.shape().clone(), &Device::Cpu).unwrap();
        let ga = (a * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (b * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (i, v) in vars.iter().enumerate() {
            let (x, y) = (ga.get(v).unwrap(), gb.get(v).unwrap());
            assert!(worst(x, y) < tol, "gradient {i} differs by {}", worst(x, y));
        }
    }

    fn var(shape: &[usize], seed: usize) -> Var {
        let n = shape.iter().product();
        Var::from_vec(values(n, seed), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn linear_matches_candle_with_and_without_bias() {
        let vars = [var(&[2, 9, 24], 1), var(&[40, 24], 2), var(&[40], 3)];
        check(
            &vars,
            |v| {
                linear(v[0].as_tensor(), v[1].as_tensor(), Some(v[2].as_tensor()))
                    .unwrap()
                    .unwrap()
            },
            |v| {
                v[0].as_tensor()
                    .broadcast_matmul(&v[1].as_tensor().t().unwrap())
                    .unwrap()
                    .broadcast_add(v[2].as_tensor())
                    .unwrap()
            },
            1e-4,
        );
        check(
            &vars[..2],
            |v| {
                linear(v[0].as_tensor(), v[1].as_tensor(), None)
                    .unwrap()
                    .unwrap()
            },
            |v| {
                v[0].as_tensor()
                    .broadcast_matmul(&v[1].as_tensor().t().unwrap())
                    .unwrap()
            },
            1e-4,
        );
    }

    #[test]
    fn layer_norm_matches_candle() {
        let vars = [var(&[3, 5, 16], 4), var(&[16], 5), var(&[16], 6)];
        check(
            &vars,
            |v| {
                layer_norm(v[0].as_tensor(), v[1].as_tensor(), v[2].as_tensor(), 1e-5)
                    .unwrap()
                    .unwrap()
            },
            |v| {
                candle_nn::ops::layer_norm_slow(
                    v[0].as_tensor(),
                    v[1].as_tensor(),
                    v[2].as_tensor(),
                    1e-5,
                )
                .unwrap()
            },
            1e-4,
        );
    }

    #[test]
    fn softmax_matches_candle() {
        let vars = [var(&[2, 3, 4, 11], 8)];
        check(
            &vars,
            |v| softmax_last_dim(v[0].as_tensor()).unwrap().unwrap(),
            |v| candle_nn::ops::softmax(v[0].as_tensor(), candle_core::D::Minus1).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn token_nll_matches_log_softmax_and_gather() {
        let vars = [var(&[6, 13], 10)];
        let targets = Tensor::from_vec(vec![0u32, 12, 5, 5, 7, 1], 6, &Device::Cpu).unwrap();
        check(
            &vars,
            |v| token_nll(v[0].as_tensor(), &targets).unwrap().unwrap(),
            |v| {
                candle_nn::ops::log_softmax(v[0].as_tensor(), candle_core::D::Minus1)
                    .unwrap()
                    .gather(&targets.unsqueeze(1).unwrap(), 1)
                    .unwrap()
                    .squeeze(1)
                    .unwrap()
                    .neg()
                    .unwrap()
            },
            1e-5,
        );
        let bad = Tensor::from_vec(vec![13u32, 0, 0, 0, 0, 0], 6, &Device::Cpu).unwrap();
        assert!(token_nll(vars[0].as_tensor(), &bad).is_err());
    }

    /// The fused attention against candle's per-head operations, without a mask and with a
    /// padding mask, forward and every gradient.
    #[test]
    fn attention_matches_candle_per_head() {
        let vars = [
            var(&[2, 5, 16], 11),
            var(&[2, 7, 16], 12),
            var(&[2, 7, 16], 13),
        ];
        let pad = Tensor::from_vec(
            vec![1f32, 1., 1., 0., 1., 1., 0., 1., 1., 1., 1., 1., 1., 0.],
            (2, 7),
            &Device::Cpu,
        )
        .unwrap();
        let pad = crate::model::attention::padding_mask(&pad, DType::F32).unwrap();
        for mask in [None, Some(&pad)] {
            check(
                &vars,
                |v| {
                    attention(
                        v[0].as_tensor(),
                        v[1].as_tensor(),
                        v[2].as_tensor(),
                        4,
                        mask,
                    )
                    .unwrap()
                    .unwrap()
                },
                |v| {
                    let split = |t: &Tensor| {
                        let (b, l, w) = t.dims3().unwrap();
                        t.reshape((b, l, 4, w / 4))
                            .unwrap()
                            .transpose(1, 2)
                            .unwrap()
                    };
                    let (q, k, val) = (
                        split(v[0].as_tensor()),
                        split(v[1].as_tensor()),
                        split(v[2].as_tensor()),
                    );
                    let s = (q
                        .contiguous()
                        .unwrap()
                        .matmul(&k.t().unwrap().contiguous().unwrap())
                        .unwrap()
                        * 0.5)
                        .unwrap();
                    let s = match mask {
                        Some(m) => s.broadcast_add(m).unwrap(),
                        None => s,
                    };
                    let p = candle_nn::ops::softmax(&s, candle_core::D::Minus1).unwrap();
                    p.matmul(&val.contiguous().unwrap())
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap()
                        .reshape((2, 5, 16))
                        .unwrap()
                },
                1e-5,
            );
        }
    }

    /// Every gradient is the same bits whatever the number of threads (data-parallel training
    /// makes the serial update's bits).
    #[test]
    fn gradients_do_not_depend_on_the_thread_count() {
        let run = |threads: usize| -> Vec<Vec<f32>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let vars = [
                    var(&[3, 70, 32], 14),
                    var(&[32], 15),
                    var(&[32], 16),
                    var(&[48, 32], 17),
                ];
                let v = |i: usize| vars[i].as_tensor();
                let h = layer_norm(v(0), v(1), v(2), 1e-5).unwrap().unwrap();
                let q = linear(&h, v(3), None)
                    .unwrap()
                    .unwrap()
                    .narrow(2, 0, 32)
                    .unwrap();
                let a = attention(&q, &h, &h, 4, None).unwrap().unwrap();
                let loss = softmax_last_dim(&a)
                    .unwrap()
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let grads = loss.backward().unwrap();
                vars.iter()
                    .map(|x| {
                        grads
                            .get(x)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1()
                            .unwrap()
                    })
                    .collect()
            })
        };
        let one = run(1);
        let three = run(3);
        for (i, (a, b)) in one.iter().zip(&three).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "gradient {i} differs between 1 and 3 threads");
        }
    }

    #[test]
    fn activations_match_candle() {
        let vars = [var(&[4, 33], 9)];
        check(
            &vars,
            |v| {
                activation(v[0].as_tensor(), Activation::GeluErf)
                    .unwrap()
                    .unwrap()
            },
            |v| v[0].as_tensor().gelu_erf().unwrap(),
            1e-5,
        );
        check(
            &vars,
            |v| {
                activation(v[0].as_tensor(), Activation::QuickGelu)
                    .unwrap()
                    .unwrap()
            },
            |v| {
                let x = v[0].as_tensor();
                (x * candle_nn::ops::sigmoid(&(x * 1.702).unwrap()).unwrap()).unwrap()
            },
            1e-5,
        );
    }
}
