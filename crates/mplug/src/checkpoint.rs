//! Reading checkpoints: PyTorch `.pth` (zip pickle, state dict under `model`, `module` or at the
//! top level) and `.safetensors`, in the released fine-tuned or pre-trained key layout.
//!
//! Keys are normalized to the fine-tuned layout on load: a `module.` prefix is dropped,
//! `text_encoder.bert.*` becomes `text_encoder.*`, `fusion_encoder.fusion.*` becomes
//! `fusion_encoder.*`, and momentum copies (`*_m.*`) are skipped, as the reference does.
//! Model constructors read tensors through [`Checkpoint::var_builder`], which records every key
//! used so that [`Checkpoint::unused_keys`] can report the rest.
//!
//! A checkpoint file is opened by reading its index of tensors (names, shapes, types, where
//! each lies); each tensor is read from the file when a model part asks for it. Building a
//! model thus holds one tensor of the file at a time beside the model, not the whole file: a
//! base caption model of 896 MB loaded with int8 weights peaked at 1.76 GB when the file was
//! read whole first, since every linear layer copies (transposes, rounds or quantizes) its
//! weight.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
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
    tensors: Arc<Store>,
    used: Arc<Mutex<HashSet<String>>>,
    skipped: usize,
}

/// A checkpoint's tensors by normalized key, and the file they are read from.
#[derive(Debug)]
struct Store {
    entries: HashMap<String, Entry>,
    file: Option<TensorFile>,
}

/// One tensor: its shape and type, and where it is.
#[derive(Debug)]
struct Entry {
    shape: Vec<usize>,
    dtype: DType,
    place: Place,
}

#[derive(Debug)]
enum Place {
    /// Already in memory.
    Memory(Tensor),
    /// In a `.pth` archive, under its stored name.
    Pth(String),
    /// In a safetensors file, its byte view.
    Safetensors(safetensors::tensor::TensorInfo),
}

/// The file a checkpoint's tensors are read from, one at a time.
struct TensorFile {
    path: PathBuf,
    format: FileFormat,
    /// The file's size and modification time when it was opened: a file rewritten since
    /// would mix tensors of two checkpoints, so reads then fail instead.
    stamp: Stamp,
}

type Stamp = (u64, Option<std::time::SystemTime>);

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    (meta.len(), meta.modified().ok())
}

impl TensorFile {
    /// Fails when the file is no longer as it was opened. A `.pth` is opened again by its path
    /// for each tensor, so the path is checked; a safetensors file is read through the handle
    /// opened with it, so that file is (replacing the path leaves the opened file whole).
    fn check_unchanged(&self) -> candle_core::Result<()> {
        let now = match &self.format {
            FileFormat::Pth(_) => std::fs::metadata(&self.path)?,
            FileFormat::Safetensors { file, .. } => {
                file.lock().expect("checkpoint file lock").metadata()?
            }
        };
        if stamp(&now) != self.stamp {
            return Err(candle_core::Error::Msg(
                "the file changed after it was opened (its size or modification time); \
                 load it again"
                    .into(),
            ));
        }
        Ok(())
    }
}

enum FileFormat {
    /// `candle`'s reader of a `torch.save` archive (it opens the archive for each tensor).
    Pth(candle_core::pickle::PthTensors),
    /// The open file and where its data begins (after the header).
    Safetensors {
        file: Mutex<std::fs::File>,
        data_start: u64,
    },
}

impl std::fmt::Debug for TensorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The tensor of `key` as stored, read from the file if it lives there; `None` when the
    /// checkpoint has no such key.
    fn read(&self, key: &str) -> candle_core::Result<Option<Tensor>> {
        let Some(entry) = self.entries.get(key) else {
            return Ok(None);
        };
        if let Place::Memory(t) = &entry.place {
            return Ok(Some(t.clone()));
        }
        let read = self
            .file
            .as_ref()
            .map_or(Ok(()), TensorFile::check_unchanged);
        let read = read.and_then(|()| match (&entry.place, &self.file) {
            (
                Place::Pth(name),
                Some(TensorFile {
                    format: FileFormat::Pth(pth),
                    ..
                }),
            ) => pth.get(name).and_then(|t| {
                t.ok_or_else(|| candle_core::Error::Msg(format!("no tensor `{name}`")))
            }),
            (
                Place::Safetensors(info),
                Some(TensorFile {
                    format: FileFormat::Safetensors { file, data_start },
                    ..
                }),
            ) => read_safetensor(file, *data_start, info),
            _ => Err(candle_core::Error::Msg("tensor without its file".into())),
        });
        // The checkpoint's errors name the file (`Checkpoint::error`); this names the tensor.
        read.map(Some)
            .map_err(|e| candle_core::Error::Msg(format!("cannot read tensor `{key}`: {e}")))
    }
}

