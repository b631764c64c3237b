//! Decoding state kept outside the model, so that one loaded model serves many requests:
//! per-layer self-attention keys and values that grow by one position a step, and the
//! cross-attention keys and values of the encoder states, computed once per request.

use candle_core::{Result, Tensor};

/// Keys and values of one attention layer, each `(B, L, H*d)` (heads side by side, as the
/// projections give them).
#[derive(Debug, Clone)]
pub struct LayerKv {
    /// Keys.
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
}

impl LayerKv {
    /// Appends `new` along the sequence.
    pub fn append(&self, new: &LayerKv) -> Result<LayerKv> {
        Ok(LayerKv {
            k: Tensor::cat(&[&self.k, &new.k], 1)?,
            v: Tensor::cat(&[&self.v, &new.v], 1)?,
        })
    }

    /// Keeps the rows `idx` (a u32 tensor) in that order.
    pub fn select(&self, idx: &Tensor) -> Result<LayerKv> {
        Ok(LayerKv {
            k: self.k.index_select(idx, 0)?,
            v: self.v.index_select(idx, 0)?,
        })
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.k.dim(1).unwrap_or(0)
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The decoder's self-attention cache: one slot per layer.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<LayerKv>>,
}

impl KvCache {
    /// An empty cache for `layers` layers.
    pub fn new(layers: usize) -> Self {
        KvCache {
            layers: vec![None; layers],
        }
    }

    /// Positions already decoded.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, LayerKv::len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the rows `idx` of every layer, in that order (beam reordering, finished rows).
    pub fn select(&self, idx: &Tensor) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(|kv| kv.select(idx)).transpose())
            .collect::<Result<_>>()?;
        Ok(KvCache { layers })
    }
}

/// Encoder states prepared for the decoder's cross-attention: each layer's keys and values
/// `(Be, Le, H*d)` and the additive mask `(Be, 1, 1, Le)`. A decoder batch of `Be * G` rows
/// reads row `i / G` of these, so beams and candidate answers share one copy.
#[derive(Debug, Clone)]
pub struct CrossStates {
    pub(crate) layers: Vec<LayerKv>,
    pub(crate) mask: Option<Tensor>,
}

impl CrossStates {
    /// Number of encoder rows.
    pub fn batch(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.k.dim(0).ok())
            .unwrap_or(0)
    }

    /// Keeps the encoder rows `idx`, in that order.
    pub fn select(&self, idx: &Tensor) -> Result<CrossStates> {
        Ok(CrossStates {
            layers: self
                .layers
                .iter()
                .map(|l| l.select(idx))
                .collect::<Result<_>>()?,
            mask: self
                .mask
                .as_ref()
                .map(|m| m.index_select(idx, 0))
                .transpose()?,
        })
    }
}
