//! Times the linear-layer kernel of `mplug::model::kernels` on the shapes of the base model, in
//! both weight layouts and in panels (`kernels::panels`), at tower (577 and 8 x 577 rows) and
//! decoding (5 rows) sizes: the figures behind storing weights transposed, and the BERT layers'
//! in panels. `TUNE=1` applies `kernels::tune_allocator` first, as the `mplug` binary does.
//! Then one decoding step's weight stream (a 12-layer BERT decoder's 99 M linear weights, too
//! large for any cache) at 5 rows: `gemm` against the row-wise few-row kernel and the panels,
//! in f32 and with bf16 weights, beside a plain read of the same bytes.
//! Last, the fused multi-head attention of the base tower (577 positions, 12 heads of 64, the
//! queries, keys and values read in place from one packed projection) at batch 1 and 8.
//! `RAYON_NUM_THREADS=2 cargo run --release -p mplug --example kernel_speed` (`ONLY=attention`
//! for the last part alone; `ONLY=bf16` for the tower's products with bf16 weights, see
//! `bf16_speed`).

use mplug::model::kernels::matmul::{
    gemm, linear, linear_bf16, linear_bf16_widening, threads, Weight,
};
use mplug::model::kernels::panels::{self, Panels};
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
    if std::env::var("ONLY").is_ok_and(|o| o == "attention") {
        attention_speed();
        return;
    }
    if std::env::var("ONLY").is_ok_and(|o| o == "bf16") {
        bf16_speed();
        return;
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
        let packed = Panels::from_f32(&w, k, n);
        let t = best(|| {
            let y = panels::product(&x, m, &packed, None, Activation::None, None, threads());
            std::hint::black_box(y);
        });
        println!(
            "linear {m}x{k}x{n} panels: {:.1} GFLOP/s, {:.1} GB/s of weights ({:.3} ms)",
            2.0 * (m * n * k) as f64 / t / 1e9,
            (n * k * 4) as f64 / t / 1e9,
            t * 1e3
        );
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
    decoder_stream();
    attention_speed();
}

/// The tower's linear layers with compact (bf16) weights, three ways in turns, three rounds:
/// the f32 product on f32 weights, the bf16 weight widened for it, and bf16 dot products
/// (where the CPU has them; the activations rounded to bf16).
fn bf16_speed() {
    let shapes = [
        (577, 768, 2304),
        (577, 768, 768),
        (577, 768, 3072),
        (577, 3072, 768),
        (2308, 768, 3072),
    ];
    let rounds = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    for round in 1..=rounds {
        for (m, k, n) in shapes {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
            let bits: Vec<u16> = w.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
            let gflops = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
            let f32_t = best(|| {
                let y = linear(&x, m, k, Weight::Cols(&w), n, None, Activation::None, None);
                std::hint::black_box(y);
            });
            let wide_t = best(|| {
                let y = linear_bf16_widening(&x, m, k, &bits, n, None, Activation::None, None);
                std::hint::black_box(y);
            });
            let dots = mplug::model::kernels::bf16_dots::available().then(|| {
                gflops(best(|| {
                    let y = linear_bf16(&x, m, k, &bits, n, None, Activation::None, None);
                    std::hint::black_box(y);
                }))
            });
            println!(
                "round {round} linear {m}x{k}x{n}: f32 {:.1}, bf16 widened {:.1}, bf16 dots {} GFLOP/s",
                gflops(f32_t),
                gflops(wide_t),
                dots.map_or("(no AVX512-BF16)".into(), |g| format!("{g:.1}"))
            );
        }
    }
}

/// The tower's attention: `softmax(q k^T / 8) v` over 577 positions, 12 heads of 64, from a
/// packed `(B, 577, 3 * 768)` projection; FLOPs are the two products' `4 * B * H * L^2 * d`.
fn attention_speed() {
    use candle_core::{Device, Tensor};
    let (l, heads, d) = (577usize, 12usize, 64usize);
    let w = heads * d;
    for b in [1usize, 8] {
        let qkv = Tensor::randn(0f32, 1.0, (b, l, 3 * w), &Device::Cpu).unwrap();
        let part = |i: usize| qkv.narrow(2, i * w, w).unwrap();
        let (q, k, v) = (part(0), part(1), part(2));
        let t = best(|| {
            let out = mplug::model::kernels::attention(&q, &k, &v, heads, None).unwrap();
            std::hint::black_box(out);
        });
        let flops = 4.0 * (b * heads * l * l * d) as f64;
        println!(
            "attention {b}x{l}, {heads} heads of {d}: {:.1} GFLOP/s ({:.3} ms)",
            flops / t / 1e9,
            t * 1e3
        );
    }
}

