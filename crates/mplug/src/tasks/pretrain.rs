//! mPLUG's pre-training objectives (the paper's Section 3.3; the reference never released this
//! code): image-text contrastive learning (ITC) with momentum encoders, feature queues and
//! momentum distillation; image-text matching (ITM) with hard negatives sampled from the ITC
//! similarities; masked language modeling (MLM) predicted from the fusion encoder's text output;
//! and prefix language modeling (PrefixLM), where the decoder generates the rest of a caption
//! from the image and its beginning.
//!
//! A batch may hold video clips `(B, F, 3, R, R)` instead of images: each frame goes through the
//! visual tower on its own, the clip's visual tokens are its frames' tokens concatenated and its
//! ITC feature the normalized mean of the frames' projected `[CLS]`, as in zero-shot video
//! ([`super::video`]); the momentum encoders encode clips the same way, and every objective
//! then reads the concatenated tokens.

use super::shifted_token_ce;
use crate::error::{Error, Result};
use crate::model::{attention::log_softmax, l2_normalize, Mplug};
use candle_core::{DType, IndexOp, Module, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};

/// Weights of the four losses in the total (0 switches one off).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossWeights {
    /// Image-text contrastive.
    pub itc: f64,
    /// Image-text matching.
    pub itm: f64,
    /// Masked language modeling.
    pub mlm: f64,
    /// Prefix language modeling.
    pub prefix_lm: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            itc: 1.0,
            itm: 1.0,
            mlm: 1.0,
            prefix_lm: 1.0,
        }
    }
}

/// The losses of one batch.
#[derive(Debug, Clone)]
pub struct PretrainLosses {
    /// ITC loss (scalar), when switched on.
    pub itc: Option<Tensor>,
    /// ITM loss, when switched on.
    pub itm: Option<Tensor>,
    /// MLM loss, when switched on.
    pub mlm: Option<Tensor>,
    /// PrefixLM loss, when switched on.
    pub prefix_lm: Option<Tensor>,
    /// The weighted sum.
    pub total: Tensor,
}

/// Momentum encoders and feature queues for ITC.
pub struct Momentum {
    /// The momentum copy of the model (its weights are an EMA of the trained ones).
    pub model: Mplug,
    varmap: VarMap,
    /// EMA coefficient (0.995 in the reference).
    pub momentum: f64,
    image_queue: Tensor,
    text_queue: Tensor,
    /// Image id of each queued feature (-1: never a positive).
    id_queue: Vec<i64>,
    ptr: usize,
}

impl std::fmt::Debug for Momentum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Momentum")
            .field("momentum", &self.momentum)
            .field("queue", &self.image_queue.dims())
            .finish()
    }
}

/// The detached value of the trained `var` in the shape of its momentum copy `m`: a model
/// loaded from a checkpoint may hold a parameter in another shape of the same size (the ITC
/// temperature is a scalar in released checkpoints, `(1,)` in a fresh model).
fn value_as(var: &candle_core::Var, m: &candle_core::Var) -> Result<Tensor> {
    let v = var.as_tensor().detach();
    if v.dims() == m.dims() {
        Ok(v)
    } else {
        Ok(v.reshape(m.shape())?)
    }
}

impl Momentum {
    /// A momentum copy of `vars` (the trained model's named variables) with queues of
    /// `queue_size` random normalized features.
    pub fn new(
        model: &Mplug,
        vars: &[(String, candle_core::Var)],
        queue_size: usize,
        seed: u64,
    ) -> Result<Self> {
        let device = model.device().clone();
        let varmap = VarMap::new();
        let copy = Mplug::new(
            &model.config,
            model.task,
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
        )?;
        {
            let data = varmap.data().lock().expect("varmap lock");
            for (name, var) in vars {
                if let Some(m) = data.get(name) {
                    m.set(&value_as(var, m)?)?;
                }
            }
        }
        let e = model.config.embed_dim;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut queue = |_: ()| -> Result<Tensor> {
            let v: Vec<f32> = (0..e * queue_size)
                .map(|_| rng.random::<f32>() - 0.5)
                .collect();
            let q = Tensor::from_vec(v, (queue_size, e), &device)?;
            Ok(l2_normalize(&q)?.t()?.contiguous()?)
        };
        Ok(Momentum {
            model: copy,
            varmap,
            momentum: 0.995,
            image_queue: queue(())?,
            text_queue: queue(())?,
            id_queue: vec![-1; queue_size],
            ptr: 0,
        })
    }

