//! The error type of the input layer.

use std::path::PathBuf;

/// Why text, an image or a video could not be turned into model input.
///
/// Every variant that concerns a file names it (`name` is the path as given, or the label passed
/// with in-memory bytes), and every text variant names the position of the text in its batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A vocabulary or `tokenizer.json` could not be read or understood.
    #[error("cannot load tokenizer from {path}: {message}")]
    TokenizerLoad {
        /// The file (or `<embedded>` for the built-in vocabulary).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The vocabulary lacks a token the BERT input format needs (`[CLS]`, `[SEP]`, `[PAD]`, ...).
    #[error("tokenizer vocabulary has no {token} token")]
    MissingSpecialToken {
        /// The missing token.
        token: String,
    },
    /// The tokenizer library failed on a text.
    #[error("cannot tokenize text #{index}: {message}")]
    Tokenize {
        /// Position of the text in its batch (0 for a single text).
        index: usize,
        /// What the tokenizer said.
        message: String,
    },
    /// A text produced no tokens at all (empty, or only whitespace / control characters).
    #[error("text #{index} is empty (it holds no tokens)")]
    EmptyText {
        /// Position of the text in its batch (0 for a single text).
        index: usize,
    },
    /// A text is longer than the model can take and truncation is off.
    #[error(
        "text #{index} has {tokens} tokens with [CLS]/[SEP], more than the limit of {limit}; \
         shorten it or turn truncation on"
    )]
    TextTooLong {
        /// Position of the text in its batch (0 for a single text).
        index: usize,
        /// Its length in tokens, `[CLS]` and `[SEP]` included.
        tokens: usize,
        /// The limit it exceeds (position embeddings, or the fixed padding length).
        limit: usize,
    },
    /// A batch with no texts, images or frames in it.
    #[error("empty batch: nothing to encode")]
    EmptyBatch,
    /// A file could not be read from disk.
    #[error("cannot read {name}: {source}")]
    Read {
        /// The file.
        name: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A zero-byte file.
    #[error("{name} is empty (0 bytes)")]
    EmptyFile {
        /// The file.
        name: String,
    },
    /// The bytes are not in any image format this build can decode.
    #[error("{name} is not an image in a supported format (png, jpeg, webp, gif, bmp, tiff)")]
    NotAnImage {
        /// The file.
        name: String,
    },
    /// An image whose header says it has no pixels.
    #[error("{name} has zero size ({width}x{height})")]
    ZeroSizeImage {
        /// The file.
        name: String,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
    },
    /// An image with more pixels than the configured limit (checked before decoding).
    #[error("{name} is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels")]
    ImageTooLarge {
        /// The file.
        name: String,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// width * height.
        pixels: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The image data is truncated or corrupt.
    #[error("cannot decode {name} (truncated or corrupt image data): {message}")]
    ImageDecode {
        /// The file.
        name: String,
        /// What the decoder said.
        message: String,
    },
    /// A required external program (such as `ffmpeg`) is not installed.
    #[error(
        "{program} is needed to {purpose} but was not found on PATH; \
         install it (Debian/Ubuntu: apt-get install ffmpeg)"
    )]
    ProgramNotFound {
        /// The program name.
        program: String,
        /// What it was needed for.
        purpose: String,
    },
    /// A video could not be decoded.
    #[error("cannot decode video {name}: {message}")]
    VideoDecode {
        /// The file or folder.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// A video source holds no frames (empty folder, zero-frame clip).
    #[error("{name} has no frames")]
    NoFrames {
        /// The file or folder.
        name: String,
    },
    /// A configuration value is out of range.
    #[error("invalid input configuration: {0}")]
    InvalidConfig(String),
    /// Building a tensor failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// Result alias of the input layer.
pub type Result<T> = std::result::Result<T, InputError>;