/// One tensor of a safetensors file. Little-endian f32, f16 and bf16 values (what checkpoints
/// hold) are read straight into the tensor's own buffer on little-endian machines; other types
/// are converted as `candle` converts a whole file's.
fn read_safetensor(
    file: &Mutex<std::fs::File>,
    data_start: u64,
    info: &safetensors::tensor::TensorInfo,
) -> candle_core::Result<Tensor> {
    use candle_core::safetensors::Load;
    use safetensors::Dtype;
    let (start, end) = info.data_offsets;
    let read = |buf: &mut [u8]| -> candle_core::Result<()> {
        let mut file = file.lock().expect("checkpoint file lock");
        file.seek(SeekFrom::Start(data_start + start as u64))?;
        file.read_exact(buf)?;
        Ok(())
    };
    let elements: usize = info.shape.iter().product();
    if cfg!(target_endian = "little") {
        match info.dtype {
            Dtype::F32 if elements * 4 == end - start => {
                return read_values::<f32>(elements, &info.shape, read)
            }
            Dtype::F16 if elements * 2 == end - start => {
                return read_values::<half::f16>(elements, &info.shape, read)
            }
            Dtype::BF16 if elements * 2 == end - start => {
                return read_values::<half::bf16>(elements, &info.shape, read)
            }
            _ => {}
        }
    }
    let mut bytes = vec![0u8; end - start];
    read(&mut bytes)?;
    let view = safetensors::tensor::TensorView::new(info.dtype, info.shape.clone(), &bytes)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    view.load(&Device::Cpu)
}

