//! Training on video clips: MSRVTT-style video QA and video retrieval annotations read as
//! datasets, clip batches `(B, F, 3, R, R)` from the loader (deterministic, flipped as one clip),
//! and the golden tiny models' VQA and ITC + ITM losses on clip batches, which AdamW lowers.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::{config_dirs, file, scratch};
use image::codecs::gif::GifEncoder;
use image::{Frame, RgbImage, RgbaImage};
use mplug::data::{AugmentConfig, Batch, DataTask, Dataset, Loader, LoaderConfig};
use mplug::input::{Tokenizer, BERT_BASE_UNCASED_VOCAB};
use mplug::tasks::pretrain::{losses, value, LossWeights, MaskTokens, Momentum, PretrainBatch};
use mplug::tasks::{video, vqa};
use mplug::train::optim::{MplugAdamW, OptimizerConfig};
use mplug::train::Trainable;
use mplug::{Checkpoint, MplugConfig, Task};
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Frame `k` of clip `seed`: a coloured block moving right over a gradient, so that frames
/// differ and a mirrored frame differs from the original.
fn frame(w: u32, h: u32, seed: u8, k: u32) -> RgbImage {
    let x0 = 2 + 3 * k;
    RgbImage::from_fn(w, h, |x, y| {
        if x >= x0 && x < x0 + w / 4 && y > h / 4 {
            image::Rgb([230, seed.wrapping_mul(60), 20])
        } else {
            image::Rgb([
                (x * 5 % 256) as u8,
                (y * 3 % 256) as u8,
                seed.wrapping_mul(40),
            ])
        }
    })
}

/// An animated GIF of `n` frames.
fn write_gif(path: &Path, n: u32, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let out = std::fs::File::create(path).unwrap();
    let mut enc = GifEncoder::new_with_speed(out, 10);
    let frames = (0..n).map(|k| {
        let rgba: RgbaImage = image::DynamicImage::ImageRgb8(frame(40, 32, seed, k)).into_rgba8();
        Frame::new(rgba)
    });
    enc.encode_frames(frames).unwrap();
}

/// Clips under `dir/clips/train`: three GIFs and a folder of PNG frames.
fn clips(dir: &Path) {
    let train = dir.join("clips/train");
    write_gif(&train.join("train_0000.gif"), 6, 1);
    write_gif(&train.join("train_0001.gif"), 4, 2);
    write_gif(&train.join("train_0003.gif"), 5, 3);
    let folder = train.join("train_0002");
    std::fs::create_dir_all(&folder).unwrap();
    for k in 0..3 {
        frame(36, 30, 4, k)
            .save(folder.join(format!("{k:03}.png")))
            .unwrap();
    }
}

/// Video QA lines; every question names a side, so that a flip shows in the text.
const VIDEOQA: &str = r#"{"video_id": "clips/train/train_0000.gif", "question": "what is on the left", "answer": "car", "question_id": 7}
{"video_id": "clips/train/train_0001", "question": "what moves to the right", "answer": "left"}
{"video_id": "clips/train/train_0000.gif", "question": "is the left part red", "answer": "yes"}
{"video_id": "clips/train/train_0002", "question": "what is right of the box", "answer": "dog"}
{"video_id": "clips/train/train_0003", "question": "what leaves to the left", "answer": "right"}
"#;

/// Video retrieval lines: clip 0 twice, clip 3 twice.
const RETRIEVAL: &str = r#"{"clip_name": "clips/train/train_0000", "caption": "A red block, moving!"}
{"clip_name": "clips/train/train_0003", "caption": "a box goes right"}
{"clip_name": "clips/train/train_0000", "caption": "something slides"}
{"clip_name": "clips/train/train_0001", "caption": "a green car"}
{"clip_name": "clips/train/train_0003", "caption": "the box"}
{"clip_name": "clips/train/train_0002", "caption": "a dog runs left"}
"#;

