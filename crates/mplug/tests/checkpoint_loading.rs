//! Loading checkpoints: layouts, dtypes, positional-embedding resizing and clear errors.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use mplug::tasks::caption;
use mplug::{Checkpoint, Mplug, MplugConfig, Task};
use std::collections::HashMap;
use std::path::Path;

fn config(dir: &Path) -> MplugConfig {
    MplugConfig::from_file(file(dir, "config.json")).unwrap()
}

fn tensors(ckpt: &Checkpoint) -> HashMap<String, Tensor> {
    ckpt.keys()
        .into_iter()
        .map(|k| (k.to_string(), ckpt.tensor(k).unwrap()))
        .collect()
}

fn load_err(dir: &Path, map: HashMap<String, Tensor>, task: Task) -> String {
    let ckpt = Checkpoint::from_tensors("edited.pth", map);
    match Mplug::load(&config(dir), &ckpt, task, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("loading an edited checkpoint succeeded"),
        Err(e) => e.to_string(),
    }
}

fn image_embeds(dir: &Path, ckpt: &Checkpoint) -> Tensor {
    let io = Io::load(dir, "caption_io.safetensors");
    let model = Mplug::load(&config(dir), ckpt, Task::Caption, DType::F32, &Device::Cpu).unwrap();
    model.encode_image(&io.get("image")).unwrap()
}

#[test]
fn missing_tensor_is_named_with_its_shape() {
    for dir in config_dirs() {
        let ckpt = Checkpoint::load(file(&dir, "caption.pth")).unwrap();
        let mut map = tensors(&ckpt);
        let key = "text_decoder.bert.encoder.layer.0.crossattention.self.key.weight";
        map.remove(key).expect("golden key present");
        let h = config(&dir).bert.hidden_size;
        let w = config(&dir).bert.encoder_width;
        let err = load_err(&dir, map, Task::Caption);
        assert!(err.contains(key), "{err}");
        assert!(err.contains(&format!("[{h}, {w}]")), "{err}");
        assert!(err.contains("edited.pth"), "{err}");
    }
}

#[test]
fn reshaped_tensor_is_named_with_both_shapes() {
    for dir in config_dirs() {
        let ckpt = Checkpoint::load(file(&dir, "vqa.pth")).unwrap();
        let mut map = tensors(&ckpt);
        // The last fusion layer, which every configuration runs.
        let last = config(&dir).bert.num_hidden_layers - 1;
        let key = &format!("fusion_encoder.encoder.layer.{last}.output.dense.weight");
        let t = map.remove(key).expect("golden key present");
        let (a, b) = t.dims2().unwrap();
        map.insert(key.into(), t.reshape((b, a)).unwrap());
        let err = load_err(&dir, map, Task::Vqa);
        assert!(err.contains(key), "{err}");
        assert!(
            err.contains(&format!("[{b}, {a}]")) && err.contains(&format!("[{a}, {b}]")),
            "{err}"
        );
    }
}

