//! mPLUG in Rust: the vision-language model of Li et al. (2022), "mPLUG: Effective and Efficient
//! Vision-Language Learning by Cross-modal Skip-connections", on candle.
//!
//! Data flows one way: [`input`] (tokenizer, image, video) -> [`model`] (vision tower, BERT
//! blocks, skip-connected fusion, decoder, heads) -> [`generate`] / [`tasks`] -> the `mplug`
//! command. [`metrics`] scores the results as the community's tools do.

pub mod input;
pub mod metrics;
