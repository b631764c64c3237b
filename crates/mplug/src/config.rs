//! Model configuration: the golden `config.json` form, the reference's BERT JSON, and presets
//! for the released `base` and `large` models.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The CLIP ViT visual tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// Patch size in pixels (16 for ViT-B/16, 14 for ViT-L/14).
    pub patch_size: usize,
    /// Transformer width.
    pub width: usize,
    /// Number of residual attention blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
}

fn default_gelu() -> String {
    "gelu".to_string()
}
fn default_type_vocab() -> usize {
    2
}
/// BERT's default dropout probability (Hugging Face's `BertConfig`).
fn default_dropout() -> f32 {
    0.1
}

fn default_eps() -> f64 {
    1e-12
}
fn default_stride() -> usize {
    100
}

/// The reference's `BertConfig` JSON with mPLUG's extra fields. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Width of text tokens in every text tower.
    pub hidden_size: usize,
    /// Attention heads in every text tower.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Layers held by the fusion encoder (it runs the last `fusion_layers` of them).
    pub num_hidden_layers: usize,
    /// Depth of the text encoder.
    pub text_encoder_layers: usize,
    /// Number of fusion layers that run.
    pub fusion_layers: usize,
    /// Depth of the text decoder.
    pub text_decode_layers: usize,
    /// A running fusion layer `n` with `n != 0 && n % stride_layer == 0` is connected attention.
    #[serde(default = "default_stride")]
    pub stride_layer: usize,
    /// Width of the states that cross-attention reads.
    pub encoder_width: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest text the position embeddings cover.
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon of the text towers.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Token type vocabulary size.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// Activation of the feed-forward blocks (`gelu`, the exact erf form, in every released model).
    #[serde(default = "default_gelu")]
    pub hidden_act: String,
    /// Padding token id.
    #[serde(default)]
    pub pad_token_id: u32,
    /// Dropout of hidden states in training (BERT's, and after `visn_fc`).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f32,
    /// Dropout of BERT's attention probabilities in training.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f32,
}

/// Everything needed to build an mPLUG model (the golden `config.json` form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MplugConfig {
    /// Square input size in pixels.
    pub image_res: usize,
    /// The visual tower.
    pub vision: VisionConfig,
    /// Width of visual tokens; when it differs from `bert.hidden_size` the model has `visn_fc`.
    pub vision_width: usize,
    /// ITC projection size.
    pub embed_dim: usize,
    /// The text towers.
    pub bert: BertConfig,
}

impl BertConfig {
    fn released(stride_layer: usize) -> Self {
        BertConfig {
            hidden_size: 768,
            num_attention_heads: 12,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            text_encoder_layers: 6,
            fusion_layers: 6,
            text_decode_layers: 12,
            stride_layer,
            encoder_width: 768,
            vocab_size: 30522,
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            type_vocab_size: 2,
            hidden_act: "gelu".into(),
            pad_token_id: 0,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
        }
    }

    /// Head width of the text towers.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Reads the reference's `config_bert*.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read(path)?;
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

impl MplugConfig {
    /// The released `base` models: ViT-B/16 at 384 px, connected attention every 3rd fusion layer.
    pub fn base() -> Self {
        MplugConfig {
            image_res: 384,
            vision: VisionConfig {
                patch_size: 16,
                width: 768,
                layers: 12,
                heads: 12,
            },
            vision_width: 768,
            embed_dim: 256,
            bert: BertConfig::released(3),
        }
    }

    /// The released `large` models: ViT-L/14 at 336 px with `visn_fc`, stride 6.
    pub fn large() -> Self {
        MplugConfig {
            image_res: 336,
            vision: VisionConfig {
                patch_size: 14,
                width: 1024,
                layers: 24,
                heads: 16,
            },
            vision_width: 1024,
            embed_dim: 256,
            bert: BertConfig::released(6),
        }
    }

    /// The project's small model (`mplug-tiny-world`): a ViT with 8-pixel patches at 64 px
    /// (64 patches), width 128 in every tower, 2 text-encoder layers, 4 fusion layers with
    /// connected attention at fusion layer 3 (as the base model's stride 3), a 2-layer
    /// decoder, and the 384-token vocabulary of the generated world (`mplug data generate`
    /// writes it: BERT's first 104 entries, then the world's words). It trains on two CPU
    /// cores in well under an hour.
    pub fn tiny() -> Self {
        MplugConfig {
            image_res: 64,
            vision: VisionConfig {
                patch_size: 8,
                width: 128,
                layers: 4,
                heads: 4,
            },
            vision_width: 128,
            embed_dim: 64,
            bert: BertConfig {
                hidden_size: 128,
                num_attention_heads: 4,
                intermediate_size: 512,
                num_hidden_layers: 6,
                text_encoder_layers: 2,
                fusion_layers: 4,
                text_decode_layers: 2,
                stride_layer: 3,
                encoder_width: 128,
                vocab_size: 384,
                max_position_embeddings: 40,
                ..BertConfig::released(3)
            },
        }
    }

