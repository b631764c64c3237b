//! Operations with a fast inference kernel and a differentiable fallback.
//!
//! candle's fused softmax and LayerNorm kernels have no backward pass. These wrappers use them
//! when nothing needs gradients and the composed (differentiable) forms when an input is, or
//! depends on, a trainable variable, so that training and inference share one model code.

use super::kernels::Activation;
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use std::cell::Cell;

thread_local! {
    /// How linear layers built on this thread hold their weights (see [`with_weight_format`]).
    static FORMAT: Cell<WeightFormat> = const { Cell::new(WeightFormat::F32) };
}

/// How a [`Linear`] holds a weight the fused kernels read (an untracked f32 CPU tensor).
/// Serialized by [`WeightFormat::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// As loaded, f32.
    #[default]
    F32,
    /// Rounded to bf16 ("compact"): see [`with_compact_weights`].
    Bf16,
    /// Quantized to int8 per output, activations per row on every call: see
    /// [`with_int8_weights`].
    Int8,
}

impl WeightFormat {
    /// Its name, as `--dtype` takes it: `f32`, `bf16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Int8 => "int8",
        }
    }
}

/// Runs `build` (a model's construction) with its linear layers' weights held in `format`.
pub fn with_weight_format<R>(format: WeightFormat, build: impl FnOnce() -> R) -> R {
    struct Reset(WeightFormat);
    impl Drop for Reset {
        fn drop(&mut self) {
            FORMAT.set(self.0);
        }
    }
    let _reset = Reset(FORMAT.replace(format));
    build()
}

/// Runs `build` (a model's construction) with its linear layers' weights kept in bf16: half the
/// memory, and half the bytes for decoding to read, while activations, biases, norms and
/// embeddings stay f32 (see [`Linear::new`]; the products' arithmetic is described at
/// [`super::kernels::matmul::linear_bf16`]). Only weights the fused kernels read (untracked CPU
/// tensors) are made compact.
pub fn with_compact_weights<R>(build: impl FnOnce() -> R) -> R {
    with_weight_format(WeightFormat::Bf16, build)
}

/// Runs `build` (a model's construction, e.g. `ModelSource::load` or [`super::Mplug::new`]
/// with an f32 var builder) with its linear layers' weights quantized to int8: a quarter of
/// the memory and of the bytes decoding reads; each product quantizes its input rows and sums
/// in integers, in AVX512-VNNI dot products where the CPU has them (a slow portable loop
/// elsewhere), see [`super::kernels::int8_dots`]. Activations, biases, norms, embeddings and
/// attention stay f32 (the visual tower's attention runs as with compact weights). Only
/// weights the fused kernels read (untracked CPU tensors) are quantized.
pub fn with_int8_weights<R>(build: impl FnOnce() -> R) -> R {
    with_weight_format(WeightFormat::Int8, build)
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        if let Some(y) = super::kernels::grad::softmax_last_dim(x)? {
            return Ok(y);
        }
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
        if tracked {
            if let Some(y) =
                super::kernels::grad::layer_norm(x, &self.weight, &self.bias, self.eps)?
            {
                return Ok(y);
            }
        }
        if let Some(y) = super::kernels::layer_norm(x, &self.weight, &self.bias, self.eps)? {
            return Ok(y);
        }
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
    weight: Weight,
    bias: Option<Tensor>,
}

/// How a [`Linear`] holds its weight.
#[derive(Debug, Clone)]
enum Weight {
    /// A tensor viewed as `(out, in)`.
    Tensor(Tensor),
    /// Packed for products of few rows (see [`Linear::pack_for_few_rows`]).
    Panels(super::kernels::panels::Panels),
    /// Quantized to int8 (see [`with_int8_weights`]).
    Int8(super::kernels::int8_dots::Int8Weight),
}

