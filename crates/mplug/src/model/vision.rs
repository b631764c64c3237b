//! The CLIP ViT visual tower (`visual_encoder.visual`): patch convolution without bias, class
//! token, positional embedding, `ln_pre`, pre-LN residual blocks with QuickGELU, and `ln_post`
//! on every token (the reference's `skip_last_layer=True`: no final projection). With
//! `visn_fc` the tokens are then projected to the text width and normalized.

use super::attention::{attend, attend_bf16};
use super::kernels::Activation;
use super::ops::{layer_norm, linear, LayerNorm, Linear, WeightFormat};
use crate::config::MplugConfig;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{conv2d_no_bias, Conv2d, Conv2dConfig, VarBuilder};

/// CLIP's LayerNorm epsilon (PyTorch's default).
const CLIP_LN_EPS: f64 = 1e-5;

/// `attn`: PyTorch `nn.MultiheadAttention` with packed `in_proj_weight`.
#[derive(Debug, Clone)]
struct MultiheadAttention {
    in_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl MultiheadAttention {
    fn new(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: (width as f64).powf(-0.5),
        };
        let w = vb.get_with_hints((3 * width, width), "in_proj_weight", init)?;
        let b = vb.get(3 * width, "in_proj_bias")?;
        Ok(Self {
            in_proj: Linear::new(w, Some(b)),
            out_proj: linear(width, width, vb.pp("out_proj"))?,
            heads,
        })
    }
}

impl MultiheadAttention {
    /// `residual + attention(x)`.
    fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let qkv = self.in_proj.forward(x)?;
        let w = qkv.dim(D::Minus1)? / 3;
        let q = qkv.narrow(D::Minus1, 0, w)?;
        let k = qkv.narrow(D::Minus1, w, w)?;
        let v = qkv.narrow(D::Minus1, 2 * w, w)?;
        // A model with compact (or int8) weights runs its attention in bf16.
        let ctx = if self.in_proj.format() != WeightFormat::F32 {
            attend_bf16(&q, &k, &v, self.heads, None)?
        } else {
            attend(&q, &k, &v, self.heads, None)?
        };
        self.out_proj.forward_residual(&ctx, residual)
    }
}

/// `transformer.resblocks.N`.
#[derive(Debug, Clone)]
struct ResidualAttentionBlock {
    attn: MultiheadAttention,
    ln_1: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    ln_2: LayerNorm,
}

impl ResidualAttentionBlock {
    fn new(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attn: MultiheadAttention::new(width, heads, vb.pp("attn"))?,
            ln_1: layer_norm(width, CLIP_LN_EPS, vb.pp("ln_1"))?,
            c_fc: linear(width, 4 * width, vb.pp("mlp").pp("c_fc"))?,
            c_proj: linear(4 * width, width, vb.pp("mlp").pp("c_proj"))?,
            ln_2: layer_norm(width, CLIP_LN_EPS, vb.pp("ln_2"))?,
        })
    }
}

impl Module for ResidualAttentionBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.attn.forward_residual(&self.ln_1.forward(x)?, x)?;
        let h = self
            .c_fc
            .forward_act(&self.ln_2.forward(&x)?, Activation::QuickGelu)?;
        self.c_proj.forward_residual(&h, &x)
    }
}

/// `visual_encoder.visual`: the CLIP vision transformer.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    conv1: Conv2d,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    blocks: Vec<ResidualAttentionBlock>,
    ln_post: LayerNorm,
    image_res: usize,
}

