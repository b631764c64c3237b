//! Reading checkpoints: PyTorch `.pth` (zip pickle, state dict under `model`, `module` or at the
//! top level) and `.safetensors`, in the released fine-tuned or pre-trained key layout.
//!
//! Keys are normalized to the fine-tuned layout on load: a `module.` prefix is dropped,
//! `text_encoder.bert.*` becomes `text_encoder.*`, `fusion_encoder.fusion.*` becomes
//! `fusion_encoder.*`, and momentum copies (`*_m.*`) are skipped, as the reference does.
//! Model constructors read tensors through [`Checkpoint::var_builder`], which records every key
//! used so that [`Checkpoint::unused_keys`] can report the rest.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Buffers and training-only state a checkpoint may hold besides parameters (the last segment
/// of their key); inference does not read them and they are never reported as unused.
pub const NON_PARAMETERS: &[&str] = &[
    "position_ids",
    "prefix_ids",
    "target_ids",
    "bbox_prob_mask",
    "temp",
    "image_queue",
    "text_queue",
    "idx_queue",
    "queue_ptr",
];

/// The tensors of one checkpoint, keyed by their normalized names.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: PathBuf,
    tensors: Arc<HashMap<String, Tensor>>,
    used: Arc<Mutex<HashSet<String>>>,
    skipped: usize,
}

/// The file formats a checkpoint can come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` zip archive with a pickled state dict.
    Pth,
    /// Hugging Face safetensors.
    Safetensors,
}

impl Format {
    /// Detects the format from the first bytes of a file.
    pub fn sniff(path: &Path) -> Result<Format> {
        use std::io::Read;
        let mut head = [0u8; 9];
        let mut f = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let n = f.read(&mut head).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if n >= 4 && &head[..4] == b"PK\x03\x04" {
            return Ok(Format::Pth);
        }
        if n == 9 && head[8] == b'{' {
            return Ok(Format::Safetensors);
        }
        Err(Error::Checkpoint {
            path: path.to_path_buf(),
            msg: "not a checkpoint: expected a PyTorch zip archive (torch.save) or a safetensors \
                  file (legacy non-zip .pth files must be re-saved with a recent PyTorch)"
                .into(),
        })
    }
}

impl Checkpoint {
    /// Loads every tensor of a `.pth` or `.safetensors` file into memory (in its stored dtype).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let raw = match Format::sniff(path)? {
            Format::Pth => read_pth(path)?,
            Format::Safetensors => candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| ckpt_err(path, format!("unreadable safetensors: {e}")))?
                .into_iter()
                .collect(),
        };
        if raw.is_empty() {
            return Err(ckpt_err(path, "holds no tensors".into()));
        }
        Ok(Self::from_raw(path.to_path_buf(), raw))
    }

    /// Wraps tensors already in memory (keys are normalized as for files).
    pub fn from_tensors(label: impl Into<PathBuf>, tensors: HashMap<String, Tensor>) -> Self {
        Self::from_raw(label.into(), tensors.into_iter().collect())
    }

    fn from_raw(path: PathBuf, raw: Vec<(String, Tensor)>) -> Self {
        let mut tensors = HashMap::with_capacity(raw.len());
        let mut skipped = 0;
        for (key, t) in raw {
            match normalize_key(&key) {
                Some(k) => {
                    tensors.insert(k, t);
                }
                None => skipped += 1,
            }
        }
        Checkpoint {
            path,
            tensors: Arc::new(tensors),
            used: Default::default(),
            skipped,
        }
    }

    /// Where the checkpoint came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of momentum-copy tensors skipped on load.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Whether a (normalized) key is present.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Whether any key starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors.keys().any(|k| k.starts_with(prefix))
    }

    /// A tensor by normalized key, as stored.
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    /// All normalized keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// A var builder reading this checkpoint, converting tensors to `dtype` on `device`.
    /// Missing keys and shape mismatches fail with the key and both shapes.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let backend = Backend {
            tensors: self.tensors.clone(),
            used: self.used.clone(),
            vars: None,
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    /// A var builder that turns every tensor it reads into a trainable variable recorded in
    /// `varmap` under its key (the optimizer and checkpoint writer find them there).
    pub fn trainable_var_builder(
        &self,
        varmap: &VarMap,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let backend = Backend {
            tensors: self.tensors.clone(),
            used: self.used.clone(),
            vars: Some(varmap.clone()),
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    /// Parameter keys no model part has read so far (buffers and training state excluded).
    pub fn unused_keys(&self) -> Vec<String> {
        let used = self.used.lock().expect("checkpoint usage lock");
        let unused: BTreeSet<String> = self
            .tensors
            .keys()
            .filter(|k| !used.contains(*k))
            .filter(|k| {
                !NON_PARAMETERS
                    .iter()
                    .any(|p| k.rsplit('.').next() == Some(p))
            })
            .cloned()
            .collect();
        unused.into_iter().collect()
    }

    /// The unused keys grouped by their first two path segments, with counts: a short report.
    pub fn unused_summary(&self) -> Vec<(String, usize)> {
        let mut groups: Vec<(String, usize)> = Vec::new();
        for key in self.unused_keys() {
            let group: String = key.split('.').take(2).collect::<Vec<_>>().join(".");
            match groups.last_mut() {
                Some((g, n)) if *g == group => *n += 1,
                _ => groups.push((group, 1)),
            }
        }
        groups
    }

    /// Turns a tensor-library error raised while building a model from this checkpoint into a
    /// checkpoint error naming the file.
    pub fn error(&self, e: impl std::fmt::Display) -> Error {
        ckpt_err(&self.path, e.to_string())
    }
}

fn ckpt_err(path: &Path, msg: String) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    }
}

