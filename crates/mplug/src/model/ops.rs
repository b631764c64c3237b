//! Operations with a fast inference kernel and a differentiable fallback.
//!
//! candle's fused softmax and LayerNorm kernels have no backward pass. These wrappers use them
//! when nothing needs gradients and the composed (differentiable) forms when an input is, or
//! depends on, a trainable variable, so that training and inference share one model code.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// LayerNorm with weight and bias over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// A LayerNorm from its parameters.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let tracked = x.track_op() || self.weight.track_op() || self.bias.track_op();
        if tracked || !x.is_contiguous() {
            candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps as f32)
        } else {
            candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)
        }
    }
}

/// Reads `weight` (initialized to ones) and `bias` (zeros) of a LayerNorm of `size`.
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
    let bias = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?;
    Ok(LayerNorm::new(weight, bias, eps))
}

/// A linear layer `x W^T + b` that folds every leading dimension into one matrix product.
///
/// candle's `Linear` multiplies a `(B, L, in)` input batch by batch, which for decoding
/// (`L = 1`, a handful of beams) means several matrix-vector products instead of one
/// matrix product.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer from its `(out, in)` weight and optional `(out,)` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The `(out, in)` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let inner = *dims
            .last()
            .ok_or_else(|| candle_core::Error::Msg("linear on a scalar".into()))?;
        let rows = x.elem_count() / inner.max(1);
        let y = x.reshape((rows, inner))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims.to_vec();
        *out.last_mut().expect("non-empty") = self.weight.dim(0)?;
        y.reshape(out)
    }
}

/// Reads `weight (out, in)` and `bias (out,)`, initialized as candle's `linear` does.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let l = candle_nn::linear(in_dim, out_dim, vb)?;
    Ok(Linear::new(l.weight().clone(), l.bias().cloned()))
}