impl VisionTransformer {
    /// Reads the tower; a positional embedding stored for another grid is resized bilinearly
    /// (class token kept), as the reference does when `image_res` changes.
    pub fn new(cfg: &MplugConfig, vb: VarBuilder) -> Result<Self> {
        let v = &cfg.vision;
        let conv_cfg = Conv2dConfig {
            stride: v.patch_size,
            ..Default::default()
        };
        let conv1 = conv2d_no_bias(3, v.width, v.patch_size, conv_cfg, vb.pp("conv1"))?;
        // CLIP's initialization, used when the builder creates fresh variables.
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: (v.width as f64).powf(-0.5),
        };
        let class_embedding = vb.get_with_hints(v.width, "class_embedding", init)?;
        let stored = if vb.contains_tensor("positional_embedding") {
            vb.get_unchecked("positional_embedding")?
        } else {
            vb.get_with_hints(
                (cfg.num_visual_tokens(), v.width),
                "positional_embedding",
                init,
            )?
        };
        let (n, w) = stored.dims2()?;
        if w != v.width {
            candle_core::bail!(
                "tensor `{}.positional_embedding` has width {w}, expected {}",
                vb.prefix(),
                v.width
            );
        }
        let positional_embedding = if n == cfg.num_visual_tokens() {
            stored
        } else {
            resize_pos_embed(&stored, cfg.grid_size())?
        };
        let tvb = vb.pp("transformer").pp("resblocks");
        let blocks = (0..v.layers)
            .map(|i| ResidualAttentionBlock::new(v.width, v.heads, tvb.pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            conv1,
            class_embedding,
            positional_embedding,
            ln_pre: layer_norm(v.width, CLIP_LN_EPS, vb.pp("ln_pre"))?,
            blocks,
            ln_post: layer_norm(v.width, CLIP_LN_EPS, vb.pp("ln_post"))?,
            image_res: cfg.image_res,
        })
    }
}

impl VisionTransformer {
    /// The positional embedding in use `(1 + grid^2, width)` (resized if the checkpoint's grid
    /// differed).
    pub fn positional_embedding(&self) -> &Tensor {
        &self.positional_embedding
    }
}

impl Module for VisionTransformer {
    /// `images (B, 3, R, R)` -> all tokens after `ln_post`, `(B, 1 + grid^2, width)`.
    fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = images.dims4()?;
        if c != 3 || h != self.image_res || w != self.image_res {
            candle_core::bail!(
                "images have shape {:?}, expected (B, 3, {r}, {r})",
                images.dims(),
                r = self.image_res
            );
        }
        let x = self.conv1.forward(images)?; // (B, W, g, g)
        let width = x.dim(1)?;
        let x = x.flatten_from(2)?.transpose(1, 2)?; // (B, g*g, W)
        let cls = self
            .class_embedding
            .reshape((1, 1, width))?
            .broadcast_as((b, 1, width))?;
        let x = Tensor::cat(&[&cls, &x], 1)?;
        let x = x.broadcast_add(&self.positional_embedding)?;
        let mut x = self.ln_pre.forward(&x)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.ln_post.forward(&x)
    }
}

/// The visual tower as mPLUG uses it: CLIP tokens, then `visn_fc` + `visn_layer_norm` when the
/// vision width differs from the text width.
#[derive(Debug, Clone)]
pub struct VisualEncoder {
    /// The CLIP vision transformer.
    pub visual: VisionTransformer,
    visn: Option<(Linear, LayerNorm)>,
}

impl VisualEncoder {
    /// Reads `visual_encoder.visual.*` and, for the large path, `visn_fc` and `visn_layer_norm`
    /// from the model root builder.
    pub fn new(cfg: &MplugConfig, root: &VarBuilder) -> Result<Self> {
        let visual = VisionTransformer::new(cfg, root.pp("visual_encoder").pp("visual"))?;
        let visn = if cfg.has_visn_fc() {
            let h = cfg.bert.hidden_size;
            Some((
                linear(cfg.vision_width, h, root.pp("visn_fc"))?,
                layer_norm(h, 1e-12, root.pp("visn_layer_norm"))?,
            ))
        } else {
            None
        };
        Ok(Self { visual, visn })
    }
}

/// Token rows (images times tokens per image) the tower takes in one pass; a larger batch goes
/// through in parts of whole images (one image of 577 tokens at 384 px, two at 256 px). Every
/// operation of the tower stays within one image, so the parts give the same tokens, and larger
/// passes do not pay here: their activations (8 MB per image for the MLP's hidden layer) spill
/// out of the caches. Batch 8 of the base tower per image, in turns in one process on this
/// project's 2-core machine (`examples/in_turns passes`): with f32 weights 0.545 s in passes of
/// one image and of four, 0.584 s in one pass of eight; with bf16 weights 0.328-0.332 s in
/// passes of one, 0.352-0.358 s in passes of four, 0.384 s in one pass.
const ROWS_PER_PASS: usize = 600;

impl VisualEncoder {
    fn forward_pass(&self, images: &Tensor) -> Result<Tensor> {
        let x = self.visual.forward(images)?;
        match &self.visn {
            Some((fc, ln)) => super::dropout::hidden(&ln.forward(&fc.forward(&x)?)?),
            None => Ok(x),
        }
    }
}

