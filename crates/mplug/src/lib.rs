//! mPLUG in Rust: the vision-language model of Li et al. (2022), "mPLUG: Effective and Efficient
//! Vision-Language Learning by Cross-modal Skip-connections", on candle.
//!
//! Data flows one way: [`input`] (tokenizer, image, video) -> [`model`] (vision tower, BERT
//! blocks, skip-connected fusion, decoder, heads) -> [`generate`] / [`tasks`] -> the `mplug`
//! command. [`checkpoint`] reads the released weights; [`metrics`] scores results as the
//! community's tools do.

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
pub mod world;

pub use checkpoint::Checkpoint;
pub use config::{BertConfig, MplugConfig, VisionConfig};
pub use error::{Error, Result};
pub use generate::{beam_search, BeamConfig, Hypothesis};
pub use model::{Mplug, Task};