/// A tensor of `elements` values of `T`, its bytes filled by `read`.
fn read_values<T: candle_core::WithDType>(
    elements: usize,
    shape: &[usize],
    read: impl FnOnce(&mut [u8]) -> candle_core::Result<()>,
) -> candle_core::Result<Tensor> {
    let mut values = vec![T::zero(); elements];
    // SAFETY: `T` is f32, f16 or bf16, plain values with no padding for which every bit
    // pattern is valid; the byte view covers exactly the vector's initialized elements.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            values.as_mut_ptr() as *mut u8,
            elements * std::mem::size_of::<T>(),
        )
    };
    read(bytes)?;
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// Largest safetensors header read (the format's own limit).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// The index of a safetensors file: each tensor's byte view, checked against the file's size.
fn safetensors_index(path: &Path) -> Result<(FileFormat, Vec<(String, Entry)>)> {
    let bad = |msg: String| ckpt_err(path, format!("unreadable safetensors: {msg}"));
    let mut file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n)
        .map_err(|e| bad(format!("no header ({e})")))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_SAFETENSORS_HEADER || 8 + n > len {
        return Err(bad(format!(
            "a header of {n} bytes in a file of {len} bytes"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(format!("the header is cut short ({e})")))?;
    let meta: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("its header: {e}")))?;
    let data_start = 8 + n;
    let mut entries = Vec::new();
    for (name, info) in meta.tensors() {
        let (start, end) = info.data_offsets;
        if start > end || data_start + end as u64 > len {
            return Err(bad(format!(
                "tensor `{name}` lies at bytes {start}..{end} of {} of data",
                len - data_start
            )));
        }
        let dtype = DType::try_from(info.dtype).map_err(|e| bad(format!("`{name}`: {e}")))?;
        entries.push((
            name,
            Entry {
                shape: info.shape.clone(),
                dtype,
                place: Place::Safetensors(info.clone()),
            },
        ));
    }
    let format = FileFormat::Safetensors {
        file: Mutex::new(file),
        data_start,
    };
    Ok((format, entries))
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
    /// Opens a `.pth` or `.safetensors` file: reads its index of tensors, checked against the
    /// file; each tensor is read (in its stored dtype) when asked for.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let opened = std::fs::metadata(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (format, raw) = match Format::sniff(path)? {
            Format::Pth => pth_index(path)?,
            Format::Safetensors => safetensors_index(path)?,
        };
        if raw.is_empty() {
            return Err(ckpt_err(path, "holds no tensors".into()));
        }
        let stamp = match &format {
            FileFormat::Pth(_) => stamp(&opened),
            FileFormat::Safetensors { file, .. } => {
                let meta = file.lock().expect("checkpoint file lock").metadata();
                stamp(&meta.map_err(|source| Error::Io {
                    path: path.to_path_buf(),
                    source,
                })?)
            }
        };
        let file = TensorFile {
            path: path.to_path_buf(),
            format,
            stamp,
        };
        Ok(Self::from_raw(path.to_path_buf(), raw, Some(file)))
    }

    /// Wraps tensors already in memory (keys are normalized as for files).
    pub fn from_tensors(label: impl Into<PathBuf>, tensors: HashMap<String, Tensor>) -> Self {
        let raw = tensors
            .into_iter()
            .map(|(key, t)| {
                let entry = Entry {
                    shape: t.dims().to_vec(),
                    dtype: t.dtype(),
                    place: Place::Memory(t),
                };
                (key, entry)
            })
            .collect();
        Self::from_raw(label.into(), raw, None)
    }

    fn from_raw(path: PathBuf, raw: Vec<(String, Entry)>, file: Option<TensorFile>) -> Self {
        let mut entries = HashMap::with_capacity(raw.len());
        let mut skipped = 0;
        for (key, entry) in raw {
            match normalize_key(&key) {
                Some(k) => {
                    entries.insert(k, entry);
                }
                None => skipped += 1,
            }
        }
        Checkpoint {
            path,
            tensors: Arc::new(Store { entries, file }),
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
        self.tensors.entries.contains_key(key)
    }

    /// Whether any key starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors.entries.keys().any(|k| k.starts_with(prefix))
    }

    /// A tensor by normalized key, as stored (read from the file on each call); `None` when
    /// there is no such key.
    pub fn get(&self, key: &str) -> Result<Option<Tensor>> {
        self.tensors.read(key).map_err(|e| self.error(e))
    }

    /// A tensor by normalized key, as stored; a missing key is an error naming it and the file.
    pub fn tensor(&self, key: &str) -> Result<Tensor> {
        self.get(key)?
            .ok_or_else(|| self.error(format!("missing tensor `{key}`")))
    }

    /// A tensor's shape and stored type by normalized key, without reading it.
    pub fn shape_and_dtype(&self, key: &str) -> Option<(&[usize], DType)> {
        let entry = self.tensors.entries.get(key)?;
        Some((&entry.shape, entry.dtype))
    }

    /// All normalized keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.tensors.entries.keys().map(String::as_str).collect();
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
            .entries
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

/// The index of a `torch.save` archive's state dict: each tensor's stored name.
fn pth_index(path: &Path) -> Result<(FileFormat, Vec<(String, Entry)>)> {
    // The state dict is under `model` (released checkpoints), `module`, or at the top level.
    let mut last_err = None;
    for key in [Some("model"), Some("module"), Some("state_dict"), None] {
        match candle_core::pickle::PthTensors::new(path, key) {
            Ok(pth) if !pth.tensor_infos().is_empty() => {
                let entries = pth
                    .tensor_infos()
                    .iter()
                    .map(|(name, info)| {
                        let entry = Entry {
                            shape: info.layout.dims().to_vec(),
                            dtype: info.dtype,
                            place: Place::Pth(name.clone()),
                        };
                        (name.clone(), entry)
                    })
                    .collect();
                return Ok((FileFormat::Pth(pth), entries));
            }
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
    tensors: Arc<Store>,
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
        // A wrong shape is refused from the index, before the tensor is read.
        if let (Some(entry), Some(s)) = (self.tensors.entries.get(name), expected) {
            if entry.shape != s.dims() {
                return Err(candle_core::Error::Msg(format!(
                    "tensor `{name}` has shape {:?}, expected {:?}",
                    entry.shape,
                    s.dims()
                )));
            }
        }
        match self.tensors.read(name)? {
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
        // `fetch` checks the shape from the index, before reading.
        let t = self.fetch(name, Some(&s))?;
        self.finish(name, t, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.fetch(name, None)?;
        self.finish(name, t, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.entries.contains_key(name)
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
