//! BERT blocks with the checkpoint's names: embeddings, post-LN layers with optional
//! cross-attention, the text encoder, and the masked-LM prediction head.

use super::attention::attend_with_dropout;
use super::cache::LayerKv;
use super::kernels::Activation;
use super::ops::{layer_norm, linear, LayerNorm, Linear};
use crate::config::BertConfig;
use candle_core::{Module, Result, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};

/// `embeddings`: word + token type (0) + absolute position, then LayerNorm.
#[derive(Debug, Clone)]
pub struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    max_positions: usize,
}

impl BertEmbeddings {
    /// Reads `word_embeddings`, `position_embeddings`, `token_type_embeddings`, `LayerNorm`.
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            word_embeddings: embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("word_embeddings"))?,
            position_embeddings: embedding(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_type_embeddings: embedding(
                cfg.type_vocab_size,
                cfg.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// The word embedding matrix `(vocab, hidden)` (the decoder's output matrix when tied).
    pub fn word_embeddings(&self) -> &Tensor {
        self.word_embeddings.embeddings()
    }

    /// Embeds `ids (B, L)` placed after `past` earlier tokens.
    pub fn forward(&self, ids: &Tensor, past: usize) -> Result<Tensor> {
        let (_, l) = ids.dims2()?;
        if past + l > self.max_positions {
            candle_core::bail!(
                "text of {} tokens exceeds the {} position embeddings",
                past + l,
                self.max_positions
            );
        }
        let words = self.word_embeddings.forward(ids)?;
        let positions = Tensor::arange(past as u32, (past + l) as u32, ids.device())?;
        let pos = self.position_embeddings.forward(&positions)?;
        let types = self.token_type_embeddings.embeddings().get(0)?;
        let x = words.broadcast_add(&types)?.broadcast_add(&pos)?;
        super::dropout::hidden(&self.layer_norm.forward(&x)?)
    }
}

/// `attention.self`: query, key and value projections.
#[derive(Debug, Clone)]
pub struct BertSelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    heads: usize,
}

impl BertSelfAttention {
    /// Keys and values read states of width `kv_width` (`encoder_width` for cross-attention).
    pub fn new(cfg: &BertConfig, kv_width: usize, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            query: linear(h, h, vb.pp("query"))?,
            key: linear(kv_width, h, vb.pp("key"))?,
            value: linear(kv_width, h, vb.pp("value"))?,
            heads: cfg.num_attention_heads,
        })
    }

    /// Keys and values of `states (B, L, kv_width)`, each `(B, L, H*d)`.
    pub fn key_value(&self, states: &Tensor) -> Result<LayerKv> {
        let k = self.key.forward(states)?;
        let v = self.value.forward(states)?;
        Ok(LayerKv { k, v })
    }

    /// Attends from `hidden (B, L, H*d)` to precomputed keys and values: `(B, L, H*d)`.
    pub fn attend_to(
        &self,
        hidden: &Tensor,
        kv: &LayerKv,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let q = self.query.forward(hidden)?;
        attend_with_dropout(&q, &kv.k, &kv.v, self.heads, mask)
    }
}

/// `attention.output` / `output`: dense, then LayerNorm of the residual sum.
#[derive(Debug, Clone)]
pub struct BertSelfOutput {
    dense: Linear,
    layer_norm: LayerNorm,
}

impl BertSelfOutput {
    /// Reads `dense` (`in_width` -> hidden) and `LayerNorm`.
    pub fn new(cfg: &BertConfig, in_width: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            dense: linear(in_width, cfg.hidden_size, vb.pp("dense"))?,
            layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    /// `LayerNorm(dropout(dense(x)) + residual)`.
    pub fn forward(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let sum = if super::dropout::active() {
            (super::dropout::hidden(&self.dense.forward(x)?)? + residual)?
        } else {
            self.dense.forward_residual(x, residual)?
        };
        self.layer_norm.forward(&sum)
    }
}

/// `attention` / `crossattention`: attention plus its output block.
#[derive(Debug, Clone)]
pub struct BertAttention {
    /// The `self` projections.
    pub self_attn: BertSelfAttention,
    output: BertSelfOutput,
}

impl BertAttention {
    /// Self-attention (`kv_width = hidden_size`) or cross-attention (`encoder_width`).
    pub fn new(cfg: &BertConfig, kv_width: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: BertSelfAttention::new(cfg, kv_width, vb.pp("self"))?,
            output: BertSelfOutput::new(cfg, cfg.hidden_size, vb.pp("output"))?,
        })
    }

    /// Packs the weights in panels ([`Linear::pack_for_few_rows`]), the keys' and values' only
    /// with `key_value`.
    pub fn pack_for_few_rows(&mut self, key_value: bool) -> Result<()> {
        self.self_attn.query.pack_for_few_rows()?;
        if key_value {
            self.self_attn.key.pack_for_few_rows()?;
            self.self_attn.value.pack_for_few_rows()?;
        }
        self.output.dense.pack_for_few_rows()
    }

    /// Full self-attention over `hidden`.
    pub fn forward(&self, hidden: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let kv = self.self_attn.key_value(hidden)?;
        self.forward_kv(hidden, &kv, mask)
    }

    /// Attention of `hidden` over given keys and values, then the output block.
    pub fn forward_kv(
        &self,
        hidden: &Tensor,
        kv: &LayerKv,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let ctx = self.self_attn.attend_to(hidden, kv, mask)?;
        self.output.forward(&ctx, hidden)
    }
}

