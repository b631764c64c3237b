//! Video clips: ffmpeg-decoded files, animated GIFs, frame folders, sampling and errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, IndexOp, Tensor};
use image::{Rgb, RgbImage, Rgba, RgbaImage};
use mplug::input::{
    ffmpeg_available, FrameSampling, ImageConfig, ImagePreprocessor, InputError, VideoConfig,
    VideoPreprocessor,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mplug-video-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn ffmpeg_or_skip(test: &str) -> bool {
    if ffmpeg_available() {
        true
    } else {
        eprintln!(
            "SKIPPED {test}: ffmpeg/ffprobe not found on PATH (apt-get install ffmpeg); \
             CI installs it"
        );
        false
    }
}

/// A 2 s, 10 fps, 160x120 test-pattern MP4 (20 frames, each with a different frame counter).
fn make_mp4(dir: &Path) -> PathBuf {
    let out = dir.join("clip.mp4");
    let status = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=2:size=160x120:rate=10",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&out)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg could not make the test clip");
    out
}

#[test]
fn mp4_through_ffmpeg_samples_like_the_reference() {
    if !ffmpeg_or_skip("mp4_through_ffmpeg_samples_like_the_reference") {
        return;
    }
    let dir = TempDir::new("mp4");
    let mp4 = make_mp4(dir.path());
    let video = VideoPreprocessor::new(VideoConfig::new(8, 64)).unwrap();
    let clip = video.load(&mp4, &Device::Cpu).unwrap();
    assert_eq!(clip.total_frames, 20);
    // np.arange(0, 20, 20 / 8, dtype=int) = 0, 2, 4, ...
    assert_eq!(clip.frame_indices, vec![0, 2, 4, 6, 8, 10, 12, 14]);
    assert_eq!(clip.frames.dims(), &[8, 3, 64, 64]);

    // The same frames, extracted by ffmpeg as PNG files and read as a frame folder.
    let frames_dir = dir.path().join("frames");
    std::fs::create_dir_all(&frames_dir).unwrap();
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(&mp4)
        .args(["-vsync", "0"])
        .arg(frames_dir.join("%04d.png"))
        .status()
        .unwrap();
    assert!(status.success());
    let from_folder = video.load(&frames_dir, &Device::Cpu).unwrap();
    assert_eq!(from_folder.total_frames, 20);
    assert_eq!(from_folder.frame_indices, clip.frame_indices);
    assert_eq!(max_abs_diff(&from_folder.frames, &clip.frames), 0.0);

    // Frames differ from one another (the frame counter moves).
    let d = max_abs_diff(&clip.frames.i(0).unwrap(), &clip.frames.i(7).unwrap());
    assert!(d > 0.1, "first and last sampled frames are identical");

    // 16 frames, spread sampling.
    let video16 = VideoPreprocessor::new(VideoConfig {
        sampling: FrameSampling::Spread,
        ..VideoConfig::new(16, 32)
    })
    .unwrap();
    let clip = video16.load_with_ffmpeg(&mp4, &Device::Cpu).unwrap();
    assert_eq!(clip.frames.dims(), &[16, 3, 32, 32]);
    assert_eq!(
        clip.frame_indices,
        vec![0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18]
    );
}

#[test]
fn ffmpeg_errors_name_the_file() {
    if !ffmpeg_or_skip("ffmpeg_errors_name_the_file") {
        return;
    }
    let dir = TempDir::new("ffmpeg-errors");
    let video = VideoPreprocessor::new(VideoConfig::new(4, 32)).unwrap();
    let bad = dir.path().join("bad.mp4");
    std::fs::write(&bad, b"definitely not a video file").unwrap();
    let err = video.load(&bad, &Device::Cpu).unwrap_err();
    assert!(matches!(err, InputError::VideoDecode { .. }), "{err}");
    assert!(err.to_string().contains("bad.mp4"), "{err}");

    let truncated = dir.path().join("cut.mp4");
    let full = std::fs::read(make_mp4(dir.path())).unwrap();
    std::fs::write(&truncated, &full[..full.len() / 3]).unwrap();
    // A cut MP4 either fails or yields what it holds; it never panics.
    match video.load(&truncated, &Device::Cpu) {
        Ok(clip) => assert_eq!(clip.frames.dims(), &[4, 3, 32, 32]),
        Err(err) => assert!(err.to_string().contains("cut.mp4"), "{err}"),
    }
}

#[test]
fn missing_ffmpeg_is_a_clear_error() {
    let dir = TempDir::new("no-ffmpeg");
    let file = dir.path().join("clip.webm");
    std::fs::write(&file, b"\x1aE\xdf\xa3 not really webm").unwrap();
    let video = VideoPreprocessor::new(VideoConfig {
        ffmpeg: PathBuf::from("/nonexistent/bin/ffmpeg-mplug-test"),
        ffprobe: PathBuf::from("/nonexistent/bin/ffprobe-mplug-test"),
        ..VideoConfig::new(4, 32)
    })
    .unwrap();
    let err = video.load(&file, &Device::Cpu).unwrap_err();
    assert!(matches!(err, InputError::ProgramNotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("ffprobe-mplug-test"), "{msg}");
    assert!(msg.contains("apt-get install ffmpeg"), "{msg}");
}

fn solid(color: [u8; 3], w: u32, h: u32) -> RgbImage {
    RgbImage::from_pixel(w, h, Rgb(color))
}

const COLORS: [[u8; 3]; 10] = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [255, 255, 0],
    [0, 255, 255],
    [255, 0, 255],
    [255, 255, 255],
    [0, 0, 0],
    [128, 128, 128],
    [64, 32, 200],
];

