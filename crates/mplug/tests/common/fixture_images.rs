//! Example images the tests make themselves, so that no test needs the golden folder's images
//! (whose names and number belong to that folder: `MPLUG_GOLDEN_DIR` may point at others). Shared
//! by the library's and the binary's integration tests (`#[path]`).
//!
//! Each name gives a size, a colour type and a format, as the photos the tests were written for:
//! `gray.png` 512 x 512 grayscale, `rgb.png` 451 x 300 RGB, `rgba.png` 600 x 400 RGBA (its alpha
//! varies), `photo.jpg` 640 x 427 RGB JPEG. The pixels are smooth waves with a disc and a little
//! noise, different for every image, and the same on every run.

use image::{DynamicImage, GrayImage, ImageFormat, RgbImage, RgbaImage};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Every fixture image's file name.
pub const FIXTURE_IMAGES: [&str; 4] = ["gray.png", "rgb.png", "rgba.png", "photo.jpg"];

/// The folder holding every image of [`FIXTURE_IMAGES`], written on first use.
pub fn fixture_images_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixture-images");
        std::fs::create_dir_all(&dir).expect("fixture image folder");
        for (seed, name) in FIXTURE_IMAGES.iter().enumerate() {
            let (img, format) = fixture(name, seed as u32);
            // Written whole under a name of this process, then renamed: test processes running
            // at the same time never see a partial file.
            let tmp = dir.join(format!(".{name}.{}", std::process::id()));
            img.save_with_format(&tmp, format)
                .unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
            std::fs::rename(&tmp, dir.join(name)).expect("fixture image");
        }
        dir
    })
    .clone()
}

/// One fixture image (a name of [`FIXTURE_IMAGES`]).
pub fn fixture_image(name: &str) -> PathBuf {
    assert!(
        FIXTURE_IMAGES.contains(&name),
        "no fixture image {name}: {FIXTURE_IMAGES:?}"
    );
    fixture_images_dir().join(name)
}

fn fixture(name: &str, seed: u32) -> (DynamicImage, ImageFormat) {
    match name {
        "gray.png" => (
            GrayImage::from_fn(512, 512, |x, y| image::Luma([pixel(x, y, 0, seed)])).into(),
            ImageFormat::Png,
        ),
        "rgb.png" => (
            RgbImage::from_fn(451, 300, |x, y| {
                image::Rgb([0, 1, 2].map(|c| pixel(x, y, c, seed)))
            })
            .into(),
            ImageFormat::Png,
        ),
        "rgba.png" => (
            RgbaImage::from_fn(600, 400, |x, y| {
                let [r, g, b] = [0, 1, 2].map(|c| pixel(x, y, c, seed));
                image::Rgba([r, g, b, (x * 255 / 599) as u8])
            })
            .into(),
            ImageFormat::Png,
        ),
        "photo.jpg" => (
            RgbImage::from_fn(640, 427, |x, y| {
                image::Rgb([0, 1, 2].map(|c| pixel(x, y, c, seed)))
            })
            .into(),
            ImageFormat::Jpeg,
        ),
        _ => panic!("no fixture image {name}"),
    }
}

/// Channel `c` of pixel (x, y): two waves whose frequencies and phases depend on the image, a
/// bright disc placed by it, and noise of a few levels.
fn pixel(x: u32, y: u32, c: u32, seed: u32) -> u8 {
    let (xf, yf, s, cf) = (x as f32, y as f32, seed as f32, c as f32);
    let mut v = 128.0
        + 55.0 * (xf * (0.021 + 0.006 * s) + 1.1 * cf + s).sin()
        + 45.0 * (yf * (0.017 + 0.004 * s) + 0.7 * cf + 2.0 * s).cos();
    let (cx, cy) = (120.0 + 70.0 * s, 90.0 + 40.0 * s);
    if (xf - cx).powi(2) + (yf - cy).powi(2) < 60.0f32.powi(2) {
        v = 0.5 * v + 110.0;
    }
    let mut h = x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77) ^ (c << 24) ^ seed;
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 13;
    (v + (h % 9) as f32 - 4.0).clamp(0.0, 255.0) as u8
}
