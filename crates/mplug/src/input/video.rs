//! Video clips as `(N, 3, R, R)` frame stacks.
//!
//! N frames are chosen over the whole clip ([`FrameSampling`]; by default exactly as the
//! reference's `frm_sampling_strategy='uniform'`) and each goes through the image pipeline of
//! [`ImagePreprocessor`]. Sources:
//! - an animated GIF (all frames decoded by the `image` crate),
//! - a folder of frame images, in file-name order,
//! - any container `ffmpeg` reads (mp4, webm, avi, mkv, ...), through the external `ffmpeg` and
//!   `ffprobe` programs (Debian/Ubuntu package `ffmpeg`); frames are piped as PPM, nothing is
//!   written to disk.
//!
//! The reference decodes videos with decord, which resizes frames to R x R with ffmpeg's scaler;
//! here frames are decoded at their own size and resized like images, so pixels differ by
//! resampling noise.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ::image::codecs::gif::GifDecoder;
use ::image::{AnimationDecoder, ImageDecoder, RgbImage};
use candle_core::{Device, Tensor};

use super::error::{InputError, Result};
use super::image::{check_dimensions, decode_error, par_map, ImageConfig, ImagePreprocessor};

/// File extensions recognised as frames in a folder (case-insensitive).
/// The most frames a clip is sampled to: every frame's visual tokens are concatenated into one
/// cross-attention sequence (256 frames of ViT-B/16 at 384 px are 147,712 tokens), so far larger
/// counts only exhaust memory.
pub const MAX_FRAMES: usize = 256;

pub const FRAME_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

/// How frame indices are chosen among a clip's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FrameSampling {
    /// The reference's `np.arange(0, vlen, vlen / n, dtype=int)`, first `n` kept: frames
    /// `i * floor(vlen / n)`. Note that a clip shorter than `n` frames gives frame 0 `n` times,
    /// as in the reference.
    #[default]
    Reference,
    /// Frames `floor(i * vlen / n)`: evenly spread over the whole clip, repeating frames only
    /// when the clip is shorter than `n`.
    Spread,
}

/// The `num_frames` frame indices (each `< total`) that `sampling` picks from a `total`-frame
/// clip. Empty when `total` or `num_frames` is 0.
pub fn sample_frame_indices(
    total: usize,
    num_frames: usize,
    sampling: FrameSampling,
) -> Vec<usize> {
    if total == 0 || num_frames == 0 {
        return Vec::new();
    }
    match sampling {
        FrameSampling::Reference => {
            // numpy's arange with an integer dtype steps by int(start + step) - start, which
            // here is the floor of total / n.
            let step = total / num_frames;
            (0..num_frames).map(|i| (i * step).min(total - 1)).collect()
        }
        FrameSampling::Spread => (0..num_frames)
            .map(|i| ((i as u128 * total as u128) / num_frames as u128) as usize)
            .collect(),
    }
}

/// Settings of the video pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoConfig {
    /// Frames per clip N (the reference uses 16 for video QA, 8 for video captioning, 12 for
    /// video retrieval).
    pub num_frames: usize,
    /// How frames are chosen.
    pub sampling: FrameSampling,
    /// Per-frame pipeline (resolution, normalization, pixel limit).
    pub image: ImageConfig,
    /// The `ffmpeg` program (a name looked up on PATH, or a path).
    pub ffmpeg: PathBuf,
    /// The `ffprobe` program.
    pub ffprobe: PathBuf,
}

impl VideoConfig {
    /// `num_frames` frames at `resolution` px, reference sampling, CLIP normalization.
    pub fn new(num_frames: usize, resolution: u32) -> Self {
        Self {
            num_frames,
            sampling: FrameSampling::Reference,
            image: ImageConfig::new(resolution),
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
        }
    }
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self::new(16, 384)
    }
}

/// A preprocessed clip.
#[derive(Clone, Debug)]
pub struct VideoClip {
    /// `(N, 3, R, R)` f32, normalized.
    pub frames: Tensor,
    /// Index of each frame in the source.
    pub frame_indices: Vec<usize>,
    /// Frames in the source.
    pub total_frames: usize,
}