    /// `m = m * momentum + p * (1 - momentum)` for every variable.
    pub fn update(&mut self, vars: &[(String, candle_core::Var)]) -> Result<()> {
        let data = self.varmap.data().lock().expect("varmap lock");
        for (name, var) in vars {
            if let Some(m) = data.get(name) {
                let next = ((m.as_tensor() * self.momentum)?
                    + (value_as(var, m)? * (1.0 - self.momentum))?)?;
                m.set(&next)?;
            }
        }
        Ok(())
    }

    /// Writes the momentum weights and the queues to `momentum.safetensors` in `dir`.
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        let mut tensors: std::collections::HashMap<String, Tensor> = self
            .varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| (format!("model.{k}"), v.as_tensor().clone()))
            .collect();
        let dev = self.image_queue.device();
        tensors.insert("image_queue".into(), self.image_queue.clone());
        tensors.insert("text_queue".into(), self.text_queue.clone());
        let ids = Tensor::from_vec(self.id_queue.clone(), self.id_queue.len(), dev)?;
        tensors.insert("id_queue".into(), ids);
        tensors.insert(
            "ptr".into(),
            Tensor::from_vec(vec![self.ptr as i64], 1, dev)?,
        );
        candle_core::safetensors::save(&tensors, dir.join("momentum.safetensors"))?;
        Ok(())
    }

    /// Restores what [`Momentum::save`] wrote.
    pub fn load(&mut self, dir: &std::path::Path) -> Result<()> {
        let path = dir.join("momentum.safetensors");
        let bad = |msg: String| Error::Checkpoint {
            path: path.clone(),
            msg,
        };
        let t = candle_core::safetensors::load(&path, self.image_queue.device())?;
        let get = |k: &str| t.get(k).cloned().ok_or_else(|| bad(format!("lacks `{k}`")));
        {
            let data = self.varmap.data().lock().expect("varmap lock");
            for (name, var) in data.iter() {
                let v = get(&format!("model.{name}"))?;
                if v.dims() != var.dims() {
                    return Err(bad(format!(
                        "`{name}` has shape {:?}, expected {:?}",
                        v.dims(),
                        var.dims()
                    )));
                }
                var.set(&v)?;
            }
        }
        let (iq, tq) = (get("image_queue")?, get("text_queue")?);
        if iq.dims() != self.image_queue.dims() || tq.dims() != self.text_queue.dims() {
            return Err(bad(format!(
                "queues have shape {:?}, expected {:?}",
                iq.dims(),
                self.image_queue.dims()
            )));
        }
        self.image_queue = iq;
        self.text_queue = tq;
        self.id_queue = get("id_queue")?.to_vec1::<i64>()?;
        self.ptr = get("ptr")?.to_vec1::<i64>()?[0] as usize;
        Ok(())
    }

    fn enqueue(&mut self, image_feat: &Tensor, text_feat: &Tensor, ids: &[i64]) -> Result<()> {
        let (b, _) = image_feat.dims2()?;
        let q = self.image_queue.dim(1)?;
        if b > q {
            return Ok(());
        }
        let start = if self.ptr + b > q { 0 } else { self.ptr };
        let put = |queue: &Tensor, feat: &Tensor| -> Result<Tensor> {
            let left = queue.narrow(1, 0, start)?;
            let right = queue.narrow(1, start + b, q - start - b)?;
            Ok(Tensor::cat(&[&left, &feat.t()?, &right], 1)?.contiguous()?)
        };
        self.image_queue = put(&self.image_queue, image_feat)?;
        self.text_queue = put(&self.text_queue, text_feat)?;
        self.id_queue[start..start + b].copy_from_slice(ids);
        self.ptr = (start + b) % q;
        Ok(())
    }
}

