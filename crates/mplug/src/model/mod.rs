//! The mPLUG model: visual tower, text encoder, skip-connected fusion encoder, text decoder and
//! the retrieval heads, each built from the checkpoint keys it owns.

pub mod attention;
pub mod bert;
pub mod cache;
pub mod decoder;
pub mod dropout;
pub mod fusion;
pub mod kernels;
pub mod ops;
pub mod vision;

pub use bert::TextEncoder;
pub use cache::{CrossStates, KvCache, LayerKv};
pub use decoder::TextDecoder;
pub use fusion::FusionEncoder;
pub use vision::{resize_pos_embed, VisualEncoder};

use crate::checkpoint::Checkpoint;
use crate::config::MplugConfig;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use ops::{linear, Linear};
use std::fmt;

/// The tasks mPLUG is fine-tuned for; each needs its own parts of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// Image captioning: visual tower and decoder.
    Caption,
    /// Visual question answering: all towers and the decoder.
    Vqa,
    /// Image-text retrieval: towers, fusion, ITC projections and the ITM head.
    Retrieval,
    /// Visual grounding: towers, fusion and a decoder over coordinate tokens.
    Grounding,
    /// Pre-training (ITC, ITM, MLM, PrefixLM): every part, the ITC temperature and an MLM head
    /// on the fusion encoder's text output.
    Pretrain,
}

impl Task {
    /// Every task.
    pub const ALL: [Task; 5] = [
        Task::Caption,
        Task::Vqa,
        Task::Retrieval,
        Task::Grounding,
        Task::Pretrain,
    ];

    /// The task's name as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Task::Caption => "caption",
            Task::Vqa => "vqa",
            Task::Retrieval => "retrieval",
            Task::Grounding => "grounding",
            Task::Pretrain => "pretrain",
        }
    }

    /// Parses a task name.
    pub fn parse(name: &str) -> Result<Task> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown task `{name}` (expected caption, vqa, retrieval, grounding or pretrain)"
                ))
            })
    }

    /// Guesses the task a checkpoint was fine-tuned for from its keys. Caption and VQA
    /// checkpoints share one layout; both answer `Vqa`, which can also caption.
    pub fn detect(ckpt: &Checkpoint) -> Option<Task> {
        if ckpt.contains("bbox_prob_mask") || ckpt.contains("prefix_ids") {
            Some(Task::Grounding)
        } else if ckpt.has_prefix("text_decoder.") {
            Some(if ckpt.has_prefix("text_encoder.") {
                Task::Vqa
            } else {
                Task::Caption
            })
        } else if ckpt.contains("itm_head.weight") {
            Some(Task::Retrieval)
        } else {
            None
        }
    }

    fn needs(self) -> Parts {
        match self {
            Task::Pretrain => Parts {
                text: true,
                fusion: true,
                decoder: true,
                heads: true,
            },
            Task::Caption => Parts {
                text: false,
                fusion: false,
                decoder: true,
                heads: false,
            },
            Task::Vqa => Parts {
                text: true,
                fusion: true,
                decoder: true,
                heads: false,
            },
            Task::Retrieval => Parts {
                text: true,
                fusion: true,
                decoder: false,
                heads: true,
            },
            Task::Grounding => Parts {
                text: true,
                fusion: true,
                decoder: true,
                heads: false,
            },
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy)]
struct Parts {
    text: bool,
    fusion: bool,
    decoder: bool,
    heads: bool,
}

/// The ITC projections and the ITM head of retrieval models.
#[derive(Debug, Clone)]
pub struct RetrievalHeads {
    /// `vision_proj`: visual [CLS] -> ITC space.
    pub vision_proj: Linear,
    /// `text_proj`: text [CLS] -> ITC space.
    pub text_proj: Linear,
    /// `itm_head`: fused [CLS] -> (no match, match) logits.
    pub itm_head: Linear,
    /// `temp`: the ITC temperature, shape `(1,)` (0.07 when the checkpoint has none; clamped to
    /// [0.001, 0.5] where training uses it).
    pub temp: Tensor,
}

