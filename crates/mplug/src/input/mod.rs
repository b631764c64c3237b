//! Text, pixels and frames in.
