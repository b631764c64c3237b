//! An on-disk image index for a retrieval model: the normalized ITC features of a photo
//! collection (and, optionally, its visual tokens) so that a text query ranks the collection
//! without encoding every image again, as the reference's retrieval evaluation does: ITC top `k`
//! by dot product with the query's feature, then ITM re-ranking of those `k`.
//!
//! An index is a folder:
//! - `manifest.json`: the model that made it ([`ModelIdentity`]), the image root, and one entry
//!   per image (path relative to the root, file size, modification time, feature row, token
//!   shard);
//! - `features.safetensors`: `features` `(N, embed_dim)` f32, normalized, and `ids` `(N,)` u32
//!   naming the entry of each row (checked on opening, so a torn update is noticed);
//! - `tokens-XXXX.safetensors` (optional): each image's visual tokens `(Li, H)` in f16 (or f32)
//!   under the key `t<id>`, for ITM re-ranking without decoding the image again. Without them
//!   the top `k` images are re-encoded from their files at search time.
//!
//! Every file is written to a temporary name and renamed into place; `manifest.json` is
//! written last and is the commit point. Token shards no entry refers to are deleted.

#[cfg(feature = "postgres")]
pub mod postgres;

use crate::config::MplugConfig;
use crate::error::{Error, Result};
use crate::model::Task;
use crate::pipeline::{Pipeline, Visual};
use crate::tasks::retrieval::{self, ImageSide, TextSide};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The manifest's file name inside an index folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The features' file name inside an index folder.
pub const FEATURES_FILE: &str = "features.safetensors";
/// The index folder `mplug index DIR` uses by default, inside `DIR`.
pub const DEFAULT_INDEX_DIR: &str = ".mplug-index";
/// Images per token shard.
pub const SHARD_IMAGES: usize = 64;
/// Pairs fused per ITM call when re-ranking.
const ITM_BATCH: usize = retrieval::ITM_PAIRS_PER_CALL;
/// Version of the on-disk layout.
const FORMAT_VERSION: u32 = 1;
/// Bytes hashed at each end of the checkpoint for its fingerprint.
const FINGERPRINT_BYTES: u64 = 4 << 20;

/// FNV-1a, 64 bits: a stable, dependency-free hash for identities (not for security).
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What identifies the model that made an index: its configuration and its checkpoint's
/// contents. Two identities match when the configuration hash, the checkpoint size and its
/// fingerprint agree (the path is informative: a moved or copied checkpoint still matches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// FNV-1a of the configuration's JSON, hexadecimal.
    pub config_hash: String,
    /// The checkpoint file, as given.
    pub checkpoint: PathBuf,
    /// The checkpoint's size in bytes.
    pub size: u64,
    /// The checkpoint's modification time, nanoseconds since the Unix epoch (informative).
    pub mtime_ns: u64,
    /// FNV-1a of the checkpoint's size and its first and last 4 MiB, hexadecimal.
    pub fingerprint: String,
    /// The ITC feature width.
    pub embed_dim: usize,
}

impl ModelIdentity {
    /// The identity of the model built from `config` and `checkpoint`.
    pub fn of_checkpoint(config: &MplugConfig, checkpoint: &Path) -> Result<Self> {
        let json = serde_json::to_string(config)
            .map_err(|e| Error::Config(format!("cannot serialize the configuration: {e}")))?;
        let meta = fs::metadata(checkpoint).map_err(io_err(checkpoint))?;
        let size = meta.len();
        let mut file = fs::File::open(checkpoint).map_err(io_err(checkpoint))?;
        let mut hash = fnv1a(FNV_OFFSET, &size.to_le_bytes());
        let mut head = Vec::new();
        (&mut file)
            .take(FINGERPRINT_BYTES)
            .read_to_end(&mut head)
            .map_err(io_err(checkpoint))?;
        hash = fnv1a(hash, &head);
        if size > 2 * FINGERPRINT_BYTES {
            use std::io::{Seek, SeekFrom};
            file.seek(SeekFrom::End(-(FINGERPRINT_BYTES as i64)))
                .map_err(io_err(checkpoint))?;
            let mut tail = Vec::new();
            file.read_to_end(&mut tail).map_err(io_err(checkpoint))?;
            hash = fnv1a(hash, &tail);
        } else if size > FINGERPRINT_BYTES {
            let mut rest = Vec::new();
            file.read_to_end(&mut rest).map_err(io_err(checkpoint))?;
            hash = fnv1a(hash, &rest);
        }
        Ok(Self {
            config_hash: format!("{:016x}", fnv1a(FNV_OFFSET, json.as_bytes())),
            checkpoint: checkpoint.to_path_buf(),
            size,
            mtime_ns: mtime_ns(&meta),
            fingerprint: format!("{hash:016x}"),
            embed_dim: config.embed_dim,
        })
    }

