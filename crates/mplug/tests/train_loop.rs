//! The training loop: losses fall, a killed run resumes to the same weights, NaN stops a run.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use mplug::model::dropout::{with_dropout, DropoutConfig};
use mplug::tasks::caption;
use mplug::train::optim::{MplugAdamW, OptimizerConfig};
use mplug::train::schedule::CosineSchedule;
use mplug::train::trainer::{train, TrainConfig};
use mplug::train::Trainable;
use mplug::{Checkpoint, Mplug, MplugConfig, Task};
use std::path::Path;

struct Setup {
    trainable: Trainable,
    optimizer: MplugAdamW,
    io: Io,
}

fn setup(dir: &Path) -> Setup {
    let cfg = MplugConfig::from_file(file(dir, "config.json")).unwrap();
    let ckpt = Checkpoint::load(file(dir, "caption.pth")).unwrap();
    let trainable = Trainable::from_checkpoint(&cfg, &ckpt, Task::Caption, &Device::Cpu).unwrap();
    let optimizer = MplugAdamW::new(
        &trainable.named_vars(),
        OptimizerConfig {
            lr1: 1e-3,
            lr2: 5e-4,
            ..Default::default()
        },
    )
    .unwrap();
    Setup {
        trainable,
        optimizer,
        io: Io::load(dir, "caption_io.safetensors"),
    }
}

/// Micro-batch `i`: image `i % 2` with its caption.
fn loss_of(io: &Io) -> impl Fn(&Mplug, u64) -> mplug::Result<Tensor> + '_ {
    move |model, i| {
        let row = (i % 2) as usize;
        let image = io.get("image").narrow(0, row, 1)?;
        let ids = io.get("caption_ids").narrow(0, row, 1)?;
        let mask = io.get("caption_mask").narrow(0, row, 1)?;
        let embeds = model.encode_image(&image)?;
        caption::loss(model, &embeds, &ids, &mask)
    }
}

