//! Visual question answering: the question is encoded and fused with the image, and the
//! decoder reads `[fused visual; fused question]`, either generating an answer or ranking a
//! closed list of answers.

use super::{repeat_rows, shifted_token_ce, topk_rows};
use crate::error::{Error, Result};
use crate::generate::{beam_search, BeamConfig, Hypothesis};
use crate::model::attention::log_softmax;
use crate::model::Mplug;
use candle_core::{DType, Tensor, D};

/// What the decoder reads for a question: `[fused visual; fused text]` states and their mask.
#[derive(Debug, Clone)]
pub struct QuestionStates {
    /// Fused visual tokens `(B, Li, H)`.
    pub image: Tensor,
    /// Fused question tokens `(B, Lq, H)`.
    pub text: Tensor,
    /// `[visual; question]` states `(B, Li + Lq, H)`.
    pub states: Tensor,
    /// Their padding mask `(B, Li + Lq)`.
    pub mask: Tensor,
}

/// Encodes questions `ids (B, Lq)` and fuses them with visual tokens `(B, Li, H)`.
pub fn encode_question(
    model: &Mplug,
    image_embeds: &Tensor,
    ids: &Tensor,
    mask: &Tensor,
) -> Result<QuestionStates> {
    let text = model.encode_text(ids, mask)?;
    let (image, text) = model.fuse(&text, mask, image_embeds)?;
    let (b, li, _) = image.dims3()?;
    let states = Tensor::cat(&[&image, &text], 1)?;
    let ones = Tensor::ones((b, li), mask.dtype(), mask.device())?;
    let mask = Tensor::cat(&[&ones, mask], 1)?;
    Ok(QuestionStates {
        image,
        text,
        states,
        mask,
    })
}

/// Free-form answers by beam search over the question states.
pub fn generate(
    model: &Mplug,
    q: &QuestionStates,
    cfg: &BeamConfig,
) -> Result<Vec<Vec<Hypothesis>>> {
    beam_search(model.decoder()?, &q.states, Some(&q.mask), cfg)
}

/// One ranked answer: its index in the candidate list and its probability among the top `k`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankedAnswer {
    /// Index into the candidate list.
    pub index: usize,
    /// Softmax over the `k` re-scored candidates.
    pub prob: f32,
}

/// The reference's `rank_answer`: the `k` candidates whose first token is likeliest after
/// `[CLS]` are re-scored by their full sequence log-probability (first-token probability plus
/// the teacher-forced log-likelihood of the candidate `answer_ids (N, La)` after `[CLS]`) and
/// returned best first with a softmax over the `k` scores.
pub fn rank_answers(
    model: &Mplug,
    q: &QuestionStates,
    answer_ids: &Tensor,
    answer_mask: &Tensor,
    k: usize,
) -> Result<Vec<Vec<RankedAnswer>>> {
    let decoder = model.decoder()?;
    let (num_answers, _) = answer_ids.dims2()?;
    if k == 0 || k > num_answers {
        return Err(Error::invalid(format!(
            "cannot rank the top {k} of {num_answers} answers"
        )));
    }
    let num_q = q.states.dim(0)?;
    let device = q.states.device();
    let cross = decoder.cross_states(&q.states, Some(&q.mask))?;

    let ids = answer_ids.to_dtype(DType::U32)?;
    let bos = ids.get(0)?.get(0)?.to_scalar::<u32>()?;
    let start = Tensor::full(bos, (num_q, 1), device)?;
    let first_logits = decoder.forward(&start, None, &cross, None)?.squeeze(1)?;
    let first_probs = candle_nn::ops::softmax_last_dim(&first_logits.to_dtype(DType::F32)?)?;
    let first_tokens = ids.narrow(1, 1, 1)?.squeeze(1)?.contiguous()?;
    let candidate_probs = first_probs.index_select(&first_tokens, 1)?; // (num_q, N)
    let top = topk_rows(&candidate_probs, k)?;

    let chosen: Vec<u32> = top.iter().flatten().map(|&(i, _)| i as u32).collect();
    let chosen_t = Tensor::from_vec(chosen, num_q * k, device)?;
    let cand_ids = ids.index_select(&chosen_t, 0)?;
    let cand_mask = answer_mask.index_select(&chosen_t, 0)?;
    let logits = decoder.forward(&cand_ids, Some(&cand_mask), &cross, None)?;
    let (ce, _) = shifted_token_ce(&logits, &cand_ids, model.config.bert.pad_token_id)?;
    let nll = ce.sum(1)?.to_vec1::<f32>()?;

    let mut ranked = Vec::with_capacity(num_q);
    for (qi, row) in top.iter().enumerate() {
        let scores: Vec<f32> = row
            .iter()
            .enumerate()
            .map(|(j, &(_, p))| p.ln() - nll[qi * k + j])
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let mut answers: Vec<RankedAnswer> = row
            .iter()
            .zip(&exp)
            .map(|(&(index, _), e)| RankedAnswer {
                index,
                prob: e / sum,
            })
            .collect();
        answers.sort_by(|a, b| b.prob.total_cmp(&a.prob));
        ranked.push(answers);
    }
    Ok(ranked)
}