    /// Whether both identities name the same model.
    pub fn same_model(&self, other: &ModelIdentity) -> bool {
        self.config_hash == other.config_hash
            && self.size == other.size
            && self.fingerprint == other.fingerprint
            && self.embed_dim == other.embed_dim
    }
}

pub(crate) fn mtime_ns(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// How visual tokens are kept for ITM re-ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenStorage {
    /// Not kept: the top `k` images are encoded again from their files at search time.
    None,
    /// Half precision (577 x 768 x 2 bytes, about 0.9 MB, per base image).
    #[default]
    F16,
    /// Full precision: ITM scores equal those of encoding the image afresh.
    F32,
}

impl TokenStorage {
    pub(crate) fn dtype(self) -> Option<DType> {
        match self {
            TokenStorage::None => None,
            TokenStorage::F16 => Some(DType::F16),
            TokenStorage::F32 => Some(DType::F32),
        }
    }
}

/// How to open an index.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexOptions {
    /// How new images' visual tokens are kept (entries already stored keep theirs).
    pub tokens: TokenStorage,
    /// Start afresh when the index was made by another model or for another root.
    pub rebuild: bool,
}

/// One indexed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the image root, `/`-separated.
    pub path: String,
    /// File size in bytes when encoded.
    pub size: u64,
    /// Modification time when encoded, nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    /// Row of its feature in `features.safetensors`.
    pub row: usize,
    /// Stable id (the key of its tokens, `t<id>`).
    pub id: u32,
    /// The token shard holding its visual tokens, if any.
    pub shard: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    model: ModelIdentity,
    root: Option<PathBuf>,
    next_id: u32,
    next_shard: u32,
    entries: Vec<Entry>,
}

/// An image that could not be indexed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// What [`ImageIndex::add_folder`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddReport {
    /// Images encoded for the first time.
    pub added: usize,
    /// Images encoded again because their size or modification time changed.
    pub updated: usize,
    /// Entries removed because their files are gone (or now unreadable).
    pub removed: usize,
    /// Images kept as they were.
    pub unchanged: usize,
    /// Files that could not be read or decoded (not indexed; tried again next time).
    pub skipped: Vec<Skipped>,
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The image file (the root joined with the entry's path).
    pub path: PathBuf,
    /// The path relative to the image root.
    pub relative: String,
    /// ITM positive logit of (image, query): the ranking score.
    pub itm: f32,
    /// ITC similarity of the normalized features.
    pub itc: f32,
}

/// An image collection's features on disk; see the module documentation.
#[derive(Debug)]
pub struct ImageIndex {
    dir: PathBuf,
    manifest: Manifest,
    /// `(N, E)` f32 on the CPU; `None` while empty.
    features: Option<Tensor>,
    tokens: TokenStorage,
}