fn weights(t: &Trainable) -> Vec<(String, Vec<f32>)> {
    t.named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

#[test]
fn loss_falls_with_accumulation_clipping_and_schedule() {
    let dir = &config_dirs()[0];
    let mut s = setup(dir);
    let config = TrainConfig {
        steps: 25,
        accumulate: 2,
        clip_norm: Some(5.0),
        schedule: Some(CosineSchedule {
            warmup_steps: 3,
            warmup_start: 0.1,
            total_steps: 25,
            min_scale: 0.1,
        }),
        ..Default::default()
    };
    let logs = train(
        &s.trainable,
        &mut s.optimizer,
        &config,
        loss_of(&s.io),
        |_| {},
    )
    .unwrap();
    assert_eq!(logs.len(), 25);
    let first = logs[0].loss;
    let last = logs.last().unwrap().loss;
    assert!(last < 0.5 * first, "loss went from {first} to {last}");
    assert!(
        logs[0].lr1 < logs[3].lr1,
        "warm-up raises the learning rate"
    );
    assert!(logs
        .iter()
        .all(|l| l.grad_norm.is_finite() && l.grad_norm > 0.0));
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    resumes_to_the_same_weights(None, "plain");
}

#[test]
fn a_killed_run_with_dropout_resumes_to_the_same_weights() {
    let dropout = DropoutConfig {
        hidden: 0.1,
        attention: 0.1,
    };
    resumes_to_the_same_weights(Some(dropout), "dropout");
}

fn resumes_to_the_same_weights(dropout: Option<DropoutConfig>, tag: &str) {
    let dir = &config_dirs()[0];
    let config = |out: &Path, steps: u64| TrainConfig {
        dropout,
        seed: 11,
        steps,
        accumulate: 2,
        clip_norm: Some(1.0),
        save_every: 2,
        out_dir: Some(out.to_path_buf()),
        schedule: Some(CosineSchedule {
            warmup_steps: 2,
            warmup_start: 0.2,
            total_steps: 6,
            min_scale: 0.0,
        }),
        ..Default::default()
    };
    let straight = common::scratch(&format!("straight-{tag}"));
    let mut a = setup(dir);
    train(
        &a.trainable,
        &mut a.optimizer,
        &config(&straight, 6),
        loss_of(&a.io),
        |_| {},
    )
    .unwrap();

    let killed = common::scratch(&format!("killed-{tag}"));
    let mut b = setup(dir);
    // Stop after 3 updates: the last checkpoint is at update 2, so update 3 is lost.
    train(
        &b.trainable,
        &mut b.optimizer,
        &config(&killed, 3),
        loss_of(&b.io),
        |_| {},
    )
    .unwrap();
    std::fs::write(killed.join("latest"), "step-2\n").unwrap();
    let mut c = setup(dir); // a new process: weights from the original checkpoint
    let resumed = train(
        &c.trainable,
        &mut c.optimizer,
        &config(&killed, 6),
        loss_of(&c.io),
        |_| {},
    )
    .unwrap();
    assert_eq!(
        resumed.first().map(|l| l.step),
        Some(3),
        "resumes after the last checkpoint"
    );
    assert_eq!(
        weights(&c.trainable),
        weights(&a.trainable),
        "resumed weights differ"
    );
    let log = std::fs::read_to_string(straight.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 6);
    assert!(straight.join("step-6/model.safetensors").is_file());
    std::fs::remove_dir_all(&straight).ok();
    std::fs::remove_dir_all(&killed).ok();
}

/// Micro-batches computed on concurrent threads give the update computed one after the other,
/// bit for bit (dropout on, and an update of 3 micro-batches split 2 + 1).
#[test]
fn concurrent_micro_batches_give_the_serial_update() {
    use std::collections::HashSet;
    use std::sync::Mutex;
    let dir = &config_dirs()[0];
    let config = |parallel: usize| TrainConfig {
        dropout: Some(DropoutConfig {
            hidden: 0.1,
            attention: 0.1,
        }),
        seed: 5,
        steps: 3,
        accumulate: 3,
        clip_norm: Some(1.0),
        parallel,
        ..Default::default()
    };
    let mut serial = setup(dir);
    let serial_logs = train(
        &serial.trainable,
        &mut serial.optimizer,
        &config(1),
        loss_of(&serial.io),
        |_| {},
    )
    .unwrap();

    let mut par = setup(dir);
    let base = loss_of(&par.io);
    // Which threads ran micro-batches, and how many ran at the same time at most.
    let threads = Mutex::new(HashSet::new());
    let running = Mutex::new((0usize, 0usize));
    let counted = |m: &Mplug, i: u64| -> mplug::Result<Tensor> {
        threads.lock().unwrap().insert(std::thread::current().id());
        {
            let mut r = running.lock().unwrap();
            r.0 += 1;
            r.1 = r.1.max(r.0);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let loss = base(m, i);
        running.lock().unwrap().0 -= 1;
        loss
    };
    let par_logs = train(
        &par.trainable,
        &mut par.optimizer,
        &config(2),
        counted,
        |_| {},
    )
    .unwrap();
    assert!(
        threads.lock().unwrap().len() >= 2 && running.lock().unwrap().1 == 2,
        "micro-batches did not run concurrently"
    );
    let losses = |logs: &[mplug::train::trainer::StepLog]| -> Vec<f64> {
        logs.iter().map(|l| l.loss).collect()
    };
    assert_eq!(losses(&par_logs), losses(&serial_logs));
    assert_eq!(weights(&par.trainable), weights(&serial.trainable));
}

#[test]
fn a_non_finite_loss_stops_the_run_naming_the_step() {
    let dir = &config_dirs()[0];
    let mut s = setup(dir);
    let base = loss_of(&s.io);
    let poisoned = |m: &Mplug, i: u64| -> mplug::Result<Tensor> {
        let l = base(m, i)?;
        Ok(if i == 4 { (l * f64::NAN)? } else { l })
    };
    let config = TrainConfig {
        steps: 5,
        accumulate: 2,
        ..Default::default()
    };
    let err = train(&s.trainable, &mut s.optimizer, &config, poisoned, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("update 3") && err.contains("micro-batch 4"),
        "{err}"
    );
}

#[test]
fn dropout_applies_only_inside_a_training_scope() {
    for dir in config_dirs() {
        let s = setup(&dir);
        let model = &s.trainable.model;
        let loss = loss_of(&s.io);
        let value = |t: Tensor| t.to_scalar::<f32>().unwrap();
        let plain = value(loss(model, 0).unwrap());
        let cfg = DropoutConfig {
            hidden: 0.1,
            attention: 0.1,
        };
        let a = value(with_dropout(cfg, 1, || loss(model, 0)).unwrap());
        let b = value(with_dropout(cfg, 1, || loss(model, 0)).unwrap());
        let c = value(with_dropout(cfg, 2, || loss(model, 0)).unwrap());
        assert_ne!(a, plain, "dropout changes the training loss");
        assert_eq!(a, b, "the same seed draws the same masks");
        assert_ne!(a, c, "another seed draws other masks");
        assert_eq!(
            value(loss(model, 0).unwrap()),
            plain,
            "inference has no dropout"
        );
        // Attention dropout alone reaches the BERT towers.
        let attention_only = DropoutConfig {
            hidden: 0.0,
            attention: 0.5,
        };
        let d = value(with_dropout(attention_only, 1, || loss(model, 0)).unwrap());
        assert_ne!(d, plain);
        // CLIP has no dropout; the tokens after `visn_fc` + LayerNorm have the hidden one.
        let image = s.io.get("image");
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let clean = flat(model.encode_image(&image).unwrap());
        let heavy = DropoutConfig {
            hidden: 0.5,
            attention: 0.5,
        };
        let dropped = flat(with_dropout(heavy, 3, || model.encode_image(&image)).unwrap());
        let cfg = &model.config;
        assert_eq!(
            clean != dropped,
            cfg.has_visn_fc(),
            "{}: visual tokens under dropout",
            dir.display()
        );
    }
}
