//! Decoding: the reference's batched beam search (`predictor.py`), with a key/value cache.
//!
//! Semantics kept from the reference so that results match token for token:
//! - every sequence starts with `bos`; at step `s` (0-based) candidate scores are the summed
//!   log-probabilities divided by the length penalty `((5 + s + 1) / 6)^alpha`, and the running
//!   log-probability is the kept score times that penalty;
//! - `eos` is banned (log-probability -1e20) while `s < min_length`;
//! - a hypothesis is finished when it emits `eos` or at `max_length`; finished hypotheses that
//!   are not the top beam stay in the beam and keep being extended;
//! - an input's search ends when its top beam finishes; its finished hypotheses are sorted by
//!   score (stable) and the best `beam_size` are returned, scores length-penalized.
//!
//! With `use_cache` each step feeds only the newest token and reuses cached keys and values;
//! cross-attention keys and values are computed once and shared by all beams of an input.
//! Without it every step re-runs the whole prefix, as the reference does (kept for checking
//! and benchmarking).

use crate::error::{Error, Result};
use crate::model::{attention::log_softmax, TextDecoder};
use candle_core::{Device, Tensor};

/// Options of [`beam_search`].
#[derive(Debug, Clone, PartialEq)]
pub struct BeamConfig {
    /// Beams per input (1 gives greedy decoding).
    pub beam_size: usize,
    /// `eos` is banned before this many generated tokens.
    pub min_length: usize,
    /// Most tokens generated after `bos`.
    pub max_length: usize,
    /// Length-penalty exponent (0.6 in the reference).
    pub length_penalty_alpha: f64,
    /// Start token (`[CLS]`, 101).
    pub bos: u32,
    /// End token (`[SEP]`, 102).
    pub eos: u32,
    /// Hypotheses returned per input (at most `beam_size`).
    pub n_best: usize,
    /// Cache keys and values between steps.
    pub use_cache: bool,
    /// Sample instead of searching (one sequence per input, as the reference's `do_sample`).
    pub sampling: Option<Sampling>,
}

/// The reference's sampling: log-probabilities divided by `temperature`, filtered to the
/// `top_k` best and to the smallest set whose probability exceeds `top_p`, then one token drawn;
/// no length penalty. Draws come from a generator seeded with `seed`, so a seed repeats a result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Divides the log-probabilities (1: unchanged).
    pub temperature: f64,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the most likely tokens until their probability exceeds `top_p` (1: all).
    pub top_p: f64,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for BeamConfig {
    /// Beam 5, lengths 1..=20, length penalty 0.6, one result, cached. The reference's settings
    /// differ per task: [`BeamConfig::caption`] and [`BeamConfig::answer`].
    fn default() -> Self {
        BeamConfig {
            beam_size: 5,
            min_length: 1,
            max_length: 20,
            length_penalty_alpha: 0.6,
            bos: 101,
            eos: 102,
            n_best: 1,
            use_cache: true,
            sampling: None,
        }
    }
}

impl BeamConfig {
    /// The reference's captioning: beam 5, 5 to 20 tokens (`min_length=5, max_length=20`).
    pub fn caption() -> Self {
        BeamConfig {
            min_length: 5,
            max_length: 20,
            ..Default::default()
        }
    }

    /// The reference's free-form VQA answers: beam 5, 1 to 10 tokens.
    pub fn answer() -> Self {
        BeamConfig {
            min_length: 1,
            max_length: 10,
            ..Default::default()
        }
    }

    /// Greedy decoding with the same stopping rules.
    pub fn greedy(min_length: usize, max_length: usize) -> Self {
        BeamConfig {
            beam_size: 1,
            min_length,
            max_length,
            ..Default::default()
        }
    }

