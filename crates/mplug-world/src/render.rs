//! The rasterizer: scenes to pixels, and each object's exact box.
//!
//! Shapes are drawn by hand rather than with a drawing crate: the generator needs each object's
//! exact coverage (for its box and for the overlap limit), the same bytes on every machine, and
//! nothing beyond a circle and polygons. Every pixel is sampled on a 4 x 4 grid; the share of
//! samples inside a shape is its anti-aliased coverage, and the samples' colours (stripes, dots)
//! average into the pixel. Each row of samples is cut by the shape's outline into spans (the
//! scanline form of the even-odd point-in-polygon test), so a sample costs a comparison or two.

use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::scene::{BackgroundKind, Object, Scene, Shape, Texture};

/// Samples per pixel side.
const SUB: usize = 4;

/// A picture and the box of each of its objects.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The pixels.
    pub image: RgbImage,
    /// Per object (in scene order): `[x, y, w, h]` in pixels, the axis-aligned bounding box of
    /// the pixels where the object is visible with coverage above one half.
    pub boxes: Vec<[u32; 4]>,
}

/// One object's coverage over a window of the image.
#[derive(Debug, Clone)]
pub(crate) struct Raster {
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    /// Coverage in [0, 1] per window pixel.
    cov: Vec<f32>,
    /// Colour of the covered part times coverage, per window pixel.
    rgb: Vec<[f32; 3]>,
}

impl Raster {
    /// Covered area in pixels.
    pub(crate) fn area(&self) -> f32 {
        self.cov.iter().sum()
    }

    /// Area (in pixels) that both rasters cover.
    pub(crate) fn shared_area(&self, other: &Raster) -> f32 {
        let x0 = self.x0.max(other.x0);
        let y0 = self.y0.max(other.y0);
        let x1 = (self.x0 + self.w).min(other.x0 + other.w);
        let y1 = (self.y0 + self.h).min(other.y0 + other.h);
        let mut sum = 0.0;
        for y in y0..y1.max(y0) {
            for x in x0..x1.max(x0) {
                let a = self.cov[(y - self.y0) * self.w + (x - self.x0)];
                let b = other.cov[(y - other.y0) * other.w + (x - other.x0)];
                sum += a.min(b);
            }
        }
        sum
    }
}

/// The outline of a shape in unit local coordinates (y down); empty for the circle.
fn outline(shape: Shape) -> Vec<(f32, f32)> {
    match shape {
        Shape::Circle => Vec::new(),
        Shape::Square => vec![(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)],
        Shape::Triangle => vec![(0.0, -1.05), (1.0, 0.68), (-1.0, 0.68)],
        Shape::Diamond => vec![(0.0, -1.05), (0.74, 0.0), (0.0, 1.05), (-0.74, 0.0)],
        Shape::Star => (0..10)
            .map(|k| {
                let a = -std::f32::consts::FRAC_PI_2 + k as f32 * std::f32::consts::PI / 5.0;
                let r = if k % 2 == 0 { 1.08 } else { 0.46 };
                (r * a.cos(), r * a.sin())
            })
            .collect(),
        Shape::Cross => {
            let (a, b) = (0.34, 0.98);
            vec![
                (-a, -b),
                (a, -b),
                (a, -a),
                (b, -a),
                (b, a),
                (a, a),
                (a, b),
                (-a, b),
                (-a, a),
                (-b, a),
                (-b, -a),
                (-a, -a),
            ]
        }
    }
}

/// The spans `[t0, t1]` of the line `{(dy sin + t cos, dy cos - t sin)}` (a row of the image,
/// `t` its x offset from the centre, in local units) that lie inside the shape: the circle
/// when `poly` is empty, else the polygon by the even-odd rule. Appends to `out`.
fn spans(poly: &[(f32, f32)], dy: f32, sin: f32, cos: f32, out: &mut Vec<(f32, f32)>) {
    out.clear();
    if poly.is_empty() {
        if dy.abs() <= 1.0 {
            let half = (1.0 - dy * dy).sqrt();
            out.push((-half, half));
        }
        return;
    }
    // Signed distance of a vertex from the line; an edge crosses where the sign changes (each
    // vertex sits on one side, so crossings always pair up).
    let side = |p: (f32, f32)| p.0 * sin + p.1 * cos - dy;
    let mut ts: Vec<f32> = Vec::with_capacity(4);
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (p, q) = (poly[j], poly[i]);
        let (sp, sq) = (side(p), side(q));
        if (sp > 0.0) != (sq > 0.0) {
            let k = sp / (sp - sq);
            let x = (p.0 + k * (q.0 - p.0), p.1 + k * (q.1 - p.1));
            ts.push(x.0 * cos - x.1 * sin);
        }
        j = i;
    }
    ts.sort_by(f32::total_cmp);
    out.extend(ts.chunks_exact(2).map(|c| (c[0], c[1])));
}

