//! Dropout for training, where the reference applies it: BERT's hidden states (after the
//! embeddings and after every output projection, before the residual LayerNorm), BERT's
//! attention probabilities, and the visual tokens after `visn_fc` + LayerNorm.
//!
//! Written by hand rather than with `candle_nn::Dropout`: candle's CPU random generator
//! cannot be seeded, and a resumed run must draw the masks the uninterrupted run drew. The
//! masks come from a generator seeded by the caller (the trainer seeds one per micro-batch).
//!
//! Dropout is off unless the forward pass runs inside [`with_dropout`], on the same thread:
//! inference never sees it.

pub use crate::config::DropoutConfig;
use candle_core::{Result, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;

struct State {
    config: DropoutConfig,
    rng: StdRng,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Restores the previous state when a scope ends, unwinding included.
struct Restore(Option<State>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        STATE.with(|s| *s.borrow_mut() = previous);
    }
}

/// Runs `f` with dropout `config`, masks drawn from a generator seeded with `seed`: the same
/// seed and the same forward pass give the same masks.
pub fn with_dropout<R>(config: DropoutConfig, seed: u64, f: impl FnOnce() -> R) -> R {
    let state = State {
        config,
        rng: StdRng::seed_from_u64(seed),
    };
    let previous = STATE.with(|s| s.borrow_mut().replace(state));
    let _restore = Restore(previous);
    f()
}

/// Whether a dropout scope with a non-zero probability is open on this thread (the fused
/// inference kernels apply only outside one).
pub fn active() -> bool {
    STATE.with(|s| s.borrow().as_ref().is_some_and(|st| st.config.is_active()))
}

/// Dropout of hidden states (identity outside [`with_dropout`]).
pub fn hidden(x: &Tensor) -> Result<Tensor> {
    apply(x, |c| c.hidden)
}

/// Dropout of attention probabilities (identity outside [`with_dropout`]).
pub fn attention(x: &Tensor) -> Result<Tensor> {
    apply(x, |c| c.attention)
}

fn apply(x: &Tensor, p: impl Fn(&DropoutConfig) -> f32) -> Result<Tensor> {
    let mask = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let state = s.as_mut()?;
        let p = p(&state.config);
        if p <= 0.0 {
            return None;
        }
        // Kept values are scaled by 1 / (1 - p), as torch's dropout does (p >= 1 keeps none).
        let scale = 1.0 / (1.0 - p);
        let values: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if state.rng.random::<f32>() < p {
                    0.0
                } else {
                    scale
                }
            })
            .collect();
        Some(values)
    });
    match mask {
        None => Ok(x.clone()),
        Some(values) => {
            let m = Tensor::from_vec(values, x.shape(), x.device())?.to_dtype(x.dtype())?;
            x.mul(&m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ones(n: usize) -> Tensor {
        Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn identity_outside_a_dropout_scope() {
        let x = ones(100);
        let y = hidden(&x).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), vec![1.0; 100]);
    }

    #[test]
    fn drops_at_the_rate_and_scales_the_rest() {
        let cfg = DropoutConfig {
            hidden: 0.25,
            attention: 0.0,
        };
        let n = 20_000;
        let (h, a) = with_dropout(cfg, 7, || {
            (
                hidden(&ones(n)).unwrap().to_vec1::<f32>().unwrap(),
                attention(&ones(n)).unwrap().to_vec1::<f32>().unwrap(),
            )
        });
        let dropped = h.iter().filter(|v| **v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.25).abs() < 0.02, "dropped {dropped}");
        assert!(h
            .iter()
            .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6));
        assert_eq!(a, vec![1.0; n], "attention dropout is off");
        // The expectation is kept.
        let mean = h.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.03, "mean {mean}");
    }

    #[test]
    fn same_seed_same_masks_and_scopes_nest() {
        let cfg = DropoutConfig {
            hidden: 0.5,
            attention: 0.5,
        };
        let draw = |seed| {
            with_dropout(cfg, seed, || {
                hidden(&ones(64)).unwrap().to_vec1::<f32>().unwrap()
            })
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        // Leaving a scope restores the outer one (here: none).
        let _ = draw(3);
        assert_eq!(
            hidden(&ones(8)).unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0; 8]
        );
    }
}
