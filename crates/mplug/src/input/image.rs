//! Image decoding and the reference's pixel pipelines.
//!
//! [`ImagePreprocessor`] reproduces the reference's test transform for captioning, VQA and
//! retrieval: PIL `open` -> `convert('RGB')` -> `Resize((R, R), BICUBIC)` -> `ToTensor` ->
//! `Normalize(CLIP mean, CLIP std)`, giving a `(3, R, R)` f32 tensor. The bicubic resize
//! reproduces Pillow's `BICUBIC` integer arithmetic exactly (antialiased when shrinking; see
//! [`super::resample`]).
//!
//! [`GroundingPreprocessor`] reproduces the reference's grounding evaluation transform: the long
//! side resized to S with Pillow `BILINEAR`, ImageNet mean/std, centred on an S x S canvas of
//! zeros.
//! [`LetterboxInfo`] maps the model's boxes back to the original image.
//!
//! Decoding ([`DecodeOptions`]): png, jpeg, webp, gif (first frame), bmp and tiff; EXIF orientation
//! applied (on by default; the reference, which does not apply it, is matched with it off);
//! grayscale replicated and alpha dropped, not composited, like PIL `convert('RGB')`; the pixel
//! count is checked against a limit from the header, before the pixels are decoded.

use std::io::Cursor;
use std::path::Path;

use ::image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};
use candle_core::{Device, Tensor};

use super::error::{InputError, Result};
use super::resample::{resize, Filter};

/// CLIP normalization mean (R, G, B), used by every mPLUG task except grounding evaluation.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP normalization standard deviation (R, G, B).
// The reference's digits, kept for recognition; they round to the intended f32 values.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// ImageNet normalization mean, used by the reference's grounding evaluation transform.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet normalization standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Default pixel limit: Pillow's decompression-bomb warning threshold (89,478,485 pixels).
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// How image files are decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Images with more pixels than this are refused before their pixels are decoded.
    pub max_pixels: u64,
    /// Rotate / flip as the EXIF orientation tag says (the reference does not; turn this off to
    /// match it exactly on photos that carry the tag).
    pub apply_exif_orientation: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            apply_exif_orientation: true,
        }
    }
}

impl DecodeOptions {
    /// Reads and decodes an image file into 8-bit RGB.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<RgbImage> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| InputError::Read {
            name: name.clone(),
            source,
        })?;
        self.decode(&bytes, &name)
    }

    /// Decodes image bytes into 8-bit RGB; `name` identifies them in errors.
    pub fn decode(&self, bytes: &[u8], name: &str) -> Result<RgbImage> {
        let img = self.decode_dynamic(bytes, name)?;
        // image's conversions replicate luma and drop alpha, as PIL convert('RGB') does.
        Ok(img.into_rgb8())
    }

    /// The width and height an encoded image declares in its header, read without decoding
    /// its pixels, checked as [`DecodeOptions::decode`] checks them (not empty, not zero-size,
    /// at most `max_pixels`): what a server reserves memory by before decoding.
    pub fn dimensions(&self, bytes: &[u8], name: &str) -> Result<(u32, u32)> {
        if bytes.is_empty() {
            return Err(InputError::EmptyFile { name: name.into() });
        }
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|source| InputError::Read {
                name: name.into(),
                source,
            })?;
        if reader.format().is_none() {
            return Err(InputError::NotAnImage { name: name.into() });
        }
        let (width, height) = reader
            .into_dimensions()
            .map_err(|e| decode_error(name, e))?;
        check_dimensions(name, width, height, self.max_pixels)?;
        Ok((width, height))
    }

    fn decode_dynamic(&self, bytes: &[u8], name: &str) -> Result<DynamicImage> {
        if bytes.is_empty() {
            return Err(InputError::EmptyFile { name: name.into() });
        }
        let decode_err = |e: ImageError| decode_error(name, e);
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|source| InputError::Read {
                name: name.into(),
                source,
            })?;
        match reader.format() {
            None => return Err(InputError::NotAnImage { name: name.into() }),
            Some(ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
                return Err(InputError::ImageDecode {
                    name: name.into(),
                    message: "JPEG data ends before its end-of-image marker".into(),
                })
            }
            Some(_) => {}
        }
        let mut limits = Limits::default();
        // Room for the largest accepted image at 16 bits x 4 channels, plus decoder buffers.
        limits.max_alloc = Some(
            self.max_pixels
                .saturating_mul(8)
                .saturating_add(64 * 1024 * 1024),
        );
        reader.limits(limits);
        let mut decoder = reader.into_decoder().map_err(decode_err)?;
        let (width, height) = decoder.dimensions();
        check_dimensions(name, width, height, self.max_pixels)?;
        let orientation = if self.apply_exif_orientation {
            // A malformed EXIF block should not make an otherwise good image unreadable.
            decoder.orientation().ok()
        } else {
            None
        };
        let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
        if let Some(orientation) = orientation {
            img.apply_orientation(orientation);
        }
        Ok(img)
    }
}