/// The colour factor of the surface at unit local point `(u, v)`: 1 for the base colour, less
/// for the darker stripes or dots.
fn shade(texture: Texture, u: f32, v: f32) -> f32 {
    match texture {
        Texture::Solid => 1.0,
        Texture::Striped => {
            let t = (u + v) * std::f32::consts::FRAC_1_SQRT_2 / 0.55;
            if t - t.floor() < 0.5 {
                0.66
            } else {
                1.0
            }
        }
        Texture::Dotted => {
            let p = 0.5;
            let fu = (u / p).rem_euclid(1.0) - 0.5;
            let fv = (v / p).rem_euclid(1.0) - 0.5;
            if fu * fu + fv * fv < 0.26 * 0.26 {
                0.74
            } else {
                1.0
            }
        }
    }
}

/// An object's coverage and colour on a `size` x `size` image.
pub(crate) fn rasterize(obj: &Object, size: u32) -> Raster {
    let s = size as f32;
    let (cx, cy, r) = (obj.x * s, obj.y * s, (obj.radius * s).max(0.5));
    let reach = 1.2 * r + 1.0;
    let lo = |c: f32| ((c - reach).floor().max(0.0)) as usize;
    let hi = |c: f32| ((c + reach).ceil().min(s).max(0.0)) as usize;
    let (x0, x1, y0, y1) = (lo(cx), hi(cx), lo(cy), hi(cy));
    let (w, h) = (x1.saturating_sub(x0), y1.saturating_sub(y0));
    let poly = outline(obj.shape);
    let (sin, cos) = obj.rotation.sin_cos();
    let base = obj.color.rgb().map(f32::from);
    let solid = obj.texture == Texture::Solid;
    let mut cov = vec![0f32; w * h];
    let mut rgb = vec![[0f32; 3]; w * h];
    let inv = 1.0 / (SUB * SUB) as f32;
    let step = 1.0 / SUB as f32;
    // Per sample row: its local y offset and its inside spans in image x.
    let mut rows: Vec<(f32, Vec<(f32, f32)>)> = (0..SUB).map(|_| (0.0, Vec::new())).collect();
    let mut local: Vec<(f32, f32)> = Vec::new();
    for py in 0..h {
        let (mut left, mut right) = (f32::INFINITY, f32::NEG_INFINITY);
        for (sy, row) in rows.iter_mut().enumerate() {
            let y = (y0 + py) as f32 + (sy as f32 + 0.5) * step;
            let dy = (y - cy) / r;
            spans(&poly, dy, sin, cos, &mut local);
            row.0 = dy;
            row.1.clear();
            for &(a, b) in &local {
                let (a, b) = (cx + a * r, cx + b * r);
                left = left.min(a);
                right = right.max(b);
                row.1.push((a, b));
            }
        }
        for px in 0..w {
            let (xa, xb) = ((x0 + px) as f32, (x0 + px + 1) as f32);
            if xb <= left || xa >= right {
                continue;
            }
            let i = py * w + px;
            let full = rows
                .iter()
                .all(|(_, sp)| sp.iter().any(|&(a, b)| a <= xa && b >= xb));
            if full && solid {
                cov[i] = 1.0;
                rgb[i] = base;
                continue;
            }
            let mut hits = 0usize;
            let mut tone = 0f32;
            for (dy, sp) in &rows {
                for sx in 0..SUB {
                    let x = xa + (sx as f32 + 0.5) * step;
                    if sp.iter().any(|&(a, b)| a <= x && x <= b) {
                        hits += 1;
                        tone += if solid {
                            1.0
                        } else {
                            // Into the object's frame: rotate the offset back.
                            let dx = (x - cx) / r;
                            shade(obj.texture, dx * cos + dy * sin, -dx * sin + dy * cos)
                        };
                    }
                }
            }
            cov[i] = hits as f32 * inv;
            let t = tone * inv;
            rgb[i] = [base[0] * t, base[1] * t, base[2] * t];
        }
    }
    Raster {
        x0,
        y0,
        w,
        h,
        cov,
        rgb,
    }
}

/// The sum of four uniform numbers in [-1, 1] (close to a normal of variance 4/3), from one
/// 64-bit draw.
fn four_uniforms(rng: &mut StdRng) -> f32 {
    let r = rng.next_u64();
    let part = |k: u32| ((r >> (16 * k)) & 0xffff) as f32;
    (part(0) + part(1) + part(2) + part(3)) / 32767.5 - 4.0
}