    /// A named preset: `base`, `large` or `tiny`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "base" => Ok(Self::base()),
            "large" => Ok(Self::large()),
            "tiny" => Ok(Self::tiny()),
            other => Err(Error::Config(format!(
                "unknown preset `{other}` (expected `base`, `large` or `tiny`)"
            ))),
        }
    }

    /// Reads a `config.json` of the golden / model-folder form.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read(path)?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        cfg.validate()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Builds a configuration from the reference's task YAML values (`image_res`,
    /// `vision_width`, `clip_name`, `embed_dim`) and its `bert_config` JSON.
    pub fn from_reference(
        image_res: usize,
        vision_width: usize,
        clip_name: &str,
        embed_dim: usize,
        bert: BertConfig,
    ) -> Result<Self> {
        let vision = match clip_name {
            "ViT-B-16" => VisionConfig {
                patch_size: 16,
                width: 768,
                layers: 12,
                heads: 12,
            },
            "ViT-L-14" => VisionConfig {
                patch_size: 14,
                width: 1024,
                layers: 24,
                heads: 16,
            },
            other => {
                return Err(Error::Config(format!(
                    "unknown clip_name `{other}` (expected ViT-B-16 or ViT-L-14)"
                )))
            }
        };
        let cfg = MplugConfig {
            image_res,
            vision,
            vision_width,
            embed_dim,
            bert,
        };
        cfg.validate().map_err(Error::Config)?;
        Ok(cfg)
    }

    /// Reads the reference's task YAML (flat `key: value` lines; only the model keys are used)
    /// and the `bert_config` file it names, resolved against `bert_dir` when relative.
    pub fn from_reference_yaml(yaml: impl AsRef<Path>, bert_dir: impl AsRef<Path>) -> Result<Self> {
        let yaml = yaml.as_ref();
        let text = read(yaml)?;
        let field = |key: &str| -> Option<String> {
            text.lines().find_map(|line| {
                let line = line.split('#').next()?.trim();
                let (k, v) = line.split_once(':')?;
                (k.trim() == key).then(|| v.trim().trim_matches(['\'', '"']).to_string())
            })
        };
        let need = |key: &str| {
            field(key).ok_or_else(|| Error::Config(format!("{}: no `{key}`", yaml.display())))
        };
        let num = |key: &str| -> Result<usize> {
            need(key)?
                .parse()
                .map_err(|_| Error::Config(format!("{}: `{key}` is not a number", yaml.display())))
        };
        let bert_path = bert_dir.as_ref().join(need("bert_config")?);
        let bert = BertConfig::from_file(&bert_path)?;
        let embed_dim = field("embed_dim")
            .and_then(|v| v.parse().ok())
            .unwrap_or(256);
        Self::from_reference(
            num("image_res")?,
            num("vision_width")?,
            &need("clip_name")?,
            embed_dim,
            bert,
        )
    }

    /// Checks the sizes fit together.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let v = &self.vision;
        let b = &self.bert;
        if v.patch_size == 0 || !self.image_res.is_multiple_of(v.patch_size) {
            return Err(format!(
                "image_res {} is not a multiple of patch_size {}",
                self.image_res, v.patch_size
            ));
        }
        if self.image_res < v.patch_size {
            return Err(format!(
                "image_res {} is smaller than one patch ({} px)",
                self.image_res, v.patch_size
            ));
        }
        let grid = self.image_res / v.patch_size;
        if grid > MAX_GRID {
            return Err(format!(
                "image_res {} gives a grid of {grid} x {grid} patches, over the limit of \
                 {MAX_GRID} x {MAX_GRID} (attention over that many visual tokens cannot fit \
                 in memory)",
                self.image_res
            ));
        }
        if !(b.layer_norm_eps.is_finite() && b.layer_norm_eps > 0.0) {
            return Err(format!(
                "layer_norm_eps {} must be a positive number",
                b.layer_norm_eps
            ));
        }
        // A zero width would build layers without inputs or outputs: nothing a checkpoint
        // holds, and a degenerate case for every product kernel.
        for (name, size) in [
            ("vision width", v.width),
            ("vision_width", self.vision_width),
            ("embed_dim", self.embed_dim),
            ("hidden_size", b.hidden_size),
            ("intermediate_size", b.intermediate_size),
            ("encoder_width", b.encoder_width),
            ("vocab_size", b.vocab_size),
            ("max_position_embeddings", b.max_position_embeddings),
        ] {
            if size == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if v.heads == 0 || !v.width.is_multiple_of(v.heads) {
            return Err(format!(
                "vision width {} is not divisible by {} heads",
                v.width, v.heads
            ));
        }
        if b.num_attention_heads == 0 || !b.hidden_size.is_multiple_of(b.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by {} heads",
                b.hidden_size, b.num_attention_heads
            ));
        }
        if b.fusion_layers > b.num_hidden_layers {
            return Err(format!(
                "fusion_layers {} exceeds num_hidden_layers {}",
                b.fusion_layers, b.num_hidden_layers
            ));
        }
        if b.stride_layer == 0 {
            return Err("stride_layer must be at least 1".into());
        }
        for (name, p) in [
            ("hidden_dropout_prob", b.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                b.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} {p} is outside [0, 1)"));
            }
        }
        if b.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act `{}` is not supported (only `gelu`)",
                b.hidden_act
            ));
        }
        Ok(())
    }

    /// Patches per side of the visual grid.
    pub fn grid_size(&self) -> usize {
        self.image_res / self.vision.patch_size
    }

    /// Visual tokens per image: the class token plus one per patch.
    pub fn num_visual_tokens(&self) -> usize {
        self.grid_size() * self.grid_size() + 1
    }

    /// The dropout probabilities a training run applies.
    pub fn dropout(&self) -> DropoutConfig {
        DropoutConfig {
            hidden: self.bert.hidden_dropout_prob,
            attention: self.bert.attention_probs_dropout_prob,
        }
    }

    /// Whether the model has `visn_fc` + `visn_layer_norm` (vision width differs from text width).
    pub fn has_visn_fc(&self) -> bool {
        self.vision_width != self.bert.hidden_size
    }

    /// Whether running fusion layer `n` is a connected-attention layer.
    pub fn is_connected_layer(&self, n: usize) -> bool {
        n != 0 && n.is_multiple_of(self.bert.stride_layer)
    }
}

