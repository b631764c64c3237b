//! How much of an object's position can be read linearly at each stage of the visual path?
//!
//! For each grounding expression, the mean over the patches its box overlaps is taken of
//! (1) the positional embedding rows, (2) the visual tower's output tokens and (3) the fused
//! visual tokens (after the fusion encoder has read the expression); a least-squares linear
//! map from each mean to the box centre `(cx, cy)` is fitted on the first 60 % of the
//! expressions and scored (R^2) on the rest. A model whose tower keeps where its patches are
//! scores near 1 at every stage; the README's grounding reading quotes this probe.
//!
//! ```sh
//! cargo run --release -p mplug --example probe_position -- \
//!     MODEL GROUNDING.json IMAGE_ROOT [N]
//! ```
use candle_core::{Device, Tensor};
use mplug::input::{EncodeOptions, GroundingPreprocessor, LetterboxConfig};
use mplug::model::Task;
use mplug::model_dir::ModelSource;
use mplug::tasks::grounding::box_patch_mask;
use std::error::Error;
use std::path::Path;

type Res<T> = Result<T, Box<dyn Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err("usage: probe_position MODEL GROUNDING.json IMAGE_ROOT [N (2000)]".into());
    }
    let n: usize = args.get(3).map_or(Ok(2000), |s| s.parse())?;
    let device = Device::Cpu;
    let source = ModelSource::locate(Path::new(&args[0]), None, None)?;
    // The checkpoint's own task, or for a multi-task folder one of its tasks with a fusion
    // encoder; when none loads, the error for the checkpoint's own task.
    let mut loaded = source.load(None, &device);
    for task in [Task::Grounding, Task::Vqa, Task::Retrieval] {
        if loaded.is_ok() {
            break;
        }
        if let Ok(found) = source.load(Some(task), &device) {
            loaded = Ok(found);
        }
    }
    let loaded = loaded?;
    let pipeline = &loaded.pipeline;
    let model = pipeline.model();
    let letterbox =
        GroundingPreprocessor::new(LetterboxConfig::new(model.config.image_res as u32))?;
    let samples: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&args[1])?)?;
    let positions = model.visual.visual.positional_embedding().clone();
    let grid = model.config.grid_size();

    // Features of each stage and the centres.
    let mut stages: [Vec<Vec<f64>>; 3] = Default::default();
    let mut centres = Vec::new();
    for s in samples.iter().take(n) {
        let bad = || format!("entry without image, text or bbox: {s}");
        let image = s["image"].as_str().ok_or_else(bad)?;
        let text = s["text"].as_str().ok_or_else(bad)?;
        let b: Vec<f32> = s["bbox"]
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .filter_map(|v| v.as_f64().map(|v| v as f32))
            .collect();
        let [x, y, w, h] = b[..] else {
            return Err(bad().into());
        };
        let boxed = letterbox.preprocess_path(Path::new(&args[2]).join(image), &device)?;
        let target = boxed.info.box_from_original([x, y, x + w, y + h]);
        let inside: Vec<u32> = box_patch_mask(&target, grid)
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, &m)| m > 0.0)
            .map(|(i, _)| i as u32)
            .collect();
        if inside.is_empty() {
            continue;
        }
        let inside = Tensor::new(inside.as_slice(), &device)?;
        let visual = model.encode_image(&boxed.image.unsqueeze(0)?)?;
        let (ids, mask) = pipeline
            .tokenizer()
            .encode_batch(&[text], &EncodeOptions::longest())?
            .to_tensors(&device)?;
        let fused = mplug::tasks::vqa::encode_question(model, &visual, &ids, &mask)?.image;
        let mean = |t: &Tensor| -> Res<Vec<f64>> {
            let v = t.index_select(&inside, 0)?.mean(0)?.to_vec1::<f32>()?;
            Ok(v.into_iter().map(f64::from).chain([1.0]).collect())
        };
        stages[0].push(mean(&positions)?);
        stages[1].push(mean(&visual.squeeze(0)?)?);
        stages[2].push(mean(&fused.squeeze(0)?)?);
        centres.push([f64::from(target[0]), f64::from(target[1])]);
    }
    let fit = centres.len() * 3 / 5;
    println!(
        "{} expressions: fitted on {fit}, scored on {}",
        centres.len(),
        centres.len() - fit
    );
    for (name, x) in ["positional embedding", "visual tower", "fused visual"]
        .iter()
        .zip(&stages)
    {
        let mut line = format!("{name:>20}:");
        for (c, axis) in ["cx", "cy"].iter().enumerate() {
            let y: Vec<f64> = centres.iter().map(|t| t[c]).collect();
            let w = least_squares(&x[..fit], &y[..fit], 1e-3)?;
            line += &format!(
                "  {axis} R^2 {:.3} (fit {:.3})",
                r_squared(&x[fit..], &y[fit..], &w),
                r_squared(&x[..fit], &y[..fit], &w)
            );
        }
        println!("{line}");
    }
    Ok(())
}

/// Ridge least squares `argmin |X w - y|^2 + lambda |w|^2` by the normal equations and a
/// Cholesky factorization. Written by hand: the project has no linear-algebra crate, and a
/// 129 x 129 system is all this probe needs.
fn least_squares(x: &[Vec<f64>], y: &[f64], lambda: f64) -> Res<Vec<f64>> {
    let d = x.first().ok_or("no samples")?.len();
    let mut a = vec![vec![0.0; d]; d];
    let mut b = vec![0.0; d];
    for (row, &t) in x.iter().zip(y) {
        for i in 0..d {
            b[i] += row[i] * t;
            for j in 0..=i {
                a[i][j] += row[i] * row[j];
            }
        }
    }
    // Lower-triangular L with L L^T = A + lambda I, in place.
    for i in 0..d {
        a[i][i] += lambda;
        for j in 0..=i {
            let s = a[i][j] - (0..j).map(|k| a[i][k] * a[j][k]).sum::<f64>();
            a[i][j] = if i == j {
                s.max(1e-12).sqrt()
            } else {
                s / a[j][j]
            };
        }
    }
    let mut z = vec![0.0; d];
    for i in 0..d {
        z[i] = (b[i] - (0..i).map(|k| a[i][k] * z[k]).sum::<f64>()) / a[i][i];
    }
    let mut w = vec![0.0; d];
    for i in (0..d).rev() {
        w[i] = (z[i] - (i + 1..d).map(|k| a[k][i] * w[k]).sum::<f64>()) / a[i][i];
    }
    Ok(w)
}

/// `1 - SS_res / SS_tot` of the predictions `x w` against `y`.
fn r_squared(x: &[Vec<f64>], y: &[f64], w: &[f64]) -> f64 {
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let (mut res, mut tot) = (0.0, 0.0);
    for (row, &t) in x.iter().zip(y) {
        let p: f64 = row.iter().zip(w).map(|(a, b)| a * b).sum();
        res += (p - t) * (p - t);
        tot += (t - mean) * (t - mean);
    }
    1.0 - res / tot
}
