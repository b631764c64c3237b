//! Pre-training a tiny model on generated image-text pairs: each objective's loss falls.

mod common;

use candle_core::{DType, Device, Tensor};
use mplug::tasks::pretrain::{losses, value, LossWeights, MaskTokens, Momentum, PretrainBatch};
use mplug::train::optim::{MplugAdamW, OptimizerConfig};
use mplug::train::Trainable;
use mplug::{BertConfig, MplugConfig, Task, VisionConfig};

fn tiny() -> MplugConfig {
    MplugConfig {
        image_res: 32,
        vision: VisionConfig {
            patch_size: 8,
            width: 48,
            layers: 2,
            heads: 4,
        },
        vision_width: 48,
        embed_dim: 32,
        bert: BertConfig {
            hidden_size: 48,
            num_attention_heads: 4,
            intermediate_size: 96,
            num_hidden_layers: 3,
            text_encoder_layers: 2,
            fusion_layers: 3,
            text_decode_layers: 2,
            stride_layer: 2,
            encoder_width: 48,
            vocab_size: 128,
            max_position_embeddings: 32,
            layer_norm_eps: 1e-12,
            type_vocab_size: 2,
            hidden_act: "gelu".into(),
            pad_token_id: 0,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
        },
    }
}

/// Scene `s` of 8: one of 4 colours filling one of 2 halves; its caption names both, with
/// filler words, so every objective has something to learn from the picture.
fn scene(s: usize, res: usize) -> (Vec<f32>, Vec<u32>) {
    let colours = [
        [1.0, -1.0, -1.0],
        [-1.0, 1.0, -1.0],
        [-1.0, -1.0, 1.0],
        [1.0, 1.0, -1.0],
    ];
    let (c, half) = (s % 4, s / 4);
    let mut px = vec![-0.5f32; 3 * res * res];
    for ch in 0..3 {
        for y in 0..res {
            for x in 0..res {
                if (x < res / 2) == (half == 0) {
                    px[ch * res * res + y * res + x] = colours[c][ch];
                }
            }
        }
    }
    let caption = vec![101, 110, 111 + c as u32, 115 + half as u32, 117, 118, 102];
    (px, caption)
}

fn batch(step: u64, res: usize) -> PretrainBatch {
    let b = 4;
    let scenes: Vec<usize> = (0..b).map(|i| ((step as usize) * 3 + i * 5) % 8).collect();
    let mut px = Vec::new();
    let mut ids = Vec::new();
    for &s in &scenes {
        let (p, c) = scene(s, res);
        px.extend(p);
        ids.extend(c);
    }
    let dev = Device::Cpu;
    PretrainBatch {
        images: Tensor::from_vec(px, (b, 3, res, res), &dev).unwrap(),
        ids: Tensor::from_vec(ids, (b, 7), &dev).unwrap(),
        mask: Tensor::ones((b, 7), DType::U32, &dev).unwrap(),
        image_ids: None,
    }
}

fn run(weights: LossWeights, steps: u64) -> Vec<[f64; 4]> {
    let cfg = tiny();
    // A seeded initialization makes the run, and so the test, deterministic.
    let t = Trainable::new_seeded(&cfg, Task::Pretrain, &Device::Cpu, 17).unwrap();
    let vars = t.named_vars();
    let mut opt = MplugAdamW::new(
        &vars,
        OptimizerConfig {
            lr1: 1e-3,
            lr2: 1e-3,
            weight_decay: 0.02,
            ..Default::default()
        },
    )
    .unwrap();
    let mut momentum = Momentum::new(&t.model, &vars, 32, 7).unwrap();
    let mut history = Vec::new();
    for step in 0..steps {
        let alpha = 0.4 * (step as f64 / steps as f64).min(1.0);
        let l = losses(
            &t.model,
            Some(&mut momentum),
            &batch(step, cfg.image_res),
            &weights,
            alpha,
            &MaskTokens::default(),
            step,
        )
        .unwrap();
        history.push([
            value(&l.itc),
            value(&l.itm),
            value(&l.mlm),
            value(&l.prefix_lm),
        ]);
        let grads = l.total.backward().unwrap();
        opt.step(&grads).unwrap();
        momentum.update(&vars).unwrap();
    }
    history
}

