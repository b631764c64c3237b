//! The before-and-after comparisons behind the speed notes (`docs/speed.md`), each pair of
//! sides timed in turns in one process: the machine's neighbours move absolute times by up to
//! 40 % from one minute to the next, and alternating exposes both sides to the same minutes.
//! Base shapes, random weights, `RAYON_NUM_THREADS` threads (2 on this project's machine). Each
//! line gives both sides' best and median over `ROUNDS` (default 5) alternating runs.
//!
//! - `attention`: the tower's attention (577 positions, 12 heads of 64) in the AVX-512 tiles
//!   against `gemm` per head (`kernels::attention::blocked`), and against bf16 dot products
//!   (`kernels::attention::attention_bf16`);
//! - `pool`: the tower at batch 1 run on the pool's own threads (`kernels::on_pool`) against
//!   called from the main thread;
//! - `passes`: the tower at batch 8 in passes of its default size
//!   (`VisualEncoder::images_per_pass`, one image at 384 px) against passes of 1, 2 and 8
//!   images, with f32 and with compact bf16 weights;
//! - `bf16`: the tower at batch 1 with f32 weights against compact bf16 weights (bf16 dot
//!   products where the CPU has AVX512-BF16).
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p mplug --example in_turns [attention|pool|passes|bf16]...`
//! (all four without arguments).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use mplug::model::kernels::{self, attention as attn};
use mplug::model::vision::VisualEncoder;
use mplug::MplugConfig;
use std::time::Instant;

/// Best and median seconds of each side over `rounds` alternating runs (after one of each).
fn in_turns(rounds: usize, a: &mut dyn FnMut(), b: &mut dyn FnMut()) -> [(f64, f64); 2] {
    a();
    b();
    let mut times = [vec![], vec![]];
    for round in 0..rounds {
        // Alternate which side goes first, so a drift within a round hits both.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let start = Instant::now();
            if side == 0 {
                a()
            } else {
                b()
            }
            times[side].push(start.elapsed().as_secs_f64());
        }
    }
    times.map(|mut t| {
        t.sort_by(f64::total_cmp);
        (t[0], t[t.len() / 2])
    })
}

fn report(what: &str, names: [&str; 2], unit: &str, scale: f64, t: [(f64, f64); 2]) {
    let side = |i: usize| {
        format!(
            "{} best {:.3} median {:.3} {unit}",
            names[i],
            t[i].0 * scale,
            t[i].1 * scale
        )
    };
    println!("{what}: {} | {}", side(0), side(1));
}

/// The base visual tower with random weights held as plain tensors (as a loaded checkpoint),
/// with f32 or compact bf16 linear weights.
fn tower(cfg: &MplugConfig, compact: bool) -> VisualEncoder {
    let dev = Device::Cpu;
    let tensors =
        mplug::model::random_tensors(cfg, mplug::model::Task::Caption, DType::F32).unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
    if compact {
        mplug::model::ops::with_compact_weights(|| VisualEncoder::new(cfg, &vb)).unwrap()
    } else {
        VisualEncoder::new(cfg, &vb).unwrap()
    }
}

mod attn_kernel {
    use mplug::model::kernels::attention::{Dims, Mask, Rows};
    /// One of the attention kernels.
    pub type Kernel = fn(Rows, Rows, Rows, Option<Mask>, Dims) -> Vec<f32>;
}

fn main() {
    kernels::tune_allocator();
    let rounds = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wants = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    let cfg = MplugConfig::base();
    let r = cfg.image_res;
    let dev = Device::Cpu;

    if wants("attention") {
        let (l, heads, d) = (577usize, 12usize, 64usize);
        let w = heads * d;
        for b in [1usize, 8] {
            let qkv: Vec<f32> = (0..b * l * 3 * w)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 300.0)
                .collect();
            let part = |i: usize| attn::Rows {
                data: &qkv,
                offset: i * w,
                batch: l * 3 * w,
                row: 3 * w,
                head: d,
            };
            let dims = attn::Dims {
                bq: b,
                bk: b,
                lq: l,
                lk: l,
                heads,
                d,
            };
            let run = |kernel: attn_kernel::Kernel| {
                kernels::on_pool(|| {
                    std::hint::black_box(kernel(part(0), part(1), part(2), None, dims));
                })
            };
            let gflop = 4.0 * (b * heads * l * l * d) as f64 / 1e9;
            let rate = |(best, median): (f64, f64)| (gflop / best, gflop / median);
            for (names, other) in [
                (
                    ["f32 (tiles where AVX-512)", "f32 gemm per head"],
                    attn::blocked as attn_kernel::Kernel,
                ),
                (
                    ["f32 (tiles where AVX-512)", "bf16 (where AVX512-BF16)"],
                    attn::attention_bf16,
                ),
            ] {
                let t = in_turns(rounds, &mut || run(attn::attention), &mut || run(other));
                println!(
                    "attention, batch {b}: {} best {:.1} median {:.1} GFLOP/s | {} best {:.1} median {:.1} GFLOP/s",
                    names[0],
                    rate(t[0]).0,
                    rate(t[0]).1,
                    names[1],
                    rate(t[1]).0,
                    rate(t[1]).1
                );
            }
        }
    }

    let wants_tower = ["pool", "passes", "bf16"].iter().any(|w| wants(w));
    if !wants_tower {
        return;
    }
    let enc = tower(&cfg, false);
    let images = Tensor::randn(0f32, 1f32, (8, 3, r, r), &dev).unwrap();
    let one = images.narrow(0, 0, 1).unwrap();

    if wants("pool") {
        let t = in_turns(
            rounds,
            &mut || {
                kernels::on_pool(|| std::hint::black_box(enc.forward(&one).unwrap()));
            },
            &mut || {
                std::hint::black_box(enc.forward(&one).unwrap());
            },
        );
        report(
            "tower, batch 1",
            ["on the pool", "from the main thread"],
            "s",
            1.0,
            t,
        );
    }
    if wants("passes") {
        let compact = tower(&cfg, true);
        for (name, enc) in [("f32", &enc), ("bf16", &compact)] {
            let default = enc.images_per_pass();
            for other in [1, 2, 8] {
                if other == default {
                    continue;
                }
                let t = in_turns(
                    rounds,
                    &mut || {
                        kernels::on_pool(|| {
                            std::hint::black_box(enc.forward_in_passes(&images, default).unwrap())
                        });
                    },
                    &mut || {
                        kernels::on_pool(|| {
                            std::hint::black_box(enc.forward_in_passes(&images, other).unwrap())
                        });
                    },
                );
                let sides = [format!("passes of {default}"), format!("passes of {other}")];
                report(
                    &format!("tower, batch 8, {name} weights, per image"),
                    [&sides[0], &sides[1]],
                    "s",
                    1.0 / 8.0,
                    t,
                );
            }
        }
    }
    if wants("bf16") {
        let compact = tower(&cfg, true);
        let t = in_turns(
            rounds,
            &mut || {
                kernels::on_pool(|| std::hint::black_box(enc.forward(&one).unwrap()));
            },
            &mut || {
                kernels::on_pool(|| std::hint::black_box(compact.forward(&one).unwrap()));
            },
        );
        report(
            "tower, batch 1",
            ["f32 weights", "bf16 weights"],
            "s",
            1.0,
            t,
        );
    }
}