/// Maps a stored key to the fine-tuned layout, or `None` for momentum copies.
fn normalize_key(key: &str) -> Option<String> {
    let key = key.strip_prefix("module.").unwrap_or(key);
    if key.split('.').any(|seg| seg.ends_with("_m")) {
        return None;
    }
    for (from, to) in [
        ("text_encoder.bert.", "text_encoder."),
        ("fusion_encoder.fusion.", "fusion_encoder."),
    ] {
        if let Some(rest) = key.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    Some(key.to_string())
}

fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    // The state dict is under `model` (released checkpoints), `module`, or at the top level.
    let mut last_err = None;
    for key in [Some("model"), Some("module"), Some("state_dict"), None] {
        match candle_core::pickle::read_all_with_key(path, key) {
            Ok(t) if !t.is_empty() => return Ok(t),
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
    }
    Err(ckpt_err(
        path,
        match last_err {
            Some(e) => format!("no state dict of tensors found ({e})"),
            None => "no state dict of tensors found".into(),
        },
    ))
}

struct Backend {
    tensors: Arc<HashMap<String, Tensor>>,
    used: Arc<Mutex<HashSet<String>>>,
    /// When set, tensors are handed out as variables recorded here.
    vars: Option<VarMap>,
}

impl Backend {
    fn finish(
        &self,
        name: &str,
        t: Tensor,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = t.to_device(dev)?.to_dtype(dtype)?;
        match &self.vars {
            None => Ok(t),
            Some(vm) => {
                let mut data = vm.data().lock().expect("varmap lock");
                if let Some(v) = data.get(name) {
                    return Ok(v.as_tensor().clone());
                }
                let var = candle_core::Var::from_tensor(&t)?;
                let out = var.as_tensor().clone();
                data.insert(name.to_string(), var);
                Ok(out)
            }
        }
    }
}

impl Backend {
    fn fetch(&self, name: &str, expected: Option<&Shape>) -> candle_core::Result<Tensor> {
        match self.tensors.get(name) {
            Some(t) => {
                self.used
                    .lock()
                    .expect("checkpoint usage lock")
                    .insert(name.to_string());
                Ok(t.clone())
            }
            None => {
                let shape = expected
                    .map(|s| format!(" (expected shape {:?})", s.dims()))
                    .unwrap_or_default();
                Err(candle_core::Error::Msg(format!(
                    "missing tensor `{name}`{shape}"
                )))
            }
        }
    }
}

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.fetch(name, Some(&s))?;
        if t.shape() != &s {
            return Err(candle_core::Error::Msg(format!(
                "tensor `{name}` has shape {:?}, expected {:?}",
                t.dims(),
                s.dims()
            )));
        }
        self.finish(name, t, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.fetch(name, None)?;
        self.finish(name, t, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_key;

    #[test]
    fn pretrained_keys_are_normalized() {
        assert_eq!(
            normalize_key("text_encoder.bert.encoder.layer.0.output.dense.weight").as_deref(),
            Some("text_encoder.encoder.layer.0.output.dense.weight")
        );
        assert_eq!(
            normalize_key("module.fusion_encoder.fusion.encoder.layer.3.attention.self.key.bias")
                .as_deref(),
            Some("fusion_encoder.encoder.layer.3.attention.self.key.bias")
        );
        assert_eq!(normalize_key("visual_encoder_m.visual.conv1.weight"), None);
        assert_eq!(normalize_key("text_proj_m.weight"), None);
        assert_eq!(
            normalize_key("vision_proj.weight").as_deref(),
            Some("vision_proj.weight")
        );
    }
}