/// The pre-training model's extras (its ITC temperature is in [`RetrievalHeads`]).
#[derive(Debug, Clone)]
pub struct PretrainHeads {
    /// `fusion_encoder.cls.predictions`: MLM head on the fused text, tied to the text
    /// encoder's word embeddings.
    pub mlm: bert::BertLmHead,
}

/// A loaded mPLUG model. Parts a task does not use are not loaded.
#[derive(Debug, Clone)]
pub struct Mplug {
    /// The configuration it was built with.
    pub config: MplugConfig,
    /// The task its parts were chosen for.
    pub task: Task,
    /// Visual tower (with `visn_fc` where the widths differ).
    pub visual: VisualEncoder,
    /// Text encoder.
    pub text_encoder: Option<TextEncoder>,
    /// Skip-connected fusion encoder.
    pub fusion: Option<FusionEncoder>,
    /// Text decoder.
    pub decoder: Option<TextDecoder>,
    /// Retrieval heads.
    pub heads: Option<RetrievalHeads>,
    /// Pre-training extras: the MLM head.
    pub pretrain: Option<PretrainHeads>,
    device: Device,
    dtype: DType,
}

/// A variable map's variables as plain tensors in `dtype`, detached from gradient tracking, as
/// a loaded checkpoint holds them: what random-weight models for benchmarks and tests build
/// from (a model built on the variables themselves records a gradient graph through every
/// operation and skips the inference kernels).
pub fn plain_tensors(
    varmap: &candle_nn::VarMap,
    dtype: DType,
) -> candle_core::Result<std::collections::HashMap<String, Tensor>> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map poisoned".into()))?;
    vars.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().to_dtype(dtype)?)))
        .collect()
}