/// `[PAD]`, `[unused*]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]` at BERT's ids, then the words of
/// the tests: every id fits the tiny models' vocabularies.
fn tokenizer(max_positions: usize) -> Tokenizer {
    let mut vocab: Vec<&str> = BERT_BASE_UNCASED_VOCAB.lines().take(104).collect();
    vocab.extend([
        "what",
        "is",
        "on",
        "the",
        "left",
        "right",
        "moves",
        "to",
        "part",
        "red",
        "of",
        "box",
        "leaves",
        "car",
        "yes",
        "dog",
        "a",
        "block",
        "moving",
        "goes",
        "something",
        "slides",
        "green",
        "runs",
    ]);
    let text = vocab.join("\n") + "\n";
    Tokenizer::from_vocab_bytes(text.as_bytes(), Path::new("video-test-vocab.txt"))
        .unwrap()
        .with_max_positions(max_positions)
}

fn config(batch_size: usize, seed: u64, resolution: u32, augment: bool) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        seed,
        resolution,
        max_text_len: 16,
        augment: augment.then(AugmentConfig::finetune),
        workers: 1,
        prompt: String::new(),
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn video_datasets_read_questions_answers_and_clip_ids() {
    let dir = scratch("datasets");
    let qa = Dataset::videoqa(write(&dir, "train.jsonl", VIDEOQA), 4).unwrap();
    assert_eq!(qa.task, DataTask::VideoQa);
    assert!(qa.is_video() && qa.task.is_video());
    assert_eq!((qa.len(), qa.frames), (5, 4));
    assert_eq!(qa.samples[0].image, "clips/train/train_0000.gif");
    assert_eq!(qa.samples[0].texts, ["what is on the left"]);
    assert_eq!(qa.samples[1].answers, ["left"]);
    for s in &qa.samples {
        assert_eq!((s.answers.len(), s.weights.as_slice()), (1, &[1.0f32][..]));
    }
    let ids: Vec<u64> = qa.samples.iter().map(|s| s.image_id).collect();
    assert_eq!(ids, [0, 1, 0, 2, 3]);

    // A JSON array works too.
    let array = write(
        &dir,
        "array.json",
        r#"[{"video_id": "a", "question": "q", "answer": "x"}]"#,
    );
    assert_eq!(Dataset::videoqa(&array, 2).unwrap().len(), 1);
    // A training question needs an answer; a clip needs frames.
    let bad = write(&dir, "bad.jsonl", r#"{"video_id": "a", "question": "q"}"#);
    let e = Dataset::videoqa(&bad, 2).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl") && e.contains("question 0"), "{e}");
    let e = Dataset::videoqa(&array, 0).unwrap_err().to_string();
    assert!(e.contains("frame"), "{e}");

    let r = Dataset::video_retrieval(write(&dir, "ret.jsonl", RETRIEVAL), 3).unwrap();
    assert_eq!(r.task, DataTask::VideoRetrieval);
    assert_eq!((r.len(), r.frames), (6, 3));
    assert_eq!(r.samples[0].texts, ["a red block moving"]);
    assert!(r.samples.iter().all(|s| s.answers.is_empty()));
    let ids: Vec<u64> = r.samples.iter().map(|s| s.image_id).collect();
    assert_eq!(ids, [0, 1, 0, 2, 1, 3]);

    // Image datasets have no frames.
    let img = write(&dir, "img.json", r#"[{"image": "a.png", "caption": "x"}]"#);
    let d = Dataset::retrieval(&img).unwrap();
    assert!(!d.is_video());
    assert_eq!(d.frames, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn qa_loader(dir: &Path, seed: u64, workers: usize, augment: bool, res: u32) -> Loader {
    let ann = dir.join("train.jsonl");
    if !ann.is_file() {
        write(dir, "train.jsonl", VIDEOQA);
    }
    let mut cfg = config(2, seed, res, augment);
    cfg.workers = workers;
    Loader::new(
        Dataset::videoqa(&ann, 3).unwrap(),
        dir,
        tokenizer(64),
        cfg,
        &Device::Cpu,
    )
    .unwrap()
}

/// `(B, F, 3, R, R)` pixels of `b` mirrored left to right.
fn mirrored(b: &Tensor) -> Vec<f32> {
    let r = *b.dims().last().unwrap();
    let mut v = flat(b);
    for row in v.chunks_exact_mut(r) {
        row.reverse();
    }
    v
}

#[test]
fn clip_batches_are_five_dimensional_deterministic_and_flipped_as_one() {
    let dir = scratch("loader");
    clips(&dir);
    let a = qa_loader(&dir, 5, 1, true, 32);
    let b = qa_loader(&dir, 5, 3, true, 32);
    let plain = qa_loader(&dir, 5, 2, false, 32);
    let tok = tokenizer(64);
    let (mut flipped, mut kept) = (0, 0);
    for i in 0..8 {
        let (x, y) = (a.batch(i).unwrap(), b.batch(i).unwrap());
        assert_eq!(x.images.dims(), [2, 3, 3, 32, 32], "batch {i}");
        assert_eq!(x.samples, y.samples, "batch {i}");
        assert_eq!(x.texts, y.texts, "batch {i}");
        assert_eq!(
            flat(&x.images),
            flat(&y.images),
            "batch {i}: workers changed pixels"
        );
        assert_eq!(flat(&x.ids), flat(&y.ids));
        assert_eq!(x.answer_counts, [1, 1]);
        assert_eq!(flat(x.answer_weights.as_ref().unwrap()), [1.0, 1.0]);
        // Without augmentation the same samples come in the same order; a flipped clip is the
        // plain clip mirrored, every frame alike, with left and right swapped in its text and
        // answer.
        let p = plain.batch(i).unwrap();
        assert_eq!(p.samples, x.samples);
        let mut answers = Vec::new();
        for k in 0..2 {
            let s = &a.dataset().samples[x.samples[k]];
            let (xk, pk) = (x.images.i(k).unwrap(), p.images.i(k).unwrap());
            assert_eq!(p.texts[k], s.texts[0]);
            if x.texts[k] == s.texts[0] {
                kept += 1;
                assert_eq!(flat(&xk), flat(&pk), "batch {i} sample {k}");
                answers.push(s.answers[0].clone());
            } else {
                flipped += 1;
                assert_eq!(x.texts[k], mplug::data::swap_left_right(&s.texts[0]));
                assert_eq!(flat(&xk), mirrored(&pk), "batch {i} sample {k}");
                answers.push(mplug::data::swap_left_right(&s.answers[0]));
            }
        }
        let (want, _) = tok
            .encode_answers(&answers)
            .unwrap()
            .to_tensors(&Device::Cpu)
            .unwrap();
        assert_eq!(
            flat(x.answer_ids.as_ref().unwrap()),
            flat(&want),
            "batch {i}"
        );
    }
    assert!(flipped > 0 && kept > 0, "{flipped} flipped, {kept} kept");
    // Frames of a clip differ (they are sampled over the clip, not repeated).
    let x = plain.batch(0).unwrap();
    let clip = x.images.i(0).unwrap();
    assert_ne!(flat(&clip.i(0).unwrap()), flat(&clip.i(2).unwrap()));
    // A fresh loader gives the same late batch; another seed another order or flip.
    let fresh = qa_loader(&dir, 5, 1, true, 32);
    assert_eq!(
        flat(&fresh.batch(7).unwrap().images),
        flat(&a.batch(7).unwrap().images)
    );
    let c = qa_loader(&dir, 6, 1, true, 32);
    let differs = (0..4).any(|i| {
        let (x, y) = (a.batch(i).unwrap(), c.batch(i).unwrap());
        x.samples != y.samples || flat(&x.images) != flat(&y.images)
    });
    assert!(differs, "seeds 5 and 6 gave the same batches");

    // Retrieval clips carry their clip ids.
    let ret = Loader::new(
        Dataset::video_retrieval(write(&dir, "ret.jsonl", RETRIEVAL), 2).unwrap(),
        &dir,
        tokenizer(64),
        config(6, 1, 24, false),
        &Device::Cpu,
    )
    .unwrap();
    let x = ret.batch(0).unwrap();
    assert_eq!(x.images.dims(), [6, 2, 3, 24, 24]);
    let mut ids: Vec<(usize, u64)> = x.samples.iter().copied().zip(x.image_ids).collect();
    ids.sort();
    assert_eq!(ids, [(0, 0), (1, 1), (2, 0), (3, 2), (4, 1), (5, 3)]);
    assert!(x.answer_ids.is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_clip_is_named() {
    let dir = scratch("missing");
    let ann = write(
        &dir,
        "ann.jsonl",
        r#"{"video_id": "clips/train/nope_0042", "question": "what", "answer": "x"}"#,
    );
    let l = Loader::new(
        Dataset::videoqa(&ann, 2).unwrap(),
        &dir,
        tokenizer(64),
        config(1, 0, 32, false),
        &Device::Cpu,
    )
    .unwrap();
    let e = l.batch(0).unwrap_err().to_string();
    assert!(e.contains("nope_0042") && e.contains("sample 0"), "{e}");
    // A file that is not a clip names the file too.
    std::fs::create_dir_all(dir.join("clips/train")).unwrap();
    write(&dir, "clips/train/nope_0042.gif", "GIF89a, but broken");
    let e = l.batch(0).unwrap_err().to_string();
    assert!(e.contains("nope_0042.gif"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The VQA loss of a clip batch: frames encoded one by one, tokens concatenated.
fn vqa_loss(t: &Trainable, b: &Batch) -> Tensor {
    let embeds = video::encode_frames(&t.model, &b.images).unwrap();
    let q = vqa::encode_question(&t.model, &embeds, &b.ids, &b.mask).unwrap();
    vqa::loss(
        &t.model,
        &q,
        b.answer_ids.as_ref().unwrap(),
        b.answer_mask.as_ref().unwrap(),
        &b.answer_counts,
        b.answer_weights.as_ref().unwrap(),
    )
    .unwrap()
}

fn scalar(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .unwrap()
        .reshape(())
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn golden_vqa_model_learns_from_a_clip_batch() {
    let data = scratch("vqa-model");
    clips(&data);
    let ann = write(&data, "train.jsonl", VIDEOQA);
    for dir in config_dirs() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let cfg = MplugConfig::from_file(file(&dir, "config.json")).unwrap();
        let ckpt = Checkpoint::load(file(&dir, "vqa.pth")).unwrap();
        let t = Trainable::from_checkpoint(&cfg, &ckpt, Task::Vqa, &Device::Cpu).unwrap();
        let loader = Loader::new(
            Dataset::videoqa(&ann, 3).unwrap(),
            &data,
            tokenizer(cfg.bert.max_position_embeddings),
            config(3, 9, cfg.image_res as u32, true),
            &Device::Cpu,
        )
        .unwrap();
        let batch = loader.batch(0).unwrap();
        let r = cfg.image_res;
        assert_eq!(batch.images.dims(), [3, 3, 3, r, r], "{name}");

        let vars = t.named_vars();
        let mut opt = MplugAdamW::new(
            &vars,
            OptimizerConfig {
                lr1: 5e-4,
                lr2: 5e-4,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let mut history = Vec::new();
        for _ in 0..5 {
            let loss = vqa_loss(&t, &batch);
            let v = scalar(&loss);
            assert!(v.is_finite() && v > 0.0, "{name}: VQA loss {v}");
            history.push(v);
            let grads = loss.backward().unwrap();
            // The visual tower learns through every frame.
            let visual = vars
                .iter()
                .find(|(n, _)| n.starts_with("visual_encoder."))
                .unwrap();
            assert!(grads.get(&visual.1).is_some(), "{name}: no visual gradient");
            opt.step(&grads).unwrap();
        }
        let last = scalar(&vqa_loss(&t, &batch));
        eprintln!("{name}: VQA loss on a clip batch {history:?} -> {last}");
        assert!(
            last < 0.8 * history[0],
            "{name}: VQA loss did not fall: {history:?} -> {last}"
        );
    }
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn golden_retrieval_model_computes_contrastive_and_matching_losses_on_clips() {
    let data = scratch("retrieval-model");
    clips(&data);
    let ann = write(&data, "ret.jsonl", RETRIEVAL);
    let weights = LossWeights {
        itc: 1.0,
        itm: 1.0,
        mlm: 0.0,
        prefix_lm: 0.0,
    };
    for dir in config_dirs() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let cfg = MplugConfig::from_file(file(&dir, "config.json")).unwrap();
        let ckpt = Checkpoint::load(file(&dir, "retrieval.pth")).unwrap();
        let t = Trainable::from_checkpoint(&cfg, &ckpt, Task::Retrieval, &Device::Cpu).unwrap();
        let loader = Loader::new(
            Dataset::video_retrieval(&ann, 2).unwrap(),
            &data,
            tokenizer(cfg.bert.max_position_embeddings),
            config(4, 3, cfg.image_res as u32, true),
            &Device::Cpu,
        )
        .unwrap();
        let b = loader.batch(0).unwrap();
        let r = cfg.image_res;
        assert_eq!(b.images.dims(), [4, 2, 3, r, r], "{name}");
        let clip_batch = PretrainBatch {
            images: b.images.clone(),
            ids: b.ids.clone(),
            mask: b.mask.clone(),
            image_ids: Some(b.image_ids.clone()),
        };
        let tokens = MaskTokens::default();

        // Without momentum encoders.
        let l = losses(&t.model, None, &clip_batch, &weights, 0.4, &tokens, 1).unwrap();
        let (itc, itm) = (value(&l.itc), value(&l.itm));
        assert!(itc.is_finite() && itm.is_finite(), "{name}: {itc} {itm}");
        assert!(itc > 0.0 && itm > 0.0, "{name}: {itc} {itm}");
        assert!(l.mlm.is_none() && l.prefix_lm.is_none());

        // One-frame clips are images: the same losses as the 4-D batch of those frames.
        let one = PretrainBatch {
            images: b.images.narrow(1, 0, 1).unwrap(),
            ..clip_batch.clone()
        };
        let frames = PretrainBatch {
            images: b.images.i((.., 0)).unwrap().contiguous().unwrap(),
            ..clip_batch.clone()
        };
        let l1 = losses(&t.model, None, &one, &weights, 0.4, &tokens, 1).unwrap();
        let l4 = losses(&t.model, None, &frames, &weights, 0.4, &tokens, 1).unwrap();
        for (x, y, what) in [(&l1.itc, &l4.itc, "itc"), (&l1.itm, &l4.itm, "itm")] {
            let (x, y) = (value(x), value(y));
            assert!(
                (x - y).abs() <= 1e-4 * y.abs().max(1.0),
                "{name}: {what} {x} vs {y}"
            );
        }

        // With momentum encoders (queues, distillation), which encode clips the same way; the
        // total trains the model.
        let vars = t.named_vars();
        let mut momentum = Momentum::new(&t.model, &vars, 8, 7).unwrap();
        let mut opt = MplugAdamW::new(
            &vars,
            OptimizerConfig {
                lr1: 1e-4,
                lr2: 1e-4,
                ..Default::default()
            },
        )
        .unwrap();
        for step in 0..2 {
            let l = losses(
                &t.model,
                Some(&mut momentum),
                &clip_batch,
                &weights,
                0.4,
                &tokens,
                step,
            )
            .unwrap();
            let total = scalar(&l.total);
            assert!(total.is_finite(), "{name}: step {step}: total {total}");
            let grads = l.total.backward().unwrap();
            opt.step(&grads).unwrap();
            momentum.update(&vars).unwrap();
        }

        // A batch of the wrong rank is refused clearly.
        let bad = PretrainBatch {
            images: b.images.i((.., 0, 0)).unwrap(),
            ..clip_batch.clone()
        };
        let e = losses(&t.model, None, &bad, &weights, 0.4, &tokens, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(B, F, 3, R, R)"), "{name}: {e}");
    }
    std::fs::remove_dir_all(&data).unwrap();
}
