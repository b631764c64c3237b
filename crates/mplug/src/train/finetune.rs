//! The fine-tuning loss of each task on a loader's batch, as the reference's training scripts
//! compute it; a multi-task run sums them, task by task.

use crate::data::loader::derive_seed;
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::input::Tokenizer;
use crate::model::{Mplug, Task};
use crate::tasks::grounding::{self, GroundingTokens};
use crate::tasks::pretrain::{self, LossWeights, MaskTokens, PretrainBatch};
use crate::tasks::{caption, video, vqa};
use candle_core::Tensor;

/// Retrieval fine-tuning's objectives: ITC and ITM of pre-training.
pub const RETRIEVAL_WEIGHTS: LossWeights = LossWeights {
    itc: 1.0,
    itm: 1.0,
    mlm: 0.0,
    prefix_lm: 0.0,
};

/// Random stream of the retrieval objectives' hard negatives and masks (see [`derive_seed`]).
pub const OBJECTIVES_STREAM: u64 = 3;

/// What the task losses need beyond the model and the batch.
#[derive(Debug, Clone)]
pub struct TaskLoss {
    /// The grounding vocabulary (grounding batches).
    pub grounding: GroundingTokens,
    /// The special tokens of masking (retrieval batches).
    pub mask: MaskTokens,
    /// The run's seed.
    pub seed: u64,
}

impl TaskLoss {
    /// The losses of a run on `tokenizer`'s vocabulary.
    pub fn new(tokenizer: &Tokenizer, grounding: GroundingTokens, seed: u64) -> Self {
        TaskLoss {
            grounding,
            mask: MaskTokens::of(tokenizer),
            seed,
        }
    }

    /// The reference's loss of `task` on `b` (retrieval: ITC + ITM with same-image positives
    /// and no momentum encoders). Clip batches `(B, F, 3, R, R)` are read as their frames'
    /// tokens concatenated, as at inference.
    pub fn loss(&self, model: &Mplug, task: Task, b: &Batch) -> Result<Tensor> {
        let missing = |what: &str| Error::invalid(format!("a {task} batch without {what}"));
        let embeds = || match b.images.rank() {
            5 => video::encode_frames(model, &b.images),
            _ => model.encode_image(&b.images),
        };
        match task {
            Task::Caption => caption::loss(model, &embeds()?, &b.ids, &b.mask),
            Task::Vqa => {
                let q = vqa::encode_question(model, &embeds()?, &b.ids, &b.mask)?;
                vqa::loss(
                    model,
                    &q,
                    b.answer_ids.as_ref().ok_or_else(|| missing("answers"))?,
                    b.answer_mask.as_ref().ok_or_else(|| missing("answers"))?,
                    &b.answer_counts,
                    b.answer_weights
                        .as_ref()
                        .ok_or_else(|| missing("answers"))?,
                )
            }
            Task::Grounding => {
                let targets = b.targets.as_ref().ok_or_else(|| missing("boxes"))?;
                grounding::loss(model, &embeds()?, &b.ids, &b.mask, targets, &self.grounding)
            }
            Task::Retrieval | Task::Pretrain => {
                let batch = PretrainBatch {
                    images: b.images.clone(),
                    ids: b.ids.clone(),
                    mask: b.mask.clone(),
                    image_ids: Some(b.image_ids.clone()),
                };
                let l = pretrain::losses(
                    model,
                    None,
                    &batch,
                    &RETRIEVAL_WEIGHTS,
                    0.0,
                    &self.mask,
                    derive_seed(self.seed, OBJECTIVES_STREAM, b.index),
                )?;
                Ok(l.total)
            }
        }
    }
}
