//! Evaluation metrics.