/// `intermediate` + `output`: the GELU feed-forward block with its residual LayerNorm.
#[derive(Debug, Clone)]
pub struct BertFeedForward {
    intermediate: Linear,
    output: BertSelfOutput,
}

impl BertFeedForward {
    /// Reads `intermediate.dense` and `output.{dense,LayerNorm}` from the layer's builder.
    pub fn new(cfg: &BertConfig, layer_vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            intermediate: linear(
                cfg.hidden_size,
                cfg.intermediate_size,
                layer_vb.pp("intermediate").pp("dense"),
            )?,
            output: BertSelfOutput::new(cfg, cfg.intermediate_size, layer_vb.pp("output"))?,
        })
    }
}

impl BertFeedForward {
    /// Packs both weights in panels ([`Linear::pack_for_few_rows`]).
    pub fn pack_for_few_rows(&mut self) -> Result<()> {
        self.intermediate.pack_for_few_rows()?;
        self.output.dense.pack_for_few_rows()
    }
}

impl Module for BertFeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.intermediate.forward_act(x, Activation::GeluErf)?;
        self.output.forward(&h, x)
    }
}

/// Packs a layer's weights in panels ([`Linear::pack_for_few_rows`]): its self-attention, its
/// feed-forward block and its cross-attention, whose keys and values only with
/// `cross_key_value`. For [`BertLayer`] and the fusion's layers.
pub fn pack_layer(
    attention: &mut BertAttention,
    cross: Option<&mut BertAttention>,
    ffn: &mut BertFeedForward,
    cross_key_value: bool,
) -> Result<()> {
    attention.pack_for_few_rows(true)?;
    if let Some(c) = cross {
        c.pack_for_few_rows(cross_key_value)?;
    }
    ffn.pack_for_few_rows()
}

/// `encoder.layer.N`: self-attention, optional cross-attention, feed-forward.
#[derive(Debug, Clone)]
pub struct BertLayer {
    attention: BertAttention,
    crossattention: Option<BertAttention>,
    ffn: BertFeedForward,
}

impl BertLayer {
    /// A layer; with `cross` it also reads `crossattention` (keys of width `encoder_width`).
    pub fn new(cfg: &BertConfig, cross: bool, vb: VarBuilder) -> Result<Self> {
        let crossattention = if cross {
            Some(BertAttention::new(
                cfg,
                cfg.encoder_width,
                vb.pp("crossattention"),
            )?)
        } else {
            None
        };
        Ok(Self {
            attention: BertAttention::new(cfg, cfg.hidden_size, vb.pp("attention"))?,
            crossattention,
            ffn: BertFeedForward::new(cfg, &vb)?,
        })
    }

    /// Packs every f32 weight in panels ([`Linear::pack_for_few_rows`]): the text encoder's
    /// layers, which take a question's few tokens as often as many rows.
    pub fn pack_for_few_rows(&mut self) -> Result<()> {
        let cross = self.crossattention.as_mut();
        pack_layer(&mut self.attention, cross, &mut self.ffn, true)
    }

    /// [`BertLayer::pack_for_few_rows`] for a decoder layer: every f32 weight but the
    /// cross-attention's keys and values, which decoding computes once, from all encoder
    /// states, in the layout of large products.
    pub fn pack_for_decoding(&mut self) -> Result<()> {
        let cross = self.crossattention.as_mut();
        pack_layer(&mut self.attention, cross, &mut self.ffn, false)
    }

    /// Keys and values of this layer's cross-attention over encoder states.
    pub fn cross_key_value(&self, states: &Tensor) -> Result<LayerKv> {
        match &self.crossattention {
            Some(c) => c.self_attn.key_value(states),
            None => candle_core::bail!("this layer has no cross-attention"),
        }
    }

