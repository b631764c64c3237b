//! Initialization from the reference's starting points: a BERT checkpoint for the text towers
//! and a CLIP checkpoint for the visual tower, as the reference builds its models before
//! fine-tuning or pre-training.
//!
//! BERT layer `i` initializes text-encoder layer `i` (for the first `text_encoder_layers`),
//! fusion layer `i` (the fusion encoder holds `num_hidden_layers` layers and runs the last
//! `fusion_layers`, so the running ones start from the BERT layers after the text encoder's) and
//! decoder layer `i`; embeddings go to the text encoder and the decoder, and BERT's MLM head to
//! the decoder's LM head and the pre-training MLM head. Cross-attention and the heads BERT lacks
//! keep their fresh initialization.

use super::Trainable;
use crate::checkpoint::Checkpoint;
use crate::config::MplugConfig;
use crate::error::{Error, Result};
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// What [`Trainable::load_partial`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartialLoad {
    /// Variables set from the source.
    pub loaded: Vec<String>,
    /// Variables the source has no tensor for (they keep their initialization).
    pub missing: Vec<String>,
}

impl Trainable {
    /// Sets every variable whose name is in `tensors` (shapes must match); the others keep
    /// their values.
    pub fn load_partial(&self, tensors: &HashMap<String, Tensor>) -> Result<PartialLoad> {
        load_partial(&self.named_vars(), tensors)
    }
}