/// The grey background of `scene`, one value per pixel.
fn background(scene: &Scene, size: u32) -> Vec<f32> {
    let n = size as usize;
    let s = size as f32;
    let bg = &scene.background;
    let (a, b) = (f32::from(bg.level), f32::from(bg.level2));
    match bg.kind {
        BackgroundKind::Plain => vec![a; n * n],
        BackgroundKind::Gradient => {
            let (sin, cos) = bg.angle.sin_cos();
            let mut out = Vec::with_capacity(n * n);
            for y in 0..n {
                for x in 0..n {
                    let p = (x as f32 + 0.5) / s - 0.5;
                    let q = (y as f32 + 0.5) / s - 0.5;
                    let t = (0.5 + (p * cos + q * sin)).clamp(0.0, 1.0);
                    out.push(a + (b - a) * t);
                }
            }
            out
        }
        BackgroundKind::Noisy => {
            // Value noise: random levels on a coarse grid, smoothly interpolated, plus grain.
            let mut rng = StdRng::seed_from_u64(bg.seed);
            let cell = (size / 10).max(4) as usize;
            let g = n / cell + 2;
            let grid: Vec<f32> = (0..g * g).map(|_| rng.random_range(-1f32..1.0)).collect();
            let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
            let mut out = Vec::with_capacity(n * n);
            for y in 0..n {
                for x in 0..n {
                    let (gx, gy) = (x / cell, y / cell);
                    let tx = smooth((x % cell) as f32 / cell as f32);
                    let ty = smooth((y % cell) as f32 / cell as f32);
                    let at = |i: usize, j: usize| grid[j * g + i];
                    let top = at(gx, gy) * (1.0 - tx) + at(gx + 1, gy) * tx;
                    let bottom = at(gx, gy + 1) * (1.0 - tx) + at(gx + 1, gy + 1) * tx;
                    let v = top * (1.0 - ty) + bottom * ty;
                    out.push(a + 20.0 * v + 1.5 * four_uniforms(&mut rng));
                }
            }
            out
        }
    }
}

/// Draws `scene` on a `size` x `size` image.
pub fn render_scene(scene: &Scene, size: u32) -> Rendered {
    let rasters: Vec<Raster> = scene.objects.iter().map(|o| rasterize(o, size)).collect();
    compose(scene, size, &rasters)
}

/// Draws `scene` from its objects' rasters (in scene order).
pub(crate) fn compose(scene: &Scene, size: u32, rasters: &[Raster]) -> Rendered {
    let n = size as usize;
    let grey = background(scene, size);
    let mut px: Vec<[f32; 3]> = grey.iter().map(|&g| [g, g, g]).collect();
    for r in rasters {
        for y in 0..r.h {
            for x in 0..r.w {
                let i = y * r.w + x;
                let c = r.cov[i];
                if c > 0.0 {
                    let p = &mut px[(r.y0 + y) * n + r.x0 + x];
                    for (v, add) in p.iter_mut().zip(r.rgb[i]) {
                        *v = *v * (1.0 - c) + add;
                    }
                }
            }
        }
    }
    // Boxes of what stays visible: walk front to back, keeping how much of each pixel the
    // objects in front leave uncovered.
    let mut open = vec![1f32; n * n];
    let mut boxes = vec![[0u32; 4]; rasters.len()];
    for (k, r) in rasters.iter().enumerate().rev() {
        let mut bounds: Option<(usize, usize, usize, usize)> = None;
        let mut fallback: Option<(usize, usize, usize, usize)> = None;
        let grow = |b: &mut Option<(usize, usize, usize, usize)>, x: usize, y: usize| {
            *b = Some(match *b {
                None => (x, y, x, y),
                Some((a, b, c, d)) => (a.min(x), b.min(y), c.max(x), d.max(y)),
            });
        };
        for y in 0..r.h {
            for x in 0..r.w {
                let c = r.cov[y * r.w + x];
                let (gx, gy) = (r.x0 + x, r.y0 + y);
                let o = &mut open[gy * n + gx];
                if c * *o > 0.5 {
                    grow(&mut bounds, gx, gy);
                }
                if c > 0.5 {
                    grow(&mut fallback, gx, gy);
                }
                *o *= 1.0 - c;
            }
        }
        if let Some((x0, y0, x1, y1)) = bounds.or(fallback) {
            boxes[k] = [
                x0 as u32,
                y0 as u32,
                (x1 - x0 + 1) as u32,
                (y1 - y0 + 1) as u32,
            ];
        }
    }
    let mut image = RgbImage::new(size, size);
    let mut rng = StdRng::seed_from_u64(scene.noise_seed);
    // A sum of four uniforms in [-1, 1] has standard deviation sqrt(4/3).
    let scale = scene.noise / (4.0f32 / 3.0).sqrt();
    for (i, p) in image.pixels_mut().enumerate() {
        let mut out = [0u8; 3];
        for k in 0..3 {
            let mut v = px[i][k];
            if scene.noise > 0.0 {
                v += four_uniforms(&mut rng) * scale;
            }
            out[k] = v.round().clamp(0.0, 255.0) as u8;
        }
        *p = Rgb(out);
    }
    Rendered { image, boxes }
}
