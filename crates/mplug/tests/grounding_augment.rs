//! The grounding training transform: the target box follows the pixels through every scale,
//! crop, jitter, flip and placement; crops keep the whole box; turned off, the loader gives the
//! centred evaluation letterbox; items are a function of the seed.

mod common;

use candle_core::Device;
use common::scratch;
use image::Rgb;
use mplug::data::augment::hflip;
use mplug::data::grounding_augment::{augment_grounding, scales, Augmented, GroundingAugment};
use mplug::data::{AugmentConfig, Batch, Dataset, Loader, LoaderConfig};
use mplug::eval::BoxFormat;
use mplug::input::{
    GroundingPreprocessor, LetterboxConfig, RgbImage, Tokenizer, IMAGENET_MEAN, IMAGENET_STD,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Canvas side of these tests.
const RES: u32 = 96;
/// Image size and the block's box `[x0, y0, x1, y1]` (off-centre, so a flip moves it).
const W: u32 = 300;
const H: u32 = 200;
const BLOCK: [f64; 4] = [70.0, 40.0, 160.0, 110.0];
/// How far (output pixels) a box edge may sit from where the block's colour ends.
const TOLERANCE: f64 = 1.0;

/// Reddish background, bluish block: every jitter keeps "blue above red" on the block and
/// "red above blue" elsewhere, and so does the padding (ImageNet's mean colour).
fn picture() -> RgbImage {
    RgbImage::from_fn(W, H, |x, y| {
        let (x, y) = (f64::from(x), f64::from(y));
        let inside = (BLOCK[0]..BLOCK[2]).contains(&x) && (BLOCK[1]..BLOCK[3]).contains(&y);
        if inside {
            Rgb([20, 60, 220])
        } else {
            Rgb([220, 60, 20])
        }
    })
}

fn letterbox() -> GroundingPreprocessor {
    GroundingPreprocessor::new(LetterboxConfig::new(RES)).unwrap()
}

/// A loader over one sample (the block picture, `text`), one sample per batch, so that batch
/// `i` is visit `i` with its own augmentation.
fn loader(name: &str, text: &str, seed: u64, augment: Option<AugmentConfig>) -> Loader {
    let dir = scratch(name);
    picture().save(dir.join("block.png")).unwrap();
    let ann = dir.join("refs.json");
    let [x0, y0, x1, y1] = BLOCK;
    std::fs::write(
        &ann,
        format!(
            r#"[{{"image": "block.png", "text": "{text}", "bbox": [{x0}, {y0}, {x1}, {y1}]}}]"#
        ),
    )
    .unwrap();
    Loader::new(
        Dataset::grounding(&ann, BoxFormat::Xyxy).unwrap(),
        &dir,
        Tokenizer::bert_base_uncased().unwrap(),
        LoaderConfig {
            batch_size: 1,
            seed,
            resolution: RES,
            max_text_len: 16,
            augment,
            workers: 1,
            prompt: String::new(),
        },
        &Device::Cpu,
    )
    .unwrap()
}

fn flat(b: &Batch) -> (Vec<f32>, [f32; 4]) {
    let pixels = b.images.flatten_all().unwrap().to_vec1().unwrap();
    let t = b
        .targets
        .as_ref()
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .remove(0);
    (pixels, [t[0], t[1], t[2], t[3]])
}

/// Where the block's colour lies on a normalized `(3, S, S)` canvas: `[x0, y0, x1, y1]` of the
/// pixels more blue than red (mostly block), in canvas pixels; `None` if there are none.
fn block_extent(pixels: &[f32], s: usize) -> Option<[f64; 4]> {
    let plane = s * s;
    let raw = |c: usize, i: usize| pixels[c * plane + i] * IMAGENET_STD[c] + IMAGENET_MEAN[c];
    let mut extent: Option<[usize; 4]> = None;
    for i in 0..plane {
        if raw(2, i) <= raw(0, i) {
            continue;
        }
        let (x, y) = (i % s, i / s);
        let e = extent.get_or_insert([x, y, x, y]);
        *e = [e[0].min(x), e[1].min(y), e[2].max(x), e[3].max(y)];
    }
    extent.map(|[x0, y0, x1, y1]| [x0, y0, x1 + 1, y1 + 1].map(|v| v as f64))
}

/// A `(cx, cy, w, h)` target in canvas pixels as `[x0, y0, x1, y1]`.
fn target_pixels(t: [f32; 4], s: u32) -> [f64; 4] {
    let [cx, cy, w, h] = t.map(f64::from);
    let s = f64::from(s);
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0].map(|v| v * s)
}