fn assert_falls(history: &[[f64; 4]], k: usize, name: &str) {
    let n = history.len();
    let mean = |r: std::ops::Range<usize>| {
        history[r.clone()].iter().map(|h| h[k]).sum::<f64>() / r.len() as f64
    };
    let (first, last) = (mean(0..25), mean(n - 25..n));
    eprintln!("{name}: {first:.4} -> {last:.4}");
    assert!(
        first.is_finite() && last.is_finite(),
        "{name}: {first} -> {last}"
    );
    assert!(
        last < 0.6 * first,
        "{name} loss did not fall: {first:.4} -> {last:.4}"
    );
}

/// ITC, MLM and PrefixLM trained together (with momentum distillation and queues) each fall.
#[test]
fn contrastive_masked_and_prefix_losses_fall_together() {
    let h = run(
        LossWeights {
            itc: 1.0,
            itm: 0.0,
            mlm: 1.0,
            prefix_lm: 1.0,
        },
        200,
    );
    for (k, name) in [(0, "ITC"), (2, "MLM"), (3, "PrefixLM")] {
        assert_falls(&h, k, name);
    }
}

/// ITM with hard negatives learns to tell matching pairs from mismatched ones. Trained alone:
/// next to the other objectives it takes off only after a few hundred steps, longer than a
/// test should run.
#[test]
fn matching_loss_falls() {
    let h = run(
        LossWeights {
            itc: 0.0,
            itm: 1.0,
            mlm: 0.0,
            prefix_lm: 0.0,
        },
        200,
    );
    assert_falls(&h, 1, "ITM");
}

#[test]
fn switched_off_losses_are_not_computed() {
    let cfg = tiny();
    let t = Trainable::new(&cfg, Task::Pretrain, &Device::Cpu).unwrap();
    let w = LossWeights {
        itc: 1.0,
        itm: 0.0,
        mlm: 0.0,
        prefix_lm: 1.0,
    };
    let l = losses(
        &t.model,
        None,
        &batch(0, cfg.image_res),
        &w,
        0.0,
        &MaskTokens::default(),
        1,
    )
    .unwrap();
    assert!(l.itc.is_some() && l.prefix_lm.is_some() && l.itm.is_none() && l.mlm.is_none());
    let total = l.total.to_scalar::<f32>().unwrap() as f64;
    assert!((total - value(&l.itc) - value(&l.prefix_lm)).abs() < 1e-4);
}

/// Retrieval fine-tuning: captions of the same image are all ITC positives.
#[test]
fn same_image_pairs_are_positives() {
    use mplug::tasks::pretrain::positive_targets;
    let t = positive_targets(&[7, 7, 8], &[7, 7, 8, -1, 7]);
    assert_eq!(t[0], vec![1.0 / 3.0, 1.0 / 3.0, 0.0, 0.0, 1.0 / 3.0]);
    assert_eq!(t[2], vec![0.0, 0.0, 1.0, 0.0, 0.0]);

    let cfg = tiny();
    let tr = Trainable::new(&cfg, Task::Pretrain, &Device::Cpu).unwrap();
    let w = LossWeights {
        itc: 1.0,
        itm: 1.0,
        mlm: 0.0,
        prefix_lm: 0.0,
    };
    let mut b = batch(0, cfg.image_res);
    let distinct = losses(&tr.model, None, &b, &w, 0.0, &MaskTokens::default(), 3).unwrap();
    b.image_ids = Some(vec![7, 7, 8, 9]);
    let shared = losses(&tr.model, None, &b, &w, 0.0, &MaskTokens::default(), 3).unwrap();
    assert_ne!(
        value(&shared.itc),
        value(&distinct.itc),
        "shared ids change the ITC targets"
    );
    assert!(value(&shared.itm).is_finite());
    b.image_ids = Some(vec![1, 2]);
    assert!(losses(&tr.model, None, &b, &w, 0.0, &MaskTokens::default(), 3).is_err());
}