/// Refuses zero-size images and images over `max_pixels`.
pub(crate) fn check_dimensions(name: &str, width: u32, height: u32, max_pixels: u64) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(InputError::ZeroSizeImage {
            name: name.into(),
            width,
            height,
        });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(InputError::ImageTooLarge {
            name: name.into(),
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    Ok(())
}

pub(crate) fn decode_error(name: &str, e: ImageError) -> InputError {
    match e {
        ImageError::Unsupported(_) => InputError::NotAnImage { name: name.into() },
        ImageError::Limits(l) => InputError::ImageDecode {
            name: name.into(),
            message: format!("over the decoder's memory limit: {l}"),
        },
        other => InputError::ImageDecode {
            name: name.into(),
            message: other.to_string(),
        },
    }
}

/// Whether a JPEG stream reaches its end-of-image marker after its last scan. Some decoders fill
/// a truncated scan with grey instead of failing; PIL refuses such files ("image file is
/// truncated"), and so do we.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let has_sos = |b: &[u8]| b.windows(2).any(|w| w == [0xFF, 0xDA]);
    // Searched from the end, so a complete file is judged in a few steps.
    match bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]) {
        Some(eoi) => !has_sos(&bytes[eoi + 2..]),
        // No end marker: incomplete if a scan started (otherwise the decoder judged the file).
        None => !has_sos(bytes),
    }
}

/// Look-up table for `(v / 255 - mean) / std`, per channel.
fn normalize_lut(mean: [f32; 3], std: [f32; 3]) -> [[f32; 256]; 3] {
    let mut lut = [[0f32; 256]; 3];
    for ((table, m), s) in lut.iter_mut().zip(mean).zip(std) {
        // f32 arithmetic, as torchvision's ToTensor + Normalize.
        for (v, out) in table.iter_mut().enumerate() {
            *out = (v as f32 / 255.0 - m) / s;
        }
    }
    lut
}

fn validate_norm(mean: [f32; 3], std: [f32; 3]) -> Result<()> {
    if mean.iter().chain(std.iter()).any(|v| !v.is_finite()) || std.iter().any(|s| *s <= 0.0) {
        return Err(InputError::InvalidConfig(format!(
            "normalization needs finite values and positive std (mean {mean:?}, std {std:?})"
        )));
    }
    Ok(())
}

/// Runs `f` on each item, on up to `available_parallelism` threads, keeping the order.
pub(crate) fn par_map<T: Sync, U: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<U> + Sync,
) -> Result<Vec<U>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    let parts: Vec<Result<Vec<U>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Result<Vec<U>>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(InputError::InvalidConfig(
                        "an image worker thread panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// Settings of the square-resize pipeline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageConfig {
    /// Output side R in pixels (the checkpoint's `image_res`: 384 for released models).
    pub resolution: u32,
    /// Normalization mean (R, G, B) on the [0, 1] scale.
    pub mean: [f32; 3],
    /// Normalization standard deviation (R, G, B).
    pub std: [f32; 3],
    /// How files are decoded.
    pub decode: DecodeOptions,
}

impl ImageConfig {
    /// R x R with CLIP mean/std and default decoding.
    pub fn new(resolution: u32) -> Self {
        Self {
            resolution,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            decode: DecodeOptions::default(),
        }
    }
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self::new(384)
    }
}

/// The reference's test-time image transform: decode, RGB, bicubic resize to R x R, [0, 1],
/// normalize. Produces `(3, R, R)` f32 tensors, or `(N, 3, R, R)` for batches.
#[derive(Clone, Debug)]
pub struct ImagePreprocessor {
    config: ImageConfig,
    lut: Box<[[f32; 256]; 3]>,
}

