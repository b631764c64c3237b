//! The reference's visual-grounding training transform on 8-bit RGB images and their boxes
//! (`grounding_dataset.make_transforms(.., 'train')` with `aug_scale`, `aug_crop` and
//! `aug_translate` on and `aug_blur` off, as its grounding configuration sets them):
//!
//! 1. one of two branches: either the long side resized to one of the scales
//!    `R - (R / 20) * i`, `i = 0..7` ([`scales`]), or, with probability 0.5 and only for texts
//!    naming no direction ([`DIRECTION_WORDS`]), the short side resized to one of three sizes, a
//!    random crop that keeps the whole box ([`crop_region`]), then the long side resized to one
//!    of the scales;
//! 2. colour jitter (brightness, contrast and saturation factors in `[0.6, 1.4]`, in a random
//!    order, with probability 0.8; Pillow's `ImageEnhance` arithmetic);
//! 3. a horizontal flip with probability 0.5 that swaps `left` and `right` in the text;
//! 4. the image placed on the `R x R` canvas at a random offset instead of centred
//!    ([`Augmented::left`], [`Augmented::top`]; the padding itself is
//!    [`crate::input::GroundingPreprocessor::place`]).
//!
//! The box travels with every step, in the current image's pixels. Resizes use Pillow's
//! `BILINEAR` (torchvision's default on PIL images), with the reference's size rounding.
//!
//! Two deliberate departures from the reference, both documented where they apply: its
//! absolute crop sizes are scaled to our resolution, and its crop test (which compares the
//! box centre's x with the crop's top row and y with its left column, and may clip the box to
//! nothing) is replaced by the rule it was meant to enforce, stricter: the crop contains the
//! whole box.

use super::flip::{hflip, swap_left_right};
use crate::input::error::{InputError, Result};
use crate::input::resample::{resize, Filter};
use crate::input::RgbImage;
use rand::rngs::StdRng;
use rand::Rng;
use std::ops::RangeInclusive;

/// The `image_res` the reference's absolute crop-branch sizes were tuned for (its grounding
/// configuration's resolution). Those sizes are scaled by `R / 336` for a resolution `R`.
pub const REFERENCE_RESOLUTION: u32 = 336;
/// The crop branch's short-side sizes, in pixels at [`REFERENCE_RESOLUTION`].
pub const REFERENCE_SHORT_SIDES: [u32; 3] = [400, 500, 600];
/// The crop's smallest and largest side, in pixels at [`REFERENCE_RESOLUTION`].
pub const REFERENCE_CROP_SIDES: (u32, u32) = (384, 600);
/// Words (matched as substrings, as the reference does) that keep a text out of the crop
/// branch: a crop could change which object they pick out.
pub const DIRECTION_WORDS: [&str; 5] = ["left", "right", "top", "bottom", "middle"];
/// Crop sizes tried before the crop is given up (the image then goes on uncropped).
const CROP_TRIES: usize = 20;
/// The crop branch is skipped for images so elongated that their short-side resize would
/// exceed this many times the largest crop's area (a guard against huge allocations).
const MAX_CROP_SOURCE_AREAS: u64 = 16;

/// Options of the grounding training transform.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundingAugment {
    /// `aug_scale`: the long side goes to one of the 7 sizes of [`scales`]; off: to `R` only.
    pub multi_scale: bool,
    /// `aug_crop`: probability of the crop branch for texts without a direction word
    /// (0.5 in the reference; 0 turns cropping off).
    pub crop_prob: f64,
    /// Colour jitter ranges `[brightness, contrast, saturation]`: each factor is drawn from
    /// `[1 - x, 1 + x]` (0.4 each in the reference; 0 leaves that property alone).
    pub jitter: [f64; 3],
    /// Probability that the colour jitter applies at all (0.8 in the reference).
    pub jitter_prob: f64,
    /// `aug_translate`: place the image at a uniformly random offset on the canvas; off: centred
    /// as the evaluation letterbox does.
    pub translate: bool,
}

impl GroundingAugment {
    /// The reference's settings: 7 scales, crop probability 0.5, jitter 0.4 / 0.4 / 0.4 with
    /// probability 0.8, random placement.
    pub fn reference() -> Self {
        GroundingAugment {
            multi_scale: true,
            crop_prob: 0.5,
            jitter: [0.4, 0.4, 0.4],
            jitter_prob: 0.8,
            translate: true,
        }
    }
}