/// Turns video sources into `(N, 3, R, R)` frame stacks.
#[derive(Clone, Debug)]
pub struct VideoPreprocessor {
    config: VideoConfig,
    image: ImagePreprocessor,
}

impl VideoPreprocessor {
    /// A preprocessor with the given settings.
    pub fn new(config: VideoConfig) -> Result<Self> {
        if config.num_frames == 0 || config.num_frames > MAX_FRAMES {
            return Err(InputError::InvalidConfig(format!(
                "the number of frames must be 1..={MAX_FRAMES}, not {}",
                config.num_frames
            )));
        }
        let image = ImagePreprocessor::new(config.image)?;
        Ok(Self { config, image })
    }

    /// The settings in force.
    pub fn config(&self) -> &VideoConfig {
        &self.config
    }

    /// Loads a clip from a folder of frames, an animated GIF, or (through ffmpeg) any video file.
    pub fn load(&self, path: impl AsRef<Path>, device: &Device) -> Result<VideoClip> {
        let path = path.as_ref();
        if path.is_dir() {
            return self.load_frame_folder(path, device);
        }
        let mut magic = [0u8; 6];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut magic))
            .map_err(|source| InputError::Read {
                name: path.display().to_string(),
                source,
            })?;
        if n == 0 {
            return Err(InputError::EmptyFile {
                name: path.display().to_string(),
            });
        }
        if magic.starts_with(b"GIF8") {
            self.load_gif(path, device)
        } else {
            self.load_with_ffmpeg(path, device)
        }
    }

    /// Samples and preprocesses frames already in memory.
    pub fn from_frames(&self, frames: &[RgbImage], device: &Device) -> Result<VideoClip> {
        if frames.is_empty() {
            return Err(InputError::NoFrames {
                name: "frame list".into(),
            });
        }
        let indices = self.indices(frames.len());
        let pixels = par_map(&indices, |&i| self.image.pixels(&frames[i]))?;
        self.clip(pixels, indices, frames.len(), device)
    }

    /// Loads every frame of an animated GIF file.
    pub fn load_gif(&self, path: impl AsRef<Path>, device: &Device) -> Result<VideoClip> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| InputError::Read {
            name: name.clone(),
            source,
        })?;
        self.load_gif_bytes(&bytes, &name, device)
    }

    /// Loads every frame of an animated GIF held in memory; `name` identifies it in errors.
    pub fn load_gif_bytes(&self, bytes: &[u8], name: &str, device: &Device) -> Result<VideoClip> {
        if bytes.is_empty() {
            return Err(InputError::EmptyFile { name: name.into() });
        }
        let decoder =
            || GifDecoder::new(std::io::Cursor::new(bytes)).map_err(|e| decode_error(name, e));
        let (w, h) = decoder()?.dimensions();
        check_dimensions(name, w, h, self.config.image.decode.max_pixels)?;
        // First pass counts frames; the second keeps only the sampled ones, so that a long GIF
        // never sits in memory whole.
        let mut total = 0usize;
        for frame in decoder()?.into_frames() {
            frame.map_err(|e| decode_error(name, e))?;
            total += 1;
        }
        if total == 0 {
            return Err(InputError::NoFrames { name: name.into() });
        }
        let indices = self.indices(total);
        let mut wanted: Vec<usize> = indices.clone();
        wanted.dedup();
        let mut kept: Vec<(usize, RgbImage)> = Vec::with_capacity(wanted.len());
        let mut next = 0;
        for (i, frame) in decoder()?.into_frames().enumerate() {
            if next >= wanted.len() {
                break;
            }
            let frame = frame.map_err(|e| decode_error(name, e))?;
            if i == wanted[next] {
                let rgb = ::image::DynamicImage::ImageRgba8(frame.into_buffer()).into_rgb8();
                kept.push((i, rgb));
                next += 1;
            }
        }
        let frames: Vec<&RgbImage> = indices
            .iter()
            .map(|i| {
                kept.iter()
                    .find(|(k, _)| k == i)
                    .map(|(_, f)| f)
                    .ok_or_else(|| InputError::VideoDecode {
                        name: name.into(),
                        message: format!("frame {i} could not be decoded"),
                    })
            })
            .collect::<Result<_>>()?;
        let pixels = par_map(&frames, |f| self.image.pixels(f))?;
        self.clip(pixels, indices, total, device)
    }

    /// Loads a folder of frame images (extensions in [`FRAME_EXTENSIONS`]), ordered by file name
    /// (byte-wise, so number frames with leading zeros: `00001.jpg`, ...).
    pub fn load_frame_folder(&self, dir: impl AsRef<Path>, device: &Device) -> Result<VideoClip> {
        let dir = dir.as_ref();
        let name = dir.display().to_string();
        let read_err = |source| InputError::Read {
            name: name.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            let is_frame = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                FRAME_EXTENSIONS
                    .iter()
                    .any(|known| known.eq_ignore_ascii_case(e))
            });
            if is_frame && path.is_file() {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(InputError::NoFrames { name });
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let indices = self.indices(files.len());
        let pixels = par_map(&indices, |&i| {
            self.image.pixels(&self.image.load_rgb(&files[i])?)
        })?;
        self.clip(pixels, indices, files.len(), device)
    }

    /// Loads a video file through `ffprobe` (frame count) and `ffmpeg` (decoding the sampled
    /// frames only). Rotation metadata is applied, as ffmpeg does by default.
    pub fn load_with_ffmpeg(&self, path: impl AsRef<Path>, device: &Device) -> Result<VideoClip> {
        let path = path.as_ref();
        let name = path.display().to_string();
        if !path.is_file() {
            return Err(InputError::Read {
                name,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let total = self.count_frames(path, &name)?;
        if total == 0 {
            return Err(InputError::NoFrames { name });
        }
        let indices = self.indices(total);
        let mut wanted = indices.clone();
        wanted.dedup();
        let frames = self.decode_frames(path, &name, &wanted)?;
        let Some(last) = frames.last() else {
            return Err(InputError::NoFrames { name });
        };
        // A clip may decode fewer frames than its packets promised: late indices then take the
        // last frame decoded.
        let by_index = |i: usize| {
            wanted
                .iter()
                .position(|&w| w == i)
                .and_then(|p| frames.get(p))
                .unwrap_or(last)
        };
        let chosen: Vec<&RgbImage> = indices.iter().map(|&i| by_index(i)).collect();
        let pixels = par_map(&chosen, |f| self.image.pixels(f))?;
        self.clip(pixels, indices, total, device)
    }

    fn indices(&self, total: usize) -> Vec<usize> {
        sample_frame_indices(total, self.config.num_frames, self.config.sampling)
    }

    fn clip(
        &self,
        pixels: Vec<Vec<f32>>,
        frame_indices: Vec<usize>,
        total_frames: usize,
        device: &Device,
    ) -> Result<VideoClip> {
        Ok(VideoClip {
            frames: self.image.stack(pixels, device)?,
            frame_indices,
            total_frames,
        })
    }

    /// Number of video frames (packets of the first video stream, read without decoding).
    fn count_frames(&self, path: &Path, name: &str) -> Result<usize> {
        let program = &self.config.ffprobe;
        let output = Command::new(program)
            .args([
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-count_packets",
                "-show_entries",
                "stream=nb_read_packets",
                "-of",
                "csv=p=0",
            ])
            .arg(file_url(path))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| spawn_error(program, "count the frames of a video", name, e))?;
        if !output.status.success() {
            return Err(InputError::VideoDecode {
                name: name.into(),
                message: format!(
                    "ffprobe failed: {}",
                    tail(&String::from_utf8_lossy(&output.stderr))
                ),
            });
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let first = stdout.lines().map(str::trim).find(|l| !l.is_empty());
        match first {
            None => Err(InputError::VideoDecode {
                name: name.into(),
                message: "no video stream".into(),
            }),
            Some(v) => {
                v.trim_end_matches(',')
                    .parse::<usize>()
                    .map_err(|_| InputError::VideoDecode {
                        name: name.into(),
                        message: format!("ffprobe reported an unreadable frame count {v:?}"),
                    })
            }
        }
    }

    /// Decodes the frames with the given (sorted, distinct) indices, in order.
    fn decode_frames(&self, path: &Path, name: &str, wanted: &[usize]) -> Result<Vec<RgbImage>> {
        let select = wanted
            .iter()
            .map(|i| format!("eq(n,{i})"))
            .collect::<Vec<_>>()
            .join("+");
        let program = &self.config.ffmpeg;
        let mut child = Command::new(program)
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(file_url(path))
            .args(["-map", "0:v:0", "-vf"])
            .arg(format!("select='{select}'"))
            .args([
                "-vsync",
                "0",
                "-f",
                "image2pipe",
                "-c:v",
                "ppm",
                "-pix_fmt",
                "rgb24",
                "pipe:1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(program, "decode video files", name, e))?;
        let stderr = child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                s
            })
        });
        let mut frames = Vec::with_capacity(wanted.len());
        let mut parse_error = None;
        if let Some(stdout) = child.stdout.take() {
            let mut reader = BufReader::new(stdout);
            loop {
                match read_ppm(&mut reader, self.config.image.decode.max_pixels, name) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(e) => {
                        parse_error = Some(e);
                        break;
                    }
                }
            }
            // Drain what is left so that ffmpeg is not blocked on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        }
        let status = child.wait().map_err(|e| InputError::VideoDecode {
            name: name.into(),
            message: format!("waiting for ffmpeg: {e}"),
        })?;
        let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
        if let Some(e) = parse_error {
            return Err(e);
        }
        if !status.success() {
            return Err(InputError::VideoDecode {
                name: name.into(),
                message: format!("ffmpeg failed: {}", tail(&stderr)),
            });
        }
        Ok(frames)
    }
}