impl ImagePreprocessor {
    /// A preprocessor with the given settings.
    pub fn new(config: ImageConfig) -> Result<Self> {
        if config.resolution == 0 {
            return Err(InputError::InvalidConfig(
                "image resolution must be > 0".into(),
            ));
        }
        validate_norm(config.mean, config.std)?;
        Ok(Self {
            config,
            lut: Box::new(normalize_lut(config.mean, config.std)),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// Output side R.
    pub fn resolution(&self) -> u32 {
        self.config.resolution
    }

    /// Decodes a file into RGB with this preprocessor's decoding options.
    pub fn load_rgb(&self, path: impl AsRef<Path>) -> Result<RgbImage> {
        self.config.decode.load(path)
    }

    /// Normalized CHW pixels (`3 * R * R` values) of an RGB image.
    pub fn pixels(&self, image: &RgbImage) -> Result<Vec<f32>> {
        let r = self.config.resolution;
        check_dimensions("image", image.width(), image.height(), u64::MAX)?;
        let resized = resize(image, r, r, Filter::Bicubic)?;
        let plane = (r as usize) * (r as usize);
        let mut out = vec![0f32; 3 * plane];
        let (red, rest) = out.split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        for (i, px) in resized.as_raw().chunks_exact(3).enumerate() {
            red[i] = self.lut[0][px[0] as usize];
            green[i] = self.lut[1][px[1] as usize];
            blue[i] = self.lut[2][px[2] as usize];
        }
        Ok(out)
    }

    /// `(3, R, R)` tensor of an RGB image.
    pub fn preprocess_image(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        let r = self.config.resolution as usize;
        Ok(Tensor::from_vec(self.pixels(image)?, (3, r, r), device)?)
    }

    /// `(3, R, R)` tensor of an image file.
    pub fn preprocess_path(&self, path: impl AsRef<Path>, device: &Device) -> Result<Tensor> {
        self.preprocess_image(&self.load_rgb(path)?, device)
    }

    /// `(3, R, R)` tensor of encoded image bytes; `name` identifies them in errors.
    pub fn preprocess_bytes(&self, bytes: &[u8], name: &str, device: &Device) -> Result<Tensor> {
        self.preprocess_image(&self.config.decode.decode(bytes, name)?, device)
    }

    /// `(N, 3, R, R)` tensor of image files of any sizes and formats, decoded in parallel.
    pub fn preprocess_paths<P: AsRef<Path> + Sync>(
        &self,
        paths: &[P],
        device: &Device,
    ) -> Result<Tensor> {
        let pixels = par_map(paths, |p| self.pixels(&self.load_rgb(p)?))?;
        self.stack(pixels, device)
    }

    /// `(N, 3, R, R)` tensor of RGB images.
    pub fn preprocess_images(&self, images: &[RgbImage], device: &Device) -> Result<Tensor> {
        let pixels = par_map(images, |img| self.pixels(img))?;
        self.stack(pixels, device)
    }

    pub(crate) fn stack(&self, pixels: Vec<Vec<f32>>, device: &Device) -> Result<Tensor> {
        if pixels.is_empty() {
            return Err(InputError::EmptyBatch);
        }
        let n = pixels.len();
        let r = self.config.resolution as usize;
        let flat: Vec<f32> = pixels.into_iter().flatten().collect();
        Ok(Tensor::from_vec(flat, (n, 3, r, r), device)?)
    }
}

/// Settings of the grounding letterbox.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LetterboxConfig {
    /// Side S of the square canvas (the checkpoint's `image_res`).
    pub size: u32,
    /// Normalization mean (ImageNet's, as the reference's evaluation transform uses).
    pub mean: [f32; 3],
    /// Normalization standard deviation.
    pub std: [f32; 3],
    /// How files are decoded.
    pub decode: DecodeOptions,
}

impl LetterboxConfig {
    /// S x S canvas with ImageNet mean/std and default decoding.
    pub fn new(size: u32) -> Self {
        Self {
            size,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            decode: DecodeOptions::default(),
        }
    }
}

impl Default for LetterboxConfig {
    fn default() -> Self {
        Self::new(384)
    }
}

/// Geometry of one letterboxed image: how the original was scaled and where it sits on the
/// canvas. Maps boxes between the model's frame and the original image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LetterboxInfo {
    /// Original width in pixels (after EXIF orientation).
    pub original_width: u32,
    /// Original height in pixels.
    pub original_height: u32,
    /// Scale factor `S / max(width, height)` applied to the original (and to boxes).
    pub scale: f64,
    /// Width of the resized image on the canvas.
    pub resized_width: u32,
    /// Height of the resized image on the canvas.
    pub resized_height: u32,
    /// Columns of padding left of the image.
    pub left: u32,
    /// Rows of padding above the image.
    pub top: u32,
    /// Canvas side S.
    pub size: u32,
}

/// Python's `round()` (half to even) of a float, as an integer.
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

impl LetterboxInfo {
    /// The reference's geometry for a `width x height` image on an `size x size` canvas:
    /// `ratio = S / max(w, h)`, new size `round(w * ratio) x round(h * ratio)` (Python rounding,
    /// at least 1), offsets `round(d / 2 - 0.1)` of the leftover `d` on each axis.
    pub fn new(width: u32, height: u32, size: u32) -> Result<Self> {
        check_dimensions("image", width, height, u64::MAX)?;
        if size == 0 {
            return Err(InputError::InvalidConfig(
                "letterbox size must be > 0".into(),
            ));
        }
        let scale = f64::from(size) / f64::from(width.max(height));
        let side = |v: u32| py_round(f64::from(v) * scale).clamp(1, i64::from(size)) as u32;
        let (resized_width, resized_height) = (side(width), side(height));
        let offset = |d: u32| py_round(f64::from(d) / 2.0 - 0.1).max(0) as u32;
        Ok(Self {
            original_width: width,
            original_height: height,
            scale,
            resized_width,
            resized_height,
            left: offset(size - resized_width),
            top: offset(size - resized_height),
            size,
        })
    }