impl Default for GroundingAugment {
    fn default() -> Self {
        Self::reference()
    }
}

/// A crop rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropRegion {
    /// First column.
    pub left: u32,
    /// First row.
    pub top: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// One augmented grounding sample, ready to be placed on the canvas.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmented {
    /// The image, its long side at most the resolution.
    pub image: RgbImage,
    /// The box `[x0, y0, x1, y1]` in `image`'s pixels.
    pub bbox: [f64; 4],
    /// The text, `left` and `right` swapped if flipped.
    pub text: String,
    /// Column of the canvas where the image's first column goes.
    pub left: u32,
    /// Row of the canvas where the image's first row goes.
    pub top: u32,
    /// Whether a crop was applied.
    pub cropped: bool,
    /// Whether the image was mirrored.
    pub flipped: bool,
}

/// Python's `round()` (half to even) of a non-negative size, at least 1.
fn round_size(x: f64) -> u32 {
    x.round_ties_even().clamp(1.0, f64::from(u32::MAX)) as u32
}

/// A size of the reference's, in pixels at [`REFERENCE_RESOLUTION`], scaled to `resolution`
/// (rounded, at least 1).
pub fn at_resolution(reference_pixels: u32, resolution: u32) -> u32 {
    round_size(
        f64::from(reference_pixels) * f64::from(resolution) / f64::from(REFERENCE_RESOLUTION),
    )
}

/// The long-side sizes: `R - (R / 20) * i` for `i = 0..7` with `multi_scale` (integer
/// division, as the reference), else `[R]`; none below 1.
pub fn scales(resolution: u32, multi_scale: bool) -> Vec<u32> {
    if !multi_scale {
        return vec![resolution.max(1)];
    }
    let step = resolution / 20;
    (0..7)
        .map(|i| resolution.saturating_sub(step * i).max(1))
        .collect()
}

/// Whether `text` contains one of [`DIRECTION_WORDS`].
pub fn has_direction_word(text: &str) -> bool {
    DIRECTION_WORDS.iter().any(|w| text.contains(w))
}

/// Resizes by `ratio` (sides rounded as Python does, at least 1; bilinear) and scales the box
/// with the image. The reference scales the box by `ratio` itself; the sides' actual ratios
/// (which differ from it by the rounding) are used instead, so that the box stays exactly on
/// the resampled pixels.
fn resize_by(img: &RgbImage, bbox: [f64; 4], ratio: f64) -> Result<(RgbImage, [f64; 4])> {
    let (w, h) = img.dimensions();
    let new_w = round_size(f64::from(w) * ratio);
    let new_h = round_size(f64::from(h) * ratio);
    let out = resize(img, new_w, new_h, Filter::Bilinear)?;
    let (rx, ry) = (
        f64::from(new_w) / f64::from(w),
        f64::from(new_h) / f64::from(h),
    );
    let [x0, y0, x1, y1] = bbox;
    Ok((out, [x0 * rx, y0 * ry, x1 * rx, y1 * ry]))
}

/// Resizes so that the long side is `size`, scaling the box alike.
pub fn resize_long_side(img: &RgbImage, bbox: [f64; 4], size: u32) -> Result<(RgbImage, [f64; 4])> {
    let long = img.width().max(img.height());
    if long == 0 || size == 0 {
        return Err(InputError::InvalidConfig(format!(
            "cannot resize a {}x{} image to a long side of {size}",
            img.width(),
            img.height()
        )));
    }
    resize_by(img, bbox, f64::from(size) / f64::from(long))
}

/// Resizes so that the short side is `size`, scaling the box alike.
pub fn resize_short_side(
    img: &RgbImage,
    bbox: [f64; 4],
    size: u32,
) -> Result<(RgbImage, [f64; 4])> {
    let short = img.width().min(img.height());
    if short == 0 || size == 0 {
        return Err(InputError::InvalidConfig(format!(
            "cannot resize a {}x{} image to a short side of {size}",
            img.width(),
            img.height()
        )));
    }
    resize_by(img, bbox, f64::from(size) / f64::from(short))
}

/// The offsets at which a span of `side` pixels within `0..total` covers `lo..hi` entirely.
fn covering_offsets(lo: f64, hi: f64, side: u32, total: u32) -> Option<RangeInclusive<u32>> {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo || side > total {
        return None;
    }
    let first = (hi - f64::from(side)).ceil().max(0.0);
    let last = lo.floor().min(f64::from(total - side));
    (first <= last).then_some(first as u32..=last as u32)
}