/// Five rows through every linear weight of a 12-layer decoder, each weight read once per pass
/// (the memory-bound case of beam decoding); best of four passes.
fn decoder_stream() {
    const M: usize = 5;
    let mut shapes = vec![];
    for _ in 0..12 {
        shapes.extend([
            (768, 2304),
            (768, 768),
            (768, 768),
            (768, 768),
            (768, 3072),
            (3072, 768),
        ]);
    }
    let weights: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(k, n)| (0..k * n).map(|i| (i % 13) as f32 * 0.01).collect())
        .collect();
    let bits: Vec<Vec<u16>> = weights
        .iter()
        .map(|w| w.iter().map(|v| (v.to_bits() >> 16) as u16).collect())
        .collect();
    let params: usize = shapes.iter().map(|&(k, n)| k * n).sum();
    let x = |k: usize| -> Vec<f32> { (0..M * k).map(|i| (i % 7) as f32 * 0.1).collect() };
    let (x768, x3072) = (x(768), x(3072));
    let input = |k: usize| if k == 768 { &x768 } else { &x3072 };
    let pass = |name: &str, bytes: usize, f: &dyn Fn(usize, usize, usize)| {
        let mut best = f64::MAX;
        for _ in 0..4 {
            let s = Instant::now();
            for (i, &(k, n)) in shapes.iter().enumerate() {
                f(i, k, n);
            }
            best = best.min(s.elapsed().as_secs_f64());
        }
        println!(
            "decoder weight stream, {M} rows, {name}: {:.1} ms, {:.1} GB/s",
            best * 1e3,
            bytes as f64 / best / 1e9
        );
    };
    // What the memory gives: the same bytes summed, each thread its half, in 16 lanes.
    pass("plain read (a sum) f32", params * 4, &|i, _, _| {
        use rayon::prelude::*;
        let w = &weights[i];
        let half = w.len().div_ceil(threads());
        let total: f32 = w
            .par_chunks(half)
            .map(|part| {
                let mut acc = [0f32; 16];
                for c in part.chunks_exact(16) {
                    for (a, v) in acc.iter_mut().zip(c) {
                        *a += v;
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        std::hint::black_box(total);
    });
    pass("gemm f32", params * 4, &|i, k, n| {
        let mut y = vec![0f32; M * n];
        // SAFETY: the slices hold the (M, k), (k, n) and (M, n) operands.
        unsafe {
            gemm(
                M,
                n,
                k,
                y.as_mut_ptr(),
                n,
                input(k).as_ptr(),
                k,
                weights[i].as_ptr(),
                n,
                1,
                threads(),
            )
        };
        std::hint::black_box(y);
    });
    pass("few-row kernel f32", params * 4, &|i, k, n| {
        let w = Weight::Cols(&weights[i]);
        std::hint::black_box(linear(input(k), M, k, w, n, None, Activation::None, None));
    });
    pass("few-row kernel bf16", params * 2, &|i, k, n| {
        let y = linear_bf16(input(k), M, k, &bits[i], n, None, Activation::None, None);
        std::hint::black_box(y);
    });
    let panels: Vec<Panels> = (shapes.iter().zip(&weights))
        .map(|(&(k, n), w)| Panels::from_f32(w, k, n))
        .collect();
    pass("panels f32", params * 4, &|i, k, _| {
        let y = panels::product(
            input(k),
            M,
            &panels[i],
            None,
            Activation::None,
            None,
            threads(),
        );
        std::hint::black_box(y);
    });
    drop(panels);
    let compact: Vec<Panels> = (shapes.iter().zip(&bits))
        .map(|(&(k, n), b)| Panels::from_bf16_bits(b, k, n))
        .collect();
    pass("panels bf16", params * 2, &|i, k, _| {
        let y = panels::product(
            input(k),
            M,
            &compact[i],
            None,
            Activation::None,
            None,
            threads(),
        );
        std::hint::black_box(y);
    });
}