    /// Maps a predicted box `(cx, cy, w, h)`, fractions of the padded canvas (the grounding
    /// head's output), to `(x0, y0, x1, y1)` in original-image pixels. As the reference's
    /// evaluation does, the corners are first clamped to the canvas; they are then clamped to
    /// the image.
    pub fn box_to_original(&self, cxcywh: [f32; 4]) -> [f32; 4] {
        let [cx, cy, w, h] = cxcywh.map(f64::from);
        let s = f64::from(self.size);
        let canvas = |v: f64| v.clamp(0.0, 1.0) * s;
        let (x0, x1) = (canvas(cx - w / 2.0), canvas(cx + w / 2.0));
        let (y0, y1) = (canvas(cy - h / 2.0), canvas(cy + h / 2.0));
        let ow = f64::from(self.original_width);
        let oh = f64::from(self.original_height);
        let to_x = |v: f64| ((v - f64::from(self.left)) / self.scale).clamp(0.0, ow) as f32;
        let to_y = |v: f64| ((v - f64::from(self.top)) / self.scale).clamp(0.0, oh) as f32;
        [to_x(x0), to_y(y0), to_x(x1), to_y(y1)]
    }

    /// Maps a box `(x0, y0, x1, y1)` in original-image pixels to the model's `(cx, cy, w, h)`
    /// fractions of the padded canvas (the reference's training / evaluation target).
    pub fn box_from_original(&self, xyxy: [f32; 4]) -> [f32; 4] {
        let [x0, y0, x1, y1] = xyxy.map(f64::from);
        let s = f64::from(self.size);
        let px = |v: f64| (v * self.scale + f64::from(self.left)) / s;
        let py = |v: f64| (v * self.scale + f64::from(self.top)) / s;
        let (a, b, c, d) = (px(x0), py(y0), px(x1), py(y1));
        [
            ((a + c) / 2.0) as f32,
            ((b + d) / 2.0) as f32,
            (c - a) as f32,
            (d - b) as f32,
        ]
    }