/// Sets each of `vars` whose name is in `tensors` (shapes must match, converted to the
/// variable's dtype and device); the others keep their values.
pub fn load_partial(
    vars: &[(String, Var)],
    tensors: &HashMap<String, Tensor>,
) -> Result<PartialLoad> {
    let mut report = PartialLoad::default();
    for (name, var) in vars {
        match tensors.get(name) {
            // A scalar and a one-element vector are the same parameter (the ITC
            // temperature is a scalar in released checkpoints, `(1,)` here).
            Some(t)
                if t.dims() == var.dims()
                    || (t.elem_count() == var.elem_count() && t.rank().max(var.rank()) <= 1) =>
            {
                let t = t.to_device(var.device())?.to_dtype(var.dtype())?;
                var.set(&t.reshape(var.shape())?)?;
                report.loaded.push(name.clone());
            }
            Some(t) => {
                return Err(Error::invalid(format!(
                    "initial value of `{name}` has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                )))
            }
            None => report.missing.push(name.clone()),
        }
    }
    Ok(report)
}

/// Maps a BERT checkpoint (Hugging Face `BertModel` / `BertForMaskedLM` keys, with or without
/// the `bert.` prefix) onto mPLUG's text towers.
pub fn bert_tensors(bert: &Checkpoint, config: &MplugConfig) -> Result<HashMap<String, Tensor>> {
    let b = &config.bert;
    let mut out = HashMap::new();
    let mut found_layers = 0usize;
    for key in bert.keys() {
        let t = bert.tensor(key)?;
        let k = key.strip_prefix("bert.").unwrap_or(key);
        if let Some(rest) = k.strip_prefix("embeddings.") {
            out.insert(format!("text_encoder.embeddings.{rest}"), t.clone());
            out.insert(format!("text_decoder.bert.embeddings.{rest}"), t);
        } else if let Some(rest) = k.strip_prefix("encoder.layer.") {
            let (i, tail) = rest.split_once('.').unwrap_or((rest, ""));
            let Ok(i) = i.parse::<usize>() else { continue };
            found_layers = found_layers.max(i + 1);
            if i < b.text_encoder_layers {
                out.insert(format!("text_encoder.encoder.layer.{i}.{tail}"), t.clone());
            }
            if i < b.num_hidden_layers {
                out.insert(
                    format!("fusion_encoder.encoder.layer.{i}.{tail}"),
                    t.clone(),
                );
            }
            if i < b.text_decode_layers {
                out.insert(format!("text_decoder.bert.encoder.layer.{i}.{tail}"), t);
            }
        } else if let Some(rest) = k.strip_prefix("cls.predictions.") {
            out.insert(format!("text_decoder.cls.predictions.{rest}"), t.clone());
            out.insert(format!("fusion_encoder.cls.predictions.{rest}"), t);
        }
    }
    if found_layers == 0 {
        return Err(bert.error("holds no BERT encoder layers (`encoder.layer.N.*`)"));
    }
    Ok(out)
}

/// Maps a CLIP checkpoint onto the visual tower: OpenAI's layout (`visual.*`, as the
/// reference loads it) or Hugging Face's `CLIPVisionModel` (`vision_model.*`, separate q/k/v
/// projections packed here into `in_proj`); the tower of an mPLUG checkpoint
/// (`visual_encoder.visual.*`, for example one trained on its own beforehand) is taken as it is.
pub fn clip_tensors(clip: &Checkpoint) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let root = "visual_encoder.visual.";
    // The tower of an mPLUG checkpoint (or a file of it alone) is already in our layout.
    for key in clip.keys() {
        // CLIP's own projection (`proj`) is left out, as from OpenAI's layout below: the
        // model projects with `vision_proj`.
        if key.starts_with(root) && key != format!("{root}proj") {
            out.insert(key.to_string(), clip.tensor(key)?);
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    for key in clip.keys() {
        if let Some(rest) = key.strip_prefix("visual.") {
            if rest != "proj" {
                out.insert(format!("{root}{rest}"), clip.tensor(key)?);
            }
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    let hf = |k: &str| clip.contains(&format!("vision_model.{k}"));
    let need = |k: &str| {
        clip.get(&format!("vision_model.{k}"))?
            .ok_or_else(|| clip.error(format!("lacks `vision_model.{k}`")))
    };
    if !hf("embeddings.patch_embedding.weight") {
        return Err(clip.error("is neither an OpenAI CLIP (`visual.*`) nor a Hugging Face CLIP vision model (`vision_model.*`)"));
    }
    out.insert(
        format!("{root}conv1.weight"),
        need("embeddings.patch_embedding.weight")?,
    );
    out.insert(
        format!("{root}class_embedding"),
        need("embeddings.class_embedding")?,
    );
    out.insert(
        format!("{root}positional_embedding"),
        need("embeddings.position_embedding.weight")?,
    );
    for (ours, theirs) in [("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")] {
        for p in ["weight", "bias"] {
            out.insert(format!("{root}{ours}.{p}"), need(&format!("{theirs}.{p}"))?);
        }
    }
    let mut i = 0;
    while hf(&format!("encoder.layers.{i}.self_attn.q_proj.weight")) {
        let l = |k: &str| need(&format!("encoder.layers.{i}.{k}"));
        let ours = format!("{root}transformer.resblocks.{i}.");
        let w = Tensor::cat(
            &[
                l("self_attn.q_proj.weight")?,
                l("self_attn.k_proj.weight")?,
                l("self_attn.v_proj.weight")?,
            ],
            0,
        )?;
        let b = Tensor::cat(
            &[
                l("self_attn.q_proj.bias")?,
                l("self_attn.k_proj.bias")?,
                l("self_attn.v_proj.bias")?,
            ],
            0,
        )?;
        out.insert(format!("{ours}attn.in_proj_weight"), w);
        out.insert(format!("{ours}attn.in_proj_bias"), b);
        for (o, t) in [
            ("attn.out_proj", "self_attn.out_proj"),
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ] {
            for p in ["weight", "bias"] {
                out.insert(format!("{ours}{o}.{p}"), l(&format!("{t}.{p}"))?);
            }
        }
        i += 1;
    }
    Ok(out)
}

/// The visual positional embedding's name in an mPLUG checkpoint.
pub const POSITIONAL_EMBEDDING: &str = "visual_encoder.visual.positional_embedding";

/// The positional embedding of a CLIP checkpoint resized to the configuration's grid (class
/// token kept, bilinear), as the reference does when the image size differs.
pub fn fit_positional_embedding(
    tensors: &mut HashMap<String, Tensor>,
    config: &MplugConfig,
) -> Result<()> {
    if let Some(pe) = tensors.get(POSITIONAL_EMBEDDING) {
        if pe.dim(0)? != config.num_visual_tokens() {
            let resized = crate::model::resize_pos_embed(pe, config.grid_size())?;
            tensors.insert(POSITIONAL_EMBEDDING.to_string(), resized);
        }
    }
    Ok(())
}

/// A 2D sine-cosine positional embedding `(1 + grid^2, width)` for a visual tower trained from
/// nothing (the fixed table of MAE and MoCo v3, here only a starting value): the class token's
/// row is zero; in patch `(row, col)`'s row, the first half of the channels encodes `col` and
/// the second half `row`, each as `sin(p w_k)` for `k < width / 4` then `cos(p w_k)`, with
/// `w_k = 10000^(-k / (width / 4))`.
///
/// Why: a random embedding as CLIP initializes it (standard deviation `width^-0.5`) is a tenth
/// of the patch embedding's size, and with no smoothness between neighbouring patches; in a
/// tiny model trained for minutes the visual tower's tokens then keep almost no linear trace
/// of where they are (the README's grounding reading), while this table keeps it readable.
pub fn sincos_positional_embedding(grid: usize, width: usize) -> Result<Tensor> {
    if width == 0 || !width.is_multiple_of(4) {
        return Err(Error::Config(format!(
            "a sine-cosine positional embedding needs a vision width divisible by 4, got {width}"
        )));
    }
    let q = width / 4;
    let freqs: Vec<f64> = (0..q)
        .map(|k| 10000f64.powf(-(k as f64) / q as f64))
        .collect();
    let mut values = vec![0f32; width];
    for row in 0..grid {
        for col in 0..grid {
            for p in [col, row] {
                values.extend(freqs.iter().map(|w| (p as f64 * w).sin() as f32));
                values.extend(freqs.iter().map(|w| (p as f64 * w).cos() as f32));
            }
        }
    }
    Ok(Tensor::from_vec(
        values,
        (1 + grid * grid, width),
        &candle_core::Device::Cpu,
    )?)
}

impl Trainable {
    /// Sets the visual positional embedding to [`sincos_positional_embedding`] for the
    /// configuration's grid and width (`mplug pretrain --sincos-positions`).
    pub fn init_sincos_positions(&self, config: &MplugConfig) -> Result<()> {
        let table = sincos_positional_embedding(config.grid_size(), config.vision.width)?;
        let tensors = HashMap::from([(POSITIONAL_EMBEDDING.to_string(), table)]);
        if self.load_partial(&tensors)?.loaded.len() != 1 {
            return Err(Error::invalid(
                "the model has no visual positional embedding to initialize",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sincos_table_layout() {
        let t = sincos_positional_embedding(3, 8).unwrap();
        assert_eq!(t.dims(), &[10, 8]);
        let rows = t.to_vec2::<f32>().unwrap();
        assert!(rows[0].iter().all(|&v| v == 0.0), "class token row is zero");
        // Patch (row 0, col 0): sin 0 = 0, cos 0 = 1 in both halves.
        assert_eq!(rows[1], vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
        // Patch (row 1, col 2) is token 1 + 3 + 2: columns first (p = 2), then rows (p = 1);
        // w = [1, 0.01].
        let r = &rows[6];
        let expect = [2f32.sin(), 0.02f32.sin(), 2f32.cos(), 0.02f32.cos()];
        for (a, b) in r[..4].iter().zip(expect) {
            assert!((a - b).abs() < 1e-6);
        }
        let expect = [1f32.sin(), 0.01f32.sin(), 1f32.cos(), 0.01f32.cos()];
        for (a, b) in r[4..].iter().zip(expect) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!(sincos_positional_embedding(3, 6).is_err());
    }
}
