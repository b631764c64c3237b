//! Decoding state kept outside the model, so that one loaded model serves many requests:
//! per-layer self-attention keys and values that grow by one position a step, and the
//! cross-attention keys and values of the encoder states, computed once per request.

use candle_core::{Result, Tensor};

/// Keys and values of one attention layer, each `(B, L, H*d)` (heads side by side, as the
/// projections give them), or `(B, L, H, d)` views of memory laid out head after head (see
/// [`LayerKv::head_major`]).
#[derive(Debug, Clone)]
pub struct LayerKv {
    /// Keys.
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
}

impl LayerKv {
    /// Appends `new` along the sequence (both side by side, `(B, L, H*d)`).
    pub fn append(&self, new: &LayerKv) -> Result<LayerKv> {
        if self.k.rank() != 3 || new.k.rank() != 3 {
            candle_core::bail!("only keys and values with heads side by side grow");
        }
        Ok(LayerKv {
            k: Tensor::cat(&[&self.k, &new.k], 1)?,
            v: Tensor::cat(&[&self.v, &new.v], 1)?,
        })
    }

    /// Keeps the rows `idx` (a u32 tensor) in that order.
    pub fn select(&self, idx: &Tensor) -> Result<LayerKv> {
        let pick = |t: &Tensor| -> Result<Tensor> {
            if t.rank() == 4 {
                // The head-major memory, `(B, H, L, d)` contiguous, is selected as such.
                t.transpose(1, 2)?.index_select(idx, 0)?.transpose(1, 2)
            } else {
                t.index_select(idx, 0)
            }
        };
        Ok(LayerKv {
            k: pick(&self.k)?,
            v: pick(&self.v)?,
        })
    }

    /// The same keys and values as `(B, L, H, d)` views of `(B, H, L, d)` memory: each head's
    /// positions one after another. Decoding reads the encoder states' keys and values once a
    /// step for a handful of beams; head after head that read is one sequential stream per
    /// head instead of `d` values out of every `H*d`: a base decoding step (12 layers over 589
    /// states, two threads) took 17.8 ms against 19.3 (`examples/vqa_phases` with `STEPS=1`,
    /// the two builds in turns). The attention kernel reads either layout
    /// ([`super::kernels::attention::Rows`]).
    pub fn head_major(&self, heads: usize) -> Result<LayerKv> {
        let regroup = |t: &Tensor| -> Result<Tensor> {
            let (b, l, w) = t.dims3()?;
            if heads == 0 || !w.is_multiple_of(heads) {
                candle_core::bail!("{w} columns do not split into {heads} heads");
            }
            t.reshape((b, l, heads, w / heads))?
                .transpose(1, 2)?
                .contiguous()?
                .transpose(1, 2)
        };
        Ok(LayerKv {
            k: regroup(&self.k)?,
            v: regroup(&self.v)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// Head-major keys and values hold the same `(B, L, H, d)` elements as the side-by-side
    /// ones, keep them through a selection of rows (reordered and repeated), and refuse to
    /// grow. Fails if the regrouping or the selection of its memory mixes heads, positions or
    /// rows.
    #[test]
    fn head_major_keys_keep_their_elements_through_a_selection() {
        let (b, l, heads, d) = (3, 5, 4, 2);
        let values = |seed: u32| -> Tensor {
            let data: Vec<f32> = (0..(b * l * heads * d) as u32)
                .map(|i| (i * 31 + seed) as f32)
                .collect();
            Tensor::from_vec(data, (b, l, heads * d), &Device::Cpu).unwrap()
        };
        let kv = LayerKv {
            k: values(1),
            v: values(2),
        };
        let hm = kv.head_major(heads).unwrap();
        assert_eq!(hm.k.dims(), &[b, l, heads, d]);
        assert_eq!(hm.len(), l);
        let idx = Tensor::from_vec(vec![2u32, 0, 2], 3, &Device::Cpu).unwrap();
        let (plain, picked) = (kv.select(&idx).unwrap(), hm.select(&idx).unwrap());
        for (a, h) in [(&kv.k, &hm.k), (&plain.k, &picked.k), (&plain.v, &picked.v)] {
            let side_by_side = a.reshape((a.dim(0).unwrap(), l, heads, d)).unwrap();
            let diff = (side_by_side - h)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(D::Minus1)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0);
        }
        assert!(hm.append(&kv).is_err());
        assert!(
            kv.head_major(3).is_err(),
            "8 columns do not split into 3 heads"
        );
    }
}
