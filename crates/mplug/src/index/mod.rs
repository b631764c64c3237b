//! Photo search: an image collection's normalized ITC features (and, optionally, its visual
//! tokens and generated captions) kept in a store, so that a text or an image query ranks the
//! collection without encoding every image again, as the reference's retrieval evaluation
//! does: ITC top `k` by inner product with the query's feature, then ITM re-ranking of those
//! `k`.
//!
//! Two stores behind one trait, [`IndexStore`]:
//! - [`folder::FolderStore`], the default: a folder of safetensors files with a JSON manifest,
//!   searched exactly; no server needed.
//! - `postgres::PgStore` (feature `postgres`): PostgreSQL with pgvector, one row per image and
//!   an HNSW index; several machines index into one database and search it.
//!
//! A store provides a handful of primitives (the images indexed under a folder, remove, write
//! a batch, flush, nearest features); [`IndexStore::add_folder`] and [`IndexStore::search`]
//! are written once on top of them, so both stores index and rank alike.

pub mod folder;
#[cfg(feature = "postgres")]
pub mod postgres;

pub use folder::FolderStore;

use crate::config::MplugConfig;
use crate::error::{Error, Result};
use crate::generate::BeamConfig;
use crate::model::ops::WeightFormat;
use crate::model::Task;
use crate::pipeline::{Pipeline, Visual};
use crate::tasks::retrieval::{self, ImageSide, TextSide};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The folder `mplug index DIR` keeps its index in by default, inside `DIR`.
pub const DEFAULT_INDEX_DIR: &str = ".mplug-index";
/// Pairs fused per ITM call when re-ranking.
const ITM_BATCH: usize = retrieval::ITM_PAIRS_PER_CALL;
/// Bytes hashed at each end of the checkpoint for its fingerprint.
const FINGERPRINT_BYTES: u64 = 4 << 20;

/// FNV-1a, 64 bits: a stable, dependency-free hash for identities (not for security).
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What identifies the model that made an index: its configuration, its checkpoint's contents
/// and the format its weights ran in. Two identities match when the configuration hash, the
/// checkpoint size and its fingerprint, and the weight format agree (the path is informative: a
/// moved or copied checkpoint still matches). The weight format counts because int8 or bf16
/// weights give features a few per cent away from f32's: mixed in one index, the two would
/// rank images by slightly different measures.
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
    /// The format the model's weights ran in. Indexes made before it was recorded read as f32,
    /// the only format `mplug index` loaded then.
    #[serde(default)]
    pub weights: WeightFormat,
}

impl ModelIdentity {
    /// The identity of the model built from `config` and `checkpoint`, its weights held in
    /// `weights`.
    pub fn of_checkpoint(
        config: &MplugConfig,
        checkpoint: &Path,
        weights: WeightFormat,
    ) -> Result<Self> {
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
            weights,
        })
    }

    /// Whether both identities name the same model.
    pub fn same_model(&self, other: &ModelIdentity) -> bool {
        self.config_hash == other.config_hash
            && self.size == other.size
            && self.fingerprint == other.fingerprint
            && self.embed_dim == other.embed_dim
            && self.weights == other.weights
    }

    /// Why an index made by `self` cannot serve `other`, for an error message: the weight
    /// formats when only they differ, else the two checkpoints.
    pub fn mismatch(&self, other: &ModelIdentity) -> String {
        let same_weights = ModelIdentity {
            weights: other.weights,
            ..self.clone()
        };
        if same_weights.same_model(other) {
            format!(
                "it was made with {} weights and this model runs in {} (`--dtype {}` searches it)",
                self.weights.name(),
                other.weights.name(),
                self.weights.name()
            )
        } else {
            format!(
                "it was made by another model ({}, {} bytes), not by {} ({} bytes)",
                self.checkpoint.display(),
                self.size,
                other.checkpoint.display(),
                other.size
            )
        }
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

/// Where an index lives: a folder, or a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A folder of safetensors files ([`FolderStore`]).
    Folder(PathBuf),
    /// A PostgreSQL connection string (`postgres://user@host/db` or `host=/dir dbname=db`).
    Postgres(String),
}