#[test]
fn missing_tensor_in_a_file_names_the_file() {
    let dir = &config_dirs()[0];
    let ckpt = Checkpoint::load(file(dir, "caption.safetensors")).unwrap();
    let mut map = tensors(&ckpt);
    map.remove("visual_encoder.visual.ln_post.bias").unwrap();
    let tmp =
        std::env::temp_dir().join(format!("mplug-missing-{}.safetensors", std::process::id()));
    candle_core::safetensors::save(&map, &tmp).unwrap();
    let edited = Checkpoint::load(&tmp).unwrap();
    let err = Mplug::load(
        &config(dir),
        &edited,
        Task::Caption,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    std::fs::remove_file(&tmp).ok();
    assert!(
        err.contains("visual_encoder.visual.ln_post.bias")
            && err.contains(&tmp.display().to_string()),
        "{err}"
    );
}

#[test]
fn files_that_are_not_checkpoints_are_rejected() {
    let tmp = std::env::temp_dir();
    let pid = std::process::id();
    let text = tmp.join(format!("mplug-text-{pid}.pth"));
    std::fs::write(&text, "this is not a checkpoint\n").unwrap();
    let empty = tmp.join(format!("mplug-empty-{pid}.pth"));
    std::fs::write(&empty, b"").unwrap();
    let truncated = tmp.join(format!("mplug-truncated-{pid}.pth"));
    let bytes = std::fs::read(file(&config_dirs()[0], "caption.pth")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let bad_safetensors = tmp.join(format!("mplug-bad-{pid}.safetensors"));
    std::fs::write(&bad_safetensors, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    for path in [&text, &empty, &truncated, &bad_safetensors] {
        let err = Checkpoint::load(path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::remove_file(path).ok();
    }
    let missing = tmp.join(format!("mplug-absent-{pid}.pth"));
    let err = Checkpoint::load(&missing).unwrap_err().to_string();
    assert!(err.contains("mplug-absent"), "{err}");
}

#[test]
fn wrong_checkpoint_for_task_says_what_it_is() {
    for dir in config_dirs() {
        let ckpt = Checkpoint::load(file(&dir, "retrieval.pth")).unwrap();
        let err = Mplug::load(
            &config(&dir),
            &ckpt,
            Task::Caption,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("text decoder") && err.contains("retrieval checkpoint"),
            "{err}"
        );
        assert_eq!(Task::detect(&ckpt), Some(Task::Retrieval));
        let g = Checkpoint::load(file(&dir, "grounding.pth")).unwrap();
        assert_eq!(Task::detect(&g), Some(Task::Grounding));
    }
}

#[test]
fn every_parameter_is_used_or_reported() {
    for dir in config_dirs() {
        let cfg = config(&dir);
        for (name, task) in [
            ("vqa.pth", Task::Vqa),
            ("retrieval.pth", Task::Retrieval),
            ("grounding.pth", Task::Grounding),
        ] {
            let ckpt = Checkpoint::load(file(&dir, name)).unwrap();
            let model = Mplug::load(&cfg, &ckpt, task, DType::F32, &Device::Cpu).unwrap();
            let unused = model.unused_keys(&ckpt);
            // The reference's grounding model holds ITC projections that it never runs.
            let expected: Vec<String> = match task {
                Task::Grounding => [
                    "text_proj.bias",
                    "text_proj.weight",
                    "vision_proj.bias",
                    "vision_proj.weight",
                ]
                .into_iter()
                .filter(|k| ckpt.contains(k))
                .map(String::from)
                .collect(),
                _ => Vec::new(),
            };
            assert_eq!(unused, expected, "{} {name}", dir.display());
        }
        // The caption task does not run the text encoder or the fusion encoder.
        let ckpt = Checkpoint::load(file(&dir, "caption.pth")).unwrap();
        let model = Mplug::load(&cfg, &ckpt, Task::Caption, DType::F32, &Device::Cpu).unwrap();
        let unused = model.unused_keys(&ckpt);
        assert!(!unused.is_empty());
        assert!(
            unused
                .iter()
                .all(|k| k.starts_with("text_encoder.") || k.starts_with("fusion_encoder.")),
            "{unused:?}"
        );
    }
}

#[test]
fn pretrained_layout_with_momentum_copies_loads_the_same() {
    for dir in config_dirs() {
        let ckpt = Checkpoint::load(file(&dir, "caption.pth")).unwrap();
        let mut renamed = HashMap::new();
        for (k, t) in tensors(&ckpt) {
            let k2 = if let Some(rest) = k.strip_prefix("text_encoder.") {
                format!("text_encoder.bert.{rest}")
            } else if let Some(rest) = k.strip_prefix("fusion_encoder.") {
                format!("fusion_encoder.fusion.{rest}")
            } else {
                k.clone()
            };
            if k.starts_with("visual_encoder.") {
                // A momentum copy with different values must be skipped.
                renamed.insert(
                    k.replacen("visual_encoder.", "visual_encoder_m.", 1),
                    (t.clone() * 3.0).unwrap(),
                );
            }
            renamed.insert(format!("module.{k2}"), t);
        }
        let pre = Checkpoint::from_tensors("pretrained.pth", renamed);
        assert!(pre.skipped() > 0);
        assert!(pre.contains("text_encoder.embeddings.word_embeddings.weight"));
        let b = config(&dir).bert;
        let first_run = b.num_hidden_layers - b.fusion_layers;
        assert!(pre.contains(&format!(
            "fusion_encoder.encoder.layer.{first_run}.attention.self.query.weight"
        )));
        assert_close(
            "pretrained layout image_embeds",
            &image_embeds(&dir, &pre),
            &image_embeds(&dir, &ckpt),
            0.0,
        );
    }
}

#[test]
fn half_precision_tensors_are_converted() {
    for dir in config_dirs() {
        let ckpt = Checkpoint::load(file(&dir, "caption.pth")).unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let half: HashMap<String, Tensor> = tensors(&ckpt)
                .into_iter()
                .map(|(k, t)| {
                    let t = if t.dtype() == DType::F32 {
                        t.to_dtype(dtype).unwrap()
                    } else {
                        t
                    };
                    (k, t)
                })
                .collect();
            // The same weights rounded to half precision and stored back as f32: loading the
            // half-precision checkpoint must give exactly what these give.
            let rounded: HashMap<String, Tensor> = half
                .iter()
                .map(|(k, t)| {
                    let t = if t.dtype() == dtype {
                        t.to_dtype(DType::F32).unwrap()
                    } else {
                        t.clone()
                    };
                    (k.clone(), t)
                })
                .collect();
            let a = image_embeds(&dir, &Checkpoint::from_tensors("half.pth", half));
            let b = image_embeds(&dir, &Checkpoint::from_tensors("rounded.pth", rounded));
            assert_close(&format!("{dtype:?} checkpoint"), &a, &b, 0.0);
        }
    }
}

#[test]
fn tied_decoder_output_falls_back_to_word_embeddings() {
    for dir in config_dirs() {
        let io = Io::load(&dir, "caption_io.safetensors");
        let ckpt = Checkpoint::load(file(&dir, "caption.pth")).unwrap();
        // A checkpoint whose output matrix equals its word embeddings, stored both ways.
        let mut full = tensors(&ckpt);
        let out = full["text_decoder.cls.predictions.decoder.weight"].clone();
        full.insert(
            "text_decoder.bert.embeddings.word_embeddings.weight".into(),
            out,
        );
        let mut tied = full.clone();
        tied.remove("text_decoder.cls.predictions.decoder.weight");
        tied.remove("text_decoder.cls.predictions.decoder.bias");
        let (full, tied) = (
            Checkpoint::from_tensors("full.pth", full),
            Checkpoint::from_tensors("tied.pth", tied),
        );
        let cfg = config(&dir);
        let a = Mplug::load(&cfg, &tied, Task::Caption, DType::F32, &Device::Cpu).unwrap();
        let b = Mplug::load(&cfg, &full, Task::Caption, DType::F32, &Device::Cpu).unwrap();
        let (ids, mask) = (io.get("caption_ids"), io.get("caption_mask"));
        let embeds = b.encode_image(&io.get("image")).unwrap();
        let la = caption::decoder_logits(&a, &embeds, &ids, &mask).unwrap();
        let lb = caption::decoder_logits(&b, &embeds, &ids, &mask).unwrap();
        assert_close("tied decoder logits", &la, &lb, 0.0);
        assert!(a
            .unused_keys(&tied)
            .iter()
            .all(|k| !k.starts_with("text_decoder.")));
    }
}

#[test]
fn positional_embedding_is_resized_for_a_larger_image() {
    for dir in config_dirs() {
        let io = Io::load(&dir, "pos_resize_io.safetensors");
        let expected = io.get("resized");
        let grid = ((expected.dim(0).unwrap() - 1) as f64).sqrt().round() as usize;
        let mut cfg = config(&dir);
        cfg.image_res = grid * cfg.vision.patch_size;
        let ckpt = Checkpoint::load(file(&dir, "caption.pth")).unwrap();
        let model = Mplug::load(&cfg, &ckpt, Task::Caption, DType::F32, &Device::Cpu).unwrap();
        assert_close(
            "resized at load",
            model.visual.visual.positional_embedding(),
            &expected,
            TOL,
        );
        let images = Tensor::zeros(
            (1, 3, cfg.image_res, cfg.image_res),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let tokens = model.encode_image(&images).unwrap();
        assert_eq!(tokens.dims(), &[1, grid * grid + 1, cfg.bert.hidden_size]);
    }
}

#[test]
fn reference_yaml_and_bert_json_give_the_preset() {
    let tmp = std::env::temp_dir().join(format!("mplug-yaml-{}", std::process::id()));
    std::fs::create_dir_all(tmp.join("configs")).unwrap();
    let bert = serde_json::to_string(&MplugConfig::base().bert).unwrap();
    std::fs::write(tmp.join("configs/config_bert_stride3.json"), bert).unwrap();
    std::fs::write(
        tmp.join("vqa.yaml"),
        "bert_config: 'configs/config_bert_stride3.json'\nimage_res: 384 # pixels\nvision_width: 768\nclip_name: \"ViT-B-16\"\nk_test: 128\n",
    )
    .unwrap();
    let cfg = MplugConfig::from_reference_yaml(tmp.join("vqa.yaml"), &tmp).unwrap();
    assert_eq!(cfg, MplugConfig::base());
    std::fs::remove_dir_all(&tmp).ok();
}

/// A tensor's values in order, widened to f64 (exactly, for every stored type here): what
/// reading a tensor two ways must agree on.
fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A safetensors checkpoint is read a tensor at a time: each tensor equals what reading the
/// whole file gives, in its stored type (f32, f16 and bf16 read straight into place, i64
/// converted), shapes and types are known before any is read, and a
/// file whose index points past its end is refused when opened, naming the file.
#[test]
fn safetensors_are_read_one_tensor_at_a_time() {
    let dir = std::env::temp_dir().join(format!("mplug-lazy-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dev = Device::Cpu;
    let mut map = HashMap::new();
    map.insert(
        "module.visual_encoder.visual.conv1.weight".to_string(),
        Tensor::randn(0f32, 1.0, (4, 3, 2, 2), &dev).unwrap(),
    );
    map.insert(
        "text_encoder.bert.embeddings.word_embeddings.weight".to_string(),
        Tensor::randn(0f32, 1.0, (7, 5), &dev)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap(),
    );
    map.insert(
        "fusion_encoder.fusion.pooler.dense.weight".to_string(),
        Tensor::randn(0f32, 1.0, (3, 6), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap(),
    );
    map.insert(
        "prefix_ids".to_string(),
        Tensor::new(&[3i64, 1, 4], &dev).unwrap(),
    );
    map.insert(
        "visual_encoder_m.visual.conv1.weight".to_string(),
        Tensor::zeros(2, DType::F32, &dev).unwrap(),
    );
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&map, &path).unwrap();

    let ckpt = Checkpoint::load(&path).unwrap();
    assert_eq!(ckpt.skipped(), 1);
    let whole = candle_core::safetensors::load(&path, &dev).unwrap();
    for (stored, key) in [
        (
            "module.visual_encoder.visual.conv1.weight",
            "visual_encoder.visual.conv1.weight",
        ),
        (
            "text_encoder.bert.embeddings.word_embeddings.weight",
            "text_encoder.embeddings.word_embeddings.weight",
        ),
        (
            "fusion_encoder.fusion.pooler.dense.weight",
            "fusion_encoder.pooler.dense.weight",
        ),
        ("prefix_ids", "prefix_ids"),
    ] {
        let want = &whole[stored];
        let (shape, dtype) = ckpt.shape_and_dtype(key).unwrap();
        assert_eq!((shape, dtype), (want.dims(), want.dtype()), "{key}");
        let got = ckpt.tensor(key).unwrap();
        assert_eq!(got.dtype(), want.dtype(), "{key}");
        assert_eq!(values(&got), values(want), "{key}");
    }
    assert!(ckpt.get("no.such.key").unwrap().is_none());
    let err = ckpt.tensor("no.such.key").unwrap_err().to_string();
    assert!(
        err.contains("no.such.key") && err.contains("model.safetensors"),
        "{err}"
    );

    // Rewritten after it was opened: reads fail rather than mix two files' tensors.
    let mut longer = std::fs::read(&path).unwrap();
    longer.extend_from_slice(b"  ");
    std::fs::write(&path, &longer).unwrap();
    let err = ckpt.tensor("prefix_ids").unwrap_err().to_string();
    assert!(err.contains("changed after it was opened"), "{err}");

    // Cut short inside the data: the index points past the end.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 4]).unwrap();
    let err = Checkpoint::load(&cut).unwrap_err().to_string();
    assert!(
        err.contains("cut.safetensors") && err.contains("lies at bytes"),
        "{err}"
    );
    // A header longer than the file.
    let long = dir.join("long.safetensors");
    let mut head = (1u64 << 20).to_le_bytes().to_vec();
    head.extend_from_slice(b"{\"a\": 1}");
    std::fs::write(&long, head).unwrap();
    let err = Checkpoint::load(&long).unwrap_err().to_string();
    assert!(
        err.contains("long.safetensors") && err.contains("header"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A `.pth` checkpoint opened lazily gives every tensor as reading the archive whole does.
#[test]
fn pth_tensors_read_one_at_a_time_equal_the_whole_archive() {
    for dir in config_dirs() {
        let path = file(&dir, "caption.pth");
        let ckpt = Checkpoint::load(&path).unwrap();
        // The state dict where the loader looks first, then at the top level.
        let whole: Vec<(String, Tensor)> = [Some("model"), None]
            .into_iter()
            .filter_map(|k| candle_core::pickle::read_all_with_key(&path, k).ok())
            .find(|t| !t.is_empty())
            .unwrap();
        let mut seen = 0;
        for (stored, want) in &whole {
            let key = stored.strip_prefix("module.").unwrap_or(stored);
            let key = match key.strip_prefix("text_encoder.bert.") {
                Some(rest) => format!("text_encoder.{rest}"),
                None => key.replacen("fusion_encoder.fusion.", "fusion_encoder.", 1),
            };
            let key = key.as_str();
            let Some((shape, _)) = ckpt.shape_and_dtype(key) else {
                continue;
            };
            assert_eq!(shape, want.dims(), "{key}");
            assert_eq!(values(&ckpt.tensor(key).unwrap()), values(want), "{key}");
            seen += 1;
        }
        assert_eq!(seen, ckpt.keys().len());
    }
}

/// A `.pth` rewritten after it was opened is not read from: its tensors could be another
/// checkpoint's.
#[test]
fn a_pth_rewritten_after_opening_is_refused() {
    let dir = &config_dirs()[0];
    let copy = std::env::temp_dir().join(format!("mplug-rewritten-{}.pth", std::process::id()));
    std::fs::copy(file(dir, "caption.pth"), &copy).unwrap();
    let ckpt = Checkpoint::load(&copy).unwrap();
    let key = ckpt.keys()[0].to_string();
    ckpt.tensor(&key).unwrap();
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes.push(0);
    std::fs::write(&copy, &bytes).unwrap();
    let err = ckpt.tensor(&key).unwrap_err().to_string();
    assert!(
        err.contains("changed after it was opened") && err.contains("mplug-rewritten"),
        "{err}"
    );
    std::fs::remove_file(&copy).ok();
}
