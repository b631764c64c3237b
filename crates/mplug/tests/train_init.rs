//! Initialization from BERT and CLIP checkpoints, as the reference starts its models.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use mplug::train::init::{bert_tensors, clip_tensors, fit_positional_embedding};
use mplug::train::Trainable;
use mplug::{Checkpoint, MplugConfig, Task};
use std::collections::HashMap;

fn var(t: &Trainable, name: &str) -> Tensor {
    t.named_vars()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no var {name}"))
        .1
        .as_tensor()
        .clone()
}

#[test]
fn bert_and_clip_checkpoints_initialize_the_towers() {
    let dir = &config_dirs()[0];
    let cfg = MplugConfig::from_file(file(dir, "config.json")).unwrap();
    let golden = Checkpoint::load(file(dir, "vqa.pth")).unwrap();
    // A BERT checkpoint in Hugging Face's BertForMaskedLM layout, made of the golden decoder's
    // self-attention and feed-forward weights.
    let mut bert = HashMap::new();
    for k in golden.keys() {
        if let Some(rest) = k.strip_prefix("text_decoder.") {
            if !rest.contains("crossattention") && !rest.ends_with("position_ids") {
                bert.insert(rest.to_string(), golden.tensor(k).unwrap());
            }
        }
    }
    let bert = Checkpoint::from_tensors("bert.safetensors", bert);
    // A CLIP vision model in Hugging Face's layout, from the golden visual tower.
    let v = "visual_encoder.visual.";
    let g = |k: &str| golden.tensor(&format!("{v}{k}")).unwrap();
    let mut clip = HashMap::new();
    clip.insert(
        "vision_model.embeddings.patch_embedding.weight".to_string(),
        g("conv1.weight"),
    );
    clip.insert(
        "vision_model.embeddings.class_embedding".into(),
        g("class_embedding"),
    );
    clip.insert(
        "vision_model.embeddings.position_embedding.weight".into(),
        g("positional_embedding"),
    );
    for (ours, theirs) in [("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")] {
        for p in ["weight", "bias"] {
            clip.insert(
                format!("vision_model.{theirs}.{p}"),
                g(&format!("{ours}.{p}")),
            );
        }
    }
    let w = cfg.vision.width;
    for i in 0..cfg.vision.layers {
        let o = |k: &str| g(&format!("transformer.resblocks.{i}.{k}"));
        let t = |k: &str| format!("vision_model.encoder.layers.{i}.{k}");
        for (j, qkv) in ["q", "k", "v"].iter().enumerate() {
            clip.insert(
                t(&format!("self_attn.{qkv}_proj.weight")),
                o("attn.in_proj_weight").narrow(0, j * w, w).unwrap(),
            );
            clip.insert(
                t(&format!("self_attn.{qkv}_proj.bias")),
                o("attn.in_proj_bias").narrow(0, j * w, w).unwrap(),
            );
        }
        for (ours, theirs) in [
            ("attn.out_proj", "self_attn.out_proj"),
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ] {
            for p in ["weight", "bias"] {
                clip.insert(t(&format!("{theirs}.{p}")), o(&format!("{ours}.{p}")));
            }
        }
    }
    let clip = Checkpoint::from_tensors("clip.safetensors", clip);

    let t = Trainable::new_seeded(&cfg, Task::Vqa, &Device::Cpu, 1).unwrap();
    let cross = "text_decoder.bert.encoder.layer.0.crossattention.self.key.weight";
    let cross_before = var(&t, cross);
    let mut init = bert_tensors(&bert, &cfg).unwrap();
    init.extend(clip_tensors(&clip).unwrap());
    fit_positional_embedding(&mut init, &cfg).unwrap();
    let report = t.load_partial(&init).unwrap();
    assert!(
        report.missing.iter().any(|m| m == cross),
        "cross-attention is new"
    );
    // Missing: cross-attention (new), the large model's visn_fc, and fusion layers past the
    // test BERT's depth (it has only the decoder's layers).
    let bert_layers = cfg.bert.text_decode_layers;
    let allowed = |m: &str| {
        m.contains("crossattention")
            || m.starts_with("visn_")
            || m.strip_prefix("fusion_encoder.encoder.layer.")
                .and_then(|r| r.split('.').next()?.parse::<usize>().ok())
                .is_some_and(|i| i >= bert_layers)
    };
    let unexpected: Vec<&String> = report.missing.iter().filter(|m| !allowed(m)).collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    assert_close(
        "cross-attention keeps its init",
        &var(&t, cross),
        &cross_before,
        0.0,
    );

    let b = |k: &str| golden.tensor(&format!("text_decoder.bert.{k}")).unwrap();
    // The last layer of each text tower that the test BERT holds.
    let l = |i: usize| format!("encoder.layer.{i}.attention.self.query.weight");
    let i = cfg.bert.text_encoder_layers.min(bert_layers) - 1;
    assert_close(
        &format!("text encoder layer {i} from BERT layer {i}"),
        &var(&t, &format!("text_encoder.{}", l(i))),
        &b(&l(i)),
        0.0,
    );
    let i = bert_layers - 1;
    assert_close(
        &format!("decoder layer {i} from BERT layer {i}"),
        &var(&t, &format!("text_decoder.bert.{}", l(i))),
        &b(&l(i)),
        0.0,
    );
    let start = cfg.bert.num_hidden_layers - cfg.bert.fusion_layers;
    if start < cfg.bert.text_decode_layers {
        let f = format!("encoder.layer.{start}.output.dense.weight");
        assert_close(
            "first running fusion layer from its BERT layer",
            &var(&t, &format!("fusion_encoder.{f}")),
            &b(&f),
            0.0,
        );
    }
    // The visual tower equals the golden one: same tokens for the golden images.
    let io = Io::load(dir, "vqa_io.safetensors");
    let embeds = t.model.encode_image(&io.get("image")).unwrap();
    if !cfg.has_visn_fc() {
        assert_close(
            "CLIP-initialized visual tokens",
            &embeds,
            &io.get("image_embeds"),
            TOL,
        );
    }
    assert!(
        bert_tensors(&clip, &cfg).is_err(),
        "a CLIP file is not a BERT checkpoint"
    );
    assert!(
        clip_tensors(&bert).is_err(),
        "a BERT file is not a CLIP checkpoint"
    );
}

#[test]
fn the_tower_of_an_mplug_checkpoint_initializes_the_visual_tower() {
    let dir = &config_dirs()[0];
    let cfg = MplugConfig::from_file(file(dir, "config.json")).unwrap();
    let golden = Checkpoint::load(file(dir, "vqa.pth")).unwrap();
    let tower = clip_tensors(&golden).unwrap();
    let root = "visual_encoder.visual.";
    // Every tensor of the tower but CLIP's unused projection, nothing else.
    let expected = golden
        .keys()
        .into_iter()
        .filter(|k| k.starts_with(root) && *k != "visual_encoder.visual.proj")
        .count();
    assert!(expected > 0);
    assert_eq!(tower.len(), expected);
    assert!(tower.keys().all(|k| k.starts_with(root)));

    let t = Trainable::new_seeded(&cfg, Task::Vqa, &Device::Cpu, 1).unwrap();
    let report = t.load_partial(&tower).unwrap();
    assert_eq!(report.loaded.len(), tower.len());
    let io = Io::load(dir, "vqa_io.safetensors");
    if !cfg.has_visn_fc() {
        assert_close(
            "visual tokens of the tower taken from an mPLUG checkpoint",
            &t.model.encode_image(&io.get("image")).unwrap(),
            &io.get("image_embeds"),
            TOL,
        );
    }
}
