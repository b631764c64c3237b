//! The reference's train-time augmentations on 8-bit RGB images: `RandomResizedCrop` (bicubic),
//! horizontal flip (with `left` and `right` swapped in grounding expressions), and the
//! `RandomAugment(2, 7)` subset its fine-tuning and pre-training use (identity, autocontrast,
//! equalize, brightness, sharpness, shear, translate, rotate; each of the two drawn operations
//! applied with probability 0.5, affine ones filling with grey 128 as the reference does).
//!
//! Grounding samples have their own transform, [`super::grounding_augment`], switched on by
//! [`AugmentConfig::grounding`].
//!
//! Every function takes its randomness from the caller's generator, so that a sample's pixels
//! are a function of the seed it was drawn with.

pub use super::flip::{hflip, swap_left_right};
use super::grounding_augment::GroundingAugment;
use crate::input::resample::{resize, Filter};
use crate::input::RgbImage;
use rand::rngs::StdRng;
use rand::Rng;

/// Augmentation options.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentConfig {
    /// Area fraction range of `RandomResizedCrop`.
    pub scale: (f64, f64),
    /// Aspect ratio range of `RandomResizedCrop`.
    pub ratio: (f64, f64),
    /// Flip horizontally with probability 0.5.
    pub flip: bool,
    /// Operations drawn per image by RandAugment (0: off).
    pub ops: usize,
    /// RandAugment magnitude, out of 10.
    pub magnitude: f64,
    /// Grounding samples: the reference's visual-grounding training transform (multi-scale
    /// resize, box-keeping crop, colour jitter, random placement on the canvas; the flip is
    /// [`Self::flip`]). `None`: grounding images are only letterboxed (centred) and flipped
    /// when `flip` is set. The other fields do not apply to grounding samples.
    pub grounding: Option<GroundingAugment>,
}

impl AugmentConfig {
    /// The reference's fine-tuning transform: crop scale (0.5, 1.0), flip, RandAugment(2, 7).
    pub fn finetune() -> Self {
        AugmentConfig {
            scale: (0.5, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip: true,
            ops: 2,
            magnitude: 7.0,
            grounding: None,
        }
    }

    /// Fine-tuning with the reference's grounding training transform
    /// ([`GroundingAugment::reference`]) for grounding samples.
    pub fn grounding() -> Self {
        AugmentConfig {
            grounding: Some(GroundingAugment::reference()),
            ..Self::finetune()
        }
    }

    /// The reference's pre-training transform: as fine-tuning with crop scale (0.2, 1.0).
    pub fn pretrain() -> Self {
        AugmentConfig {
            scale: (0.2, 1.0),
            ..Self::finetune()
        }
    }
}

/// The RandAugment operations of the reference's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Unchanged.
    Identity,
    /// Stretch each channel to the full range.
    AutoContrast,
    /// Equalize each channel's histogram (Pillow's algorithm).
    Equalize,
    /// Multiply values by a factor.
    Brightness,
    /// Blend with a smoothed copy.
    Sharpness,
    /// Shear along x.
    ShearX,
    /// Shear along y.
    ShearY,
    /// Shift along x.
    TranslateX,
    /// Shift along y.
    TranslateY,
    /// Rotate about the centre.
    Rotate,
}

/// The reference's list, in its order.
pub const OPS: [Op; 10] = [
    Op::Identity,
    Op::AutoContrast,
    Op::Equalize,
    Op::Brightness,
    Op::Sharpness,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
    Op::Rotate,
];

const FILL: [u8; 3] = [128, 128, 128];