/// Asserts that the target box and the block's pixels agree edge by edge.
fn assert_target_on_block(pixels: &[f32], target: [f32; 4], what: &str) {
    let seen = block_extent(pixels, RES as usize)
        .unwrap_or_else(|| panic!("{what}: the block vanished (target {target:?})"));
    let want = target_pixels(target, RES);
    for k in 0..4 {
        assert!(
            (seen[k] - want[k]).abs() <= TOLERANCE,
            "{what}: block at {seen:?}, target at {want:?}"
        );
    }
}

/// Runs the transform with seed `seed` and places it as the loader does.
fn augment_and_place(text: &str, seed: u64) -> (Augmented, Vec<f32>, [f32; 4]) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cfg = GroundingAugment::reference();
    let out = augment_grounding(&picture(), BLOCK, text, &cfg, true, RES, &mut rng).unwrap();
    let (pixels, info) = letterbox().place(&out.image, out.left, out.top).unwrap();
    let target = info.box_from_original(out.bbox.map(|v| v as f32));
    (out, pixels, target)
}

#[test]
fn target_follows_the_block_through_every_transform() {
    let all_scales = scales(RES, true);
    let (mut cropped, mut flipped, mut off_centre) = (0, 0, 0);
    let mut sizes = std::collections::BTreeSet::new();
    for seed in 0..300 {
        let (out, pixels, target) = augment_and_place("the blue block", seed);
        let what = format!(
            "seed {seed} (cropped {}, flipped {})",
            out.cropped, out.flipped
        );
        assert_target_on_block(&pixels, target, &what);
        let (w, h) = out.image.dimensions();
        assert!(
            w.max(h) <= RES && out.left + w <= RES && out.top + h <= RES,
            "{what}"
        );
        // The whole block is kept: its box is never clipped, so its shape is unchanged (but for
        // the rounding of resized sides, well under 2%; a lost pixel row is several percent).
        let [x0, y0, x1, y1] = out.bbox;
        let aspect = (x1 - x0) / (y1 - y0);
        let original = (BLOCK[2] - BLOCK[0]) / (BLOCK[3] - BLOCK[1]);
        assert!(
            (aspect / original - 1.0).abs() < 0.02,
            "{what}: box {:?}",
            out.bbox
        );
        assert!(x0 >= 0.0 && y0 >= 0.0 && x1 <= f64::from(w) && y1 <= f64::from(h));
        cropped += usize::from(out.cropped);
        flipped += usize::from(out.flipped);
        let centred = ((RES - w) / 2, (RES - h) / 2);
        off_centre += usize::from((out.left, out.top) != centred);
        sizes.insert(w.max(h));
    }
    // Every part of the transform was exercised.
    assert!(cropped > 30 && cropped < 270, "{cropped} crops in 300");
    assert!(flipped > 90 && flipped < 210, "{flipped} flips in 300");
    assert!(
        off_centre > 200,
        "{off_centre} off-centre placements in 300"
    );
    assert_eq!(sizes.into_iter().collect::<Vec<_>>(), {
        let mut s = all_scales;
        s.sort();
        s
    });
}

#[test]
fn flips_swap_the_text_and_direction_words_prevent_crops() {
    let (mut flipped, mut kept) = (0, 0);
    for seed in 0..120 {
        let (out, pixels, target) = augment_and_place("the block on the left", seed);
        assert!(
            !out.cropped,
            "seed {seed}: a text with a direction word was cropped"
        );
        assert_target_on_block(&pixels, target, &format!("seed {seed}"));
        if out.flipped {
            flipped += 1;
            assert_eq!(out.text, "the block on the right");
            // The block sat left of the image centre; mirrored, it sits right of it.
            let centre = f64::from(out.left) + f64::from(out.image.width()) / 2.0;
            assert!(
                f64::from(target[0]) * f64::from(RES) > centre,
                "seed {seed}"
            );
        } else {
            kept += 1;
            assert_eq!(out.text, "the block on the left");
        }
    }
    assert!(flipped > 0 && kept > 0);
}