    /// Runs the layer. With `cache`, the new tokens' keys and values are appended to it and
    /// attention covers all cached positions. `cross` gives the cross-attention keys, values and
    /// additive mask.
    pub fn forward(
        &self,
        hidden: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<LayerKv>>,
        cross: Option<(&LayerKv, Option<&Tensor>)>,
    ) -> Result<Tensor> {
        let new_kv = self.attention.self_attn.key_value(hidden)?;
        let kv = match cache {
            Some(slot) => {
                let kv = match slot.take() {
                    Some(past) => past.append(&new_kv)?,
                    None => new_kv,
                };
                *slot = Some(kv.clone());
                kv
            }
            None => new_kv,
        };
        let mut h = self.attention.forward_kv(hidden, &kv, mask)?;
        if let (Some(ca), Some((ckv, cmask))) = (&self.crossattention, cross) {
            h = ca.forward_kv(&h, ckv, cmask)?;
        }
        self.ffn.forward(&h)
    }
}

/// `text_encoder`: BERT embeddings and bidirectional layers, no pooler.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
}

impl TextEncoder {
    /// Reads `embeddings` and `encoder.layer.{0..layers}`.
    pub fn new(cfg: &BertConfig, layers: usize, vb: VarBuilder) -> Result<Self> {
        let lvb = vb.pp("encoder").pp("layer");
        let mut layers = (0..layers)
            .map(|i| BertLayer::new(cfg, false, lvb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        for layer in &mut layers {
            layer.pack_for_few_rows()?;
        }
        Ok(Self {
            embeddings: BertEmbeddings::new(cfg, vb.pp("embeddings"))?,
            layers,
        })
    }

    /// The word embedding matrix `(vocab, hidden)`.
    pub fn word_embeddings(&self) -> &Tensor {
        self.embeddings.word_embeddings()
    }

    /// Encodes `ids (B, L)` with additive `mask (B, 1, 1, L)`: `(B, L, hidden)`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let mut h = self.embeddings.forward(ids, 0)?;
        for layer in &self.layers {
            h = layer.forward(&h, Some(mask), None, None)?;
        }
        Ok(h)
    }
}

/// `cls.predictions`: dense + GELU + LayerNorm, then the vocabulary projection with its bias.
#[derive(Debug, Clone)]
pub struct BertLmHead {
    dense: Linear,
    layer_norm: LayerNorm,
    decoder: Linear,
}

impl BertLmHead {
    /// Reads `transform.*`, `decoder.weight` and `bias`. The reference ties the output matrix
    /// to the word embeddings (`tied`), so a checkpoint's `decoder.weight` holds the same
    /// values; the head then shares the embedding tensor (and, in training, its gradient). A
    /// `decoder.weight` that differs is used as a separate matrix; a missing one is tied.
    pub fn new(cfg: &BertConfig, tied: &Tensor, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let weight = if vb.contains_tensor("decoder.weight") {
            let stored = vb.get((cfg.vocab_size, h), "decoder.weight")?;
            let same = stored.dims() == tied.dims()
                && (&stored - tied)?
                    .abs()?
                    .max_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_scalar::<f32>()?
                    == 0.0;
            if same {
                tied.clone()
            } else {
                stored
            }
        } else {
            tied.clone()
        };
        // `bias` and `decoder.bias` are one parameter in the reference; checkpoints hold either
        // or both. Both are read so that neither is reported as unused.
        let has_decoder_bias = vb.contains_tensor("decoder.bias");
        let bias = if vb.contains_tensor("bias") || !has_decoder_bias {
            let b = vb.get(cfg.vocab_size, "bias")?;
            if has_decoder_bias {
                vb.get(cfg.vocab_size, "decoder.bias")?;
            }
            b
        } else {
            vb.get(cfg.vocab_size, "decoder.bias")?
        };
        Ok(Self {
            dense: linear(h, h, vb.pp("transform").pp("dense"))?,
            layer_norm: layer_norm(h, cfg.layer_norm_eps, vb.pp("transform").pp("LayerNorm"))?,
            decoder: Linear::new(weight, Some(bias)),
        })
    }
}

impl BertLmHead {
    /// Packs the transform and the vocabulary projection for products of a few rows (one per
    /// beam, each decoding step): see [`Linear::pack_for_few_rows`].
    pub fn pack_for_decoding(&mut self) -> Result<()> {
        self.dense.pack_for_few_rows()?;
        self.decoder.pack_for_few_rows()
    }
}

impl Module for BertLmHead {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.dense.forward_act(x, Activation::GeluErf)?;
        let h = self.layer_norm.forward(&h)?;
        self.decoder.forward(&h)
    }
}