/// The reference's `RandomSizeCrop(min, max)` on a `width x height` image, keeping `bbox`:
/// each try draws a width in `min..=min(width, max)` and a height likewise (the lower bound
/// lowered to the image's side when the image is smaller, where the reference would fail),
/// then a position among those where the crop contains the whole box. After 20 sizes with no
/// such position, `None`: no crop.
///
/// The reference instead draws the position uniformly and accepts it when the box centre's x
/// exceeds the crop's top row and its y the crop's left column (axes swapped, no upper bound),
/// then clips the box to the crop, which can shrink it to nothing; keeping the whole box is
/// what that test is evidently for.
pub fn crop_region(
    width: u32,
    height: u32,
    bbox: [f64; 4],
    sides: (u32, u32),
    rng: &mut StdRng,
) -> Option<CropRegion> {
    if width == 0 || height == 0 {
        return None;
    }
    let max_w = width.min(sides.1.max(1));
    let max_h = height.min(sides.1.max(1));
    let (min_w, min_h) = (sides.0.clamp(1, max_w), sides.0.clamp(1, max_h));
    for _ in 0..CROP_TRIES {
        let w = rng.random_range(min_w..=max_w);
        let h = rng.random_range(min_h..=max_h);
        let rows = covering_offsets(bbox[1], bbox[3], h, height);
        let cols = covering_offsets(bbox[0], bbox[2], w, width);
        if let (Some(rows), Some(cols)) = (rows, cols) {
            let top = rng.random_range(rows);
            let left = rng.random_range(cols);
            return Some(CropRegion {
                left,
                top,
                width: w,
                height: h,
            });
        }
    }
    None
}

/// Crops `img` to `region` (clamped to the image) and moves the box into the crop's frame,
/// clipped to it as the reference does.
pub fn crop_to(img: &RgbImage, bbox: [f64; 4], region: CropRegion) -> (RgbImage, [f64; 4]) {
    let out =
        ::image::imageops::crop_imm(img, region.left, region.top, region.width, region.height)
            .to_image();
    let (w, h) = (f64::from(out.width()), f64::from(out.height()));
    let (dx, dy) = (f64::from(region.left), f64::from(region.top));
    let [x0, y0, x1, y1] = bbox;
    let clip = |v: f64, max: f64| v.clamp(0.0, max);
    let moved = [
        clip(x0 - dx, w),
        clip(y0 - dy, h),
        clip(x1 - dx, w),
        clip(y1 - dy, h),
    ];
    (out, moved)
}

/// The box of a `width`-wide image mirrored left to right.
pub fn flip_box(bbox: [f64; 4], width: u32) -> [f64; 4] {
    let w = f64::from(width);
    [w - bbox[2], bbox[1], w - bbox[0], bbox[3]]
}

/// Pillow's `Image.blend(base, img, alpha)` on one 8-bit value: computed in single precision,
/// truncated and clipped to `0..=255`.
fn blend(base: f32, value: u8, alpha: f32) -> u8 {
    let t = base + alpha * (f32::from(value) - base);
    if t <= 0.0 {
        0
    } else if t >= 255.0 {
        255
    } else {
        t as u8
    }
}

