//! Where VQA's time goes (base shapes, random weights, f32): the tower, the question through
//! the text encoder and fusion, the decoder's cross-attention keys and values, and each
//! decoding step of five beams (the layers, then the vocabulary head). Medians of `ROUNDS`;
//! `INT8=1` builds the model with int8 weights.
//! `RAYON_NUM_THREADS=2 cargo run --release -p mplug --example vqa_phases`

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use mplug::model::{kernels, Mplug, Task};
use mplug::MplugConfig;
use std::time::Instant;

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    kernels::tune_allocator();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let cfg = MplugConfig::base();
    let dev = Device::Cpu;
    let tensors = mplug::model::random_tensors(&cfg, Task::Vqa, DType::F32).unwrap();
    let build = || {
        Mplug::new(
            &cfg,
            Task::Vqa,
            VarBuilder::from_tensors(tensors, DType::F32, &dev),
        )
        .unwrap()
    };
    let model = if std::env::var("INT8").is_ok_and(|v| v == "1") {
        mplug::model::ops::with_int8_weights(build)
    } else {
        build()
    };
    let res = cfg.image_res;
    let image = Tensor::randn(0f32, 1.0, (1, 3, res, res), &dev).unwrap();
    let q: Vec<u32> = vec![101, 2054, 3609, 2003, 1996, 4937, 1029, 102];
    let n = q.len();
    let ids = Tensor::from_vec(q, (1, n), &dev).unwrap();
    let mask = Tensor::ones((1, n), DType::U32, &dev).unwrap();
    if std::env::var("STEPS").is_ok() {
        // Only decoding steps, for a profiler: 10-step decodes over one image's states.
        kernels::on_pool(|| {
            let embeds = model.encode_image(&image).unwrap();
            let qs = mplug::tasks::vqa::encode_question(&model, &embeds, &ids, &mask).unwrap();
            let dec = model.decoder().unwrap();
            let cross = dec.cross_states(&qs.states, Some(&qs.mask)).unwrap();
            let s = Instant::now();
            for _ in 0..rounds {
                let mut cache = dec.new_cache();
                for step in 0..10u32 {
                    let tok = Tensor::from_vec(vec![101u32 + step; 5], (5, 1), &dev).unwrap();
                    let h = dec.hidden(&tok, None, &cross, Some(&mut cache)).unwrap();
                    std::hint::black_box(dec.logits(&h).unwrap());
                }
            }
            println!(
                "step: {:.1} ms",
                s.elapsed().as_secs_f64() * 1e3 / (10 * rounds) as f64
            );
        });
        return;
    }
    kernels::on_pool(|| {
        let mut times: Vec<Vec<f64>> = vec![vec![]; 6];
        for _ in 0..rounds + 1 {
            let s = Instant::now();
            let embeds = model.encode_image(&image).unwrap();
            let t0 = s.elapsed().as_secs_f64();
            let s = Instant::now();
            let qs = mplug::tasks::vqa::encode_question(&model, &embeds, &ids, &mask).unwrap();
            let t1 = s.elapsed().as_secs_f64();
            let dec = model.decoder().unwrap();
            let s = Instant::now();
            let cross = dec.cross_states(&qs.states, Some(&qs.mask)).unwrap();
            let t2 = s.elapsed().as_secs_f64();
            let mut cache = dec.new_cache();
            let (mut th, mut tl) = (0.0, 0.0);
            let steps = 10;
            for step in 0..steps {
                let tok = Tensor::from_vec(vec![101u32 + step; 5], (5, 1), &dev).unwrap();
                let s = Instant::now();
                let h = dec.hidden(&tok, None, &cross, Some(&mut cache)).unwrap();
                th += s.elapsed().as_secs_f64();
                let s = Instant::now();
                std::hint::black_box(dec.logits(&h).unwrap());
                tl += s.elapsed().as_secs_f64();
            }
            for (v, t) in times.iter_mut().zip([
                t0,
                t1,
                t2,
                th / steps as f64,
                tl / steps as f64,
                t0 + t1 + t2 + th + tl,
            ]) {
                v.push(t);
            }
        }
        let names = [
            "tower",
            "question (text + fusion)",
            "cross keys/values",
            "step: layers",
            "step: vocabulary head",
            "total",
        ];
        for (name, t) in names.iter().zip(times) {
            println!("{name}: {:.1} ms", median(t[1..].to_vec()) * 1e3);
        }
    });
}
