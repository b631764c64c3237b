//! A generated text's probability (`Hypothesis::log_prob`, `Generated::prob`, the confidence the
//! server and the command line report) is its tokens' log-probabilities summed: the decoder,
//! teacher-forced on the text, gives the same sum; the length-penalized score is that sum over
//! the reference's penalty.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mplug::tasks::caption;
use mplug::{BeamConfig, Mplug, MplugConfig, Task};

#[test]
fn log_prob_is_the_teacher_forced_sum_of_token_log_probabilities() {
    let dev = Device::Cpu;
    let cfg = MplugConfig::tiny();
    let varmap = VarMap::new();
    let model = Mplug::new(
        &cfg,
        Task::Caption,
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )
    .expect("model");
    let r = cfg.image_res;
    let images = Tensor::randn(0f32, 1f32, (2, 3, r, r), &dev).expect("images");
    let embeds = model.encode_image(&images).expect("visual tokens");
    let beam = BeamConfig {
        beam_size: 3,
        n_best: 3,
        min_length: 2,
        max_length: 6,
        ..BeamConfig::default()
    };
    let hyps = caption::generate(&model, &embeds, &beam).expect("beam search");
    let decoder = model.decoder().expect("decoder");
    let mut checked = 0;
    for (i, row) in hyps.iter().enumerate() {
        let states = embeds.narrow(0, i, 1).expect("row");
        let cross = decoder.cross_states(&states, None).expect("cross states");
        for h in row {
            let n = h.ids.len();
            let ids = Tensor::from_vec(h.ids[..n - 1].to_vec(), (1, n - 1), &dev).expect("ids");
            let logits = decoder.forward(&ids, None, &cross, None).expect("logits");
            let logp = candle_nn::ops::log_softmax(&logits.squeeze(0).expect("squeeze"), 1)
                .expect("log-softmax")
                .to_vec2::<f32>()
                .expect("values");
            let sum: f32 = (1..n).map(|t| logp[t - 1][h.ids[t] as usize]).sum();
            assert!(
                (sum - h.log_prob).abs() < 1e-3 * sum.abs().max(1.0),
                "teacher-forced {sum} vs {} for {:?}",
                h.log_prob,
                h.ids
            );
            let penalty = ((5.0 + (n - 1) as f64) / 6.0).powf(beam.length_penalty_alpha) as f32;
            assert!((h.score * penalty - h.log_prob).abs() < 1e-4 * sum.abs().max(1.0));
            assert!(h.log_prob <= 0.0);
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}
