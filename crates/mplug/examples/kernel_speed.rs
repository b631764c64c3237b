//! Times the linear-layer kernel of `mplug::model::kernels` on the shapes of the base model, in
//! both weight layouts, at tower (577 and 8 x 577 rows) and decoding (5 rows) sizes: the
//! figures behind storing weights transposed. `TUNE=1` applies `kernels::tune_allocator` first,
//! as the `mplug` binary does.
//! `RAYON_NUM_THREADS=2 cargo run --release -p mplug --example kernel_speed`.

use mplug::model::kernels::matmul::{linear, Weight};
use mplug::model::kernels::Activation;
use std::time::Instant;

fn best(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    if std::env::var("TUNE").is_ok() {
        mplug::model::kernels::tune_allocator();
    }
    for (m, k, n) in [
        (577, 768, 3072),
        (577, 3072, 768),
        (577, 768, 2304),
        (4616, 768, 3072),
        (5, 768, 768),
        (5, 768, 3072),
        (5, 3072, 768),
        (5, 768, 30522),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        for (name, weight) in [("rows", Weight::Rows(&w)), ("cols", Weight::Cols(&w))] {
            let t = best(|| {
                std::hint::black_box(linear(&x, m, k, weight, n, None, Activation::None, None));
            });
            println!(
                "linear {m}x{k}x{n} {name}: {:.1} GFLOP/s, {:.1} GB/s of weights ({:.3} ms)",
                2.0 * (m * n * k) as f64 / t / 1e9,
                (n * k * 4) as f64 / t / 1e9,
                t * 1e3
            );
        }
    }
}