impl Location {
    /// How the location is named in messages (a database's password is not shown).
    pub fn describe(&self) -> String {
        match self {
            Location::Folder(dir) => dir.display().to_string(),
            Location::Postgres(_) => "PostgreSQL".to_string(),
        }
    }
}

/// How to open a store.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// How new images' visual tokens are kept (rows already stored keep theirs).
    pub tokens: TokenStorage,
    /// Start afresh when the index was made by another model (or, in a folder, for another
    /// image folder or damaged).
    pub rebuild: bool,
    /// Open only an index that exists (searching), instead of starting an empty one.
    pub existing: bool,
    /// The least time between two commits while indexing, for a store that commits several
    /// batches at once (the folder store; default [`folder::COMMIT_EVERY`]).
    pub commit_every: Option<std::time::Duration>,
}

/// Opens (or starts) the index at `location` for `model`; another model's index is refused
/// unless `options.rebuild`.
pub fn open(
    location: &Location,
    model: &ModelIdentity,
    options: OpenOptions,
) -> Result<Box<dyn IndexStore>> {
    match location {
        Location::Folder(dir) => Ok(Box::new(FolderStore::open(dir, model, options)?)),
        #[cfg(feature = "postgres")]
        Location::Postgres(url) => Ok(Box::new(postgres::PgStore::connect(url, model, options)?)),
        #[cfg(not(feature = "postgres"))]
        Location::Postgres(_) => Err(Error::Unsupported(
            "this mplug was built without the `postgres` feature, which a PostgreSQL index needs"
                .into(),
        )),
    }
}

/// An image that could not be indexed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// What [`IndexStore::add_folder`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddReport {
    /// Images encoded for the first time.
    pub added: usize,
    /// Images encoded again: their size or modification time changed, or captions were asked
    /// for and they had none.
    pub updated: usize,
    /// Images removed because their files are gone (or now unreadable).
    pub removed: usize,
    /// Images kept as they were.
    pub unchanged: usize,
    /// Captions generated.
    pub captioned: usize,
    /// Files that could not be read or decoded (not indexed; tried again next time).
    pub skipped: Vec<Skipped>,
}

/// How [`IndexStore::add_folder`] encodes.
#[derive(Clone)]
pub struct AddOptions<'a> {
    /// Images encoded per model call.
    pub batch_size: usize,
    /// A caption model: each new or changed image gets its best caption (beam search with
    /// `caption_beam`), and indexed images without one get one.
    pub captioner: Option<&'a Pipeline>,
    /// Decoding settings of the captions.
    pub caption_beam: BeamConfig,
}

impl Default for AddOptions<'_> {
    fn default() -> Self {
        AddOptions {
            batch_size: 16,
            captioner: None,
            caption_beam: BeamConfig::caption(),
        }
    }
}

/// A query: a text, or an image (a file, or an image already preprocessed for the model).
#[derive(Debug, Clone, Copy)]
pub enum Query<'a> {
    /// Images matching a text: ITC top `k`, re-ranked by ITM.
    Text(&'a str),
    /// Images like the one in this file, by ITC similarity.
    ImageFile(&'a Path),
    /// Images like this preprocessed image, `(3, R, R)` or `(1, 3, R, R)`, by ITC similarity.
    Image(&'a Tensor),
}

/// Options of a search.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// Candidates taken by ITC similarity and re-ranked by ITM (a text query): pages go
    /// through these `k`.
    pub k: usize,
    /// Hits returned (a page).
    pub limit: usize,
    /// Hits skipped before the page.
    pub offset: usize,
    /// Hits scoring below this are left out (the ranking score: the ITM logit, or the ITC
    /// similarity for an image query or with `itc_only`).
    pub min_score: Option<f32>,
    /// Only images under this folder.
    pub under: Option<PathBuf>,
    /// Rank a text query by ITC similarity alone, no ITM re-ranking.
    pub itc_only: bool,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            k: 16,
            limit: 10,
            offset: 0,
            min_score: None,
            under: None,
            itc_only: false,
        }
    }
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The image file.
    pub path: PathBuf,
    /// ITM positive logit of (image, query text): the ranking score of a text query; NaN for
    /// an image query or with `itc_only`.
    pub itm: f32,
    /// ITC similarity of the normalized features.
    pub itc: f32,
    /// The caption generated at indexing, if any.
    pub caption: Option<String>,
}

