//! Can the visual tower alone learn to tell the world's six shapes apart, and how fast?
//!
//! Trains the tiny preset's CLIP tower with a linear head on its class token to classify the
//! shape of the single-object scenes of a generated world's train split (AdamW, batches of 32
//! drawn with replacement, constant learning rate; `--seed N`, default 1, draws the fresh
//! weights and the batches, so a run is reproducible), and prints the accuracy on the test split's
//! single-object scenes every 50 updates. The tower starts from random values, or from MODEL's
//! `visual_encoder.visual.*` tensors: a tower that learned shapes in training starts above
//! chance (1/6) and climbs faster. The README's VQA reading quotes this probe.
//!
//! ```sh
//! mplug data generate runs/lone --seed 1 --size 8000 --clips 0 --places 0
//! cargo run --release -p mplug --example probe_shape -- runs/lone 300 3e-4 [MODEL.safetensors]
//! ```
//!
//! `--config FILE` probes the tower of another configuration (a `config.json`, for example
//! 96 px images with patches of 12) instead of the tiny preset's; `--sincos` starts its
//! positional embedding from the 2D sine-cosine table, as `mplug pretrain --sincos-positions`;
//! `--attribute color` (or `size`, `texture`) classifies another attribute of the object, a
//! control for how fast the tower learns anything; `--crop SCALE` trains and tests on square
//! crops of SCALE times the object's box around it (1.3: the object centred and filling most
//! of the image), which tells the object's place and size in the image from its form as
//! what makes shapes slow to learn. `--pool box` has the head read the mean of the tokens of
//! the patches the object's box overlaps instead of the class token (the object found for the
//! tower: what is left is whether its tokens say its shape). `--save OUT.safetensors` writes
//! the trained tower (with MODEL: a copy of MODEL with its tower replaced).
//!
//! On a world whose objects stand anywhere (`mplug data generate --places 0`) shapes come
//! slowly; on the lattice of the tiny tower's patches (`--places 8`), in a few hundred updates
//! (README, the generated world).
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{linear, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use image::RgbImage;
use mplug::input::{ImageConfig, ImagePreprocessor};
use mplug::model::vision::VisualEncoder;
use mplug::train::init::{load_partial, sincos_positional_embedding, POSITIONAL_EMBEDDING};
use mplug::train::{draw_seeded, named_vars};
use mplug::MplugConfig;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::error::Error;

type Res<T> = Result<T, Box<dyn Error>>;

/// Normalized pixels and shape indices of the single-object scenes of one split.
struct Split {
    pixels: Vec<Vec<f32>>,
    labels: Vec<u32>,
    /// With `--pool box`: per scene, the weights of the tower's tokens (class token first)
    /// that the head reads, uniform over the patches the object's box overlaps.
    pools: Vec<Vec<f32>>,
}

/// The probe's settings: `WORLD STEPS LR [MODEL.safetensors]` and the options.
struct Options {
    root: std::path::PathBuf,
    steps: usize,
    lr: f64,
    model: Option<String>,
    config: MplugConfig,
    attribute: String,
    sincos: bool,
    crop: Option<f64>,
    save: Option<String>,
    seed: u64,
    box_pool: bool,
}

const USAGE: &str = "usage: probe_shape WORLD STEPS LR [MODEL.safetensors] [--config FILE] \
                     [--sincos] [--attribute NAME] [--crop SCALE] [--save OUT.safetensors] [--seed N] \
                     [--pool class|box]";

impl Options {
    fn parse(mut args: Vec<String>) -> Res<Self> {
        let mut value = |flag: &str| -> Res<Option<String>> {
            match args.iter().position(|a| a == flag) {
                Some(i) if i + 1 < args.len() => {
                    let v = args.remove(i + 1);
                    args.remove(i);
                    Ok(Some(v))
                }
                Some(_) => Err(format!("{flag} needs a value; {USAGE}").into()),
                None => Ok(None),
            }
        };
        let config = match value("--config")? {
            Some(file) => MplugConfig::from_file(&file)?,
            None => MplugConfig::tiny(),
        };
        let attribute = value("--attribute")?.unwrap_or_else(|| "shape".into());
        let crop = value("--crop")?.map(|v| v.parse::<f64>()).transpose()?;
        if crop.is_some_and(|c| c.is_nan() || c < 1.0) {
            return Err("--crop takes a scale of at least 1 (times the object's box)".into());
        }
        let save = value("--save")?;
        let seed = value("--seed")?.map_or(Ok(1), |v| v.parse::<u64>())?;
        let box_pool = match value("--pool")?.as_deref() {
            None | Some("class") => false,
            Some("box") => true,
            Some(other) => return Err(format!("--pool takes class or box, not {other}").into()),
        };
        if box_pool && crop.is_some() {
            return Err("--pool box and --crop do not go together".into());
        }
        let sincos = match args.iter().position(|a| a == "--sincos") {
            Some(i) => {
                args.remove(i);
                true
            }
            None => false,
        };
        if !(3..=4).contains(&args.len()) {
            return Err(USAGE.into());
        }
        Ok(Self {
            root: args[0].clone().into(),
            steps: args[1].parse()?,
            lr: args[2].parse()?,
            model: args.get(3).cloned(),
            config,
            attribute,
            sincos,
            crop,
            save,
            seed,
            box_pool,
        })
    }
}

/// The object's box `[x, y, w, h]` (`bbox`, pixels).
fn bbox(object: &serde_json::Value) -> Res<[f64; 4]> {
    let b: Vec<f64> = object["bbox"]
        .as_array()
        .ok_or("object without `bbox`")?
        .iter()
        .map(|v| v.as_f64().ok_or("`bbox` holds a non-number"))
        .collect::<Result<_, _>>()?;
    b.try_into()
        .map_err(|_| "`bbox` is not [x, y, w, h]".into())
}

/// The square of `scale` times the longer side of the object's box (`bbox`, pixels), centred
/// on the box and shifted inside the image.
fn crop_around(image: &RgbImage, object: &serde_json::Value, scale: f64) -> Res<RgbImage> {
    let [x, y, w, h] = bbox(object)?;
    let (iw, ih) = image.dimensions();
    let side = ((w.max(h) * scale).round() as u32).clamp(1, iw.min(ih));
    let start = |centre: f64, limit: u32| {
        ((centre - side as f64 / 2.0).round().max(0.0) as u32).min(limit - side)
    };
    let (x0, y0) = (start(x + w / 2.0, iw), start(y + h / 2.0, ih));
    Ok(image::imageops::crop_imm(image, x0, y0, side, side).to_image())
}

/// Uniform weights over the tokens of the patches that the object's box (`bbox`, pixels of an
/// image of `dims`) overlaps, zero elsewhere and on the class token.
fn box_weights(object: &serde_json::Value, dims: (u32, u32), cfg: &MplugConfig) -> Res<Vec<f32>> {
    let [x, y, w, h] = bbox(object)?;
    let g = cfg.grid_size();
    let cells = |lo: f64, len: f64, side: u32| {
        let cell = side as f64 / g as f64;
        let first = (lo / cell).floor().max(0.0) as usize;
        let last = (((lo + len) / cell).ceil() as usize).clamp(first + 1, g);
        first..last
    };
    let mut weights = vec![0f32; cfg.num_visual_tokens()];
    let (cols, rows) = (cells(x, w, dims.0), cells(y, h, dims.1));
    let n = (cols.len() * rows.len()) as f32;
    for row in rows {
        for col in cols.clone() {
            weights[1 + row * g + col] = 1.0 / n;
        }
    }
    Ok(weights)
}

/// Normalized pixels and labels (indices into `values`) of the single-object scenes of one
/// split.
fn split(
    scenes: &[serde_json::Value],
    name: &str,
    opts: &Options,
    pre: &ImagePreprocessor,
    values: &mut Vec<String>,
) -> Res<Split> {
    let mut out = Split {
        pixels: Vec::new(),
        labels: Vec::new(),
        pools: Vec::new(),
    };
    let attribute = &opts.attribute;
    for s in scenes.iter().filter(|s| s["split"] == name) {
        let objects = s["objects"].as_array().ok_or("scene without objects")?;
        let [object] = objects.as_slice() else {
            continue;
        };
        let value = object[attribute]
            .as_str()
            .ok_or_else(|| format!("object without `{attribute}`"))?;
        let label = match values.iter().position(|c| c == value) {
            Some(i) => i,
            None => {
                values.push(value.to_string());
                values.len() - 1
            }
        };
        let image = s["image"].as_str().ok_or("scene without image")?;
        let rgb = pre.load_rgb(opts.root.join(image))?;
        if opts.box_pool {
            out.pools
                .push(box_weights(object, rgb.dimensions(), &opts.config)?);
        }
        let rgb = match opts.crop {
            Some(scale) => crop_around(&rgb, object, scale)?,
            None => rgb,
        };
        out.pixels.push(pre.pixels(&rgb)?);
        out.labels.push(label as u32);
    }
    Ok(out)
}

fn main() -> Res<()> {
    let opts = Options::parse(std::env::args().skip(1).collect())?;
    let (cfg, steps, lr) = (&opts.config, opts.steps, opts.lr);
    let device = Device::Cpu;
    let r = cfg.image_res;
    let pre = ImagePreprocessor::new(ImageConfig::new(r as u32))?;
    let scenes: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(opts.root.join("scenes.json"))?)?;
    let mut shapes = Vec::new();
    let train = split(&scenes, "train", &opts, &pre, &mut shapes)?;
    let test = split(&scenes, "test", &opts, &pre, &mut shapes)?;
    println!(
        "{} training and {} test scenes of one object, {} values of `{}`",
        train.labels.len(),
        test.labels.len(),
        shapes.len(),
        opts.attribute
    );

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let tower = VisualEncoder::new(cfg, &vb)?;
    let head = linear(cfg.vision.width, shapes.len(), vb.pp("head"))?;
    // The head and the fresh tower are drawn as `mplug pretrain` draws a fresh model, from
    // the seed (the batches' order follows it too), so a run is a function of its arguments.
    let vars = named_vars(&varmap);
    draw_seeded(&vars, opts.seed)?;
    let tower_vars: Vec<(String, Var)> = vars
        .into_iter()
        .filter(|(n, _)| n.starts_with("visual_encoder."))
        .collect();
    if opts.sincos {
        let table = sincos_positional_embedding(cfg.grid_size(), cfg.vision.width)?;
        let table = HashMap::from([(POSITIONAL_EMBEDDING.to_string(), table)]);
        if load_partial(&tower_vars, &table)?.loaded.is_empty() {
            return Err("the tower has no positional embedding".into());
        }
    }
    if let Some(model) = &opts.model {
        let tensors = candle_core::safetensors::load(model, &device)?;
        let report = load_partial(&tower_vars, &tensors)?;
        if let Some(name) = report.missing.first() {
            return Err(format!("{model} has no `{name}`").into());
        }
        println!(
            "the tower starts from {model} ({} tensors)",
            report.loaded.len()
        );
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
    // The head reads the class token, or with `--pool box` the mean of the object's tokens.
    let tokens = cfg.num_visual_tokens();
    let logits = |tower: &VisualEncoder,
                  head: &Linear,
                  x: &Tensor,
                  idx: &[usize],
                  data: &Split|
     -> Res<Tensor> {
        let out = tower.forward(x)?;
        let read = if opts.box_pool {
            let flat: Vec<f32> = idx
                .iter()
                .flat_map(|&i| data.pools[i].iter().copied())
                .collect();
            let w = Tensor::from_vec(flat, (idx.len(), 1, tokens), &device)?;
            w.matmul(&out)?.squeeze(1)?
        } else {
            out.narrow(1, 0, 1)?.squeeze(1)?
        };
        Ok(head.forward(&read)?)
    };
    let accuracy = |tower: &VisualEncoder, head: &Linear| -> Res<f64> {
        let all: Vec<usize> = (0..test.labels.len()).collect();
        let mut right = 0;
        for chunk in all.chunks(64) {
            let predicted: Vec<u32> =
                logits(tower, head, &batch_of(chunk, &test.pixels)?, chunk, &test)?
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

    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let start = std::time::Instant::now();
    for step in 1..=steps {
        let idx: Vec<usize> = (0..32)
            .map(|_| rng.random_range(0..train.labels.len()))
            .collect();
        let labels: Vec<u32> = idx.iter().map(|&i| train.labels[i]).collect();
        let y = Tensor::from_vec(labels, idx.len(), &device)?;
        let loss = candle_nn::loss::cross_entropy(
            &logits(&tower, &head, &batch_of(&idx, &train.pixels)?, &idx, &train)?,
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
    if let Some(out) = &opts.save {
        save_tower(&tower_vars, opts.model.as_deref(), out)?;
        println!("wrote {out}");
    }
    Ok(())
}

/// Writes the trained tower's tensors (`visual_encoder.*`) to `out`; with `model`, a copy of
/// all of the model's tensors with its tower replaced, each in the model's dtype (a model
/// file to put back into its folder).
fn save_tower(tower_vars: &[(String, Var)], model: Option<&str>, out: &str) -> Res<()> {
    let mut tensors = match model {
        Some(m) => candle_core::safetensors::load(m, &Device::Cpu)?,
        None => Default::default(),
    };
    for (name, var) in tower_vars {
        let dtype = tensors.get(name).map_or(DType::F32, |t| t.dtype());
        tensors.insert(name.clone(), var.as_tensor().to_dtype(dtype)?);
    }
    candle_core::safetensors::save(&tensors, out)?;
    Ok(())
}
