//! The skip-connected fusion encoder (`fusion_encoder`).
//!
//! It holds `num_hidden_layers` layers and runs the last `fusion_layers` of them, numbered from
//! 0. A running layer `n` with `n != 0 && n % stride_layer == 0` is *connected attention*: full
//! self-attention and feed-forward over `[visual; text]`, whose visual part is added back to the
//! visual tokens. Every other running layer is *asymmetric co-attention*: text self-attention,
//! then cross-attention to the visual tokens, which stay unchanged. The long visual sequence
//! thus skips most of the costly full self-attention.

use super::bert::{pack_layer, BertAttention, BertFeedForward};
use crate::config::MplugConfig;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `fusion_encoder.encoder.layer.N`.
#[derive(Debug, Clone)]
pub struct FusionLayer {
    attention: BertAttention,
    crossattention: Option<BertAttention>,
    ffn: BertFeedForward,
}

impl FusionLayer {
    /// A connected layer does not read its (unused) `crossattention` weights.
    pub fn new(cfg: &MplugConfig, connected: bool, vb: VarBuilder) -> Result<Self> {
        let b = &cfg.bert;
        let crossattention = if connected {
            None
        } else {
            Some(BertAttention::new(
                b,
                b.encoder_width,
                vb.pp("crossattention"),
            )?)
        };
        let mut layer = Self {
            attention: BertAttention::new(b, b.hidden_size, vb.pp("attention"))?,
            crossattention,
            ffn: BertFeedForward::new(b, &vb)?,
        };
        // A co-attention layer takes a question's few tokens through its self-attention,
        // queries and feed-forward: panels (see `Linear::pack_for_few_rows`). Its keys and
        // values, and all of a connected layer, take the hundreds of visual tokens, which the
        // large products' layout multiplies faster (the tower's products, in turns: 0.555-0.563 s
        // against 0.580-0.606 s in panels).
        if !connected {
            let cross = layer.crossattention.as_mut();
            pack_layer(&mut layer.attention, cross, &mut layer.ffn, false)?;
        }
        Ok(layer)
    }

    /// One layer: returns the new `(visual, text)` states.
    pub fn forward(
        &self,
        image: &Tensor,
        image_mask: &Tensor,
        text: &Tensor,
        text_mask: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        match &self.crossattention {
            Some(cross) => {
                let h = self.attention.forward(text, Some(text_mask))?;
                let kv = cross.self_attn.key_value(image)?;
                let h = cross.forward_kv(&h, &kv, Some(image_mask))?;
                Ok((image.clone(), self.ffn.forward(&h)?))
            }
            None => {
                let li = image.dim(1)?;
                let lt = text.dim(1)?;
                let joint = Tensor::cat(&[image, text], 1)?;
                let mask = Tensor::cat(&[image_mask, text_mask], 3)?;
                let h = self.attention.forward(&joint, Some(&mask))?;
                let h = self.ffn.forward(&h)?;
                let image = (image + h.narrow(1, 0, li)?)?;
                Ok((image, h.narrow(1, li, lt)?))
            }
        }
    }
}

/// `fusion_encoder`: the running fusion layers. Its `embeddings` are never used: the fusion
/// encoder reads the text encoder's output.
#[derive(Debug, Clone)]
pub struct FusionEncoder {
    layers: Vec<FusionLayer>,
}

impl FusionEncoder {
    /// Reads the running layers `encoder.layer.{start..num_hidden_layers}`.
    pub fn new(cfg: &MplugConfig, vb: VarBuilder) -> Result<Self> {
        let b = &cfg.bert;
        let start = Self::first_running_layer(cfg);
        let lvb = vb.pp("encoder").pp("layer");
        let layers = (start..b.num_hidden_layers)
            .map(|i| FusionLayer::new(cfg, cfg.is_connected_layer(i - start), lvb.pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Index of the first held layer that runs.
    pub fn first_running_layer(cfg: &MplugConfig) -> usize {
        cfg.bert
            .num_hidden_layers
            .saturating_sub(cfg.bert.fusion_layers)
    }

    /// Fuses `text (B, Lt, H)` with `image (B, Li, H)` under additive masks `(B, 1, 1, L)`:
    /// returns the fused `(visual, text)` states.
    pub fn forward(
        &self,
        text: &Tensor,
        text_mask: &Tensor,
        image: &Tensor,
        image_mask: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let mut image = image.clone();
        let mut text = text.clone();
        for layer in &self.layers {
            (image, text) = layer.forward(&image, image_mask, &text, text_mask)?;
        }
        Ok((image, text))
    }
}