impl Linear {
    /// A layer from its `(out, in)` weight and optional `(out,)` bias.
    ///
    /// A weight that the fused kernels will read (an untracked f32 CPU tensor, as loaded from a
    /// checkpoint) is stored transposed, `(in, out)` in memory and viewed as `(out, in)`: the
    /// matrix products run fastest on that layout (see [`super::kernels::matmul`]). Trainable
    /// weights stay as they are.
    ///
    /// Built inside [`with_compact_weights`], such a weight is also rounded to bf16 and packed
    /// in compact panels ([`super::kernels::panels`]), the one layout both its products read:
    /// few rows widen it for f32 arithmetic, many multiply in bf16 dot products where the CPU
    /// has them (see [`super::kernels::panels::product`]). Built inside
    /// [`with_int8_weights`], it is quantized to int8 instead
    /// ([`super::kernels::int8_dots`]).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        if super::kernels::applies(&[&weight]) && weight.rank() == 2 {
            let format = FORMAT.get();
            let dtype = if format == WeightFormat::Bf16 {
                DType::BF16
            } else {
                DType::F32
            };
            if let Ok(w) = super::kernels::transposed_weight(&weight, dtype) {
                let packed = match format {
                    WeightFormat::F32 => None,
                    WeightFormat::Bf16 => super::kernels::panels_of(&w)
                        .ok()
                        .flatten()
                        .map(Weight::Panels),
                    WeightFormat::Int8 => {
                        super::kernels::int8_of(&w).ok().flatten().map(Weight::Int8)
                    }
                };
                return Self {
                    weight: packed.unwrap_or(Weight::Tensor(w)),
                    bias,
                };
            }
        }
        Self {
            weight: Weight::Tensor(weight),
            bias,
        }
    }

    /// Repacks an f32 weight the fused kernels read into panels ([`super::kernels::panels`]):
    /// the layout for layers that see a handful of rows at a time (decoding's beams, a
    /// question's tokens), whose products are bound by reading the weight. Products of many
    /// rows run slower in panels than in the transposed layout inside a model (the visual
    /// tower in panels took 0.580-0.606 s against 0.555-0.563 s, in turns), so layers that
    /// always take many rows are not packed. A no-op for other weights (trainable ones,
    /// another device, the kernels off) and for compact and int8 ones, which are packed from
    /// the start.
    pub fn pack_for_few_rows(&mut self) -> Result<()> {
        if let Weight::Tensor(w) = &self.weight {
            if let Some(p) = super::kernels::panels_of(w)? {
                self.weight = Weight::Panels(p);
            }
        }
        Ok(())
    }

    /// How the weight is held.
    pub fn format(&self) -> WeightFormat {
        match &self.weight {
            Weight::Tensor(w) if w.dtype() == DType::BF16 => WeightFormat::Bf16,
            Weight::Tensor(_) => WeightFormat::F32,
            Weight::Panels(p) if p.is_compact() => WeightFormat::Bf16,
            Weight::Panels(_) => WeightFormat::F32,
            Weight::Int8(_) => WeightFormat::Int8,
        }
    }

    /// The `(out, in)` weight as a tensor (rebuilt, f32, when it is held in panels).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            Weight::Tensor(w) => Ok(w.clone()),
            Weight::Panels(p) => Tensor::from_vec(
                p.to_rows(),
                (p.outputs(), p.inputs()),
                &candle_core::Device::Cpu,
            ),
            Weight::Int8(q) => Tensor::from_vec(
                q.to_rows(),
                (q.outputs(), q.inputs()),
                &candle_core::Device::Cpu,
            ),
        }
    }
}

impl Linear {
    fn fused(&self, x: &Tensor, residual: Option<&Tensor>) -> bool {
        super::kernels::applies(&[x])
            && match &self.weight {
                Weight::Tensor(w) => super::kernels::applies_weight(w),
                Weight::Panels(_) | Weight::Int8(_) => true,
            }
            && self
                .bias
                .as_ref()
                .is_none_or(|b| super::kernels::applies(&[b]))
            && residual.is_none_or(|r| super::kernels::applies(&[r]))
    }

    /// `act(x W^T + b)` in one pass after the product when the inputs allow it.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        if self.fused(x, None) {
            return self.fused_forward(x, act, None);
        }
        let y = self.forward_unfused(x)?;
        if y.track_op() {
            if let Some(y) = super::kernels::grad::activation(&y, act)? {
                return Ok(y);
            }
        }
        match act {
            Activation::None => Ok(y),
            Activation::GeluErf => y.gelu_erf(),
            Activation::QuickGelu => &y * candle_nn::ops::sigmoid(&(&y * 1.702)?)?,
        }
    }

    /// `residual + x W^T + b` (`residual` of the output's shape).
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if self.fused(x, Some(residual)) {
            return self.fused_forward(x, Activation::None, Some(residual));
        }
        residual + self.forward_unfused(x)?
    }

    fn fused_forward(
        &self,
        x: &Tensor,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let bias = self.bias.as_ref();
        match &self.weight {
            Weight::Tensor(w) => super::kernels::linear(x, w, bias, act, residual),
            Weight::Panels(p) => super::kernels::linear_panels(x, p, bias, act, residual),
            Weight::Int8(q) => super::kernels::linear_int8(x, q, bias, act, residual),
        }
    }

    fn forward_unfused(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let inner = *dims
            .last()
            .ok_or_else(|| candle_core::Error::Msg("linear on a scalar".into()))?;
        let rows = x.elem_count() / inner.max(1);
        let weight = self.weight()?;
        if x.track_op() || weight.track_op() {
            if let Some(y) = super::kernels::grad::linear(x, &weight, self.bias.as_ref())? {
                return Ok(y);
            }
        }
        // A compact (bf16) weight under f32 inputs is widened for candle's product.
        let w = weight.to_dtype(x.dtype())?;
        let y = x.reshape((rows, inner))?.matmul(&w.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims.to_vec();
        *out.last_mut().expect("non-empty") = w.dim(0)?;
        y.reshape(out)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::None)
    }
}

/// Reads `weight (out, in)` and `bias (out,)`, initialized as candle's `linear` does.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let l = candle_nn::linear(in_dim, out_dim, vb)?;
    Ok(Linear::new(l.weight().clone(), l.bias().cloned()))
}