/// Pillow's RGB to `L` conversion (ITU-R 601-2 luma in 16-bit fixed point).
fn luma(px: [u8; 3]) -> u8 {
    let [r, g, b] = px.map(u32::from);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// Pillow's `ImageEnhance.Brightness(img).enhance(factor)`: a blend with black.
pub fn adjust_brightness(img: &mut RgbImage, factor: f64) {
    let alpha = factor as f32;
    for p in img.pixels_mut() {
        p.0 = p.0.map(|v| blend(0.0, v, alpha));
    }
}

/// Pillow's `ImageEnhance.Contrast(img).enhance(factor)`: a blend with the grey of the
/// image's mean luma (rounded to an integer).
pub fn adjust_contrast(img: &mut RgbImage, factor: f64) {
    let n = u64::from(img.width()) * u64::from(img.height());
    if n == 0 {
        return;
    }
    let sum: u64 = img.pixels().map(|p| u64::from(luma(p.0))).sum();
    let mean = (sum as f64 / n as f64 + 0.5).floor() as f32;
    let alpha = factor as f32;
    for p in img.pixels_mut() {
        p.0 = p.0.map(|v| blend(mean, v, alpha));
    }
}

/// Pillow's `ImageEnhance.Color(img).enhance(factor)`: each pixel blended with its own luma.
pub fn adjust_saturation(img: &mut RgbImage, factor: f64) {
    let alpha = factor as f32;
    for p in img.pixels_mut() {
        let grey = f32::from(luma(p.0));
        p.0 = p.0.map(|v| blend(grey, v, alpha));
    }
}

/// A factor drawn uniformly from `[1 - range, 1 + range]`, never below 0.
fn jitter_factor(range: f64, rng: &mut StdRng) -> f64 {
    let lo = 1.0 - range;
    (lo + 2.0 * range * rng.random::<f64>()).max(0.0)
}

/// The reference's `ColorJitter`: with probability `prob`, brightness, contrast and saturation
/// (ranges `jitter`) adjusted in a random order.
pub fn color_jitter(img: &mut RgbImage, jitter: [f64; 3], prob: f64, rng: &mut StdRng) {
    if rng.random::<f64>() >= prob {
        return;
    }
    let mut order = [0usize, 1, 2];
    for i in (1..order.len()).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    for k in order {
        let factor = jitter_factor(jitter[k], rng);
        match k {
            0 => adjust_brightness(img, factor),
            1 => adjust_contrast(img, factor),
            _ => adjust_saturation(img, factor),
        }
    }
}

/// The crop branch before its final resize: short side to one of the (scaled) sizes, then a
/// box-keeping crop. Returns the image, its box, and whether a crop was applied; `None` when
/// the short-side resize would be unreasonably large (the plain branch is used instead).
fn crop_stage(
    img: &RgbImage,
    bbox: [f64; 4],
    resolution: u32,
    rng: &mut StdRng,
) -> Result<Option<(RgbImage, [f64; 4], bool)>> {
    let shorts = REFERENCE_SHORT_SIDES.map(|s| at_resolution(s, resolution));
    let short = shorts[rng.random_range(0..shorts.len())];
    let sides = (
        at_resolution(REFERENCE_CROP_SIDES.0, resolution),
        at_resolution(REFERENCE_CROP_SIDES.1, resolution),
    );
    let (w, h) = (u64::from(img.width()), u64::from(img.height()));
    let (s, long) = (u64::from(short), w.max(h));
    let area = s.saturating_mul(long.saturating_mul(s) / w.min(h).max(1));
    let biggest = u64::from(sides.1).pow(2);
    if area > MAX_CROP_SOURCE_AREAS.saturating_mul(biggest) {
        return Ok(None);
    }
    let (resized, bbox) = resize_short_side(img, bbox, short)?;
    Ok(Some(
        match crop_region(resized.width(), resized.height(), bbox, sides, rng) {
            Some(region) => {
                let (cropped, bbox) = crop_to(&resized, bbox, region);
                (cropped, bbox, true)
            }
            None => (resized, bbox, false),
        },
    ))
}

/// Where a `width x height` image goes on a `size x size` canvas: uniformly random with
/// `translate` (rows drawn first, as the reference), else centred as the evaluation letterbox
/// (`round(d / 2 - 0.1)` of the leftover `d`).
fn placement(width: u32, height: u32, size: u32, translate: bool, rng: &mut StdRng) -> (u32, u32) {
    let (dw, dh) = (size.saturating_sub(width), size.saturating_sub(height));
    if translate {
        let top = rng.random_range(0..=dh);
        let left = rng.random_range(0..=dw);
        (left, top)
    } else {
        let centre = |d: u32| (f64::from(d) / 2.0 - 0.1).round_ties_even().max(0.0) as u32;
        (centre(dw), centre(dh))
    }
}

/// The reference's grounding training transform (see the module documentation) of `image`
/// with box `bbox` (`[x0, y0, x1, y1]` pixels) and expression `text`, for an `R x R` canvas
/// (`resolution`); the flip applies only when `flip` is set. All randomness comes from `rng`.
pub fn augment_grounding(
    image: &RgbImage,
    bbox: [f64; 4],
    text: &str,
    config: &GroundingAugment,
    flip: bool,
    resolution: u32,
    rng: &mut StdRng,
) -> Result<Augmented> {
    if resolution == 0 {
        return Err(InputError::InvalidConfig(
            "grounding augmentation needs a resolution of at least 1".into(),
        ));
    }
    if image.width() == 0 || image.height() == 0 {
        return Err(InputError::InvalidConfig(format!(
            "cannot augment a {}x{} image",
            image.width(),
            image.height()
        )));
    }
    let crop = !has_direction_word(text) && rng.random::<f64>() < config.crop_prob;
    let staged = if crop {
        crop_stage(image, bbox, resolution, rng)?
    } else {
        None
    };
    let (source, bbox, cropped) = match &staged {
        Some((img, b, c)) => (img, *b, *c),
        None => (image, bbox, false),
    };
    let sizes = scales(resolution, config.multi_scale);
    let size = sizes[rng.random_range(0..sizes.len())];
    let (mut img, mut bbox) = resize_long_side(source, bbox, size)?;
    color_jitter(&mut img, config.jitter, config.jitter_prob, rng);
    let mut text = text.to_string();
    let flipped = flip && rng.random::<f64>() < 0.5;
    if flipped {
        img = hflip(&img);
        text = swap_left_right(&text);
        bbox = flip_box(bbox, img.width());
    }
    let (left, top) = placement(img.width(), img.height(), resolution, config.translate, rng);
    Ok(Augmented {
        image: img,
        bbox,
        text,
        left,
        top,
        cropped,
        flipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn solid(w: u32, h: u32, px: [u8; 3]) -> RgbImage {
        RgbImage::from_pixel(w, h, ::image::Rgb(px))
    }

    #[test]
    fn scales_follow_the_reference_formula() {
        assert_eq!(scales(336, true), [336, 320, 304, 288, 272, 256, 240]);
        assert_eq!(scales(384, true), [384, 365, 346, 327, 308, 289, 270]);
        assert_eq!(scales(384, false), [384]);
        assert!(scales(3, true).iter().all(|&s| s == 3));
    }

    #[test]
    fn reference_sizes_scale_with_the_resolution() {
        assert_eq!(at_resolution(400, 336), 400);
        assert_eq!(at_resolution(600, 168), 300);
        assert_eq!(at_resolution(384, 1), 1);
    }

    #[test]
    fn resizes_scale_the_box_by_the_side_ratio() {
        let img = solid(200, 100, [1, 2, 3]);
        let (out, b) = resize_long_side(&img, [20.0, 10.0, 60.0, 50.0], 50).unwrap();
        assert_eq!(out.dimensions(), (50, 25));
        assert_eq!(b, [5.0, 2.5, 15.0, 12.5]);
        let (out, b) = resize_short_side(&img, [20.0, 10.0, 60.0, 50.0], 150).unwrap();
        assert_eq!(out.dimensions(), (300, 150));
        assert_eq!(b, [30.0, 15.0, 90.0, 75.0]);
        assert!(resize_long_side(&solid(0, 0, [0; 3]), [0.0; 4], 5).is_err());
    }

    #[test]
    fn crop_contains_the_box_or_is_refused() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..500 {
            let (w, h) = (rng.random_range(20..200), rng.random_range(20..200));
            let x0 = rng.random_range(0.0..f64::from(w));
            let y0 = rng.random_range(0.0..f64::from(h));
            let x1 = rng.random_range(x0..=f64::from(w));
            let y1 = rng.random_range(y0..=f64::from(h));
            let b = [x0, y0, x1, y1];
            if let Some(r) = crop_region(w, h, b, (30, 90), &mut rng) {
                assert!(
                    r.left + r.width <= w && r.top + r.height <= h,
                    "{r:?} in {w}x{h}"
                );
                assert!(r.width <= 90 && r.height <= 90);
                assert!(r.width >= 30.min(w) && r.height >= 30.min(h));
                assert!(f64::from(r.left) <= x0 && f64::from(r.left + r.width) >= x1);
                assert!(f64::from(r.top) <= y0 && f64::from(r.top + r.height) >= y1);
            } else {
                // Any crop size holds a box a pixel narrower than the smallest crop, so such
                // a box is always cropped.
                let fits = |span: f64, side: u32| span + 1.0 <= f64::from(30.min(side));
                assert!(!(fits(x1 - x0, w) && fits(y1 - y0, h)), "{b:?} in {w}x{h}");
            }
        }
        // A box larger than any crop is never cropped; a bad box neither.
        assert_eq!(
            crop_region(300, 300, [0.0, 0.0, 200.0, 10.0], (30, 90), &mut rng),
            None
        );
        assert_eq!(
            crop_region(300, 300, [f64::NAN; 4], (30, 90), &mut rng),
            None
        );
        assert_eq!(
            crop_region(300, 300, [50.0, 5.0, 40.0, 9.0], (30, 90), &mut rng),
            None
        );
    }

    #[test]
    fn crop_moves_the_box_into_its_frame() {
        let img = RgbImage::from_fn(50, 40, |x, y| ::image::Rgb([x as u8, y as u8, 0]));
        let region = CropRegion {
            left: 10,
            top: 5,
            width: 30,
            height: 20,
        };
        let (out, b) = crop_to(&img, [12.0, 8.0, 20.0, 30.0], region);
        assert_eq!(out.dimensions(), (30, 20));
        assert_eq!(out.get_pixel(0, 0).0, [10, 5, 0]);
        assert_eq!(b, [2.0, 3.0, 10.0, 20.0]);
    }

    #[test]
    fn enhancements_match_pillow_arithmetic() {
        let mut img = solid(2, 1, [100, 150, 250]);
        img.put_pixel(1, 0, ::image::Rgb([0, 0, 0]));
        let orig = img.clone();
        for f in [adjust_brightness, adjust_contrast, adjust_saturation] {
            let mut same = orig.clone();
            f(&mut same, 1.0);
            assert_eq!(same, orig);
        }
        let mut b = orig.clone();
        adjust_brightness(&mut b, 1.5);
        assert_eq!(b.get_pixel(0, 0).0, [150, 225, 255]);
        assert_eq!(b.get_pixel(1, 0).0, [0, 0, 0]);
        // Luma of (100, 150, 250) is 146; the mean of 146 and 0 is 73.
        assert_eq!(luma([100, 150, 250]), 146);
        let mut c = orig.clone();
        adjust_contrast(&mut c, 0.0);
        assert_eq!(c.get_pixel(0, 0).0, [73, 73, 73]);
        assert_eq!(c.get_pixel(1, 0).0, [73, 73, 73]);
        let mut s = orig.clone();
        adjust_saturation(&mut s, 0.0);
        assert_eq!(s.get_pixel(0, 0).0, [146, 146, 146]);
        let mut s = orig;
        adjust_saturation(&mut s, 0.5);
        assert_eq!(s.get_pixel(0, 0).0, [123, 148, 198]);
    }

    #[test]
    fn jitter_probability_zero_changes_nothing() {
        let img = RgbImage::from_fn(8, 8, |x, y| ::image::Rgb([x as u8 * 30, y as u8 * 30, 90]));
        let mut rng = StdRng::seed_from_u64(1);
        let mut out = img.clone();
        color_jitter(&mut out, [0.4; 3], 0.0, &mut rng);
        assert_eq!(out, img);
        let changed = (0..20).any(|_| {
            let mut out = img.clone();
            color_jitter(&mut out, [0.4; 3], 1.0, &mut rng);
            out != img
        });
        assert!(changed);
    }

    #[test]
    fn direction_words_are_substrings() {
        assert!(has_direction_word("man on the leftmost"));
        assert!(has_direction_word("bottom shelf"));
        assert!(!has_direction_word("the blue car"));
    }

    #[test]
    fn placement_is_centred_or_inside_the_canvas() {
        let mut rng = StdRng::seed_from_u64(9);
        assert_eq!(placement(30, 20, 32, false, &mut rng), (1, 6));
        for _ in 0..100 {
            let (l, t) = placement(30, 20, 32, true, &mut rng);
            assert!(l <= 2 && t <= 12);
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut rng = StdRng::seed_from_u64(0);
        let cfg = GroundingAugment::reference();
        let img = solid(10, 10, [0; 3]);
        assert!(augment_grounding(&img, [0.0; 4], "x", &cfg, true, 0, &mut rng).is_err());
        let empty = solid(0, 0, [0; 3]);
        assert!(augment_grounding(&empty, [0.0; 4], "x", &cfg, true, 8, &mut rng).is_err());
        // A box outside the image is kept (never cropped) rather than failing.
        let out = augment_grounding(&img, [-5.0, 0.0, 50.0, 3.0], "x", &cfg, true, 8, &mut rng);
        assert!(out.is_ok());
    }
}
