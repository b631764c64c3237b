//! Text, pixels and frames in: everything that turns user input into the tensors the model takes.
//!
//! - [`tokenizer`]: BERT uncased WordPiece ([`Tokenizer`]), padded batches with attention masks
//!   ([`BatchEncoding`]), VQA answers, and the reference's decoding of generated ids into text.
//! - [`image`]: decoding any common image format, the reference's bicubic CLIP pipeline
//!   ([`ImagePreprocessor`]) and the grounding letterbox ([`GroundingPreprocessor`],
//!   [`LetterboxInfo`]).
//! - [`resample`]: Pillow-exact bicubic / bilinear resizing, which the image pipelines use.
//! - [`video`]: frame sampling over GIFs, frame folders and (through ffmpeg) video files
//!   ([`VideoPreprocessor`]).
//!
//! - [`files`]: image files found in folders ([`image_files`]).
//!
//! Every failure is an [`InputError`] naming the text or file at fault.

pub mod error;
pub mod files;
pub mod image;
pub mod resample;
pub mod tokenizer;
pub mod video;

pub use self::error::InputError;
pub use self::files::{image_files, IMAGE_EXTENSIONS};
pub use self::image::{
    DecodeOptions, GroundingPreprocessor, ImageConfig, ImagePreprocessor, LetterboxConfig,
    LetterboxInfo, Letterboxed, CLIP_MEAN, CLIP_STD, DEFAULT_MAX_PIXELS, IMAGENET_MEAN,
    IMAGENET_STD,
};
pub use self::tokenizer::{
    BatchEncoding, EncodeOptions, Padding, Tokenizer, BERT_BASE_UNCASED_VOCAB,
    DEFAULT_MAX_POSITIONS,
};
pub use self::video::{
    ffmpeg_available, sample_frame_indices, FrameSampling, VideoClip, VideoConfig,
    VideoPreprocessor,
};
/// The decoded 8-bit RGB image type the pipelines accept (from the `image` crate).
pub use ::image::RgbImage;