    /// The reference's image mask: `size * size` values, row-major, 1 on padding and 0 on the
    /// image.
    pub fn padding_mask(&self) -> Vec<u8> {
        let s = self.size as usize;
        let mut mask = vec![1u8; s * s];
        let (l, t) = (self.left as usize, self.top as usize);
        for y in t..t + self.resized_height as usize {
            mask[y * s + l..y * s + l + self.resized_width as usize].fill(0);
        }
        mask
    }
}

/// A letterboxed image: the `(3, S, S)` tensor and its geometry.
#[derive(Clone, Debug)]
pub struct Letterboxed {
    /// `(3, S, S)` f32, normalized, zeros (in normalized units) on the padding.
    pub image: Tensor,
    /// Where the image sits on the canvas.
    pub info: LetterboxInfo,
}

/// The reference's grounding evaluation transform: long side to S (Pillow `BILINEAR`), [0, 1],
/// ImageNet normalization, centred on a zero canvas.
#[derive(Clone, Debug)]
pub struct GroundingPreprocessor {
    config: LetterboxConfig,
    lut: Box<[[f32; 256]; 3]>,
}

impl GroundingPreprocessor {
    /// A preprocessor with the given settings.
    pub fn new(config: LetterboxConfig) -> Result<Self> {
        if config.size == 0 {
            return Err(InputError::InvalidConfig(
                "letterbox size must be > 0".into(),
            ));
        }
        validate_norm(config.mean, config.std)?;
        Ok(Self {
            config,
            lut: Box::new(normalize_lut(config.mean, config.std)),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &LetterboxConfig {
        &self.config
    }

    /// Normalized CHW canvas (`3 * S * S` values) and geometry of an RGB image.
    pub fn pixels(&self, image: &RgbImage) -> Result<(Vec<f32>, LetterboxInfo)> {
        let info = LetterboxInfo::new(image.width(), image.height(), self.config.size)?;
        let resized = resize(
            image,
            info.resized_width,
            info.resized_height,
            Filter::Bilinear,
        )?;
        Ok((self.canvas(&resized, &info), info))
    }

    /// Normalized CHW canvas (`3 * S * S` values) with `image` placed as it is (not resized)
    /// with its top-left corner at column `left`, row `top`, and its geometry (scale 1, so
    /// [`LetterboxInfo::box_from_original`] takes boxes in `image`'s pixels). This is the
    /// reference's training-time padding, whose offset may be random (`aug_translate`); an image
    /// that does not fit the canvas at that offset is an error.
    pub fn place(
        &self,
        image: &RgbImage,
        left: u32,
        top: u32,
    ) -> Result<(Vec<f32>, LetterboxInfo)> {
        let (w, h) = image.dimensions();
        check_dimensions("image", w, h, u64::MAX)?;
        let size = self.config.size;
        let fits = |offset: u32, side: u32| u64::from(offset) + u64::from(side) <= u64::from(size);
        if !fits(left, w) || !fits(top, h) {
            return Err(InputError::InvalidConfig(format!(
                "a {w}x{h} image at ({left}, {top}) does not fit a {size}x{size} canvas"
            )));
        }
        let info = LetterboxInfo {
            original_width: w,
            original_height: h,
            scale: 1.0,
            resized_width: w,
            resized_height: h,
            left,
            top,
            size,
        };
        Ok((self.canvas(image, &info), info))
    }

    /// The zero canvas with `resized` (already `info.resized_*` in size) normalized into place.
    fn canvas(&self, resized: &RgbImage, info: &LetterboxInfo) -> Vec<f32> {
        let s = self.config.size as usize;
        let plane = s * s;
        let mut out = vec![0f32; 3 * plane];
        let (rw, l, t) = (
            info.resized_width as usize,
            info.left as usize,
            info.top as usize,
        );
        for (y, row) in resized.as_raw().chunks_exact(3 * rw).enumerate() {
            let base = (t + y) * s + l;
            for (x, px) in row.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    out[c * plane + base + x] = self.lut[c][px[c] as usize];
                }
            }
        }
        out
    }

    /// Letterboxes an RGB image.
    pub fn preprocess_image(&self, image: &RgbImage, device: &Device) -> Result<Letterboxed> {
        let (pixels, info) = self.pixels(image)?;
        let s = self.config.size as usize;
        Ok(Letterboxed {
            image: Tensor::from_vec(pixels, (3, s, s), device)?,
            info,
        })
    }

    /// Letterboxes an image file.
    pub fn preprocess_path(&self, path: impl AsRef<Path>, device: &Device) -> Result<Letterboxed> {
        self.preprocess_image(&self.config.decode.load(path)?, device)
    }

    /// Letterboxes encoded image bytes; `name` identifies them in errors.
    pub fn preprocess_bytes(
        &self,
        bytes: &[u8],
        name: &str,
        device: &Device,
    ) -> Result<Letterboxed> {
        self.preprocess_image(&self.config.decode.decode(bytes, name)?, device)
    }

    /// `(N, 3, S, S)` tensor and per-image geometry of image files, decoded in parallel.
    pub fn preprocess_paths<P: AsRef<Path> + Sync>(
        &self,
        paths: &[P],
        device: &Device,
    ) -> Result<(Tensor, Vec<LetterboxInfo>)> {
        if paths.is_empty() {
            return Err(InputError::EmptyBatch);
        }
        let results = par_map(paths, |p| self.pixels(&self.config.decode.load(p)?))?;
        let n = results.len();
        let s = self.config.size as usize;
        let mut flat = Vec::with_capacity(n * 3 * s * s);
        let mut infos = Vec::with_capacity(n);
        for (pixels, info) in results {
            flat.extend(pixels);
            infos.push(info);
        }
        Ok((Tensor::from_vec(flat, (n, 3, s, s), device)?, infos))
    }
}