    fn validate(&self, vocab: usize) -> Result<()> {
        if let Some(s) = &self.sampling {
            if self.beam_size != 1 {
                return Err(Error::invalid(
                    "sampling draws one sequence: use beam size 1",
                ));
            }
            let valid = s.temperature > 0.0 && s.top_p > 0.0 && s.top_p <= 1.0;
            if !valid {
                return Err(Error::invalid(
                    "sampling needs temperature > 0 and 0 < top_p <= 1",
                ));
            }
        }
        if self.beam_size == 0 || self.max_length == 0 {
            return Err(Error::invalid(
                "beam size and max length must be at least 1",
            ));
        }
        if self.beam_size > vocab {
            return Err(Error::invalid(format!(
                "beam size {} exceeds the vocabulary",
                self.beam_size
            )));
        }
        if self.bos as usize >= vocab || self.eos as usize >= vocab {
            return Err(Error::invalid("bos/eos token outside the vocabulary"));
        }
        Ok(())
    }
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Token ids, starting with `bos` and ending with `eos` when it finished by emitting it.
    pub ids: Vec<u32>,
    /// Length-penalized log-probability.
    pub score: f32,
    /// The log-probability of the text: the sum of its tokens' log-probabilities, without the
    /// length penalty (when sampling, of the tempered and filtered distribution the tokens
    /// were drawn from).
    pub log_prob: f32,
}

/// Beam search over `states (B, Le, encoder_width)` with padding `mask (B, Le)` (`None`: all
/// real). Returns, per input, up to `n_best` hypotheses, best first.
pub fn beam_search(
    decoder: &TextDecoder,
    states: &Tensor,
    mask: Option<&Tensor>,
    cfg: &BeamConfig,
) -> Result<Vec<Vec<Hypothesis>>> {
    // Decoding is many small parallel loops: run it on the pool's threads (see `on_pool`).
    crate::model::kernels::on_pool(|| search(decoder, states, mask, cfg))
}