/// The variables of a freshly drawn model for `task` (candle's initializers, f32 on the CPU) as
/// [`plain_tensors`] in `dtype`: the random-weight model that benchmarks, examples and tests
/// build with `VarBuilder::from_tensors`.
pub fn random_tensors(
    config: &MplugConfig,
    task: Task,
    dtype: DType,
) -> candle_core::Result<std::collections::HashMap<String, Tensor>> {
    let varmap = candle_nn::VarMap::new();
    Mplug::new(
        config,
        task,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    plain_tensors(&varmap, dtype)
}

impl Mplug {
    /// Builds the parts of the model `task` needs from a var builder rooted at the checkpoint's
    /// top level (`visual_encoder.*`, `text_encoder.*`, ...). Used for checkpoints and for
    /// fresh variables alike.
    ///
    /// A bf16 var builder on the CPU builds a model with compact weights: its linear layers'
    /// weights in bf16 (half the memory; decoding reads half the bytes), everything else and
    /// every activation in f32. Products of a few rows (decoding) compute in f32; products of
    /// many rows (the towers) run in bf16 dot products with f32 sums where the CPU has
    /// AVX512-BF16 (their inputs rounded to bf16 as they are read; see
    /// [`kernels::bf16_dots`]), in f32 elsewhere. Elsewhere than the CPU the dtype
    /// is used as it is.
    pub fn new(config: &MplugConfig, task: Task, vb: VarBuilder) -> candle_core::Result<Self> {
        if vb.dtype() == DType::BF16 && vb.device().is_cpu() {
            let vb = vb.set_dtype(DType::F32);
            return ops::with_compact_weights(|| Self::build(config, task, vb));
        }
        Self::build(config, task, vb)
    }

    fn build(config: &MplugConfig, task: Task, vb: VarBuilder) -> candle_core::Result<Self> {
        let parts = task.needs();
        let b = &config.bert;
        let text_layers = match task {
            // The reference's grounding model keeps only the first `stride_layer` text layers.
            Task::Grounding => b.text_encoder_layers.min(b.stride_layer),
            _ => b.text_encoder_layers,
        };
        let visual = VisualEncoder::new(config, &vb)?;
        let text_encoder = parts
            .text
            .then(|| TextEncoder::new(b, text_layers, vb.pp("text_encoder")))
            .transpose()?;
        let fusion = parts
            .fusion
            .then(|| FusionEncoder::new(config, vb.pp("fusion_encoder")))
            .transpose()?;
        let decoder = parts
            .decoder
            .then(|| TextDecoder::new(b, vb.pp("text_decoder")))
            .transpose()?;
        let heads = if parts.heads {
            // Released checkpoints store the temperature as a scalar; fresh variables start at the
            // reference's 0.07; a checkpoint without one gets a constant 0.07.
            let temp = if vb.contains_tensor("temp") {
                vb.get_unchecked("temp")?.reshape(1)?
            } else {
                vb.get_with_hints(1, "temp", candle_nn::Init::Const(0.07))
                    .or_else(|_| Tensor::new(&[0.07f32], vb.device())?.to_dtype(vb.dtype()))?
            };
            Some(RetrievalHeads {
                vision_proj: linear(b.hidden_size, config.embed_dim, vb.pp("vision_proj"))?,
                text_proj: linear(b.hidden_size, config.embed_dim, vb.pp("text_proj"))?,
                itm_head: linear(b.hidden_size, 2, vb.pp("itm_head"))?,
                temp,
            })
        } else {
            None
        };
        let pretrain = match (task, &text_encoder) {
            (Task::Pretrain, Some(te)) => Some(PretrainHeads {
                mlm: bert::BertLmHead::new(
                    b,
                    te.word_embeddings(),
                    vb.pp("fusion_encoder").pp("cls").pp("predictions"),
                )?,
            }),
            _ => None,
        };
        Ok(Self {
            config: config.clone(),
            task,
            visual,
            text_encoder,
            fusion,
            decoder,
            heads,
            pretrain,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// Loads the model for `task` from a checkpoint, converting weights to `dtype` on `device`.
    /// A checkpoint that lacks a part the task needs fails with a message naming the part and,
    /// where it can tell, the task the checkpoint was made for.
    pub fn load(
        config: &MplugConfig,
        ckpt: &Checkpoint,
        task: Task,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        let parts = task.needs();
        let required = [
            (true, "visual_encoder.", "visual tower"),
            (parts.text, "text_encoder.", "text encoder"),
            (parts.fusion, "fusion_encoder.", "fusion encoder"),
            (parts.decoder, "text_decoder.", "text decoder"),
            (parts.heads, "itm_head.", "ITM head"),
        ];
        for (needed, prefix, what) in required {
            if needed && !ckpt.has_prefix(prefix) {
                let made_for = Task::detect(ckpt)
                    .map(|t| format!("; it looks like a {t} checkpoint"))
                    .unwrap_or_default();
                return Err(ckpt.error(format!(
                    "has no {what} (`{prefix}*`), which the {task} task needs{made_for}"
                )));
            }
        }
        let model =
            Self::new(config, task, ckpt.var_builder(dtype, device)).map_err(|e| ckpt.error(e))?;
        Ok(model)
    }

    /// Parameter keys of the checkpoint this model did not read, except those the reference
    /// holds but never runs (CLIP's final `proj`, fusion embeddings, fusion layers before the
    /// running ones, the cross-attention of connected layers). Keys of parts the task does not
    /// need are listed.
    pub fn unused_keys(&self, ckpt: &Checkpoint) -> Vec<String> {
        let start = FusionEncoder::first_running_layer(&self.config);
        let fused = self.fusion.is_some();
        let by_design = |key: &str| -> bool {
            if key == "visual_encoder.visual.proj" {
                return true;
            }
            if !fused {
                return false;
            }
            let Some(rest) = key.strip_prefix("fusion_encoder.") else {
                return false;
            };
            if rest.starts_with("embeddings.") {
                return true;
            }
            let Some(rest) = rest.strip_prefix("encoder.layer.") else {
                return false;
            };
            let mut parts = rest.splitn(2, '.');
            let Some(Ok(i)) = parts.next().map(str::parse::<usize>) else {
                return false;
            };
            let tail = parts.next().unwrap_or("");
            i < start
                || (self.config.is_connected_layer(i - start)
                    && tail.starts_with("crossattention."))
        };
        ckpt.unused_keys()
            .into_iter()
            .filter(|k| !by_design(k))
            .collect()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn part<'a, T>(&self, part: &'a Option<T>, what: &str) -> Result<&'a T> {
        part.as_ref()
            .ok_or_else(|| Error::Unsupported(format!("the {} model has no {what}", self.task)))
    }

    /// The text encoder, or an error naming the missing part.
    pub fn text_encoder(&self) -> Result<&TextEncoder> {
        self.part(&self.text_encoder, "text encoder")
    }

    /// The fusion encoder, or an error naming the missing part.
    pub fn fusion(&self) -> Result<&FusionEncoder> {
        self.part(&self.fusion, "fusion encoder")
    }

    /// The decoder, or an error naming the missing part.
    pub fn decoder(&self) -> Result<&TextDecoder> {
        self.part(&self.decoder, "text decoder")
    }

    /// The pre-training extras, or an error naming the missing part.
    pub fn pretrain_heads(&self) -> Result<&PretrainHeads> {
        self.part(&self.pretrain, "pre-training heads")
    }

    /// The retrieval heads, or an error naming the missing part.
    pub fn heads(&self) -> Result<&RetrievalHeads> {
        self.part(&self.heads, "ITC/ITM heads")
    }

    /// Visual tokens of normalized images `(B, 3, R, R)`: `(B, 1 + grid^2, hidden)`.
    pub fn encode_image(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.visual.forward(&images.to_dtype(self.dtype)?)?)
    }

    /// Text encoder states of `ids (B, L)` with padding `mask (B, L)`: `(B, L, hidden)`.
    pub fn encode_text(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        check_ids(ids, mask, self.config.bert.vocab_size)?;
        let ext = attention::padding_mask(mask, self.dtype)?;
        Ok(self.text_encoder()?.forward(ids, &ext)?)
    }

    /// Fuses text states `(B, Lt, H)` (padding `text_mask (B, Lt)`) with visual tokens
    /// `(B, Li, H)` (all real): returns fused `(visual, text)`.
    pub fn fuse(
        &self,
        text: &Tensor,
        text_mask: &Tensor,
        image: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, li, _) = image.dims3()?;
        if text.dim(0)? != b {
            return Err(Error::invalid(format!(
                "{} texts cannot be fused with {b} images",
                text.dim(0)?
            )));
        }
        let text_ext = attention::padding_mask(text_mask, self.dtype)?;
        let image_ext = Tensor::zeros((b, 1, 1, li), self.dtype, &self.device)?;
        Ok(self.fusion()?.forward(text, &text_ext, image, &image_ext)?)
    }

    /// Normalized ITC feature of visual tokens' [CLS]: `(B, embed_dim)`.
    pub fn image_feature(&self, image_embeds: &Tensor) -> Result<Tensor> {
        let cls = image_embeds.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(l2_normalize(&self.heads()?.vision_proj.forward(&cls)?)?)
    }

    /// Normalized ITC feature of text states' [CLS]: `(B, embed_dim)`.
    pub fn text_feature(&self, text_embeds: &Tensor) -> Result<Tensor> {
        let cls = text_embeds.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(l2_normalize(&self.heads()?.text_proj.forward(&cls)?)?)
    }

    /// ITM logits `(B, 2)` of fused text states' [CLS].
    pub fn itm_logits(&self, fused_text: &Tensor) -> Result<Tensor> {
        let cls = fused_text.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(self.heads()?.itm_head.forward(&cls)?)
    }
}

/// `x / max(||x||, 1e-12)` along the last dimension, as `F.normalize`.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    x.broadcast_div(&norm)
}

/// Checks token ids and mask agree in shape and ids are inside the vocabulary.
pub fn check_ids(ids: &Tensor, mask: &Tensor, vocab: usize) -> Result<()> {
    if ids.dims() != mask.dims() || ids.rank() != 2 {
        return Err(Error::invalid(format!(
            "token ids {:?} and attention mask {:?} must both be (batch, length)",
            ids.dims(),
            mask.dims()
        )));
    }
    let max = ids.to_dtype(DType::F64)?.max_all()?.to_scalar::<f64>()?;
    let min = ids.to_dtype(DType::F64)?.min_all()?.to_scalar::<f64>()?;
    if min < 0.0 || max >= vocab as f64 {
        return Err(Error::invalid(format!(
            "token id {} is outside the vocabulary of {vocab}",
            if min < 0.0 { min } else { max }
        )));
    }
    Ok(())
}

/// The largest absolute difference between two tensors of one shape, as f32 (the unit tests'
/// comparison).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.to_dtype(DType::F32))
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}
