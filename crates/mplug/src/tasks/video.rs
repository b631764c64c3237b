//! Zero-shot video: frames go through the visual tower one by one; their tokens are
//! concatenated along the sequence for fusion, and the video's ITC feature is the normalized
//! mean of the frames' projected [CLS].

use super::retrieval::ImageSide;
use crate::error::{Error, Result};
use crate::model::{l2_normalize, Mplug};
use candle_core::{Module, Tensor};

/// Frames sampled per clip, as the reference's zero-shot video evaluations sample them: 16 for
/// video question answering (MSRVTT-QA)...
pub const QA_FRAMES: usize = 16;
/// ... 12 for text-video retrieval (MSRVTT 1k-A)...
pub const RETRIEVAL_FRAMES: usize = 12;
/// ... and 8 for video captioning.
pub const CAPTION_FRAMES: usize = 8;

/// How `--frames` is documented wherever a command takes clips (one text for every command).
pub const FRAMES_HELP: &str = "Frames sampled uniformly per clip (default: the reference's for \
     the task: 16 for question answering, 12 for retrieval, 8 for captions)";

/// Visual tokens of clips `(B, N, 3, R, R)`: `(B, N * Li, H)`, frames in order.
pub fn encode_frames(model: &Mplug, frames: &Tensor) -> Result<Tensor> {
    let dims = frames.dims();
    if dims.len() != 5 {
        return Err(Error::invalid(format!(
            "video frames have shape {dims:?}, expected (B, N, 3, R, R)"
        )));
    }
    let (b, n) = (dims[0], dims[1]);
    let flat = frames.reshape((b * n, dims[2], dims[3], dims[4]))?;
    let tokens = model.encode_image(&flat)?;
    let (_, li, h) = tokens.dims3()?;
    Ok(tokens.reshape((b, n * li, h))?)
}

/// Encodes clips `(B, N, 3, R, R)` for retrieval: concatenated frame tokens and the
/// normalized mean of the frames' projected [CLS].
pub fn encode_videos(model: &Mplug, frames: &Tensor) -> Result<ImageSide> {
    let dims = frames.dims().to_vec();
    let embeds = encode_frames(model, frames)?;
    let (b, n) = (dims[0], dims[1]);
    let li = model.config.num_visual_tokens();
    let h = embeds.dim(2)?;
    let cls = embeds.reshape((b, n, li, h))?.narrow(2, 0, 1)?.squeeze(2)?; // (B, N, H)
    let proj = model.heads()?.vision_proj.forward(&cls)?.mean(1)?;
    Ok(ImageSide {
        embeds,
        feat: l2_normalize(&proj)?,
    })
}