impl Hit {
    /// The score the hit was ranked by: the ITM logit when there is one, else the ITC
    /// similarity.
    pub fn score(&self) -> f32 {
        if self.itm.is_nan() {
            self.itc
        } else {
            self.itm
        }
    }
}

/// An indexed file's size and modification time when it was encoded, and whether it has a
/// caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    /// Whether a caption is stored.
    pub captioned: bool,
}

/// One image's row, as [`IndexStore::write`] stores it.
#[derive(Debug, Clone)]
pub struct Row {
    /// The image file, absolute.
    pub path: PathBuf,
    /// Its size and modification time.
    pub stamp: Stamp,
    /// The normalized ITC feature.
    pub feature: Vec<f32>,
    /// Visual tokens `(L, H)` on the CPU in the store's precision, if kept.
    pub tokens: Option<Tensor>,
    /// The generated caption, if any.
    pub caption: Option<String>,
}

/// An image [`IndexStore::nearest`] found.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The image file, absolute.
    pub path: PathBuf,
    /// Its size and modification time when indexed.
    pub stamp: Stamp,
    /// ITC similarity to the query.
    pub itc: f32,
    /// Its stored visual tokens `(L, H)`, when asked for and kept.
    pub tokens: Option<Tensor>,
    /// Its caption, if any.
    pub caption: Option<String>,
}

/// A place that keeps an image index: the primitives each store provides, and indexing and
/// searching written once on top of them.
pub trait IndexStore: Send {
    /// Where the index lives, for messages.
    fn location(&self) -> String;

    /// The model whose features the index holds.
    fn model(&self) -> &ModelIdentity;

    /// How new images' visual tokens are kept.
    fn tokens(&self) -> TokenStorage;

    /// Images in the index.
    fn len(&mut self) -> Result<usize>;