fn load_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        Error::Config(format!(
            "index file {} is unreadable ({e}); run `mplug index` with --rebuild",
            path.display()
        ))
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    if let Err(e) = write(&tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    write_atomic(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp).map_err(|e| Error::Io {
            path: tmp.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

fn shard_file(shard: u32) -> String {
    format!("tokens-{shard:04}.safetensors")
}

/// Decodes one batch of image files for indexing: the images that load, with their positions
/// in `paths`, and the positions and errors of those that do not (each store decides what an
/// unreadable file means for its rows).
pub(crate) fn load_batch(
    pipeline: &Pipeline,
    paths: &[&Path],
) -> (Vec<Tensor>, Vec<usize>, Vec<(usize, String)>) {
    let (mut images, mut ok, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (i, path) in paths.iter().enumerate() {
        match pipeline.load_images(std::slice::from_ref(path)) {
            Ok(t) => {
                images.push(t);
                ok.push(i);
            }
            Err(e) => failed.push((i, e.to_string())),
        }
    }
    (images, ok, failed)
}

/// The ITM positive logit of one query text (`texts`, one row) against each candidate's visual
/// tokens (`(1, L, H)` each, in order), a few pairs per fusion pass: the re-ranking both stores
/// do after their ITC top k.
pub(crate) fn itm_of_candidates(
    pipeline: &Pipeline,
    tokens: &[Tensor],
    texts: &TextSide,
) -> Result<Vec<f32>> {
    let model = pipeline.model();
    let dev = model.device();
    let mut itm = Vec::with_capacity(tokens.len());
    for chunk in tokens.chunks(ITM_BATCH) {
        let side = ImageSide {
            embeds: Tensor::cat(chunk, 0)?.to_device(dev)?,
            feat: Tensor::zeros((chunk.len(), 1), DType::F32, dev)?,
        };
        let pairs: Vec<(usize, usize)> = (0..chunk.len()).map(|i| (i, 0)).collect();
        itm.extend(retrieval::itm_positive(model, &side, texts, &pairs)?);
    }
    Ok(itm)
}

/// Fails unless `pipeline` holds a retrieval model whose ITC width is `embed_dim`.
pub(crate) fn check_retrieval(pipeline: &Pipeline, embed_dim: usize) -> Result<()> {
    let model = pipeline.model();
    if model.task != Task::Retrieval || model.heads.is_none() {
        return Err(Error::Unsupported(format!(
            "an image index needs a retrieval model; this is a {} model",
            model.task
        )));
    }
    if model.config.embed_dim != embed_dim {
        return Err(Error::Unsupported(format!(
            "the index holds {embed_dim}-wide features but the model makes {}-wide ones",
            model.config.embed_dim
        )));
    }
    Ok(())
}

impl ImageIndex {
    /// Opens the index in `dir`, or starts an empty one there (written on the first
    /// [`add_folder`](Self::add_folder)). An index made by another model is refused unless
    /// `options.rebuild`, which starts afresh.
    pub fn open_or_create(
        dir: impl AsRef<Path>,
        model: &ModelIdentity,
        options: IndexOptions,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        if dir.join(MANIFEST_FILE).is_file() && !options.rebuild {
            let mut index = Self::open(dir, model)?;
            index.tokens = options.tokens;
            return Ok(index);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest: Manifest {
                version: FORMAT_VERSION,
                model: model.clone(),
                root: None,
                next_id: 0,
                next_shard: 0,
                entries: Vec::new(),
            },
            features: None,
            tokens: options.tokens,
        })
    }

    /// Opens the existing index in `dir`, refusing one made by a model other than `model`.
    pub fn open(dir: impl AsRef<Path>, model: &ModelIdentity) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join(MANIFEST_FILE);
        if !path.is_file() {
            return Err(Error::Config(format!(
                "{} holds no image index (no {MANIFEST_FILE}); build one with `mplug index`",
                dir.display()
            )));
        }
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let mut manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "{} is malformed ({e}); run `mplug index` with --rebuild",
                path.display()
            ))
        })?;
        if manifest.version != FORMAT_VERSION {
            return Err(Error::Config(format!(
                "{} has layout version {}, this program reads version {FORMAT_VERSION}; \
                 run `mplug index` with --rebuild",
                path.display(),
                manifest.version
            )));
        }
        if !manifest.model.same_model(model) {
            return Err(Error::Unsupported(format!(
                "the index in {} was made by another model ({}, {} bytes), not by {} ({} bytes); \
                 search with that model or rebuild the index (`mplug index --rebuild`)",
                dir.display(),
                manifest.model.checkpoint.display(),
                manifest.model.size,
                model.checkpoint.display(),
                model.size
            )));
        }
        let features = if manifest.entries.is_empty() {
            None
        } else {
            let fpath = dir.join(FEATURES_FILE);
            let mut t = load_safetensors(&fpath)?;
            let (Some(feats), Some(ids)) = (t.remove("features"), t.remove("ids")) else {
                return Err(Error::Config(format!(
                    "{} lacks `features` or `ids`; run `mplug index` with --rebuild",
                    fpath.display()
                )));
            };
            let ids = ids.to_dtype(DType::U32)?.to_vec1::<u32>()?;
            let (n, e) = feats.dims2()?;
            if e != manifest.model.embed_dim || n != ids.len() {
                return Err(Error::Config(format!(
                    "{} holds features of shape ({n}, {e}) for {} ids; run `mplug index` with \
                     --rebuild",
                    fpath.display(),
                    ids.len()
                )));
            }
            // An update torn between the features and the manifest: entries whose row does not
            // hold their id are dropped (encoded again by the next `add_folder`).
            manifest
                .entries
                .retain(|en| ids.get(en.row).is_some_and(|&id| id == en.id));
            Some(feats.to_dtype(DType::F32)?)
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            features,
            tokens: TokenStorage::default(),
        })
    }

    /// The index folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image root, once images were added.
    pub fn root(&self) -> Option<&Path> {
        self.manifest.root.as_deref()
    }

    /// The model that made the index.
    pub fn model(&self) -> &ModelIdentity {
        &self.manifest.model
    }

    /// The indexed images.
    pub fn entries(&self) -> &[Entry] {
        &self.manifest.entries
    }

    /// Number of indexed images.
    pub fn len(&self) -> usize {
        self.manifest.entries.len()
    }

    /// Whether no image is indexed.
    pub fn is_empty(&self) -> bool {
        self.manifest.entries.is_empty()
    }

    /// Brings the index up to date with the images under `root`: encodes new files and files
    /// whose size or modification time changed (`batch_size` at a time), drops entries whose
    /// files are gone, and writes the index. Unreadable images are skipped and listed in the
    /// report. `progress(done, total)` is called as images are encoded (`total` images to
    /// encode, `0` first). An index built for another root is refused unless it was opened with
    /// `rebuild`.
    pub fn add_folder(
        &mut self,
        pipeline: &Pipeline,
        root: impl AsRef<Path>,
        batch_size: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<AddReport> {
        check_retrieval(pipeline, self.manifest.model.embed_dim)?;
        let root = root.as_ref();
        let root = fs::canonicalize(root).map_err(io_err(root))?;
        if !root.is_dir() {
            return Err(Error::invalid(format!(
                "{} is not a folder",
                root.display()
            )));
        }
        match &self.manifest.root {
            Some(old) if *old != root && !self.manifest.entries.is_empty() => {
                return Err(Error::invalid(format!(
                    "the index in {} is for images under {}, not {}; use another --index or \
                     --rebuild",
                    self.dir.display(),
                    old.display(),
                    root.display()
                )));
            }
            _ => {}
        }
        let batch_size = batch_size.max(1);
        let files = crate::input::image_files(&root)?;
        let mut report = AddReport::default();

        // What to keep and what to encode.
        let old: HashMap<&str, &Entry> = self
            .manifest
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e))
            .collect();
        let mut kept: Vec<Entry> = Vec::new();
        let mut todo: Vec<(String, PathBuf, u64, u64, bool)> = Vec::new();
        let mut present = HashSet::new();
        for (rel, abs) in files {
            let meta = match fs::metadata(&abs) {
                Ok(m) => m,
                Err(e) => {
                    report.skipped.push(Skipped {
                        path: abs,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let (size, mtime) = (meta.len(), mtime_ns(&meta));
            match old.get(rel.as_str()) {
                Some(e) if e.size == size && e.mtime_ns == mtime => {
                    present.insert(rel.clone());
                    kept.push((*e).clone());
                    report.unchanged += 1;
                }
                found => todo.push((rel, abs, size, mtime, found.is_some())),
            }
        }
        let to_encode: HashSet<&str> = todo.iter().map(|t| t.0.as_str()).collect();
        report.removed = self
            .manifest
            .entries
            .iter()
            .filter(|e| !present.contains(&e.path) && !to_encode.contains(e.path.as_str()))
            .count();

        // Encode, writing token shards as they fill.
        let token_dtype = self.tokens.dtype();
        let mut new_entries: Vec<Entry> = Vec::new();
        let mut new_feats: Vec<Tensor> = Vec::new();
        let mut shard: HashMap<String, Tensor> = HashMap::new();
        let mut shard_entries: Vec<usize> = Vec::new();
        let mut next_id = self.manifest.next_id;
        let mut next_shard = self.manifest.next_shard;
        let total = todo.len();
        progress(0, total);
        let mut done = 0;
        for chunk in todo.chunks(batch_size) {
            let paths: Vec<&Path> = chunk.iter().map(|t| t.1.as_path()).collect();
            let (images, ok, failed) = load_batch(pipeline, &paths);
            for (i, reason) in failed {
                let (_, abs, _, _, existed) = &chunk[i];
                // An indexed file that became unreadable leaves the index.
                report.removed += usize::from(*existed);
                report.skipped.push(Skipped {
                    path: abs.clone(),
                    reason,
                });
            }
            if !images.is_empty() {
                let side = pipeline.image_side(Visual::Images(&Tensor::cat(&images, 0)?))?;
                new_feats.push(side.feat.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
                for (b, &i) in ok.iter().enumerate() {
                    let (rel, _, size, mtime, existed) = &chunk[i];
                    let id = next_id;
                    next_id = next_id.checked_add(1).ok_or_else(|| {
                        Error::invalid("the index ran out of ids; rebuild it with --rebuild")
                    })?;
                    if let Some(dt) = token_dtype {
                        let t = side.embeds.get(b)?.to_dtype(dt)?.to_device(&Device::Cpu)?;
                        shard.insert(format!("t{id}"), t);
                        shard_entries.push(new_entries.len());
                    }
                    if *existed {
                        report.updated += 1;
                    } else {
                        report.added += 1;
                    }
                    new_entries.push(Entry {
                        path: rel.clone(),
                        size: *size,
                        mtime_ns: *mtime,
                        row: 0,
                        id,
                        shard: None,
                    });
                }
                if shard.len() >= SHARD_IMAGES {
                    self.write_shard(next_shard, &mut shard, &mut shard_entries, &mut new_entries)?;
                    next_shard += 1;
                }
            }
            done += chunk.len();
            progress(done, total);
        }
        if !shard.is_empty() {
            self.write_shard(next_shard, &mut shard, &mut shard_entries, &mut new_entries)?;
            next_shard += 1;
        }

        // Features: kept rows, then the new ones.
        let mut parts = Vec::new();
        if let (Some(f), false) = (&self.features, kept.is_empty()) {
            let rows: Vec<u32> = kept.iter().map(|e| e.row as u32).collect();
            let n = rows.len();
            parts.push(f.index_select(&Tensor::from_vec(rows, n, &Device::Cpu)?, 0)?);
        }
        parts.extend(new_feats);
        let mut entries = kept;
        entries.extend(new_entries);
        for (row, e) in entries.iter_mut().enumerate() {
            e.row = row;
        }
        self.features = if parts.is_empty() {
            None
        } else {
            Some(Tensor::cat(&parts, 0)?)
        };
        self.manifest.entries = entries;
        self.manifest.root = Some(root);
        self.manifest.next_id = next_id;
        self.manifest.next_shard = next_shard;
        self.save()?;
        Ok(report)
    }

    fn write_shard(
        &self,
        number: u32,
        shard: &mut HashMap<String, Tensor>,
        members: &mut Vec<usize>,
        entries: &mut [Entry],
    ) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        save_tensors(shard, &self.dir.join(shard_file(number)))?;
        for &i in members.iter() {
            entries[i].shard = Some(number);
        }
        shard.clear();
        members.clear();
        Ok(())
    }

    /// Writes the features, then the manifest, then deletes unreferenced token shards.
    fn save(&self) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let fpath = self.dir.join(FEATURES_FILE);
        match &self.features {
            Some(f) => {
                let ids: Vec<u32> = self.manifest.entries.iter().map(|e| e.id).collect();
                let n = ids.len();
                let mut t = HashMap::new();
                t.insert("features".to_string(), f.clone());
                t.insert("ids".to_string(), Tensor::from_vec(ids, n, &Device::Cpu)?);
                save_tensors(&t, &fpath)?;
            }
            None => {
                if fpath.exists() {
                    fs::remove_file(&fpath).map_err(io_err(&fpath))?;
                }
            }
        }
        let json = serde_json::to_string_pretty(&self.manifest)
            .map_err(|e| Error::Config(format!("cannot serialize the manifest: {e}")))?;
        write_atomic(&self.dir.join(MANIFEST_FILE), |tmp| {
            fs::write(tmp, json).map_err(io_err(tmp))
        })?;
        let used: HashSet<String> = self
            .manifest
            .entries
            .iter()
            .filter_map(|e| e.shard.map(shard_file))
            .collect();
        if let Ok(read) = fs::read_dir(&self.dir) {
            for item in read.flatten() {
                let name = item.file_name().to_string_lossy().into_owned();
                if name.starts_with("tokens-")
                    && name.ends_with(".safetensors")
                    && !used.contains(&name)
                {
                    // Best effort: a shard left behind only costs disk space.
                    let _ = fs::remove_file(item.path());
                }
            }
        }
        Ok(())
    }

    /// The indexed images most like the image file `query`, by the ITC similarity of their
    /// features (no ITM: it scores an image against a text), best `top` first; each hit's
    /// `itm` is NaN.
    pub fn search_image(
        &self,
        pipeline: &Pipeline,
        query: impl AsRef<Path>,
        top: usize,
    ) -> Result<Vec<Hit>> {
        check_retrieval(pipeline, self.manifest.model.embed_dim)?;
        if top == 0 {
            return Err(Error::invalid("--top must be at least 1"));
        }
        let images = pipeline.load_images(&[query.as_ref()])?;
        let q = pipeline
            .image_side(Visual::Images(&images))?
            .feat
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let (Some(features), Some(root)) = (&self.features, &self.manifest.root) else {
            return Ok(Vec::new());
        };
        let sims = features.matmul(&q.t()?)?.squeeze(1)?.to_vec1::<f32>()?;
        let mut hits: Vec<Hit> = self
            .manifest
            .entries
            .iter()
            .map(|e| Hit {
                path: root.join(&e.path),
                relative: e.path.clone(),
                itm: f32::NAN,
                itc: sims[e.row],
            })
            .collect();
        hits.sort_by(|a, b| b.itc.total_cmp(&a.itc).then(a.relative.cmp(&b.relative)));
        hits.truncate(top);
        Ok(hits)
    }

    /// Ranks the indexed images for `text`: the `k_itc` images of highest ITC similarity are
    /// re-ranked by the ITM positive logit and the best `top` returned, best first. Visual
    /// tokens come from the token shards, or from the image files for entries without them
    /// (a file changed or removed since indexing is an error asking to index again).
    pub fn search(
        &self,
        pipeline: &Pipeline,
        text: &str,
        k_itc: usize,
        top: usize,
    ) -> Result<Vec<Hit>> {
        check_retrieval(pipeline, self.manifest.model.embed_dim)?;
        if k_itc == 0 || top == 0 {
            return Err(Error::invalid("--k and --top must be at least 1"));
        }
        if text.trim().is_empty() {
            return Err(Error::invalid("the query text is empty"));
        }
        let (Some(features), Some(root)) = (&self.features, &self.manifest.root) else {
            return Ok(Vec::new());
        };
        let model = pipeline.model();
        let texts = pipeline.text_side(&[text])?;
        let q = texts.feat.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let sims = features.matmul(&q.t()?)?.squeeze(1)?.to_vec1::<f32>()?;
        let by_row: HashMap<usize, &Entry> =
            self.manifest.entries.iter().map(|e| (e.row, e)).collect();
        let mut order: Vec<usize> = (0..sims.len()).filter(|r| by_row.contains_key(r)).collect();
        order.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]).then(a.cmp(&b)));
        order.truncate(k_itc);

        // Visual tokens of the candidates, in `order`.
        let mut tokens: Vec<Option<Tensor>> = vec![None; order.len()];
        let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        let mut from_files = Vec::new();
        for (c, row) in order.iter().enumerate() {
            match by_row[row].shard {
                Some(s) => by_shard.entry(s).or_default().push(c),
                None => from_files.push(c),
            }
        }
        for (s, members) in by_shard {
            let path = self.dir.join(shard_file(s));
            let mut shard = load_safetensors(&path)?;
            for c in members {
                let e = by_row[&order[c]];
                match shard.remove(&format!("t{}", e.id)) {
                    Some(t) => tokens[c] = Some(t.to_dtype(model.dtype())?.unsqueeze(0)?),
                    None => from_files.push(c),
                }
            }
        }
        from_files.sort_unstable();
        for chunk in from_files.chunks(ITM_BATCH) {
            let paths: Vec<PathBuf> = chunk
                .iter()
                .map(|&c| self.image_path(by_row[&order[c]], root))
                .collect::<Result<_>>()?;
            let images = pipeline.load_images(&paths)?;
            let embeds = pipeline.visual_tokens(Visual::Images(&images))?;
            for (b, &c) in chunk.iter().enumerate() {
                tokens[c] = Some(embeds.get(b)?.unsqueeze(0)?);
            }
        }
        let tokens: Vec<Tensor> = tokens.into_iter().flatten().collect();
        if tokens.len() != order.len() {
            return Err(Error::invalid("visual tokens missing for a candidate"));
        }

        let itm = itm_of_candidates(pipeline, &tokens, &texts)?;
        let mut hits: Vec<Hit> = order
            .iter()
            .zip(itm)
            .map(|(&row, itm)| {
                let e = by_row[&row];
                Hit {
                    path: root.join(&e.path),
                    relative: e.path.clone(),
                    itm,
                    itc: sims[row],
                }
            })
            .collect();
        hits.sort_by(|a, b| b.itm.total_cmp(&a.itm).then(b.itc.total_cmp(&a.itc)));
        hits.truncate(top);
        Ok(hits)
    }

    /// The file of an entry without stored tokens, checked to be the one that was indexed.
    fn image_path(&self, e: &Entry, root: &Path) -> Result<PathBuf> {
        let path = root.join(&e.path);
        let meta = fs::metadata(&path).map_err(|err| {
            Error::invalid(format!(
                "{} is indexed but unreadable ({err}); run `mplug index` again",
                path.display()
            ))
        })?;
        if meta.len() != e.size || mtime_ns(&meta) != e.mtime_ns {
            return Err(Error::invalid(format!(
                "{} changed since it was indexed; run `mplug index` again",
                path.display()
            )));
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_follows_contents_not_path() {
        let dir = std::env::temp_dir().join(format!("mplug-index-id-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (a, b, c) = (dir.join("a.bin"), dir.join("b.bin"), dir.join("c.bin"));
        fs::write(&a, b"weights one").unwrap();
        fs::write(&b, b"weights one").unwrap();
        fs::write(&c, b"weights two").unwrap();
        let cfg = MplugConfig::base();
        let ia = ModelIdentity::of_checkpoint(&cfg, &a).unwrap();
        assert!(ia.same_model(&ModelIdentity::of_checkpoint(&cfg, &b).unwrap()));
        assert!(!ia.same_model(&ModelIdentity::of_checkpoint(&cfg, &c).unwrap()));
        let mut large = MplugConfig::base();
        large.embed_dim += 1;
        assert!(!ia.same_model(&ModelIdentity::of_checkpoint(&large, &a).unwrap()));
        assert!(ModelIdentity::of_checkpoint(&cfg, &dir.join("missing")).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
