//! Image pipeline parity with the reference (`io/preprocess.json` + `preprocess_io.safetensors`),
//! decoding of every supported format, the grounding letterbox, and decoding errors.

mod common;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::{Device, IndexOp, Tensor};
use image::{ImageEncoder, ImageFormat, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use mplug::input::{
    DecodeOptions, GroundingPreprocessor, ImageConfig, ImagePreprocessor, InputError,
    LetterboxConfig, LetterboxInfo, CLIP_MEAN, CLIP_STD,
};

fn golden_dir() -> PathBuf {
    common::golden_dir()
}

/// Mean and max |a - b|, and the flat index and values of the worst element.
fn compare(a: &Tensor, b: &Tensor) -> (f32, f32, usize, f32, f32) {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut sum = 0f64;
    let mut worst = (0f32, 0usize);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let d = (x - y).abs();
        sum += f64::from(d);
        if d > worst.0 || d.is_nan() {
            worst = (d, i);
        }
    }
    (
        (sum / a.len() as f64) as f32,
        worst.0,
        worst.1,
        a[worst.1],
        b[worst.1],
    )
}

fn png_bytes(img: &image::DynamicImage) -> Vec<u8> {
    encode(img, ImageFormat::Png)
}

fn encode(img: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format)
        .unwrap_or_else(|e| panic!("encoding {format:?}: {e}"));
    out.into_inner()
}

/// A 451 x 300 RGB photo of the tests' own (not the golden folder's, whose images are only
/// what its list names).
fn rgb_path() -> PathBuf {
    common::fixture_image("rgb.png")
}