/// Whether `ffmpeg` and `ffprobe` can be run (looked up on PATH).
pub fn ffmpeg_available() -> bool {
    ["ffmpeg", "ffprobe"].iter().all(|p| {
        Command::new(p)
            .arg("-version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// `file:` URL of a path, so that ffmpeg never reads it as an option or another protocol.
fn file_url(path: &Path) -> std::ffi::OsString {
    let mut url = std::ffi::OsString::from("file:");
    url.push(path.as_os_str());
    url
}

fn spawn_error(program: &Path, purpose: &str, name: &str, e: std::io::Error) -> InputError {
    if e.kind() == std::io::ErrorKind::NotFound {
        InputError::ProgramNotFound {
            program: program.display().to_string(),
            purpose: purpose.into(),
        }
    } else {
        InputError::VideoDecode {
            name: name.into(),
            message: format!("cannot run {}: {e}", program.display()),
        }
    }
}

/// Last lines of a program's error output.
fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(5);
    let text = lines[start..].join(" | ");
    if text.is_empty() {
        "(no error output)".into()
    } else {
        text
    }
}

/// Reads one binary PPM (`P6`, maxval 255) frame; `None` at a clean end of stream.
fn read_ppm(reader: &mut impl BufRead, max_pixels: u64, name: &str) -> Result<Option<RgbImage>> {
    let bad = |message: String| InputError::VideoDecode {
        name: name.into(),
        message,
    };
    let io_err = |e: std::io::Error| bad(format!("reading frames from ffmpeg: {e}"));
    if reader.fill_buf().map_err(io_err)?.is_empty() {
        return Ok(None);
    }
    let mut fields = [0usize; 4];
    let mut magic = [0u8; 2];
    reader.read_exact(&mut magic).map_err(io_err)?;
    if &magic != b"P6" {
        return Err(bad(format!(
            "unexpected frame header {magic:?} from ffmpeg"
        )));
    }
    for field in fields.iter_mut().skip(1) {
        *field = read_ppm_number(reader)
            .map_err(io_err)?
            .ok_or_else(|| bad("truncated frame header from ffmpeg".into()))?;
    }
    let [_, width, height, maxval] = fields;
    if maxval != 255 {
        return Err(bad(format!(
            "ffmpeg sent frames with maxval {maxval}, not 255"
        )));
    }
    let (w, h) = (
        u32::try_from(width).map_err(|_| bad("frame too wide".into()))?,
        u32::try_from(height).map_err(|_| bad("frame too tall".into()))?,
    );
    check_dimensions(name, w, h, max_pixels)?;
    let mut data = vec![0u8; width * height * 3];
    reader.read_exact(&mut data).map_err(io_err)?;
    RgbImage::from_raw(w, h, data)
        .map(Some)
        .ok_or_else(|| bad("frame buffer has the wrong size".into()))
}

/// Reads a decimal header field after skipping whitespace and comments; consumes the one
/// whitespace byte that ends it.
fn read_ppm_number(reader: &mut impl BufRead) -> std::io::Result<Option<usize>> {
    let mut byte = [0u8; 1];
    let mut value: Option<usize> = None;
    let mut in_comment = false;
    loop {
        if reader.read(&mut byte)? == 0 {
            return Ok(value);
        }
        let b = byte[0];
        if in_comment {
            in_comment = b != b'\n';
            continue;
        }
        match b {
            b'0'..=b'9' => {
                let digit = usize::from(b - b'0');
                value = Some(
                    value
                        .unwrap_or(0)
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(digit))
                        .ok_or_else(|| {
                            std::io::Error::new(std::io::ErrorKind::InvalidData, "number too big")
                        })?,
                );
            }
            b'#' if value.is_none() => in_comment = true,
            _ if b.is_ascii_whitespace() => {
                if value.is_some() {
                    return Ok(value);
                }
            }
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "bad character in frame header",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_sampling_matches_numpy_arange() {
        // np.arange(0, vlen, vlen / n, dtype=int)[:n]
        let cases: &[(usize, usize, &[usize])] = &[
            (10, 4, &[0, 2, 4, 6]),
            (100, 8, &[0, 12, 24, 36, 48, 60, 72, 84]),
            (3, 8, &[0, 0, 0, 0, 0, 0, 0, 0]),
            (
                17,
                16,
                &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
            ),
            (30, 8, &[0, 3, 6, 9, 12, 15, 18, 21]),
            (7, 3, &[0, 2, 4]),
            (
                301,
                16,
                &[
                    0, 18, 36, 54, 72, 90, 108, 126, 144, 162, 180, 198, 216, 234, 252, 270,
                ],
            ),
            (49, 6, &[0, 8, 16, 24, 32, 40]),
            (17, 7, &[0, 2, 4, 6, 8, 10, 12]),
        ];
        for &(total, n, want) in cases {
            assert_eq!(
                sample_frame_indices(total, n, FrameSampling::Reference),
                want,
                "{total} {n}"
            );
        }
    }

    #[test]
    fn spread_sampling_covers_the_clip() {
        assert_eq!(
            sample_frame_indices(3, 8, FrameSampling::Spread),
            vec![0, 0, 0, 1, 1, 1, 2, 2]
        );
        assert_eq!(
            sample_frame_indices(10, 4, FrameSampling::Spread),
            vec![0, 2, 5, 7]
        );
        assert!(sample_frame_indices(0, 4, FrameSampling::Spread).is_empty());
    }

    #[test]
    fn ppm_reader_parses_headers_and_comments() {
        let mut data = b"P6\n# c\n2 1\n255\n".to_vec();
        data.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        data.extend_from_slice(b"P6 1 1 255\n");
        data.extend_from_slice(&[7, 8, 9]);
        let mut r = std::io::Cursor::new(data);
        let a = read_ppm(&mut r, u64::MAX, "t").unwrap().unwrap();
        assert_eq!((a.width(), a.height()), (2, 1));
        assert_eq!(a.as_raw(), &[1, 2, 3, 4, 5, 6]);
        let b = read_ppm(&mut r, u64::MAX, "t").unwrap().unwrap();
        assert_eq!(b.as_raw(), &[7, 8, 9]);
        assert!(read_ppm(&mut r, u64::MAX, "t").unwrap().is_none());
    }
}
