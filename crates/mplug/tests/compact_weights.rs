//! A model built with compact (bf16) or int8 weights computes what the f32 model built from
//! the same tensors computes, to within the rounding: the visual tower, the text encoder and
//! the decoder, each with few rows (for bf16, f32 arithmetic on the widened weights) and many
//! (bf16 dot products where the CPU has AVX512-BF16, which also round the activations; int8
//! quantizes every input row alike).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use mplug::model::ops::with_int8_weights;
use mplug::model::{random_tensors, Mplug, Task};
use mplug::MplugConfig;

/// Largest difference over the largest magnitude of `want`.
fn relative_error(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let scale = want.abs().unwrap().max_all().unwrap();
    let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap()
}

#[test]
fn compact_weights_follow_the_f32_model() {
    let cfg = MplugConfig::tiny();
    let dev = Device::Cpu;
    let tensors = random_tensors(&cfg, Task::Vqa, DType::F32).unwrap();
    let build = |dtype| {
        Mplug::new(
            &cfg,
            Task::Vqa,
            VarBuilder::from_tensors(tensors.clone(), dtype, &dev),
        )
        .unwrap()
    };
    // bf16 keeps 8 bits of each weight (and, in dot products, of each activation): a relative
    // rounding of 2^-9 per value, which a few layers of sums and norms grow to a few 1e-3 of
    // the outputs' scale. A weight in the wrong place of a packed layout gives errors of the
    // order of the outputs themselves.
    let tower = follows(&build(DType::F32), &build(DType::BF16), 0.03);
    assert!(
        tower > 1e-4,
        "the compact model computes as the f32 one: {tower}"
    );
}

#[test]
fn int8_weights_follow_the_f32_model() {
    let cfg = MplugConfig::tiny();
    let dev = Device::Cpu;
    let tensors = random_tensors(&cfg, Task::Vqa, DType::F32).unwrap();
    let build = || {
        Mplug::new(
            &cfg,
            Task::Vqa,
            VarBuilder::from_tensors(tensors.clone(), DType::F32, &dev),
        )
        .unwrap()
    };
    let int8 = with_int8_weights(build);
    // int8 steps are 1/127 of each column's (weights) and each row's (activations) largest
    // magnitude: up to 0.4 % of it per value, which the layers grow to a few percent of the
    // outputs' scale (2-4 % over repeated runs of this test, whose weights are drawn afresh
    // each time). A misplaced weight or a wrong scale or offset gives errors of the order of
    // the outputs.
    let tower = follows(&build(), &int8, 0.08);
    // And the weights are int8 indeed: f32 rounding alone differs by about 1e-6.
    assert!(
        tower > 1e-3,
        "the int8 model computes as the f32 one: {tower}"
    );
}

/// `compact` (a model of the tiny shapes) computes what `wide` computes within `tolerance` of
/// the outputs' largest magnitude; returns the visual tower's error.
fn follows(wide: &Mplug, compact: &Mplug, tolerance: f32) -> f32 {
    let cfg = MplugConfig::tiny();
    let dev = Device::Cpu;

    let res = cfg.image_res;
    let image = Tensor::randn(0f32, 1.0, (2, 3, res, res), &dev).unwrap();
    let embeds = wide.encode_image(&image).unwrap();
    let tower = relative_error(&compact.encode_image(&image).unwrap(), &embeds);
    eprintln!("visual tower: {tower}");
    assert!(tower < tolerance, "visual tower: {tower}");

    let decoder = (wide.decoder().unwrap(), compact.decoder().unwrap());
    let cross = (
        decoder.0.cross_states(&embeds, None).unwrap(),
        decoder.1.cross_states(&embeds, None).unwrap(),
    );
    // Few rows: one question of 3 tokens; many: two of 12.
    for (batch, len) in [(1, 3), (2, 12)] {
        let ids: Vec<u32> = (0..batch * len)
            .map(|i| 104 + (i * 7 % 200) as u32)
            .collect();
        let ids = Tensor::from_vec(ids, (batch, len), &dev).unwrap();
        let mask = Tensor::ones((batch, len), DType::U32, &dev).unwrap();
        let err = relative_error(
            &compact.encode_text(&ids, &mask).unwrap(),
            &wide.encode_text(&ids, &mask).unwrap(),
        );
        assert!(
            err < tolerance,
            "text encoder, {batch} x {len} tokens: {err}"
        );
        if batch == 2 {
            let want = decoder.0.forward(&ids, None, &cross.0, None).unwrap();
            let got = decoder.1.forward(&ids, None, &cross.1, None).unwrap();
            let err = relative_error(&got, &want);
            assert!(err < tolerance, "decoder, {batch} x {len} tokens: {err}");
        }
    }
    // Decoding's few rows: one token for each of two images.
    let ids = Tensor::from_vec(vec![101u32, 101], (2, 1), &dev).unwrap();
    let want = decoder.0.forward(&ids, None, &cross.0, None).unwrap();
    let got = decoder.1.forward(&ids, None, &cross.1, None).unwrap();
    let err = relative_error(&got, &want);
    eprintln!("decoder, one token: {err}");
    assert!(err < tolerance, "decoder, one token: {err}");
    tower
}