#[test]
fn loader_targets_follow_the_block() {
    let l = loader(
        "follow",
        "the blue block",
        7,
        Some(AugmentConfig::grounding()),
    );
    let centred = letterbox().pixels(&picture()).unwrap().0;
    let mut differ = 0;
    for i in 0..60 {
        let (pixels, target) = flat(&l.batch(i).unwrap());
        assert_target_on_block(&pixels, target, &format!("batch {i}"));
        differ += usize::from(pixels != centred);
    }
    assert!(differ > 50, "only {differ} of 60 visits were augmented");
}

#[test]
fn without_augmentation_the_letterbox_is_centred() {
    let (pixels, info) = letterbox().pixels(&picture()).unwrap();
    let target = info.box_from_original(BLOCK.map(|v| v as f32));
    let l = loader("off", "the blue block", 7, None);
    for i in 0..4 {
        let b = l.batch(i).unwrap();
        assert_eq!(flat(&b), (pixels.clone(), target), "batch {i}");
        assert_eq!(b.texts, ["the blue block"]);
    }
    assert_target_on_block(&pixels, target, "centred");
    // Fine-tuning options without the grounding transform: the centred letterbox, or its
    // mirror image with the box mirrored.
    let (mirrored, mirror_info) = letterbox().pixels(&hflip(&picture())).unwrap();
    let l = loader(
        "flip-only",
        "the left block",
        7,
        Some(AugmentConfig::finetune()),
    );
    let (mut flips, mut kept) = (0, 0);
    for i in 0..16 {
        let b = l.batch(i).unwrap();
        let (p, t) = flat(&b);
        if b.texts[0] == "the right block" {
            flips += 1;
            assert_eq!(p, mirrored, "batch {i}");
            let w = f64::from(W);
            let bbox = [w - BLOCK[2], BLOCK[1], w - BLOCK[0], BLOCK[3]];
            assert_eq!(t, mirror_info.box_from_original(bbox.map(|v| v as f32)));
        } else {
            kept += 1;
            assert_eq!((p, t), (pixels.clone(), target), "batch {i}");
        }
    }
    assert!(flips > 0 && kept > 0);
}

#[test]
fn items_are_a_function_of_the_seed() {
    let a = loader(
        "seed-a",
        "the blue block",
        11,
        Some(AugmentConfig::grounding()),
    );
    let b = loader(
        "seed-b",
        "the blue block",
        11,
        Some(AugmentConfig::grounding()),
    );
    let c = loader(
        "seed-c",
        "the blue block",
        12,
        Some(AugmentConfig::grounding()),
    );
    let mut other_geometry = 0;
    for i in [0, 3, 5, 9, 10, 17] {
        let (x, y, z) = (
            a.batch(i).unwrap(),
            b.batch(i).unwrap(),
            c.batch(i).unwrap(),
        );
        assert_eq!(flat(&x), flat(&y), "batch {i}");
        assert_eq!(x.texts, y.texts);
        other_geometry += usize::from(flat(&x).1 != flat(&z).1);
    }
    assert!(
        other_geometry >= 5,
        "{other_geometry} of 6 targets changed with the seed"
    );
    // Visits do not depend on earlier ones: batch 9 alone equals batch 9 after others.
    let fresh = loader(
        "seed-fresh",
        "the blue block",
        11,
        Some(AugmentConfig::grounding()),
    );
    assert_eq!(flat(&fresh.batch(9).unwrap()), flat(&a.batch(9).unwrap()));
}

#[test]
fn placing_at_the_centre_equals_the_letterbox() {
    // An image whose long side is already the canvas side is only padded by `pixels`.
    let img = RgbImage::from_fn(RES, 64, |x, y| Rgb([x as u8, y as u8, (x + y) as u8]));
    let lb = letterbox();
    let (centred, info) = lb.pixels(&img).unwrap();
    let (placed, placed_info) = lb.place(&img, info.left, info.top).unwrap();
    assert_eq!(placed, centred);
    let b = [10.0, 5.0, 40.0, 30.0];
    assert_eq!(info.box_from_original(b), placed_info.box_from_original(b));
    assert!(lb.place(&img, 1, 0).is_err());
    assert!(lb.place(&img, 0, RES - 63).is_err());
    assert!(lb.place(&img, 0, RES - 64).is_ok());
}
