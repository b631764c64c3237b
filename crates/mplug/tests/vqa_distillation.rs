//! VQA momentum distillation (`vqa::distillation_loss`) on the golden VQA models: with weight 0
//! it is the reference's training loss, with weight 1 and the model as its own teacher it is
//! the weighted entropy of the model's answer-token distributions (computed here by hand from
//! the logits), it is linear in the weight, and bad arguments are refused.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use mplug::tasks::vqa::{self, QuestionStates};
use mplug::{Checkpoint, Mplug, MplugConfig, Task};

struct Case {
    name: String,
    model: Mplug,
    q: QuestionStates,
    ids: Tensor,
    mask: Tensor,
    k: Vec<usize>,
    weights: Tensor,
    expected_loss: Tensor,
}

fn cases() -> Vec<Case> {
    config_dirs()
        .into_iter()
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            let io = Io::load(&dir, "vqa_io.safetensors");
            let cfg = MplugConfig::from_file(file(&dir, "config.json")).unwrap();
            let ckpt = Checkpoint::load(file(&dir, "vqa.pth")).unwrap();
            let model = Mplug::load(&cfg, &ckpt, Task::Vqa, DType::F32, &Device::Cpu).unwrap();
            let embeds = model.encode_image(&io.get("image")).unwrap();
            let q = vqa::encode_question(
                &model,
                &embeds,
                &io.get("question_ids"),
                &io.get("question_mask"),
            )
            .unwrap();
            let k = json(&dir, "vqa.json")["train_k"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            Case {
                name,
                model,
                q,
                ids: io.get("train_answer_ids"),
                mask: io.get("train_answer_mask"),
                k,
                weights: io.get("train_weights"),
                expected_loss: io.get("train_loss"),
            }
        })
        .collect()
}

impl Case {
    fn logits(&self) -> Tensor {
        vqa::answer_logits(
            &self.model,
            &self.q,
            &self.ids,
            &self.mask,
            &self.k,
            &self.weights,
        )
        .unwrap()
    }

    fn distilled(&self, teacher: &Tensor, alpha: f64) -> mplug::Result<f32> {
        vqa::distillation_loss(
            &self.model,
            &self.q,
            &self.ids,
            &self.mask,
            &self.k,
            &self.weights,
            teacher,
            alpha,
        )
        .map(|l| l.to_scalar::<f32>().unwrap())
    }
}

/// Weighted entropy of the model's next-token distributions at the answers' real targets,
/// summed per answer, over the questions: the distillation term when the teacher is the model.
fn entropy_by_hand(c: &Case, logits: &Tensor) -> f32 {
    let logits = logits.to_vec3::<f32>().unwrap();
    let ids = c
        .ids
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap();
    let weights = c
        .weights
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut total = 0.0f32;
    for (a, row) in logits.iter().enumerate() {
        for t in 0..row.len() - 1 {
            if ids[a][t + 1] == 0 {
                continue; // padding target
            }
            let max = row[t].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = row[t].iter().map(|v| (v - max).exp()).sum();
            let h: f32 = row[t]
                .iter()
                .map(|v| {
                    let logp = v - max - z.ln();
                    -logp.exp() * logp
                })
                .sum();
            total += weights[a] * h;
        }
    }
    total / c.k.len() as f32
}

#[test]
fn zero_weight_is_the_reference_training_loss() {
    for c in cases() {
        // Any teacher: with weight 0 its targets must not matter.
        let teacher = (c.logits() * -3.0).unwrap();
        let got = c.distilled(&teacher, 0.0).unwrap();
        assert_close(
            &format!("{} distillation at alpha 0", c.name),
            &Tensor::new(&[got], &Device::Cpu).unwrap(),
            &c.expected_loss,
            1e-4,
        );
    }
}

#[test]
fn full_weight_with_itself_as_teacher_is_its_entropy() {
    for c in cases() {
        let logits = c.logits();
        let got = c.distilled(&logits, 1.0).unwrap();
        let want = entropy_by_hand(&c, &logits);
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{}: {got} vs entropy {want}",
            c.name
        );
    }
}

#[test]
fn loss_is_linear_in_the_weight() {
    for c in cases() {
        // A teacher unlike the model: negated logits.
        let teacher = (c.logits() * -1.0).unwrap();
        let l0 = c.distilled(&teacher, 0.0).unwrap();
        let l1 = c.distilled(&teacher, 1.0).unwrap();
        let mid = c.distilled(&teacher, 0.4).unwrap();
        let want = 0.6 * l0 + 0.4 * l1;
        assert!(
            (mid - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{}: {mid} vs {want}",
            c.name
        );
        assert!(
            (l1 - l0).abs() > 1e-3,
            "{}: the teacher changed nothing",
            c.name
        );
    }
}

#[test]
fn bad_arguments_are_refused() {
    let c = cases().into_iter().next().unwrap();
    let logits = c.logits();
    let err = c.distilled(&logits, 1.5).unwrap_err().to_string();
    assert!(err.contains("alpha"), "{err}");
    let short = logits.narrow(1, 0, logits.dim(1).unwrap() - 1).unwrap();
    let err = c.distilled(&short, 0.4).unwrap_err().to_string();
    assert!(err.contains("teacher logits"), "{err}");
}
