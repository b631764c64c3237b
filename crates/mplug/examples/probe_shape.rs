//! Can the visual tower alone learn to tell the world's six shapes apart, and how fast?
//!
//! Trains the tiny preset's CLIP tower with a linear head on its class token to classify the
//! shape of the single-object scenes of a generated world's train split (AdamW, batches of 32
//! drawn with replacement, constant learning rate), and prints the accuracy on the test split's
//! single-object scenes every 50 updates. The tower starts from random values, or from MODEL's
//! `visual_encoder.visual.*` tensors: a tower that learned shapes in training starts above
//! chance (1/6) and climbs faster. The README's VQA reading quotes this probe.
//!
//! ```sh
//! mplug data generate runs/lone --seed 1 --size 8000 --clips 0
//! cargo run --release -p mplug --example probe_shape -- runs/lone 300 3e-4 [MODEL.safetensors]
//! ```
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{linear, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use mplug::input::{ImageConfig, ImagePreprocessor};
use mplug::model::vision::VisualEncoder;
use mplug::MplugConfig;
use rand::{Rng, SeedableRng};
use std::error::Error;
use std::path::Path;

type Res<T> = Result<T, Box<dyn Error>>;

/// Normalized pixels and shape indices of the single-object scenes of one split.
struct Split {
    pixels: Vec<Vec<f32>>,
    labels: Vec<u32>,
}

fn split(
    scenes: &[serde_json::Value],
    name: &str,
    root: &Path,
    pre: &ImagePreprocessor,
    shapes: &mut Vec<String>,
) -> Res<Split> {
    let mut out = Split {
        pixels: Vec::new(),
        labels: Vec::new(),
    };
    for s in scenes.iter().filter(|s| s["split"] == name) {
        let objects = s["objects"].as_array().ok_or("scene without objects")?;
        let [object] = objects.as_slice() else {
            continue;
        };
        let shape = object["shape"].as_str().ok_or("object without shape")?;
        let label = match shapes.iter().position(|c| c == shape) {
            Some(i) => i,
            None => {
                shapes.push(shape.to_string());
                shapes.len() - 1
            }
        };
        let image = s["image"].as_str().ok_or("scene without image")?;
        out.pixels
            .push(pre.pixels(&pre.load_rgb(root.join(image))?)?);
        out.labels.push(label as u32);
    }
    Ok(out)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err("usage: probe_shape WORLD STEPS LR [MODEL.safetensors]".into());
    }
    let root = Path::new(&args[0]);
    let steps: usize = args[1].parse()?;
    let lr: f64 = args[2].parse()?;
    let device = Device::Cpu;
    let cfg = MplugConfig::tiny();
    let r = cfg.image_res;
    let pre = ImagePreprocessor::new(ImageConfig::new(r as u32))?;
    let scenes: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(root.join("scenes.json"))?)?;
    let mut shapes = Vec::new();
    let train = split(&scenes, "train", root, &pre, &mut shapes)?;
    let test = split(&scenes, "test", root, &pre, &mut shapes)?;
    println!(
        "{} training and {} test scenes of one object, {} shapes",
        train.labels.len(),
        test.labels.len(),
        shapes.len()
    );

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let tower = VisualEncoder::new(&cfg, &vb)?;
    let head = linear(cfg.vision.width, shapes.len(), vb.pp("head"))?;
    if let Some(model) = args.get(3) {
        let tensors = candle_core::safetensors::load(model, &device)?;
        let vars = varmap.data().lock().map_err(|_| "poisoned variables")?;
        let mut loaded = 0;
        for (name, var) in vars
            .iter()
            .filter(|(n, _)| n.starts_with("visual_encoder."))
        {
            let t = tensors
                .get(name)
                .ok_or_else(|| format!("{model} has no `{name}`"))?;
            var.set(&t.to_dtype(DType::F32)?)?;
            loaded += 1;
        }
        println!("the tower starts from {model} ({loaded} tensors)");
    }
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr,
            weight_decay: 0.02,
            ..Default::default()
        },
    )?;

    let batch_of = |idx: &[usize], pixels: &[Vec<f32>]| -> Res<Tensor> {
        let flat: Vec<f32> = idx
            .iter()
            .flat_map(|&i| pixels[i].iter().copied())
            .collect();
        Ok(Tensor::from_vec(flat, (idx.len(), 3, r, r), &device)?)
    };
    let logits = |tower: &VisualEncoder, head: &Linear, x: &Tensor| -> Res<Tensor> {
        let class_token = tower.forward(x)?.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(head.forward(&class_token)?)
    };
    let accuracy = |tower: &VisualEncoder, head: &Linear| -> Res<f64> {
        let all: Vec<usize> = (0..test.labels.len()).collect();
        let mut right = 0;
        for chunk in all.chunks(64) {
            let predicted: Vec<u32> = logits(tower, head, &batch_of(chunk, &test.pixels)?)?
                .argmax(D::Minus1)?
                .to_vec1()?;
            right += chunk
                .iter()
                .zip(predicted)
                .filter(|(&i, p)| test.labels[i] == *p)
                .count();
        }
        Ok(right as f64 / all.len() as f64)
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let start = std::time::Instant::now();
    for step in 1..=steps {
        let idx: Vec<usize> = (0..32)
            .map(|_| rng.random_range(0..train.labels.len()))
            .collect();
        let labels: Vec<u32> = idx.iter().map(|&i| train.labels[i]).collect();
        let y = Tensor::from_vec(labels, idx.len(), &device)?;
        let loss = candle_nn::loss::cross_entropy(
            &logits(&tower, &head, &batch_of(&idx, &train.pixels)?)?,
            &y,
        )?;
        opt.backward_step(&loss)?;
        if step % 50 == 0 || step == steps {
            println!(
                "update {step}: training loss {:.3}, test accuracy {:.1} % ({:.0} s)",
                loss.to_scalar::<f32>()?,
                100.0 * accuracy(&tower, &head)?,
                start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