/// torchvision's `RandomResizedCrop` parameters: `(left, top, width, height)` of the crop.
pub fn crop_box(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut StdRng,
) -> (u32, u32, u32, u32) {
    let (w0, h0) = (f64::from(width), f64::from(height));
    let area = w0 * h0;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * (scale.0 + rng.random::<f64>() * (scale.1 - scale.0));
        let aspect = (lr0 + rng.random::<f64>() * (lr1 - lr0)).exp();
        let w = (target * aspect).sqrt().round();
        let h = (target / aspect).sqrt().round();
        if w > 0.0 && h > 0.0 && w <= w0 && h <= h0 {
            let (w, h) = (w as u32, h as u32);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return (left, top, w, h);
        }
    }
    // Fallback: the centre crop with the ratio clamped to the range.
    let in_ratio = w0 / h0;
    let (w, h) = if in_ratio < ratio.0 {
        (w0, (w0 / ratio.0).round())
    } else if in_ratio > ratio.1 {
        ((h0 * ratio.1).round(), h0)
    } else {
        (w0, h0)
    };
    let (w, h) = ((w as u32).clamp(1, width), (h as u32).clamp(1, height));
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// `RandomResizedCrop(size)` with bicubic resampling.
pub fn random_resized_crop(
    img: &RgbImage,
    size: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut StdRng,
) -> crate::input::error::Result<RgbImage> {
    let (left, top, w, h) = crop_box(img.width(), img.height(), scale, ratio, rng);
    let crop = ::image::imageops::crop_imm(img, left, top, w, h).to_image();
    resize(&crop, size, size, Filter::Bicubic)
}

fn map_channels(img: &mut RgbImage, table: impl Fn(usize, u8) -> u8) {
    for p in img.pixels_mut() {
        for (c, v) in p.0.iter_mut().enumerate() {
            *v = table(c, *v);
        }
    }
}

fn histograms(img: &RgbImage) -> [[u64; 256]; 3] {
    let mut h = [[0u64; 256]; 3];
    for p in img.pixels() {
        for c in 0..3 {
            h[c][p.0[c] as usize] += 1;
        }
    }
    h
}

fn autocontrast(img: &mut RgbImage) {
    let h = histograms(img);
    let mut tables = [[0u8; 256]; 3];
    for c in 0..3 {
        let lo = h[c].iter().position(|&n| n > 0).unwrap_or(0) as f64;
        let hi = h[c].iter().rposition(|&n| n > 0).unwrap_or(255) as f64;
        for (i, t) in tables[c].iter_mut().enumerate() {
            *t = if hi <= lo {
                i as u8
            } else {
                let s = 255.0 / (hi - lo);
                (i as f64 * s - lo * s).clamp(0.0, 255.0) as u8
            };
        }
    }
    map_channels(img, |c, v| tables[c][v as usize]);
}

fn equalize(img: &mut RgbImage) {
    let h = histograms(img);
    let mut tables = [[0u8; 256]; 3];
    for c in 0..3 {
        let nonzero: Vec<u64> = h[c].iter().copied().filter(|&n| n > 0).collect();
        let step = nonzero[..nonzero.len().saturating_sub(1)]
            .iter()
            .sum::<u64>()
            / 255;
        for (i, t) in tables[c].iter_mut().enumerate() {
            let below: u64 = h[c][..i].iter().sum();
            *t = match (step / 2 + below).checked_div(step) {
                Some(v) => v.min(255) as u8,
                None => i as u8,
            };
        }
    }
    map_channels(img, |c, v| tables[c][v as usize]);
}

fn brightness(img: &mut RgbImage, factor: f64) {
    map_channels(img, |_, v| (f64::from(v) * factor).clamp(0.0, 255.0) as u8);
}