    /// Whether the index holds no image.
    fn is_empty(&mut self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Starts an update of the images under the folder `root` (canonical): the images indexed
    /// there, by absolute path. A store that keeps one folder's images refuses another here.
    fn indexed_under(&mut self, root: &Path) -> Result<HashMap<PathBuf, Stamp>>;

    /// Removes the rows of these images (absolute paths); returns how many there were.
    fn remove(&mut self, paths: &[PathBuf]) -> Result<usize>;

    /// Writes one batch of rows, replacing those of the same paths. The batch is committed
    /// when this returns, or at the latest by [`flush`](Self::flush) (a store may commit
    /// several batches at once; what it committed survives a killed run).
    fn write(&mut self, rows: Vec<Row>) -> Result<()>;

    /// Commits every batch written.
    fn flush(&mut self) -> Result<()>;

    /// The `n` indexed images whose features have the highest inner product with `feature`,
    /// best first, only those under the folder `under` (canonical) when given, with their
    /// visual tokens when `with_tokens`.
    fn nearest(
        &mut self,
        feature: &[f32],
        n: usize,
        under: Option<&Path>,
        with_tokens: bool,
    ) -> Result<Vec<Candidate>>;

    /// Brings the index up to date with the images under `root`: encodes new files and files
    /// whose size or modification time changed (`options.batch_size` at a time, the next
    /// batch decoded while the model encodes this one), removes the images whose files are
    /// gone, and commits as it goes. Unreadable images are skipped and listed in the report.
    /// `progress(done, total)` is called as images are encoded (`total` images to encode,
    /// `0` first).
    fn add_folder(
        &mut self,
        pipeline: &Pipeline,
        root: &Path,
        options: &AddOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<AddReport> {
        check_retrieval(pipeline, self.model().embed_dim)?;
        let root = fs::canonicalize(root).map_err(io_err(root))?;
        if !root.is_dir() {
            return Err(Error::invalid(format!(
                "{} is not a folder",
                root.display()
            )));
        }
        let batch_size = options.batch_size.max(1);
        let files = crate::input::image_files(&root)?;
        let known = self.indexed_under(&root)?;
        let mut report = AddReport::default();
        let mut todo: Vec<(PathBuf, Stamp, bool)> = Vec::new();
        let mut present: HashSet<&Path> = HashSet::new();
        for (_, abs) in &files {
            let meta = match fs::metadata(abs) {
                Ok(m) => m,
                Err(e) => {
                    report.skipped.push(Skipped {
                        path: abs.clone(),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let stamp = Stamp {
                size: meta.len(),
                mtime_ns: mtime_ns(&meta),
                captioned: false,
            };
            present.insert(abs);
            match known.get(abs) {
                Some(k)
                    if k.size == stamp.size
                        && k.mtime_ns == stamp.mtime_ns
                        && (k.captioned || options.captioner.is_none()) =>
                {
                    report.unchanged += 1
                }
                found => todo.push((abs.clone(), stamp, found.is_some())),
            }
        }
        let gone: Vec<PathBuf> = known
            .keys()
            .filter(|k| !present.contains(k.as_path()))
            .cloned()
            .collect();
        if !gone.is_empty() {
            report.removed += self.remove(&gone)?;
        }

        let token_dtype = self.tokens().dtype();
        let total = todo.len();
        progress(0, total);
        let mut done = 0;
        std::thread::scope(|scope| -> Result<()> {
            // Decoding runs one batch ahead of the model, on its own thread (and each batch's
            // files in parallel): the channel holds one decoded batch.
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let chunks = todo.chunks(batch_size);
            scope.spawn(move || {
                for chunk in chunks {
                    let paths: Vec<&Path> = chunk.iter().map(|t| t.0.as_path()).collect();
                    let decoded = decode_batch(pipeline, options.captioner, &paths);
                    if tx.send(decoded).is_err() {
                        break; // The model's side stopped (an error).
                    }
                }
            });
            for (chunk, decoded) in todo.chunks(batch_size).zip(rx) {
                let Decoded {
                    images,
                    caption_images,
                    ok,
                    failed,
                } = decoded?;
                let mut unreadable = Vec::new();
                for (i, reason) in failed {
                    let (path, _, existed) = &chunk[i];
                    // An indexed file that became unreadable leaves the index.
                    if *existed {
                        unreadable.push(path.clone());
                    }
                    report.skipped.push(Skipped {
                        path: path.clone(),
                        reason,
                    });
                }
                if !unreadable.is_empty() {
                    report.removed += self.remove(&unreadable)?;
                }
                if let Some(images) = images {
                    let side = pipeline.image_side(Visual::Images(&images))?;
                    let feats = side.feat.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                    let mut captions = match (options.captioner, &caption_images) {
                        (Some(c), Some(ci)) => c
                            .caption(ci, &options.caption_beam)?
                            .into_iter()
                            .map(|hyps| hyps.into_iter().next().map(|h| h.text))
                            .collect(),
                        _ => vec![None; ok.len()],
                    }
                    .into_iter();
                    let mut rows = Vec::with_capacity(ok.len());
                    for (b, (&i, feature)) in ok.iter().zip(feats).enumerate() {
                        let (path, stamp, existed) = &chunk[i];
                        let tokens = match token_dtype {
                            Some(dt) => {
                                Some(side.embeds.get(b)?.to_dtype(dt)?.to_device(&Device::Cpu)?)
                            }
                            None => None,
                        };
                        let caption: Option<String> = captions.next().flatten();
                        report.captioned += usize::from(caption.is_some());
                        if *existed {
                            report.updated += 1;
                        } else {
                            report.added += 1;
                        }
                        rows.push(Row {
                            path: path.clone(),
                            stamp: Stamp {
                                captioned: caption.is_some(),
                                ..*stamp
                            },
                            feature,
                            tokens,
                            caption,
                        });
                    }
                    self.write(rows)?;
                }
                done += chunk.len();
                progress(done, total);
            }
            Ok(())
        })?;
        self.flush()?;
        Ok(report)
    }

    /// Ranks the indexed images for `query` (see [`SearchOptions`]): a text's ITC top `k`
    /// re-ranked by the ITM positive logit (or its ITC ranking with `itc_only`), or an
    /// image's nearest by ITC similarity; then `min_score`, `offset` and `limit`. Visual
    /// tokens for re-ranking come from the store, or from the image files of images indexed
    /// without them (a file changed or removed since indexing is an error asking to index
    /// again).
    fn search(
        &mut self,
        pipeline: &Pipeline,
        query: Query,
        options: &SearchOptions,
    ) -> Result<Vec<Hit>> {
        check_retrieval(pipeline, self.model().embed_dim)?;
        let o = options;
        if o.limit == 0 {
            return Err(Error::invalid(
                "the limit (--top/--limit) must be at least 1",
            ));
        }
        let under = o
            .under
            .as_ref()
            .map(|u| fs::canonicalize(u).map_err(io_err(u)))
            .transpose()?;
        let page = o.offset.saturating_add(o.limit);
        let (texts, feature, n) = match query {
            Query::Text(text) => {
                if text.trim().is_empty() {
                    return Err(Error::invalid("the query text is empty"));
                }
                if o.k == 0 && !o.itc_only {
                    return Err(Error::invalid("--k must be at least 1"));
                }
                let texts = pipeline.text_side(&[text])?;
                let q = texts.feat.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                let n = if o.itc_only { page } else { o.k };
                (Some(texts).filter(|_| !o.itc_only), first_row(q)?, n)
            }
            Query::ImageFile(path) => {
                let images = pipeline.load_images(&[path])?;
                (None, image_feature(pipeline, &images)?, page)
            }
            Query::Image(image) => {
                let images = match image.rank() {
                    3 => image.unsqueeze(0)?,
                    _ => image.clone(),
                };
                (None, image_feature(pipeline, &images)?, page)
            }
        };
        let candidates = self.nearest(&feature, n, under.as_deref(), texts.is_some())?;
        let mut hits: Vec<Hit> = candidates
            .iter()
            .map(|c| Hit {
                path: c.path.clone(),
                itm: f32::NAN,
                itc: c.itc,
                caption: c.caption.clone(),
            })
            .collect();
        if let Some(texts) = &texts {
            let tokens = candidate_tokens(pipeline, candidates)?;
            let itm = itm_of_candidates(pipeline, &tokens, texts)?;
            for (h, s) in hits.iter_mut().zip(itm) {
                h.itm = s;
            }
            hits.sort_by(|a, b| b.itm.total_cmp(&a.itm).then(b.itc.total_cmp(&a.itc)));
        }
        Ok(hits
            .into_iter()
            .filter(|h| o.min_score.is_none_or(|m| h.score() >= m))
            .skip(o.offset)
            .take(o.limit)
            .collect())
    }
}

fn first_row(mut rows: Vec<Vec<f32>>) -> Result<Vec<f32>> {
    if rows.is_empty() {
        return Err(Error::invalid("the model returned no feature"));
    }
    Ok(rows.swap_remove(0))
}

/// The normalized ITC feature of one preprocessed image `(1, 3, R, R)`.
fn image_feature(pipeline: &Pipeline, images: &Tensor) -> Result<Vec<f32>> {
    let feat = pipeline.image_side(Visual::Images(images))?.feat;
    first_row(feat.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

/// The candidates' visual tokens `(1, L, H)` on the model's device and in its precision: the
/// stored ones, or the files encoded again (checked to be the files that were indexed).
fn candidate_tokens(pipeline: &Pipeline, candidates: Vec<Candidate>) -> Result<Vec<Tensor>> {
    let model = pipeline.model();
    let mut tokens: Vec<Option<Tensor>> = Vec::with_capacity(candidates.len());
    let mut from_files: Vec<(usize, PathBuf)> = Vec::new();
    for (i, c) in candidates.into_iter().enumerate() {
        match c.tokens {
            Some(t) => tokens.push(Some(
                t.to_dtype(model.dtype())?
                    .to_device(model.device())?
                    .unsqueeze(0)?,
            )),
            None => {
                tokens.push(None);
                from_files.push((i, unchanged_file(&c.path, c.stamp)?));
            }
        }
    }
    for chunk in from_files.chunks(ITM_BATCH) {
        let paths: Vec<&Path> = chunk.iter().map(|(_, p)| p.as_path()).collect();
        let images = pipeline.load_images(&paths)?;
        let embeds = pipeline.visual_tokens(Visual::Images(&images))?;
        for (b, (i, _)) in chunk.iter().enumerate() {
            tokens[*i] = Some(embeds.get(b)?.unsqueeze(0)?);
        }
    }
    tokens
        .into_iter()
        .map(|t| t.ok_or_else(|| Error::invalid("visual tokens missing for a candidate")))
        .collect()
}

/// An indexed file without stored tokens, checked to be the one that was indexed.
fn unchanged_file(path: &Path, stamp: Stamp) -> Result<PathBuf> {
    let meta = fs::metadata(path).map_err(|err| {
        Error::invalid(format!(
            "{} is indexed but unreadable ({err}); run `mplug index` again",
            path.display()
        ))
    })?;
    if meta.len() != stamp.size || mtime_ns(&meta) != stamp.mtime_ns {
        return Err(Error::invalid(format!(
            "{} changed since it was indexed; run `mplug index` again",
            path.display()
        )));
    }
    Ok(path.to_path_buf())
}

/// One decoded batch: the images that load as one tensor (and the caption model's inputs for
/// them), their positions in the batch, and the positions and errors of those that do not.
struct Decoded {
    images: Option<Tensor>,
    caption_images: Option<Tensor>,
    ok: Vec<usize>,
    failed: Vec<(usize, String)>,
}

/// Decodes a batch of image files in parallel, for the model and for the caption model (its
/// resolution may differ).
fn decode_batch(
    pipeline: &Pipeline,
    captioner: Option<&Pipeline>,
    paths: &[&Path],
) -> Result<Decoded> {
    type Pair = (Tensor, Option<Tensor>);
    let results: Vec<std::result::Result<Pair, String>> = paths
        .par_iter()
        .map(|path| {
            let one = std::slice::from_ref(path);
            let image = pipeline.load_images(one).map_err(|e| e.to_string())?;
            let caption = captioner
                .map(|c| c.load_images(one))
                .transpose()
                .map_err(|e| e.to_string())?;
            Ok((image, caption))
        })
        .collect();
    let (mut images, mut captions, mut ok, mut failed) = (vec![], vec![], vec![], vec![]);
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok((image, caption)) => {
                images.push(image);
                captions.extend(caption);
                ok.push(i);
            }
            Err(e) => failed.push((i, e)),
        }
    }
    let cat = |t: &[Tensor]| -> Result<Option<Tensor>> {
        Ok(if t.is_empty() {
            None
        } else {
            Some(Tensor::cat(t, 0)?)
        })
    };
    Ok(Decoded {
        images: cat(&images)?,
        caption_images: cat(&captions)?,
        ok,
        failed,
    })
}

/// The ITM positive logit of one query text (`texts`, one row) against each candidate's visual
/// tokens (`(1, L, H)` each, in order), a few pairs per fusion pass.
fn itm_of_candidates(pipeline: &Pipeline, tokens: &[Tensor], texts: &TextSide) -> Result<Vec<f32>> {
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
fn check_retrieval(pipeline: &Pipeline, embed_dim: usize) -> Result<()> {
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

/// The inner product of two features.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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
        let f32 = WeightFormat::F32;
        let ia = ModelIdentity::of_checkpoint(&cfg, &a, f32).unwrap();
        assert!(ia.same_model(&ModelIdentity::of_checkpoint(&cfg, &b, f32).unwrap()));
        assert!(!ia.same_model(&ModelIdentity::of_checkpoint(&cfg, &c, f32).unwrap()));
        let mut large = MplugConfig::base();
        large.embed_dim += 1;
        assert!(!ia.same_model(&ModelIdentity::of_checkpoint(&large, &a, f32).unwrap()));
        assert!(ModelIdentity::of_checkpoint(&cfg, &dir.join("missing"), f32).is_err());
        // The same checkpoint in int8 is another model for an index, and the message says why.
        let int8 = ModelIdentity::of_checkpoint(&cfg, &b, WeightFormat::Int8).unwrap();
        assert!(!ia.same_model(&int8));
        let why = ia.mismatch(&int8);
        assert!(why.contains("f32 weights") && why.contains("int8"), "{why}");
        let c = ModelIdentity::of_checkpoint(&cfg, &c, WeightFormat::Int8).unwrap();
        assert!(ia.mismatch(&c).contains("another model"));
        // An identity recorded before the weight format was reads as f32.
        let mut old = serde_json::to_value(&ia).unwrap();
        assert_eq!(old["weights"], "f32");
        old.as_object_mut().unwrap().remove("weights");
        let old: ModelIdentity = serde_json::from_value(old).unwrap();
        assert!(old.same_model(&ia));
        let _ = fs::remove_dir_all(&dir);
    }
}
