//! The text decoder (`text_decoder`): BERT layers with causal self-attention and
//! cross-attention to encoder states, and the masked-LM head as output layer (prefix LM).
//!
//! Unlike the reference, decoding can cache keys and values: pass a [`KvCache`] and only the
//! new tokens. Cross-attention keys and values come from [`TextDecoder::cross_states`], computed
//! once per request and shared by every beam.

use super::attention::{causal_mask, padding_mask};
use super::bert::{BertEmbeddings, BertLayer, BertLmHead};
use super::cache::{CrossStates, KvCache};
use crate::config::BertConfig;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `text_decoder`: `bert.embeddings`, `bert.encoder.layer.N` with cross-attention, `cls`.
#[derive(Debug, Clone)]
pub struct TextDecoder {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    cls: BertLmHead,
    vocab_size: usize,
    heads: usize,
}

impl TextDecoder {
    /// Reads `bert.*` (`text_decode_layers` layers) and `cls.predictions.*`; the output matrix
    /// falls back to the word embeddings when the checkpoint ties them.
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let bvb = vb.pp("bert");
        let embeddings = BertEmbeddings::new(cfg, bvb.pp("embeddings"))?;
        let lvb = bvb.pp("encoder").pp("layer");
        let mut layers = (0..cfg.text_decode_layers)
            .map(|i| BertLayer::new(cfg, true, lvb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let mut cls = BertLmHead::new(
            cfg,
            embeddings.word_embeddings(),
            vb.pp("cls").pp("predictions"),
        )?;
        // Decoding multiplies every weight but the cross-attention's keys and values by one
        // row per beam each step: those products read the weights from memory, fastest in
        // panels (a loaded checkpoint; trainable weights stay as they are).
        for layer in &mut layers {
            layer.pack_for_decoding()?;
        }
        cls.pack_for_decoding()?;
        Ok(Self {
            embeddings,
            layers,
            cls,
            vocab_size: cfg.vocab_size,
            heads: cfg.num_attention_heads,
        })
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Vocabulary size of the output layer.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// An empty self-attention cache for this decoder.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Cross-attention keys and values of `states (Be, Le, encoder_width)` with padding mask
    /// `mask (Be, Le)` (ones for real tokens; `None` when all are real).
    pub fn cross_states(&self, states: &Tensor, mask: Option<&Tensor>) -> Result<CrossStates> {
        let heads = self.heads;
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let kv = l.cross_key_value(states)?;
                // Read once a step by the fused kernel: head after head (see `head_major`).
                if super::kernels::applies(&[&kv.k, &kv.v]) {
                    kv.head_major(heads)
                } else {
                    Ok(kv)
                }
            })
            .collect::<Result<_>>()?;
        let mask = mask.map(|m| padding_mask(m, states.dtype())).transpose()?;
        Ok(CrossStates { layers, mask })
    }

    /// Hidden states of `ids (B, L)`, `B` a multiple of the cross states' rows. With a cache,
    /// `ids` are the tokens after the cached ones and the cache grows by `L`. `attention_mask
    /// (B, past + L)` marks padding (ones for real tokens; `None` when all are real).
    pub fn hidden(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cross: &CrossStates,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (_, l) = ids.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let mut h = self.embeddings.forward(ids, past)?;
        let mask = if l == 1 && attention_mask.is_none() {
            None // one new token may attend to every earlier one
        } else {
            Some(causal_mask(l, past, attention_mask, h.dtype(), h.device())?)
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            h = layer.forward(
                &h,
                mask.as_ref(),
                slot,
                Some((&cross.layers[i], cross.mask.as_ref())),
            )?;
        }
        Ok(h)
    }

    /// Vocabulary logits of hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.cls.forward(hidden)
    }

    /// Logits `(B, L, vocab)` of `ids`, as [`TextDecoder::hidden`] then the LM head.
    pub fn forward(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cross: &CrossStates,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.logits(&self.hidden(ids, attention_mask, cross, cache)?)
    }
}