fn search(
    decoder: &TextDecoder,
    states: &Tensor,
    mask: Option<&Tensor>,
    cfg: &BeamConfig,
) -> Result<Vec<Vec<Hypothesis>>> {
    let vocab = decoder.vocab_size();
    cfg.validate(vocab)?;
    let device = states.device().clone();
    let batch = states.dim(0)?;
    let beam = cfg.beam_size;
    let mut cross = decoder.cross_states(states, mask)?;
    let mut cache = decoder.new_cache();

    // Per alive input: its index in the batch. Per alive row (input-major, beam-minor): the
    // sequence so far and its running log-probability.
    let mut inputs: Vec<usize> = (0..batch).collect();
    let mut seqs: Vec<Vec<u32>> = vec![vec![cfg.bos]; batch * beam];
    let mut running: Vec<f32> = (0..batch * beam)
        .map(|r| {
            if r % beam == 0 {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    let mut finished: Vec<Vec<(f32, f32, Vec<u32>)>> = vec![Vec::new(); batch];
    let mut rng = cfg
        .sampling
        .map(|s| <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(s.seed));
    let mut results: Vec<Vec<Hypothesis>> = vec![Vec::new(); batch];

    for step in 0..cfg.max_length {
        let logits = if cfg.use_cache {
            let last: Vec<u32> = seqs.iter().map(|s| *s.last().expect("non-empty")).collect();
            let ids = Tensor::from_vec(last, (seqs.len(), 1), &device)?;
            decoder.forward(&ids, None, &cross, Some(&mut cache))?
        } else {
            let ids = ids_tensor(&seqs, &device)?;
            decoder.forward(&ids, None, &cross, None)?
        };
        let len = logits.dim(1)?;
        let last = logits.narrow(1, len - 1, 1)?.squeeze(1)?;
        let log_probs = log_softmax(&last.to_dtype(candle_core::DType::F32)?)?.to_vec2::<f32>()?;

        let penalty = match cfg.sampling {
            Some(_) => 1.0,
            None => (((5.0 + (step + 1) as f64) / 6.0).powf(cfg.length_penalty_alpha)) as f32,
        };
        let mut next_seqs = Vec::with_capacity(seqs.len());
        let mut next_running = Vec::with_capacity(seqs.len());
        let mut sources: Vec<u32> = Vec::with_capacity(seqs.len());
        let mut keep_inputs = Vec::with_capacity(inputs.len());
        let mut keep_positions: Vec<u32> = Vec::new();
        for (i, &input) in inputs.iter().enumerate() {
            let rows = i * beam..(i + 1) * beam;
            let ban_eos = step < cfg.min_length;
            let picks = match (&cfg.sampling, rng.as_mut()) {
                (Some(s), Some(rng)) => {
                    vec![sample(&log_probs[i], running[i], s, ban_eos, cfg.eos, rng)]
                }
                _ => top_candidates(
                    &log_probs[rows.clone()],
                    &running[rows],
                    beam,
                    penalty,
                    ban_eos,
                    cfg.eos,
                ),
            };
            let top_done = picks[0].token == cfg.eos || step + 1 == cfg.max_length;
            let mut group = Vec::with_capacity(beam);
            for p in &picks {
                let src = i * beam + p.beam;
                let mut seq = seqs[src].clone();
                seq.push(p.token);
                let done = top_done || p.token == cfg.eos || step + 1 == cfg.max_length;
                if done {
                    finished[input].push((p.score, p.score * penalty, seq.clone()));
                }
                group.push((src, seq, p.score * penalty));
            }
            if top_done {
                let mut hyps = std::mem::take(&mut finished[input]);
                hyps.sort_by(|a, b| b.0.total_cmp(&a.0));
                results[input] = hyps
                    .into_iter()
                    .take(beam.min(cfg.n_best))
                    .map(|(score, log_prob, ids)| Hypothesis {
                        ids,
                        score,
                        log_prob,
                    })
                    .collect();
                continue;
            }
            keep_positions.push(i as u32);
            keep_inputs.push(input);
            for (src, seq, run) in group {
                sources.push(src as u32);
                next_seqs.push(seq);
                next_running.push(run);
            }
        }
        if keep_inputs.is_empty() {
            break;
        }
        if cfg.use_cache {
            let idx = Tensor::from_vec(sources, next_seqs.len(), &device)?;
            cache = cache.select(&idx)?;
        }
        if keep_inputs.len() != inputs.len() {
            let n = keep_positions.len();
            cross = cross.select(&Tensor::from_vec(keep_positions, n, &device)?)?;
        }
        inputs = keep_inputs;
        seqs = next_seqs;
        running = next_running;
    }
    Ok(results)
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    beam: usize,
    token: u32,
    score: f32,
}

/// The `k` best (beam, token) continuations of one input's beams, scored as the reference
/// does: `(log_prob + running) / penalty`, best first, ties by lower flat index.
fn top_candidates(
    log_probs: &[Vec<f32>],
    running: &[f32],
    k: usize,
    penalty: f32,
    ban_eos: bool,
    eos: u32,
) -> Vec<Candidate> {
    let mut best: Vec<Candidate> = Vec::with_capacity(k * log_probs.len());
    for (b, (row, &run)) in log_probs.iter().zip(running).enumerate() {
        // The overall top k lies within each row's top k.
        let mut row_best: Vec<Candidate> = Vec::with_capacity(k + 1);
        for (t, &lp) in row.iter().enumerate() {
            let lp = if ban_eos && t as u32 == eos {
                -1e20
            } else {
                lp
            };
            let score = (lp + run) / penalty;
            if row_best.len() == k
                && score.partial_cmp(&row_best[k - 1].score) != Some(std::cmp::Ordering::Greater)
            {
                continue;
            }
            let pos = row_best
                .iter()
                .position(|c| score > c.score)
                .unwrap_or(row_best.len());
            row_best.insert(
                pos,
                Candidate {
                    beam: b,
                    token: t as u32,
                    score,
                },
            );
            row_best.truncate(k);
        }
        best.extend(row_best);
    }
    // Stable sort keeps (beam, token) order among equal scores.
    best.sort_by(|a, b| b.score.total_cmp(&a.score));
    best.truncate(k);
    best
}

/// One drawn continuation of a single sequence, scored by its running log-probability plus
/// the filtered log-probability of the drawn token (the reference's `do_sample` arithmetic).
fn sample(
    log_probs: &[f32],
    running: f32,
    s: &Sampling,
    ban_eos: bool,
    eos: u32,
    rng: &mut impl rand::Rng,
) -> Candidate {
    let mut scores: Vec<f32> = log_probs
        .iter()
        .enumerate()
        .map(|(t, &lp)| if ban_eos && t as u32 == eos { -1e20 } else { lp } / s.temperature as f32)
        .collect();
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    if s.top_k > 0 && s.top_k < scores.len() {
        let kth = scores[order[s.top_k - 1]];
        for v in scores.iter_mut() {
            if *v < kth {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    if s.top_p < 1.0 {
        let max = scores[order[0]];
        let total: f32 = scores.iter().map(|v| (v - max).exp()).sum();
        let mut cumulative = 0.0;
        let mut keep = true;
        for &t in &order {
            // A token is removed once the mass before it already exceeds top_p (the first is kept).
            let p = (scores[t] - max).exp() / total;
            if !keep {
                scores[t] = f32::NEG_INFINITY;
            }
            cumulative += p;
            if cumulative > s.top_p as f32 {
                keep = false;
            }
        }
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = scores.iter().map(|v| (v - max).exp()).collect();
    let total: f32 = weights.iter().sum();
    let mut x = rng.random::<f32>() * total;
    let mut token = order[0];
    for (t, w) in weights.iter().enumerate() {
        if *w <= 0.0 {
            continue;
        }
        token = t;
        x -= w;
        if x <= 0.0 {
            break;
        }
    }
    let log_total = total.ln() + max;
    Candidate {
        beam: 0,
        token: token as u32,
        score: running + scores[token] - log_total,
    }
}

fn ids_tensor(seqs: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let len = seqs.first().map_or(0, Vec::len);
    let flat: Vec<u32> = seqs.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (seqs.len(), len), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_respect_running_scores_and_eos_ban() {
        let lp = vec![vec![-1.0, -0.5, -3.0], vec![-0.1, -2.0, -0.2]];
        let running = vec![0.0, -1.0];
        let c = top_candidates(&lp, &running, 2, 1.0, false, 2);
        assert_eq!((c[0].beam, c[0].token), (0, 1));
        assert_eq!((c[1].beam, c[1].token), (0, 0));
        let c = top_candidates(&lp, &running, 3, 2.0, true, 1);
        // token 1 of beam 0 banned: next best are beam0 tok0 (-1.0), beam1 tok0 (-1.1), beam1 tok2 (-1.2)
        assert_eq!(
            c.iter().map(|c| (c.beam, c.token)).collect::<Vec<_>>(),
            vec![(0, 0), (1, 0), (1, 2)]
        );
        assert!((c[0].score + 0.5).abs() < 1e-6);
    }

    #[test]
    fn sampling_respects_top_k_and_the_seed() {
        use rand::SeedableRng;
        let lp: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let s = Sampling {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 1,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let draws: Vec<u32> = (0..200)
            .map(|_| sample(&lp, 0.0, &s, false, 9, &mut rng).token)
            .collect();
        assert!(draws.iter().all(|&t| t < 2), "only the top 2 tokens");
        assert!(draws.contains(&0) && draws.contains(&1));
        let mut a = rand::rngs::StdRng::seed_from_u64(5);
        let mut b = rand::rngs::StdRng::seed_from_u64(5);
        assert_eq!(
            sample(&lp, 0.0, &s, false, 9, &mut a).token,
            sample(&lp, 0.0, &s, false, 9, &mut b).token
        );
        // top_p 0.4 keeps just the first token (its mass, 0.5, already exceeds 0.4).
        let p = Sampling {
            top_k: 0,
            top_p: 0.4,
            ..s
        };
        let c = sample(&lp, -1.0, &p, false, 9, &mut a);
        assert_eq!(c.token, 0);
        assert!(
            (c.score + 1.0).abs() < 1e-6,
            "filtered log-prob of the only kept token is 0"
        );
        // top_p 0.7 keeps the first two (0.5 does not exceed 0.7, 0.8 does).
        let p = Sampling {
            top_k: 0,
            top_p: 0.7,
            ..s
        };
        let draws: Vec<u32> = (0..200)
            .map(|_| sample(&lp, 0.0, &p, false, 9, &mut a).token)
            .collect();
        assert!(draws.iter().all(|&t| t < 2) && draws.contains(&1));
        // The end token is banned below the minimum length.
        let eos = sample(&lp, 0.0, &Sampling { top_k: 1, ..s }, true, 0, &mut a);
        assert_eq!(eos.token, 1);
    }

    #[test]
    fn dead_beams_are_never_picked_first() {
        let lp = vec![vec![-5.0, -6.0, -7.0], vec![0.0, 0.0, 0.0]];
        let running = vec![0.0, f32::NEG_INFINITY];
        let c = top_candidates(&lp, &running, 2, 1.0, false, 9);
        assert!(c.iter().all(|c| c.beam == 0));
    }
}