/// Blend with Pillow's SMOOTH kernel `[[1,1,1],[1,5,1],[1,1,1]] / 13` (border kept).
fn sharpness(img: &mut RgbImage, factor: f64) {
    let (w, h) = img.dimensions();
    if w < 3 || h < 3 {
        return;
    }
    let src = img.clone();
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for c in 0..3 {
                let mut sum = 0.0;
                for dy in 0..3 {
                    for dx in 0..3 {
                        let k = if dx == 1 && dy == 1 { 5.0 } else { 1.0 };
                        sum += k * f64::from(src.get_pixel(x + dx - 1, y + dy - 1).0[c]);
                    }
                }
                let blurred = (sum / 13.0).round();
                let v = f64::from(src.get_pixel(x, y).0[c]);
                img.get_pixel_mut(x, y).0[c] =
                    (blurred + factor * (v - blurred)).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// OpenCV's `warpAffine` with a forward matrix `m` (source to destination), bilinear, a
/// constant grey border.
fn warp_affine(img: &RgbImage, m: [f64; 6]) -> RgbImage {
    let [a, b, c, d, e, f] = m;
    let det = a * e - b * d;
    if det.abs() < 1e-12 {
        return img.clone();
    }
    // Inverse of [[a b c] [d e f]].
    let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
    let (ic, if_) = (-(ia * c + ib * f), -(id * c + ie * f));
    let (w, h) = img.dimensions();
    let mut out = RgbImage::new(w, h);
    let px = |x: i64, y: i64, ch: usize| -> f64 {
        if x < 0 || y < 0 || x >= i64::from(w) || y >= i64::from(h) {
            f64::from(FILL[ch])
        } else {
            f64::from(img.get_pixel(x as u32, y as u32).0[ch])
        }
    };
    for y in 0..h {
        for x in 0..w {
            let (xf, yf) = (f64::from(x), f64::from(y));
            let sx = ia * xf + ib * yf + ic;
            let sy = id * xf + ie * yf + if_;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (tx, ty) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let p = out.get_pixel_mut(x, y);
            for ch in 0..3 {
                let v = px(x0, y0, ch) * (1.0 - tx) * (1.0 - ty)
                    + px(x0 + 1, y0, ch) * tx * (1.0 - ty)
                    + px(x0, y0 + 1, ch) * (1.0 - tx) * ty
                    + px(x0 + 1, y0 + 1, ch) * tx * ty;
                p.0[ch] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Applies one operation at `magnitude` (out of 10); the sign of shears, shifts and rotations
/// is drawn from `rng`, as the reference's level-to-argument functions do.
pub fn apply(img: &RgbImage, op: Op, magnitude: f64, rng: &mut StdRng) -> RgbImage {
    let level = magnitude / 10.0;
    let sign = |rng: &mut StdRng| if rng.random::<f64>() > 0.5 { -1.0 } else { 1.0 };
    let mut out = img.clone();
    match op {
        Op::Identity => {}
        Op::AutoContrast => autocontrast(&mut out),
        Op::Equalize => equalize(&mut out),
        Op::Brightness => brightness(&mut out, level * 1.8 + 0.1),
        Op::Sharpness => sharpness(&mut out, level * 1.8 + 0.1),
        Op::ShearX => {
            let s = level * 0.3 * sign(rng);
            out = warp_affine(img, [1.0, s, 0.0, 0.0, 1.0, 0.0]);
        }
        Op::ShearY => {
            let s = level * 0.3 * sign(rng);
            out = warp_affine(img, [1.0, 0.0, 0.0, s, 1.0, 0.0]);
        }
        Op::TranslateX => {
            let t = level * 10.0 * sign(rng);
            out = warp_affine(img, [1.0, 0.0, -t, 0.0, 1.0, 0.0]);
        }
        Op::TranslateY => {
            let t = level * 10.0 * sign(rng);
            out = warp_affine(img, [1.0, 0.0, 0.0, 0.0, 1.0, -t]);
        }
        Op::Rotate => {
            let deg = level * 30.0 * -sign(rng);
            let (cx, cy) = (f64::from(img.width()) / 2.0, f64::from(img.height()) / 2.0);
            let (s, c) = deg.to_radians().sin_cos();
            out = warp_affine(
                img,
                [
                    c,
                    s,
                    (1.0 - c) * cx - s * cy,
                    -s,
                    c,
                    s * cx + (1.0 - c) * cy,
                ],
            );
        }
    }
    out
}

/// `RandomAugment(ops, magnitude)`: draws `ops` operations (with replacement) and applies
/// each with probability 0.5.
pub fn rand_augment(img: RgbImage, ops: usize, magnitude: f64, rng: &mut StdRng) -> RgbImage {
    let drawn: Vec<Op> = (0..ops)
        .map(|_| OPS[rng.random_range(0..OPS.len())])
        .collect();
    let mut img = img;
    for op in drawn {
        if rng.random::<f64>() > 0.5 {
            continue;
        }
        img = apply(&img, op, magnitude, rng);
    }
    img
}
