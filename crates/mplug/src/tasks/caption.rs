//! Image captioning: the decoder reads the visual tokens directly (no fusion encoder).

use super::shifted_token_ce;
use crate::error::Result;
use crate::generate::{beam_search, BeamConfig, Hypothesis};
use crate::model::Mplug;
use candle_core::Tensor;

/// Decoder logits `(B, L, V)` of captions `ids (B, L)` (padding `mask`), teacher-forced and
/// causal, cross-attending to all visual tokens `image_embeds (B, Li, H)`.
pub fn decoder_logits(
    model: &Mplug,
    image_embeds: &Tensor,
    ids: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    let decoder = model.decoder()?;
    crate::model::check_ids(ids, mask, model.config.bert.vocab_size)?;
    let cross = decoder.cross_states(image_embeds, None)?;
    Ok(decoder.forward(ids, Some(mask), &cross, None)?)
}

/// The reference's captioning loss: mean next-token cross-entropy over non-padding targets.
pub fn loss(model: &Mplug, image_embeds: &Tensor, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let logits = decoder_logits(model, image_embeds, ids, mask)?;
    let (ce, counted) = shifted_token_ce(&logits, ids, model.config.bert.pad_token_id)?;
    Ok(ce.sum_all()?.broadcast_div(&counted.sum_all()?)?)
}

/// Captions of visual tokens by beam search (see [`crate::generate`]).
pub fn generate(
    model: &Mplug,
    image_embeds: &Tensor,
    cfg: &BeamConfig,
) -> Result<Vec<Vec<Hypothesis>>> {
    beam_search(model.decoder()?, image_embeds, None, cfg)
}
