//! Pillow-exact separable resampling of 8-bit RGB images.
//!
//! The reference resizes with Pillow (`Image.resize`), whose convolution resampler is fully
//! specified by its integer arithmetic: coefficients from the filter evaluated at source-pixel
//! centres, support widened by the scale when shrinking (antialiasing), normalized and rounded to
//! 22-bit fixed point, a horizontal pass into an 8-bit image followed by a vertical pass, each
//! output rounded and clipped to 0..=255. This module reimplements that arithmetic, so that our
//! pixels equal Pillow's bit for bit (general-purpose resizers such as `fast_image_resize` use
//! other windows and 15-bit coefficients and differ by up to ~10 levels near sharp edges).

use ::image::RgbImage;

use super::error::{InputError, Result};

/// Fixed-point precision of Pillow's 8-bit resampler: `32 - 8 - 2`.
const PRECISION_BITS: u32 = 22;

/// The resampling filters the reference uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Pillow `BILINEAR` (triangle, support 1).
    Bilinear,
    /// Pillow `BICUBIC` (Keys cubic with a = -0.5, support 2).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Per output pixel: first source index, number of taps, and `ksize` fixed-point weights.
struct Coefficients {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the full source range.
fn coefficients(in_size: u32, out_size: u32, filter: Filter) -> Coefficients {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut weights = vec![0i32; ksize * out_size as usize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size as usize {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.eval(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..xx * ksize + n];
        for (dst, &w) in row.iter_mut().zip(&k[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            *dst = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coefficients {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1i32 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

// Sums are kept in i32 like Pillow's: |sum| <= 2^21 + 255 * 2^22 * sum|w|, and sum|w| < 1.3 for
// these filters, so they cannot overflow; wrapping operations only keep debug builds panic-free.

/// Horizontal pass over source rows `rows`, `src_w` pixels wide, into `out_w`-wide rows.
fn horizontal(src: &[u8], src_w: usize, rows: std::ops::Range<usize>, c: &Coefficients) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = Vec::with_capacity(out_w * 3 * rows.len());
    for y in rows {
        let line = &src[y * src_w * 3..(y + 1) * src_w * 3];
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
            let taps = &line[xmin * 3..(xmin + n) * 3];
            let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
            for (px, &w) in taps.chunks_exact(3).zip(k) {
                s0 = s0.wrapping_add(i32::from(px[0]).wrapping_mul(w));
                s1 = s1.wrapping_add(i32::from(px[1]).wrapping_mul(w));
                s2 = s2.wrapping_add(i32::from(px[2]).wrapping_mul(w));
            }
            out.extend_from_slice(&[clip8(s0), clip8(s1), clip8(s2)]);
        }
    }
    out
}

/// Vertical pass: `src` is `width` pixels wide; row bounds are relative to its first row.
fn vertical(src: &[u8], width: usize, c: &Coefficients, row_offset: usize) -> Vec<u8> {
    let stride = width * 3;
    let mut out = vec![0u8; stride * c.bounds.len()];
    let mut acc = vec![0i32; stride];
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        acc.fill(HALF);
        for (dy, &w) in k.iter().enumerate() {
            let y = ymin - row_offset + dy;
            let line = &src[y * stride..(y + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a = a.wrapping_add(i32::from(p).wrapping_mul(w));
            }
        }
        for (o, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Resizes `src` to `width x height` exactly as Pillow's `Image.resize(size, filter)` does for
/// an RGB image.
pub fn resize(src: &RgbImage, width: u32, height: u32, filter: Filter) -> Result<RgbImage> {
    let (in_w, in_h) = src.dimensions();
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return Err(InputError::InvalidConfig(format!(
            "cannot resize {in_w}x{in_h} to {width}x{height}"
        )));
    }
    if (in_w, in_h) == (width, height) {
        return Ok(src.clone());
    }
    let horiz = coefficients(in_w, width, filter);
    let vert = coefficients(in_h, height, filter);
    let need_horizontal = width != in_w;
    let need_vertical = height != in_h;
    let raw = src.as_raw();
    let data = if need_horizontal {
        // Only the source rows the vertical pass reads.
        let (first, _) = vert.bounds[0];
        let (last_start, last_n) = vert.bounds[vert.bounds.len() - 1];
        let rows = if need_vertical {
            first..last_start + last_n
        } else {
            0..in_h as usize
        };
        let temp = horizontal(raw, in_w as usize, rows.clone(), &horiz);
        if need_vertical {
            vertical(&temp, width as usize, &vert, rows.start)
        } else {
            temp
        }
    } else {
        vertical(raw, width as usize, &vert, 0)
    };
    RgbImage::from_raw(width, height, data).ok_or_else(|| {
        InputError::InvalidConfig("resize produced a buffer of the wrong size".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant_images() {
        let img = RgbImage::from_fn(7, 5, |x, y| ::image::Rgb([x as u8 * 30, y as u8 * 40, 9]));
        assert_eq!(resize(&img, 7, 5, Filter::Bicubic).unwrap(), img);
        let flat = RgbImage::from_pixel(13, 9, ::image::Rgb([200, 17, 255]));
        for (w, h) in [(4, 4), (30, 20), (13, 3), (2, 9)] {
            for f in [Filter::Bicubic, Filter::Bilinear] {
                let out = resize(&flat, w, h, f).unwrap();
                assert!(out.pixels().all(|p| p.0 == [200, 17, 255]), "{w}x{h} {f:?}");
            }
        }
        assert!(resize(&flat, 0, 3, Filter::Bicubic).is_err());
    }
}