/// Retrieval fine-tuning starts from a released retrieval checkpoint: ITC (with its stored
/// temperature) and ITM need only the retrieval model's parts, and both fall.
#[test]
fn retrieval_checkpoints_fine_tune_with_itc_and_itm() {
    use mplug::Checkpoint;
    let golden = common::config_dirs().remove(0);
    let cfg = MplugConfig::from_file(golden.join("config.json")).unwrap();
    let ckpt = Checkpoint::load(golden.join("retrieval.pth")).unwrap();
    let t = Trainable::from_checkpoint(&cfg, &ckpt, Task::Retrieval, &Device::Cpu).unwrap();
    let vars = t.named_vars();
    assert!(
        vars.iter().any(|(n, _)| n == "temp"),
        "the stored temperature is trainable"
    );
    let io = candle_core::safetensors::load(golden.join("retrieval_io.safetensors"), &Device::Cpu)
        .unwrap();
    let images = io["images"].clone();
    let n = images.dim(0).unwrap();
    let b = PretrainBatch {
        images,
        ids: io["text_ids"].narrow(0, 0, n).unwrap(),
        mask: io["text_mask"].narrow(0, 0, n).unwrap(),
        image_ids: None,
    };
    let mut opt = MplugAdamW::new(
        &vars,
        OptimizerConfig {
            lr1: 1e-3,
            lr2: 1e-3,
            ..Default::default()
        },
    )
    .unwrap();
    let w = LossWeights {
        itc: 1.0,
        itm: 1.0,
        mlm: 0.0,
        prefix_lm: 0.0,
    };
    let mut itc = Vec::new();
    for step in 0..30 {
        let l = losses(&t.model, None, &b, &w, 0.0, &MaskTokens::default(), step).unwrap();
        assert!(l.mlm.is_none() && l.prefix_lm.is_none());
        itc.push(value(&l.itc));
        opt.step(&l.total.backward().unwrap()).unwrap();
    }
    assert!(itc[29] < 0.5 * itc[0], "ITC {} -> {}", itc[0], itc[29]);
}

/// A pre-training run with momentum encoders and queues, killed after its last checkpoint and
/// resumed in a new process, ends with the same weights as an uninterrupted run.
#[test]
fn a_killed_pretraining_run_resumes_to_the_same_weights() {
    use mplug::train::trainer::{train_with_state, ExtraState, TrainConfig};
    use std::sync::Mutex;
    let cfg = tiny();
    let w = LossWeights::default();
    let run = |out: &std::path::Path, steps: u64| -> Vec<(String, Vec<f32>)> {
        // A new process each time: weights from the same seed, fresh momentum and optimizer.
        let t = Trainable::new_seeded(&cfg, Task::Pretrain, &Device::Cpu, 5).unwrap();
        let vars = t.named_vars();
        let m = Mutex::new(Momentum::new(&t.model, &vars, 8, 3).unwrap());
        let mut opt = MplugAdamW::new(
            &vars,
            OptimizerConfig {
                lr1: 1e-3,
                lr2: 1e-3,
                ..Default::default()
            },
        )
        .unwrap();
        let config = TrainConfig {
            steps,
            save_every: 2,
            out_dir: Some(out.to_path_buf()),
            batch_size: 4,
            ..Default::default()
        };
        train_with_state(
            &t,
            &mut opt,
            &config,
            Some(&m as &dyn ExtraState),
            |model, i| {
                let mut g = m.lock().unwrap();
                g.update(&vars)?;
                Ok(losses(
                    model,
                    Some(&mut g),
                    &batch(i, cfg.image_res),
                    &w,
                    0.2,
                    &MaskTokens::default(),
                    i,
                )?
                .total)
            },
            |_| {},
        )
        .unwrap();
        vars.iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
                )
            })
            .collect()
    };
    let base = std::env::temp_dir().join(format!("mplug-pretrain-resume-{}", std::process::id()));
    let (straight, killed) = (base.join("straight"), base.join("killed"));
    let want = run(&straight, 5);
    run(&killed, 3);
    // Killed after update 3: the last checkpoint is update 2.
    std::fs::write(killed.join("latest"), "step-2\n").unwrap();
    assert!(killed.join("step-2/momentum.safetensors").is_file());
    let got = run(&killed, 5);
    let differ: Vec<&str> = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0.as_str())
        .collect();
    assert!(
        differ.is_empty(),
        "resumed pre-training weights differ: {differ:?}"
    );
    std::fs::remove_dir_all(&base).ok();
}