impl VisualEncoder {
    /// Images per pass of [`Module::forward`]: as many as fit [`ROWS_PER_PASS`] token rows, at
    /// least one.
    pub fn images_per_pass(&self) -> usize {
        let tokens = self.visual.positional_embedding.dim(0).unwrap_or(1);
        (ROWS_PER_PASS / tokens.max(1)).max(1)
    }

    /// [`Module::forward`] in passes of `per_pass` images (at least one): the same tokens
    /// whatever `per_pass`, since every operation of the tower stays within an image.
    pub fn forward_in_passes(&self, images: &Tensor, per_pass: usize) -> Result<Tensor> {
        let b = images.dim(0)?;
        let per_pass = per_pass.max(1);
        if b <= per_pass {
            return self.forward_pass(images);
        }
        let parts = (0..b)
            .step_by(per_pass)
            .map(|i| self.forward_pass(&images.narrow(0, i, per_pass.min(b - i))?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }
}

impl Module for VisualEncoder {
    /// `images (B, 3, R, R)` -> visual tokens `(B, 1 + grid^2, hidden)`, in passes of
    /// [`Self::images_per_pass`] images.
    fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.forward_in_passes(images, self.images_per_pass())
    }
}

/// Resizes a positional embedding `(1 + g*g, W)` to `(1 + n*n, W)`: the class token is kept and
/// the grid is resized bilinearly with `align_corners=False` (PyTorch `F.interpolate`).
pub fn resize_pos_embed(pos: &Tensor, new_grid: usize) -> Result<Tensor> {
    let (n, w) = pos.dims2()?;
    let old = ((n - 1) as f64).sqrt().round() as usize;
    if old * old + 1 != n {
        candle_core::bail!("positional embedding of {n} tokens is not 1 + a square grid");
    }
    let dtype = pos.dtype();
    let data = pos.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    // Source coordinate of each output index along one axis, as PyTorch computes it.
    let axis = |dst: usize| -> (usize, usize, f32) {
        let scale = old as f32 / new_grid as f32;
        let src = ((dst as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(old - 1);
        let i1 = (i0 + 1).min(old - 1);
        (i0, i1, src - i0 as f32)
    };
    let mut out = Vec::with_capacity((1 + new_grid * new_grid) * w);
    out.extend_from_slice(&data[0]);
    for y in 0..new_grid {
        let (y0, y1, ly) = axis(y);
        for x in 0..new_grid {
            let (x0, x1, lx) = axis(x);
            let at = |yy: usize, xx: usize, c: usize| data[1 + yy * old + xx][c];
            for c in 0..w {
                let top = (1.0 - lx) * at(y0, x0, c) + lx * at(y0, x1, c);
                let bottom = (1.0 - lx) * at(y1, x0, c) + lx * at(y1, x1, c);
                out.push((1.0 - ly) * top + ly * bottom);
            }
        }
    }
    Tensor::from_vec(out, (1 + new_grid * new_grid, w), pos.device())?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// A batch larger than one pass comes back whole and in order, each image's tokens as that
    /// image alone gives them (checked on both sides of the boundary between passes and at the
    /// end). Fails if a part is dropped, repeated or misplaced.
    #[test]
    fn a_batch_larger_than_one_pass_gives_each_images_tokens() {
        let cfg = MplugConfig::tiny();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let enc = VisualEncoder::new(&cfg, &vb).unwrap();
        let tokens = enc.visual.positional_embedding().dim(0).unwrap();
        let per_pass = enc.images_per_pass();
        assert!(per_pass > 1, "the tiny tower takes several images per pass");
        let b = per_pass + 3;
        let r = cfg.image_res;
        let images = Tensor::randn(0f32, 1.0, (b, 3, r, r), &Device::Cpu).unwrap();
        let all = enc.forward(&images).unwrap();
        assert_eq!(all.dims(), &[b, tokens, cfg.bert.hidden_size]);
        for i in [0, per_pass - 1, per_pass, b - 1] {
            let alone = enc.forward(&images.narrow(0, i, 1).unwrap()).unwrap();
            let diff = crate::model::max_abs_diff(&all.narrow(0, i, 1).unwrap(), &alone);
            assert!(diff < 1e-5, "image {i}: off by {diff}");
        }
    }
}