#[test]
fn golden_preprocessing_matches_reference() {
    let io = golden_dir().join("io");
    let spec = common::read_json(&io.join("preprocess.json"));
    let mean: Vec<f32> = spec["mean"]
        .as_array()
        .expect("mean")
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let std: Vec<f32> = spec["std"]
        .as_array()
        .expect("std")
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(mean, CLIP_MEAN, "golden mean is not CLIP's");
    assert_eq!(std, CLIP_STD, "golden std is not CLIP's");
    let tensors_path = io.join("preprocess_io.safetensors");
    let expected = candle_core::safetensors::load(&tensors_path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("missing golden file {}: {e}", tensors_path.display()));
    let entries = spec["images"].as_array().expect("images");
    assert!(!entries.is_empty(), "preprocess.json lists no images");

    let mut failures = Vec::new();
    for entry in entries {
        let file = entry["file"].as_str().expect("file");
        let res = entry["res"].as_u64().expect("res") as u32;
        let key = entry["key"].as_str().expect("key");
        let path = io.join("images").join(file);
        assert!(path.is_file(), "missing golden image {}", path.display());
        let want = expected
            .get(key)
            .unwrap_or_else(|| panic!("{} has no tensor {key}", tensors_path.display()));

        let pre = ImagePreprocessor::new(ImageConfig::new(res)).unwrap();
        let rgb = pre.load_rgb(&path).unwrap();
        if let Some(size) = entry["size"].as_array() {
            let size: Vec<u64> = size.iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(
                vec![u64::from(rgb.width()), u64::from(rgb.height())],
                size,
                "{key}: decoded size"
            );
        }
        let got = pre.preprocess_path(&path, &Device::Cpu).unwrap();
        assert_eq!(got.dims(), &[3, res as usize, res as usize], "{key}: shape");
        let (mean_diff, max_diff, idx, a, b) = compare(&got, want);
        eprintln!("{key}: mean |a-b| = {mean_diff:.5}, max |a-b| = {max_diff:.5}");
        if mean_diff > 0.01 || max_diff > 0.1 {
            failures.push(format!(
                "{key}: mean |a-b| {mean_diff} (<= 0.01), max |a-b| {max_diff} (<= 0.1) \
                 at flat index {idx}: got {a}, want {b}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn batch_of_mixed_images_stacks_single_results() {
    let paths = common::golden_images();
    assert!(paths.len() >= 2, "need several golden images");
    let pre = ImagePreprocessor::new(ImageConfig::new(224)).unwrap();
    let batch = pre.preprocess_paths(&paths, &Device::Cpu).unwrap();
    assert_eq!(batch.dims(), &[paths.len(), 3, 224, 224]);
    for (i, p) in paths.iter().enumerate() {
        let single = pre.preprocess_path(p, &Device::Cpu).unwrap();
        let (_, max, ..) = compare(&batch.i(i).unwrap(), &single);
        assert_eq!(max, 0.0, "{}", p.display());
    }
    let imgs: Vec<RgbImage> = paths.iter().map(|p| pre.load_rgb(p).unwrap()).collect();
    let from_images = pre.preprocess_images(&imgs, &Device::Cpu).unwrap();
    assert_eq!(compare(&from_images, &batch).1, 0.0);
    assert!(matches!(
        pre.preprocess_paths::<PathBuf>(&[], &Device::Cpu),
        Err(InputError::EmptyBatch)
    ));
}

#[test]
fn every_supported_format_decodes_to_the_same_pixels() {
    let original = image::open(rgb_path()).unwrap();
    let reference = original.to_rgb8();
    let opts = DecodeOptions::default();
    for format in [
        ImageFormat::Png,
        ImageFormat::WebP,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
        ImageFormat::Gif,
        ImageFormat::Jpeg,
    ] {
        let bytes = encode(&image::DynamicImage::ImageRgb8(reference.clone()), format);
        let name = format!("rgb.{}", format.extensions_str()[0]);
        let got = opts
            .decode(&bytes, &name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.dimensions(), reference.dimensions(), "{name}");
        let mean_abs: f64 = got
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / got.as_raw().len() as f64;
        // Lossless formats are exact; GIF quantizes to 256 colours, JPEG is lossy.
        let bound = match format {
            ImageFormat::Gif => 12.0,
            ImageFormat::Jpeg => 4.0,
            _ => 0.0,
        };
        assert!(
            mean_abs <= bound,
            "{name}: mean |diff| {mean_abs} > {bound}"
        );
    }
}

#[test]
fn conversion_to_rgb_replicates_gray_and_drops_alpha() {
    let opts = DecodeOptions::default();
    // Fully transparent pixels keep their colour (PIL convert('RGB') does not composite).
    let rgba = RgbaImage::from_pixel(3, 2, Rgba([200, 100, 50, 0]));
    let got = opts.decode(&png_bytes(&rgba.into()), "rgba.png").unwrap();
    assert!(got.pixels().all(|p| *p == Rgb([200, 100, 50])));
    let gray = image::GrayImage::from_pixel(2, 2, Luma([77]));
    let got = opts.decode(&png_bytes(&gray.into()), "gray.png").unwrap();
    assert!(got.pixels().all(|p| *p == Rgb([77, 77, 77])));
    let gray_alpha = image::GrayAlphaImage::from_pixel(2, 2, image::LumaA([9, 255]));
    let got = opts
        .decode(&png_bytes(&gray_alpha.into()), "la.png")
        .unwrap();
    assert!(got.pixels().all(|p| *p == Rgb([9, 9, 9])));
    let rgb16 = image::ImageBuffer::<Rgb<u16>, _>::from_pixel(2, 2, Rgb([65535, 0, 32896]));
    let got = opts.decode(&png_bytes(&rgb16.into()), "rgb16.png").unwrap();
    assert!(got.pixels().all(|p| *p == Rgb([255, 0, 128])));
}

/// A little-endian TIFF block holding only an Orientation tag.
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut t = b"II*\0".to_vec();
    t.extend_from_slice(&8u32.to_le_bytes()); // IFD offset
    t.extend_from_slice(&1u16.to_le_bytes()); // one entry
    t.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    t.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    t.extend_from_slice(&1u32.to_le_bytes()); // count
    t.extend_from_slice(&value.to_le_bytes());
    t.extend_from_slice(&[0, 0]);
    t.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    t
}

#[test]
fn exif_orientation_is_applied_on_request() {
    // 40 x 20: left half red, right half blue.
    let img = RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let mut bytes = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
    enc.set_exif_metadata(exif_orientation(6)).unwrap();
    enc.write_image(img.as_raw(), 40, 20, image::ExtendedColorType::Rgb8)
        .unwrap();

    let upright = DecodeOptions::default().decode(&bytes, "rot.jpg").unwrap();
    // Orientation 6: rotate 90 degrees clockwise, so the left (red) half ends on top.
    assert_eq!(upright.dimensions(), (20, 40));
    assert!(upright.get_pixel(10, 5)[0] > 200 && upright.get_pixel(10, 5)[2] < 60);
    assert!(upright.get_pixel(10, 35)[2] > 200 && upright.get_pixel(10, 35)[0] < 60);

    let raw = DecodeOptions {
        apply_exif_orientation: false,
        ..DecodeOptions::default()
    }
    .decode(&bytes, "rot.jpg")
    .unwrap();
    assert_eq!(raw.dimensions(), (40, 20));
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid PNG whose header claims `width x height` (the pixel data is that of a 1 x 1 image).
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png_bytes(&RgbImage::new(1, 1).into());
    // Signature (8), IHDR length (4), "IHDR" (4), then width and height.
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[test]
fn unreadable_and_bad_files_are_named_errors() {
    let dir = common::scratch("bad-images");
    let pre = ImagePreprocessor::new(ImageConfig::new(32)).unwrap();
    let dev = Device::Cpu;
    let named = |err: &InputError, file: &Path| {
        let msg = err.to_string();
        assert!(
            msg.contains(&file.display().to_string()),
            "error does not name {}: {msg}",
            file.display()
        );
    };

    // Missing file.
    let missing = dir.join("missing.png");
    let err = pre.preprocess_path(&missing, &dev).unwrap_err();
    assert!(matches!(err, InputError::Read { .. }), "{err}");
    named(&err, &missing);

    // A folder is not readable as an image.
    let err = pre.preprocess_path(&dir, &dev).unwrap_err();
    named(&err, &dir);

    // Zero bytes.
    let empty = dir.join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let err = pre.preprocess_path(&empty, &dev).unwrap_err();
    assert!(matches!(err, InputError::EmptyFile { .. }), "{err}");
    named(&err, &empty);

    // Not an image.
    let text = dir.join("notes.png");
    std::fs::write(&text, b"this is not an image, just some text\n").unwrap();
    let err = pre.preprocess_path(&text, &dev).unwrap_err();
    assert!(matches!(err, InputError::NotAnImage { .. }), "{err}");
    named(&err, &text);

    // Truncated PNG and JPEG.
    let photo = image::open(rgb_path()).unwrap();
    for format in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::WebP,
        ImageFormat::Gif,
    ] {
        let full = encode(&photo, format);
        for keep in [full.len() / 2, full.len() - 10] {
            let cut = dir.join(format!("cut{keep}.{}", format.extensions_str()[0]));
            std::fs::write(&cut, &full[..keep]).unwrap();
            let err = pre.preprocess_path(&cut, &dev).unwrap_err();
            assert!(
                matches!(err, InputError::ImageDecode { .. }),
                "{}: {err}",
                cut.display()
            );
            named(&err, &cut);
        }
    }

    // A header that claims zero pixels.
    let zero = dir.join("zero.png");
    std::fs::write(&zero, png_claiming(0, 10)).unwrap();
    let err = pre.preprocess_path(&zero, &dev).unwrap_err();
    assert!(
        matches!(
            err,
            InputError::ZeroSizeImage { .. } | InputError::ImageDecode { .. }
        ),
        "{err}"
    );
    named(&err, &zero);

    // A header that claims 2.5 billion pixels: refused from the header, before any decoding.
    let huge = dir.join("huge.png");
    std::fs::write(&huge, png_claiming(50_000, 50_000)).unwrap();
    let err = pre.preprocess_path(&huge, &dev).unwrap_err();
    assert!(
        matches!(
            err,
            InputError::ImageTooLarge {
                width: 50_000,
                height: 50_000,
                ..
            }
        ),
        "{err}"
    );
    named(&err, &huge);

    // A configurable limit.
    let small_limit = ImagePreprocessor::new(ImageConfig {
        decode: DecodeOptions {
            max_pixels: 10_000,
            ..DecodeOptions::default()
        },
        ..ImageConfig::new(32)
    })
    .unwrap();
    let err = small_limit.preprocess_path(rgb_path(), &dev).unwrap_err();
    assert!(
        matches!(
            err,
            InputError::ImageTooLarge {
                pixels: 135_300,
                limit: 10_000,
                ..
            }
        ),
        "{err}"
    );

    // A bad file in a batch fails the batch, naming that file.
    let err = pre
        .preprocess_paths(&[rgb_path(), text.clone()], &dev)
        .unwrap_err();
    named(&err, &text);

    // In-memory bytes are named by their label.
    let err = pre
        .preprocess_bytes(b"GIF89a", "upload #3", &dev)
        .unwrap_err();
    assert!(err.to_string().contains("upload #3"), "{err}");

    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_configurations_are_refused() {
    assert!(matches!(
        ImagePreprocessor::new(ImageConfig::new(0)),
        Err(InputError::InvalidConfig(_))
    ));
    let mut cfg = ImageConfig::new(8);
    cfg.std = [0.0, 1.0, 1.0];
    assert!(ImagePreprocessor::new(cfg).is_err());
    assert!(GroundingPreprocessor::new(LetterboxConfig::new(0)).is_err());
}

#[test]
fn letterbox_geometry_follows_the_reference() {
    // 451 x 300 (the size of rgb_path()) -> ratio 384/451, 384 x round(255.43) = 255,
    // top round(64.5 - 0.1) = 64.
    let info = LetterboxInfo::new(451, 300, 384).unwrap();
    assert_eq!(
        (info.resized_width, info.resized_height, info.left, info.top),
        (384, 255, 0, 64)
    );
    // Python rounds halves to even: 3 x 1 on 6 -> 6 x 2; 5 x 2 on 4 -> 4 x round(1.6) = 2.
    let info = LetterboxInfo::new(3, 1, 6).unwrap();
    assert_eq!(
        (info.resized_width, info.resized_height, info.top),
        (6, 2, 2)
    );
    let info = LetterboxInfo::new(8, 5, 4).unwrap();
    // 5 * 0.5 = 2.5 rounds to 2; leftover 2 -> top round(0.9) = 1.
    assert_eq!((info.resized_height, info.top), (2, 1));
    // Odd leftover: 7 on 10 -> round(1.4) = 1 on top.
    let info = LetterboxInfo::new(10, 7, 10).unwrap();
    assert_eq!((info.resized_height, info.top), (7, 1));
    assert!(LetterboxInfo::new(0, 5, 10).is_err());
}

#[test]
fn letterbox_boxes_round_trip() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    for _ in 0..500 {
        let w = 1 + (next() * 2000.0) as u32;
        let h = 1 + (next() * 2000.0) as u32;
        let size = 16 + (next() * 600.0) as u32;
        let info = LetterboxInfo::new(w, h, size).unwrap();
        let (x0, x1) = {
            let (a, b) = (next() * f64::from(w), next() * f64::from(w));
            (a.min(b) as f32, a.max(b) as f32)
        };
        let (y0, y1) = {
            let (a, b) = (next() * f64::from(h), next() * f64::from(h));
            (a.min(b) as f32, a.max(b) as f32)
        };
        let model = info.box_from_original([x0, y0, x1, y1]);
        assert!(
            model.iter().all(|v| (-1e-6..=1.0 + 1e-6).contains(v)),
            "{model:?}"
        );
        let back = info.box_to_original(model);
        let tol = 1e-3 * w.max(h) as f32;
        for (a, b) in back.iter().zip([x0, y0, x1, y1]) {
            assert!(
                (a - b).abs() <= tol,
                "{w}x{h}@{size}: {back:?} vs {:?}",
                [x0, y0, x1, y1]
            );
        }
    }
    // Boxes outside the canvas are clamped to the image.
    let info = LetterboxInfo::new(451, 300, 384).unwrap();
    let b = info.box_to_original([0.5, 0.5, 2.0, 2.0]);
    assert_eq!(b, [0.0, 0.0, 451.0, 300.0]);
    let full = info.box_from_original([0.0, 0.0, 451.0, 300.0]);
    assert!((full[0] - 0.5).abs() < 1e-6 && (full[2] - 1.0).abs() < 1e-6);
    assert!((full[3] - 300.0 * (384.0 / 451.0) / 384.0).abs() < 1e-6);
}

#[test]
fn letterbox_pads_with_zeros_around_a_bilinear_resize() {
    let pre = GroundingPreprocessor::new(LetterboxConfig::new(384)).unwrap();
    let out = pre.preprocess_path(rgb_path(), &Device::Cpu).unwrap();
    assert_eq!(out.image.dims(), &[3, 384, 384]);
    let info = out.info;
    assert_eq!((info.top, info.resized_height), (64, 255));
    let v = out.image.to_vec3::<f32>().unwrap();
    let mask = info.padding_mask();
    for (c, plane) in v.iter().enumerate() {
        for (y, row) in plane.iter().enumerate() {
            let pad = !(64..64 + 255).contains(&y);
            for (x, value) in row.iter().enumerate() {
                assert_eq!(mask[y * 384 + x] == 1, pad);
                if pad {
                    assert_eq!(*value, 0.0, "padding at {c},{y},{x}");
                }
            }
        }
    }
    // The image region is the ImageNet-normalized bilinear resize: spot-check it against a plain
    // normalization of the same resize computed through the square pipeline's pieces.
    let rgb = image::open(rgb_path()).unwrap().to_rgb8();
    let resized = image::imageops::resize(&rgb, 384, 255, image::imageops::FilterType::Triangle);
    let mut worst = 0f32;
    for (x, y, p) in resized.enumerate_pixels() {
        for c in 0..3 {
            let want = (f32::from(p[c]) / 255.0 - mplug::input::IMAGENET_MEAN[c])
                / mplug::input::IMAGENET_STD[c];
            worst = worst.max((v[c][y as usize + 64][x as usize] - want).abs());
        }
    }
    // image's Triangle filter and Pillow's BILINEAR differ by rounding only.
    assert!(
        worst < 0.1,
        "letterbox differs from a bilinear resize by {worst}"
    );

    let (batch, infos) = pre
        .preprocess_paths(&[rgb_path(), rgb_path()], &Device::Cpu)
        .unwrap();
    assert_eq!(batch.dims(), &[2, 3, 384, 384]);
    assert_eq!(infos, vec![info, info]);
}