#[test]
fn animated_gif_gives_all_frames() {
    let dir = TempDir::new("gif");
    let path = dir.path().join("anim.gif");
    {
        let file = std::fs::File::create(&path).unwrap();
        let mut enc = image::codecs::gif::GifEncoder::new(file);
        let frames = COLORS.iter().map(|c| {
            image::Frame::new(RgbaImage::from_pixel(24, 16, Rgba([c[0], c[1], c[2], 255])))
        });
        enc.encode_frames(frames).unwrap();
    }
    let video = VideoPreprocessor::new(VideoConfig::new(4, 32)).unwrap();
    let clip = video.load(&path, &Device::Cpu).unwrap();
    assert_eq!(clip.total_frames, 10);
    assert_eq!(clip.frame_indices, vec![0, 2, 4, 6]);
    assert_eq!(clip.frames.dims(), &[4, 3, 32, 32]);
    let image = ImagePreprocessor::new(ImageConfig::new(32)).unwrap();
    for (slot, &idx) in clip.frame_indices.iter().enumerate() {
        let want = image
            .preprocess_image(&solid(COLORS[idx], 24, 16), &Device::Cpu)
            .unwrap();
        let got = clip.frames.i(slot).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0, "frame {idx}");
    }

    // The same GIF read as a single image gives its first frame.
    let first = image.preprocess_path(&path, &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&first, &clip.frames.i(0).unwrap()), 0.0);

    // A truncated GIF is an error naming it.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.gif");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = video.load(&cut, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("cut.gif"), "{err}");
}

#[test]
fn frame_folder_is_read_in_name_order() {
    let dir = TempDir::new("folder");
    // Written out of order, with a stray non-image file and mixed formats and sizes.
    for (i, name) in [
        (3, "03.png"),
        (0, "00.jpg"),
        (4, "04.bmp"),
        (1, "01.png"),
        (2, "02.png"),
    ] {
        let size = if i % 2 == 0 { (40, 30) } else { (30, 40) };
        let img = image::DynamicImage::ImageRgb8(solid(COLORS[i], size.0, size.1));
        img.save(dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), b"not a frame").unwrap();

    let spread = VideoPreprocessor::new(VideoConfig {
        sampling: FrameSampling::Spread,
        ..VideoConfig::new(5, 16)
    })
    .unwrap();
    let clip = spread.load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(clip.total_frames, 5);
    assert_eq!(clip.frame_indices, vec![0, 1, 2, 3, 4]);
    let image = ImagePreprocessor::new(ImageConfig::new(16)).unwrap();
    // The PNG / BMP frames are exact; frame 0 is a JPEG.
    for (i, color) in COLORS.iter().enumerate().take(5).skip(1) {
        let size = if i % 2 == 0 { (40, 30) } else { (30, 40) };
        let want = image
            .preprocess_image(&solid(*color, size.0, size.1), &Device::Cpu)
            .unwrap();
        assert_eq!(
            max_abs_diff(&clip.frames.i(i).unwrap(), &want),
            0.0,
            "frame {i}"
        );
    }

    // A clip shorter than N: the reference's sampling repeats frame 0, spread sampling spreads.
    let reference = VideoPreprocessor::new(VideoConfig::new(8, 16)).unwrap();
    let clip = reference.load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(clip.frame_indices, vec![0; 8]);
    assert_eq!(clip.frames.dims(), &[8, 3, 16, 16]);
    let spread8 = VideoPreprocessor::new(VideoConfig {
        sampling: FrameSampling::Spread,
        ..VideoConfig::new(8, 16)
    })
    .unwrap();
    assert_eq!(
        spread8
            .load(dir.path(), &Device::Cpu)
            .unwrap()
            .frame_indices,
        vec![0, 0, 1, 1, 2, 3, 3, 4]
    );

    // In-memory frames.
    let frames: Vec<RgbImage> = COLORS.iter().map(|c| solid(*c, 8, 8)).collect();
    let clip = reference.from_frames(&frames, &Device::Cpu).unwrap();
    assert_eq!(clip.frame_indices, vec![0, 1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn bad_video_sources_are_named_errors() {
    let dir = TempDir::new("bad-sources");
    let video = VideoPreprocessor::new(VideoConfig::new(4, 16)).unwrap();

    let empty_dir = dir.path().join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let err = video.load(&empty_dir, &Device::Cpu).unwrap_err();
    assert!(matches!(err, InputError::NoFrames { .. }), "{err}");
    assert!(err.to_string().contains("empty"), "{err}");

    let missing = dir.path().join("missing.mp4");
    let err = video.load(&missing, &Device::Cpu).unwrap_err();
    assert!(matches!(err, InputError::Read { .. }), "{err}");
    assert!(err.to_string().contains("missing.mp4"), "{err}");

    let zero = dir.path().join("zero.mp4");
    std::fs::write(&zero, b"").unwrap();
    let err = video.load(&zero, &Device::Cpu).unwrap_err();
    assert!(matches!(err, InputError::EmptyFile { .. }), "{err}");
    assert!(err.to_string().contains("zero.mp4"), "{err}");

    // A corrupt frame in a folder names that frame.
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    image::DynamicImage::ImageRgb8(solid([1, 2, 3], 8, 8))
        .save(frames.join("a.png"))
        .unwrap();
    std::fs::write(frames.join("b.png"), b"broken").unwrap();
    let spread = VideoPreprocessor::new(VideoConfig {
        sampling: FrameSampling::Spread,
        ..VideoConfig::new(4, 16)
    })
    .unwrap();
    let err = spread.load(&frames, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("b.png"), "{err}");

    assert!(matches!(
        VideoPreprocessor::new(VideoConfig::new(0, 16)),
        Err(InputError::InvalidConfig(_))
    ));
    assert!(matches!(
        video.from_frames(&[], &Device::Cpu),
        Err(InputError::NoFrames { .. })
    ));
}
