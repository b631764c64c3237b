//! mPLUG in Rust: the vision-language model of Li et al. (2022), "mPLUG: Effective and Efficient
//! Vision-Language Learning by Cross-modal Skip-connections", on candle.
//!
//! Layers, each module using only those of the layers before it:
//! 1. [`metrics`] (scores as the community's tools compute them) and [`input`] (tokenizer,
//!    image and video preprocessing, image files in folders), each with its own error type.
//! 2. [`error`] (the crate's error, which wraps theirs), [`config`], [`checkpoint`] (the
//!    released weights).
//! 3. [`model`]: vision tower, BERT blocks, skip-connected fusion, decoder, heads, and the CPU
//!    kernels they run on.
//! 4. [`generate`] (beam search and sampling) and [`tasks`] (each task's inference and losses).
//! 5. [`data`]: annotation files, datasets and loaders, read by training and evaluation alike.
//! 6. [`train`]: optimizer, schedule and the trainer.
//! 7. [`pipeline`]: the inference façade, files and strings in, text, boxes and scores out.
//! 8. [`model_dir`] (model folders), [`eval`] (benchmarks), [`index`] (photo search).
//!
//! The `mplug` command (crate `mplug-cli`) sits on top; the generated world of shapes it
//! trains the default model on is a crate of its own (`mplug-world`).

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod generate;
pub mod index;
pub mod input;
pub mod metrics;
pub mod model;
pub mod model_dir;
pub mod pipeline;
pub mod tasks;
pub mod train;

pub use checkpoint::Checkpoint;
pub use config::{BertConfig, MplugConfig, VisionConfig};
pub use error::{Error, Result};
pub use generate::{beam_search, BeamConfig, Hypothesis};
pub use model::{Mplug, Task};