/// One pre-training batch: normalized images (or clips) and their captions.
#[derive(Debug, Clone)]
pub struct PretrainBatch {
    /// Images `(B, 3, R, R)`, or video clips `(B, F, 3, R, R)` of F frames each.
    pub images: Tensor,
    /// Caption ids `(B, L)` with `[CLS]`/`[SEP]`.
    pub ids: Tensor,
    /// Caption padding mask `(B, L)`.
    pub mask: Tensor,
    /// Image identities, for retrieval fine-tuning: pairs with the same id are all positives
    /// for ITC and never drawn as ITM negatives (`None`: every pair is its own image).
    pub image_ids: Option<Vec<u64>>,
}

/// Special tokens MLM needs.
#[derive(Debug, Clone, Copy)]
pub struct MaskTokens {
    /// `[MASK]`.
    pub mask: u32,
    /// `[CLS]`.
    pub cls: u32,
    /// `[SEP]`.
    pub sep: u32,
    /// `[PAD]`.
    pub pad: u32,
}

impl MaskTokens {
    /// The special tokens of `tokenizer` (`[MASK]` as BERT's id 103 when it has none).
    pub fn of(tokenizer: &crate::input::Tokenizer) -> Self {
        MaskTokens {
            mask: tokenizer.token_to_id("[MASK]").unwrap_or(103),
            cls: tokenizer.cls_id(),
            sep: tokenizer.sep_id(),
            pad: tokenizer.pad_id(),
        }
    }
}

impl PretrainLosses {
    /// The switched-on objectives' values by name (`itc`, `itm`, `mlm`, `prefix_lm`), as the
    /// trainer logs them.
    pub fn parts(&self) -> Vec<(String, f64)> {
        [
            ("itc", &self.itc),
            ("itm", &self.itm),
            ("mlm", &self.mlm),
            ("prefix_lm", &self.prefix_lm),
        ]
        .into_iter()
        .filter(|(_, l)| l.is_some())
        .map(|(name, l)| (name.to_string(), value(l)))
        .collect()
    }
}

impl Default for MaskTokens {
    fn default() -> Self {
        MaskTokens {
            mask: 103,
            cls: 101,
            sep: 102,
            pad: 0,
        }
    }
}

/// ITC targets: row `i` spreads probability 1 evenly over the columns holding its image id.
pub fn positive_targets(rows: &[i64], cols: &[i64]) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|&r| {
            let n = cols.iter().filter(|&&c| c == r).count().max(1) as f32;
            cols.iter()
                .map(|&c| if c == r { 1.0 / n } else { 0.0 })
                .collect()
        })
        .collect()
}

/// Visual tokens and normalized ITC features of images `(B, 3, R, R)` (the tower's tokens and
/// their projected `[CLS]`) or of clips `(B, F, 3, R, R)` (concatenated frame tokens and the
/// normalized mean of the frames' projected `[CLS]`).
fn encode_visual(model: &Mplug, images: &Tensor) -> Result<(Tensor, Tensor)> {
    match images.rank() {
        4 => {
            let embeds = model.encode_image(images)?;
            let feat = model.image_feature(&embeds)?;
            Ok((embeds, feat))
        }
        5 => {
            let side = super::video::encode_videos(model, images)?;
            Ok((side.embeds, side.feat))
        }
        _ => Err(Error::invalid(format!(
            "pre-training images have shape {:?}, expected images (B, 3, R, R) or clips \
             (B, F, 3, R, R)",
            images.dims()
        ))),
    }
}