/// The reference's VQA training loss: question `i` has `k[i]` answers (rows of `answer_ids`, in
/// order) with `weights`; loss = sum over answers of weight x summed token cross-entropy, over
/// the number of questions.
pub fn loss(
    model: &Mplug,
    q: &QuestionStates,
    answer_ids: &Tensor,
    answer_mask: &Tensor,
    k: &[usize],
    weights: &Tensor,
) -> Result<Tensor> {
    let logits = answer_logits(model, q, answer_ids, answer_mask, k, weights)?;
    let (ce, _) = shifted_token_ce(&logits, answer_ids, model.config.bert.pad_token_id)?;
    weighted_mean(&ce, weights, q)
}

/// Teacher-forced decoder logits `(N, La, vocab)` of the `N` answers, question `i`'s states
/// repeated for its `k[i]` answers (the momentum model's call gives the distillation targets).
pub fn answer_logits(
    model: &Mplug,
    q: &QuestionStates,
    answer_ids: &Tensor,
    answer_mask: &Tensor,
    k: &[usize],
    weights: &Tensor,
) -> Result<Tensor> {
    let num_q = q.states.dim(0)?;
    let total: usize = k.iter().sum();
    if k.len() != num_q || total != answer_ids.dim(0)? || weights.dims() != [total] {
        return Err(Error::invalid(format!(
            "{num_q} questions with answer counts {k:?} do not match {} answers and weights {:?}",
            answer_ids.dim(0)?,
            weights.dims()
        )));
    }
    let decoder = model.decoder()?;
    let states = repeat_rows(&q.states, k)?;
    let mask = repeat_rows(&q.mask, k)?;
    let cross = decoder.cross_states(&states, Some(&mask))?;
    Ok(decoder.forward(answer_ids, Some(answer_mask), &cross, None)?)
}

/// Sum over answers of weight x summed per-token loss `(N, La - 1)`, over the questions.
fn weighted_mean(per_token: &Tensor, weights: &Tensor, q: &QuestionStates) -> Result<Tensor> {
    let per_answer = per_token.sum(1)?;
    let weighted = (per_answer * weights.to_dtype(DType::F32)?)?.sum_all()?;
    Ok((weighted / q.states.dim(0)? as f64)?)
}

/// The VQA loss with momentum distillation, as ALBEF and mPLUG's paper describe it: each answer
/// token's loss is `(1 - alpha)` x its cross-entropy plus `alpha` x the cross-entropy against
/// the momentum model's distribution `softmax(teacher_logits)` over the vocabulary (teacher
/// logits `(N, La, vocab)` from [`answer_logits`] on the momentum model, not differentiated);
/// answers are weighted and summed as in [`loss`].
///
/// The released fine-tuning code computes this term but never passes `alpha` to its decoder
/// (whose default is 0), so its distillation adds nothing to the loss; it also normalizes the
/// student's log-probabilities over the sequence instead of the vocabulary. [`loss`] is
/// therefore the released training exactly, and this function is the method as published.
#[allow(clippy::too_many_arguments)]
pub fn distillation_loss(
    model: &Mplug,
    q: &QuestionStates,
    answer_ids: &Tensor,
    answer_mask: &Tensor,
    k: &[usize],
    weights: &Tensor,
    teacher_logits: &Tensor,
    alpha: f64,
) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::invalid(format!(
            "distillation weight alpha = {alpha} is outside [0, 1]"
        )));
    }
    let logits = answer_logits(model, q, answer_ids, answer_mask, k, weights)?;
    if teacher_logits.dims() != logits.dims() {
        return Err(Error::invalid(format!(
            "teacher logits have shape {:?}, the answers' logits {:?}",
            teacher_logits.dims(),
            logits.dims()
        )));
    }
    let pad = model.config.bert.pad_token_id;
    let (ce, counted) = shifted_token_ce(&logits, answer_ids, pad)?;
    let l = logits.dim(1)?;
    let student = log_softmax(&logits.narrow(1, 0, l - 1)?.to_dtype(DType::F32)?)?;
    let teacher = candle_nn::ops::softmax_last_dim(
        &teacher_logits
            .narrow(1, 0, l - 1)?
            .to_dtype(DType::F32)?
            .contiguous()?
            .detach(),
    )?;
    let soft = ((student * teacher)?.sum(D::Minus1)?.neg()? * counted)?;
    let per_token = ((ce * (1.0 - alpha))? + (soft * alpha)?)?;
    weighted_mean(&per_token, weights, q)
}
