//! Evaluation metrics of the mPLUG downstream tasks, matching the reference
//! Python tooling number for number.
//!
//! * Captioning ([`caption`], [`mod@bleu`], [`mod@rouge`], [`mod@cider`], [`ptb`]):
//!   BLEU-1..4, ROUGE-L and CIDEr-D as `pycocoevalcap` computes them, on
//!   captions tokenized like its `PTBTokenizer`.
//! * VQA ([`vqa`]): the official VQA v2 accuracy (answer normalization and the
//!   10-way leave-one-out `min(1, matches/3)`), plus exact-match accuracy for
//!   video QA.
//! * Retrieval ([`retrieval`]): TR/IR recall@1/5/10 as mPLUG's `itm_eval`
//!   (image retrieval) and recall plus median rank for video retrieval.
//! * Grounding ([`grounding`]): IoU and accuracy at IoU ≥ 0.5.
//!
//! Empty inputs never panic and never produce `NaN`: every entry point
//! returns [`MetricsError`] instead (see each function's documentation).

pub mod bleu;
pub mod caption;
mod caption_inputs;
pub mod cider;
mod error;
pub mod grounding;
pub mod ptb;
pub mod retrieval;
pub mod rouge;
pub mod vqa;

pub use bleu::{bleu, Bleu, BleuScores};
pub use caption::{evaluate_caption_map, evaluate_captions, evaluate_raw_captions, CaptionScores};
pub use caption_inputs::MetricScore;
pub use cider::{cider_d, CiderD};
pub use error::{MetricsError, Result};
pub use grounding::{box_iou, grounding_accuracy, GroundingMetrics};
pub use ptb::{tokenize_caption, tokenize_captions, PUNCTUATIONS};
pub use retrieval::{
    image_text_retrieval, video_text_retrieval, ImageRetrievalMetrics, VideoRetrievalMetrics,
};
pub use rouge::{rouge_l, Rouge};
pub use vqa::{
    exact_match_accuracy, exact_match_accuracy_by_type, normalize_answer, vqa_accuracy,
    VqaEvaluator, VqaPrediction, VqaQuestion, VqaReport,
};