/// Computes the pre-training losses of a batch of images or video clips (see
/// [`PretrainBatch::images`]). ITC and ITM need only the retrieval parts (a
/// retrieval model fine-tunes with them); MLM needs the pre-training MLM head and PrefixLM the
/// decoder. `alpha` weighs the momentum distillation
/// targets (the reference ramps it over the first epoch); `seed` drives masking, negative
/// sampling and prefix split points, so that a batch's losses are a function of its inputs
/// and the seed.
pub fn losses(
    model: &Mplug,
    momentum: Option<&mut Momentum>,
    batch: &PretrainBatch,
    weights: &LossWeights,
    alpha: f64,
    tokens: &MaskTokens,
    seed: u64,
) -> Result<PretrainLosses> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let device = batch.images.device().clone();
    let (b, l) = batch.ids.dims2()?;
    if b < 2 {
        return Err(Error::invalid(
            "pre-training needs at least 2 image-text pairs per batch",
        ));
    }
    let images = batch.images.dims().first().copied().unwrap_or(0);
    if images != b {
        return Err(Error::invalid(format!(
            "{images} images (or clips) for {b} captions"
        )));
    }
    let ids = batch.ids.to_dtype(DType::U32)?;
    let mask = batch.mask.to_dtype(DType::U32)?;
    let (image_embeds, image_feat) = encode_visual(model, &batch.images)?;
    let text_embeds = model.encode_text(&ids, &mask)?;
    let text_feat = model.text_feature(&text_embeds)?;
    let temp = model.heads()?.temp.clamp(0.001f32, 0.5f32)?;

    // ITC: in-batch positives on the diagonal, negatives from the batch and the queues.
    // Image identities: the batch's own, and -1 (never a positive) in the queue when none are given.
    let (ids_b, queued): (Vec<i64>, Vec<i64>) = match &batch.image_ids {
        Some(v) if v.len() == b => (
            v.iter().map(|&x| x as i64).collect(),
            v.iter().map(|&x| x as i64).collect(),
        ),
        Some(v) => {
            return Err(Error::invalid(format!(
                "{} image ids for a batch of {b}",
                v.len()
            )))
        }
        None => ((0..b as i64).collect(), vec![-1; b]),
    };
    let positives = |cols: &[i64]| -> Result<Tensor> {
        let t = positive_targets(&ids_b, cols);
        Ok(Tensor::from_vec(t.concat(), (b, cols.len()), &device)?)
    };
    let targets = positives(&ids_b)?;
    let (image_all, text_all, targets_i2t, targets_t2i) = match momentum {
        Some(m) => {
            let (_, i_m) = encode_visual(&m.model, &batch.images)?;
            let i_m = i_m.detach();
            let te = m.model.encode_text(&ids, &mask)?.detach();
            let t_m = m.model.text_feature(&te)?.detach();
            let image_all = Tensor::cat(&[&i_m.t()?, &m.image_queue], 1)?;
            let text_all = Tensor::cat(&[&t_m.t()?, &m.text_queue], 1)?;
            let cols: Vec<i64> = ids_b.iter().chain(&m.id_queue).copied().collect();
            let hard = positives(&cols)?;
            let temp_d = temp.detach();
            let soft_i2t = candle_nn::ops::softmax(
                &i_m.matmul(&text_all)?.broadcast_div(&temp_d)?,
                D::Minus1,
            )?;
            let soft_t2i = candle_nn::ops::softmax(
                &t_m.matmul(&image_all)?.broadcast_div(&temp_d)?,
                D::Minus1,
            )?;
            let mix = |soft: Tensor| -> Result<Tensor> {
                Ok(((soft * alpha)? + (&hard * (1.0 - alpha))?)?)
            };
            let (ti, tt) = (mix(soft_i2t)?, mix(soft_t2i)?);
            m.enqueue(&i_m, &t_m, &queued)?;
            (image_all, text_all, ti, tt)
        }
        None => (
            image_feat.t()?,
            text_feat.t()?,
            targets.clone(),
            targets.clone(),
        ),
    };
    let sim_i2t = image_feat.matmul(&text_all)?.broadcast_div(&temp)?;
    let sim_t2i = text_feat.matmul(&image_all)?.broadcast_div(&temp)?;
    let soft_ce = |sim: &Tensor, t: &Tensor| -> Result<Tensor> {
        Ok((log_softmax(sim)? * t)?.sum(1)?.neg()?.mean_all()?)
    };
    let itc = if weights.itc > 0.0 {
        Some(((soft_ce(&sim_i2t, &targets_i2t)? + soft_ce(&sim_t2i, &targets_t2i)?)? * 0.5)?)
    } else {
        None
    };

    // ITM: the positive pairs, plus one hard negative image per text and one hard negative
    // text per image, drawn from the in-batch similarities with the positives excluded.
    let itm = if weights.itm > 0.0 {
        let (_, pos) = model.fuse(&text_embeds, &mask, &image_embeds)?;
        let w_i2t = candle_nn::ops::softmax(&sim_i2t.narrow(1, 0, b)?.detach(), D::Minus1)?
            .to_vec2::<f32>()?;
        let w_t2i = candle_nn::ops::softmax(&sim_t2i.narrow(1, 0, b)?.detach(), D::Minus1)?
            .to_vec2::<f32>()?;
        // Pairs of the same image are never negatives; a batch of one image falls back to
        // any other pair.
        let mut draw = |row: &[f32], skip: usize| -> u32 {
            let allowed = |j: usize| j != skip && ids_b[j] != ids_b[skip];
            let any = (0..row.len()).any(allowed);
            let ok = |j: usize| if any { allowed(j) } else { j != skip };
            let total: f32 = (0..row.len())
                .filter(|&j| ok(j))
                .map(|j| row[j] + 1e-5)
                .sum();
            let mut x = rng.random::<f32>() * total;
            let mut last = (skip + 1) % row.len();
            for (j, w) in row.iter().enumerate() {
                if !ok(j) {
                    continue;
                }
                last = j;
                x -= w + 1e-5;
                if x <= 0.0 {
                    return j as u32;
                }
            }
            last as u32
        };
        let neg_image: Vec<u32> = (0..b).map(|i| draw(&w_t2i[i], i)).collect();
        let neg_text: Vec<u32> = (0..b).map(|i| draw(&w_i2t[i], i)).collect();
        let neg_image = Tensor::from_vec(neg_image, b, &device)?;
        let neg_text = Tensor::from_vec(neg_text, b, &device)?;
        let text_all = Tensor::cat(&[&text_embeds, &text_embeds.index_select(&neg_text, 0)?], 0)?;
        let mask_all = Tensor::cat(&[&mask, &mask.index_select(&neg_text, 0)?], 0)?;
        let image_all = Tensor::cat(
            &[&image_embeds.index_select(&neg_image, 0)?, &image_embeds],
            0,
        )?;
        let (_, neg) = model.fuse(&text_all, &mask_all, &image_all)?;
        let cls = Tensor::cat(&[&pos.i((.., 0))?, &neg.i((.., 0))?], 0)?;
        let logits = model.heads()?.itm_head.forward(&cls)?;
        let labels: Vec<u32> = (0..3 * b).map(|i| u32::from(i < b)).collect();
        let labels = Tensor::from_vec(labels, 3 * b, &device)?;
        Some(candle_nn::loss::cross_entropy(&logits, &labels)?)
    } else {
        None
    };

    let ids_v = ids.to_vec2::<u32>()?;
    let mask_v = mask.to_vec2::<u32>()?;
    let vocab = model.config.bert.vocab_size as u32;

    // MLM: 15% of the real tokens (not [CLS]/[SEP]), 80% [MASK], 10% random, 10% kept.
    let mlm = if weights.mlm > 0.0 {
        let mut input = ids_v.clone();
        let mut labels = vec![vec![0f32; l]; b];
        let mut any = false;
        for (r, row) in input.iter_mut().enumerate() {
            for (c, t) in row.iter_mut().enumerate() {
                let real =
                    mask_v[r][c] == 1 && *t != tokens.cls && *t != tokens.sep && *t != tokens.pad;
                if !real || rng.random::<f64>() >= 0.15 {
                    continue;
                }
                labels[r][c] = 1.0;
                any = true;
                let u = rng.random::<f64>();
                if u < 0.8 {
                    *t = tokens.mask;
                } else if u < 0.9 {
                    *t = rng.random_range(0..vocab);
                }
            }
        }
        if any {
            let input = Tensor::from_vec(input.concat(), (b, l), &device)?;
            let text = model.encode_text(&input, &mask)?;
            let (_, fused) = model.fuse(&text, &mask, &image_embeds)?;
            let logits = model.pretrain_heads()?.mlm.forward(&fused)?;
            let logp = log_softmax(&logits.to_dtype(DType::F32)?)?;
            let picked = logp
                .gather(&ids.unsqueeze(D::Minus1)?, D::Minus1)?
                .squeeze(D::Minus1)?;
            let counted = Tensor::from_vec(labels.concat(), (b, l), &device)?;
            Some(
                ((picked * &counted)?.sum_all()?.neg()?
                    / counted.sum_all()?.to_scalar::<f32>()? as f64)?,
            )
        } else {
            Some(Tensor::zeros((), DType::F32, &device)?)
        }
    } else {
        None
    };

    // PrefixLM: a caption of n real tokens is split after k in [1, n - 2]; [CLS] + the first
    // k words are the prefix, [CLS] + the rest is what the decoder learns to generate.
    let prefix_lm = if weights.prefix_lm > 0.0 {
        let lens: Vec<usize> = mask_v
            .iter()
            .map(|r| r.iter().filter(|&&m| m == 1).count())
            .collect();
        let splits: Vec<usize> = lens
            .iter()
            .map(|&n| {
                if n > 3 {
                    rng.random_range(1..n - 2) + 1
                } else {
                    1
                }
            })
            .collect();
        let pl = splits.iter().copied().max().unwrap_or(1) + 1;
        let tl = lens
            .iter()
            .zip(&splits)
            .map(|(&n, &k)| n - k + 1)
            .max()
            .unwrap_or(2);
        let mut p_ids = vec![vec![tokens.pad; pl]; b];
        let mut p_mask = vec![vec![0u32; pl]; b];
        let mut t_ids = vec![vec![tokens.pad; tl]; b];
        let mut t_mask = vec![vec![0u32; tl]; b];
        for r in 0..b {
            let (n, k) = (lens[r], splits[r]);
            for c in 0..k {
                p_ids[r][c] = ids_v[r][c];
                p_mask[r][c] = 1;
            }
            p_ids[r][k] = tokens.sep;
            p_mask[r][k] = 1;
            t_ids[r][0] = tokens.cls;
            t_mask[r][0] = 1;
            for c in k..n {
                t_ids[r][c - k + 1] = ids_v[r][c];
                t_mask[r][c - k + 1] = 1;
            }
        }
        let to_t = |v: Vec<Vec<u32>>, w: usize| Tensor::from_vec(v.concat(), (b, w), &device);
        let (p_ids, p_mask) = (to_t(p_ids, pl)?, to_t(p_mask, pl)?);
        let (t_ids, t_mask) = (to_t(t_ids, tl)?, to_t(t_mask, tl)?);
        let q = super::vqa::encode_question(model, &image_embeds, &p_ids, &p_mask)?;
        let decoder = model.decoder()?;
        let cross = decoder.cross_states(&q.states, Some(&q.mask))?;
        let logits = decoder.forward(&t_ids, Some(&t_mask), &cross, None)?;
        let (ce, counted) = shifted_token_ce(&logits, &t_ids, tokens.pad)?;
        Some(ce.sum_all()?.broadcast_div(&counted.sum_all()?)?)
    } else {
        None
    };

    let mut total = Tensor::zeros((), DType::F32, &device)?;
    for (loss, w) in [
        (&itc, weights.itc),
        (&itm, weights.itm),
        (&mlm, weights.mlm),
        (&prefix_lm, weights.prefix_lm),
    ] {
        if let Some(loss) = loss {
            total = (total + (loss.reshape(())? * w)?)?;
        }
    }
    Ok(PretrainLosses {
        itc,
        itm,
        mlm,
        prefix_lm,
        total,
    })
}

/// Scalar value of an optional loss (NaN when off), for logging.
pub fn value(loss: &Option<Tensor>) -> f64 {
    loss.as_ref()
        .and_then(|t| {
            t.to_dtype(DType::F64)
                .ok()?
                .reshape(())
                .ok()?
                .to_scalar::<f64>()
                .ok()
        })
        .unwrap_or(f64::NAN)
}