/// The widest visual grid a configuration may ask for, in patches per side: 128 x 128 patches
/// are 16,385 visual tokens per image, whose attention scores alone take 1 GB per head.
pub const MAX_GRID: usize = 128;

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Dropout probabilities of a training run.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct DropoutConfig {
    /// `hidden_dropout_prob`: hidden states and the visual tokens after `visn_fc`.
    pub hidden: f32,
    /// `attention_probs_dropout_prob`: attention probabilities.
    pub attention: f32,
}

impl DropoutConfig {
    /// Whether any dropout applies.
    pub fn is_active(&self) -> bool {
        self.hidden > 0.0 || self.attention > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for name in ["base", "large", "tiny"] {
            let cfg = MplugConfig::preset(name).unwrap();
            cfg.validate().unwrap();
        }
        assert_eq!(MplugConfig::base().num_visual_tokens(), 577);
        assert_eq!(MplugConfig::large().num_visual_tokens(), 577);
        assert!(MplugConfig::large().has_visn_fc());
        assert!(!MplugConfig::base().has_visn_fc());
        assert!(MplugConfig::preset("huge").is_err());
    }

    #[test]
    fn impossible_sizes_and_epsilons_are_refused() {
        let mut cfg = MplugConfig::tiny();
        cfg.image_res = 1_000_000 / cfg.vision.patch_size * cfg.vision.patch_size;
        assert!(cfg.validate().unwrap_err().contains("image_res"));
        let mut cfg = MplugConfig::tiny();
        cfg.image_res = 0;
        assert!(cfg.validate().unwrap_err().contains("image_res"));
        for (name, zero) in [
            (
                "vision width",
                (|c: &mut MplugConfig| c.vision.width = 0) as fn(&mut MplugConfig),
            ),
            ("embed_dim", |c| c.embed_dim = 0),
            ("hidden_size", |c| c.bert.hidden_size = 0),
            ("intermediate_size", |c| c.bert.intermediate_size = 0),
            ("vocab_size", |c| c.bert.vocab_size = 0),
        ] {
            let mut cfg = MplugConfig::tiny();
            zero(&mut cfg);
            assert!(cfg.validate().unwrap_err().contains(name), "{name}");
        }
        for eps in [-1.0, 0.0, f64::NAN, f64::INFINITY] {
            let mut cfg = MplugConfig::tiny();
            cfg.bert.layer_norm_eps = eps;
            assert!(
                cfg.validate().unwrap_err().contains("layer_norm_eps"),
                "{eps}"
            );
        }
    }

    #[test]
    fn connected_layers_follow_stride() {
        let cfg = MplugConfig::base();
        let connected: Vec<_> = (0..6).filter(|&n| cfg.is_connected_layer(n)).collect();
        assert_eq!(connected, vec![3]);
    }
}
