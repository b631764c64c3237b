//! The folder store, the default: one image folder's index kept in a folder of files, searched
//! exactly (every feature's inner product with the query; no server needed).
//!
//! - `manifest.json`: the model that made it ([`ModelIdentity`]), the image root, and one entry
//!   per image (path relative to the root, file size, modification time, feature row, token
//!   shard, caption);
//! - `features.safetensors`: `features` `(N, embed_dim)` f32, normalized, and `ids` `(N,)` u32
//!   naming the entry of each row (checked on opening, so a torn update is noticed);
//! - `tokens-XXXX.safetensors` (optional): each image's visual tokens `(Li, H)` in f16 (or f32)
//!   under the key `t<id>`, for ITM re-ranking without decoding the image again. Without them
//!   the top `k` images are encoded again from their files at search time.
//!
//! Every file is written to a temporary name and renamed into place; `manifest.json` is
//! written last and is the commit point. While indexing, the store commits every half minute
//! or so (less often as the index grows, so that saving stays a small part of the work), so a
//! killed run keeps what it committed. Token shards no entry refers to are deleted.

use super::{
    dot, io_err, Candidate, IndexStore, ModelIdentity, OpenOptions, Row, Stamp, TokenStorage,
};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The manifest's file name inside an index folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The features' file name inside an index folder.
pub const FEATURES_FILE: &str = "features.safetensors";
/// Images per token shard.
pub const SHARD_IMAGES: usize = 64;
/// Version of the on-disk layout (captions were added as an optional field, readable by
/// version 1 readers that ignore it).
const FORMAT_VERSION: u32 = 1;
/// The lock file inside an index folder (hidden, so indexing its parent leaves it out).
const LOCK_FILE: &str = ".lock";
/// The least time between two commits while indexing, by default.
pub const COMMIT_EVERY: Duration = Duration::from_secs(30);

/// One indexed image, as the manifest lists it.
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
    /// The caption generated at indexing, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
}

impl Entry {
    /// The file's size and modification time when encoded, and whether it has a caption.
    fn stamp(&self) -> Stamp {
        Stamp {
            size: self.size,
            mtime_ns: self.mtime_ns,
            captioned: self.caption.is_some(),
        }
    }
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

/// An image folder's index in a folder of files; see the module documentation.
#[derive(Debug)]
pub struct FolderStore {
    dir: PathBuf,
    model: ModelIdentity,
    root: Option<PathBuf>,
    next_id: u32,
    next_shard: u32,
    /// By relative path.
    entries: BTreeMap<String, Entry>,
    /// Row-major `(rows, E)`; entries name their row. Rows of removed or replaced entries stay
    /// until the next commit compacts them.
    features: Vec<f32>,
    /// The relative path of the entry each row holds (`None`: a row left by a removed or
    /// replaced entry).
    owners: Vec<Option<String>>,
    tokens: TokenStorage,
    /// Visual tokens written since the last shard was saved, by entry id.
    pending: HashMap<u32, Tensor>,
    /// Whether something changed since the last commit.
    dirty: bool,
    last_commit: Instant,
    commit_took: Duration,
    /// The least time between two commits while indexing.
    commit_every: Duration,
    /// The manifest's modification time when read or written (a search re-reads an index
    /// another process updated since).
    manifest_mtime: Option<SystemTime>,
    /// The index folder's lock file, held from the start of an update until the store is
    /// dropped (a second indexer waits for it).
    lock: Option<fs::File>,
}

fn load_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        Error::Config(format!(
            "index file {} is unreadable ({e}); run `mplug index` with --rebuild",
            path.display()
        ))
    })
}

/// Writes a file through a temporary name and a rename.
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

fn manifest_mtime(dir: &Path) -> Option<SystemTime> {
    fs::metadata(dir.join(MANIFEST_FILE))
        .and_then(|m| m.modified())
        .ok()
}

fn shard_file(shard: u32) -> String {
    format!("tokens-{shard:04}.safetensors")
}

impl FolderStore {
    /// Opens the index in `dir`, or starts an empty one there (written by the first commit)
    /// unless `options.existing`. An index made by another model, or an unreadable one, is
    /// refused unless `options.rebuild`, which starts afresh.
    pub fn open(
        dir: impl AsRef<Path>,
        model: &ModelIdentity,
        options: OpenOptions,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let exists = dir.join(MANIFEST_FILE).is_file();
        if options.existing && !exists {
            return Err(Error::Config(format!(
                "{} holds no image index (no {MANIFEST_FILE}); build one with `mplug index`",
                dir.display()
            )));
        }
        let mut store = if exists && !options.rebuild {
            Self::read(dir, model)?
        } else {
            FolderStore {
                dir: dir.to_path_buf(),
                model: model.clone(),
                root: None,
                next_id: 0,
                next_shard: 0,
                entries: BTreeMap::new(),
                features: Vec::new(),
                owners: Vec::new(),
                tokens: TokenStorage::None,
                pending: HashMap::new(),
                // A rebuilt index is written even when no image is added.
                dirty: exists,
                last_commit: Instant::now(),
                commit_took: Duration::ZERO,
                commit_every: COMMIT_EVERY,
                manifest_mtime: None,
                lock: None,
            }
        };
        store.tokens = options.tokens;
        store.commit_every = options.commit_every.unwrap_or(COMMIT_EVERY);
        Ok(store)
    }

    fn read(dir: &Path, model: &ModelIdentity) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
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
                "cannot use the index in {}: {}; search with that model or rebuild the index \
                 (`mplug index --rebuild`)",
                dir.display(),
                manifest.model.mismatch(model)
            )));
        }
        let mut entries = manifest.entries;
        let features = if entries.is_empty() {
            Vec::new()
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
            // hold their id are dropped (encoded again by the next indexing run).
            entries.retain(|en| ids.get(en.row).is_some_and(|&id| id == en.id));
            feats
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
        };
        let mut owners = vec![None; features.len() / manifest.model.embed_dim.max(1)];
        for e in &entries {
            owners[e.row] = Some(e.path.clone());
        }
        Ok(FolderStore {
            owners,
            dir: dir.to_path_buf(),
            model: manifest.model,
            root: manifest.root,
            next_id: manifest.next_id,
            next_shard: manifest.next_shard,
            entries: entries.into_iter().map(|e| (e.path.clone(), e)).collect(),
            features,
            tokens: TokenStorage::default(),
            pending: HashMap::new(),
            dirty: false,
            last_commit: Instant::now(),
            commit_took: Duration::ZERO,
            commit_every: COMMIT_EVERY,
            manifest_mtime: manifest_mtime(dir),
            lock: None,
        })
    }

    /// The index folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image root, once images were added.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The indexed images, by relative path.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    fn feature(&self, e: &Entry) -> &[f32] {
        let dim = self.model.embed_dim;
        &self.features[e.row * dim..(e.row + 1) * dim]
    }

    /// The path of `abs` relative to the root, `/`-separated.
    fn relative(&self, abs: &Path) -> Result<String> {
        let root = self.root.as_deref().unwrap_or(Path::new("/"));
        let rel = abs.strip_prefix(root).map_err(|_| {
            Error::invalid(format!(
                "{} is not under the index's image folder {}",
                abs.display(),
                root.display()
            ))
        })?;
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        Ok(parts.join("/"))
    }

    /// Saves the pending visual tokens as a shard, naming it in their entries.
    fn write_shard(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let number = self.next_shard;
        let tensors: HashMap<String, Tensor> = self
            .pending
            .drain()
            .map(|(id, t)| (format!("t{id}"), t))
            .collect();
        save_tensors(&tensors, &self.dir.join(shard_file(number)))?;
        self.next_shard += 1;
        for e in self.entries.values_mut() {
            if e.shard.is_none() && tensors.contains_key(&format!("t{}", e.id)) {
                e.shard = Some(number);
            }
        }
        Ok(())
    }

    /// Writes the pending shard, the features (compacted), then the manifest, then deletes
    /// unreferenced token shards.
    fn commit(&mut self) -> Result<()> {
        let start = Instant::now();
        self.write_shard()?;
        let dim = self.model.embed_dim;
        let mut features = Vec::with_capacity(self.entries.len() * dim);
        let mut ids = Vec::with_capacity(self.entries.len());
        let mut listed = Vec::with_capacity(self.entries.len());
        for e in self.entries.values() {
            features.extend_from_slice(self.feature(e));
            ids.push(e.id);
            listed.push(Entry {
                row: listed.len(),
                ..e.clone()
            });
        }
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let fpath = self.dir.join(FEATURES_FILE);
        let n = ids.len();
        if n > 0 {
            let mut t = HashMap::new();
            t.insert(
                "features".to_string(),
                Tensor::from_slice(&features, (n, dim), &Device::Cpu)?,
            );
            t.insert("ids".to_string(), Tensor::from_vec(ids, n, &Device::Cpu)?);
            save_tensors(&t, &fpath)?;
        } else if fpath.exists() {
            fs::remove_file(&fpath).map_err(io_err(&fpath))?;
        }
        let manifest = Manifest {
            version: FORMAT_VERSION,
            model: self.model.clone(),
            root: self.root.clone(),
            next_id: self.next_id,
            next_shard: self.next_shard,
            entries: listed,
        };
        let json = serde_json::to_string_pretty(&manifest)
            .map_err(|e| Error::Config(format!("cannot serialize the manifest: {e}")))?;
        write_atomic(&self.dir.join(MANIFEST_FILE), |tmp| {
            fs::write(tmp, json).map_err(io_err(tmp))
        })?;
        // The compacted rows, as written.
        self.features = features;
        self.owners = Vec::with_capacity(self.entries.len());
        for (row, e) in self.entries.values_mut().enumerate() {
            e.row = row;
            self.owners.push(Some(e.path.clone()));
        }
        let used: HashSet<String> = self
            .entries
            .values()
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
        self.dirty = false;
        self.manifest_mtime = manifest_mtime(&self.dir);
        self.last_commit = Instant::now();
        self.commit_took = start.elapsed();
        Ok(())
    }
}

/// Rows scored per block of the parallel scan.
const SCAN_BLOCK: usize = 8192;

/// Keeps the best `n` of `(score, row)` pairs, best first; ties go to the row whose path sorts
/// first (`owners`: each row's path).
fn keep_best(
    mut scored: Vec<(f32, usize)>,
    n: usize,
    owners: &[Option<String>],
) -> Vec<(f32, usize)> {
    let by_score = |a: &(f32, usize), b: &(f32, usize)| {
        b.0.total_cmp(&a.0)
            .then_with(|| owners[a.1].cmp(&owners[b.1]))
    };
    if n < scored.len() {
        scored.select_nth_unstable_by(n, by_score);
        scored.truncate(n);
    }
    scored.sort_by(by_score);
    scored
}

impl FolderStore {
    /// Whether the manifest on disk is not the one this store read or wrote last (another
    /// process committed since).
    fn committed_elsewhere(&self) -> bool {
        let on_disk = manifest_mtime(&self.dir);
        on_disk.is_some() && on_disk != self.manifest_mtime
    }

    /// Reads the index from disk again, keeping this store's settings; unchanged on error.
    fn reload(&mut self) -> Result<()> {
        let mut fresh = Self::read(&self.dir, &self.model)?;
        fresh.tokens = self.tokens;
        fresh.commit_every = self.commit_every;
        *self = fresh;
        Ok(())
    }

    /// The `n` live rows of highest inner product with `feature` (only those of images under
    /// `under` when given), best first: blocks of the feature matrix scored in parallel, each
    /// keeping its best `n`, then merged.
    fn top_rows(&self, feature: &[f32], n: usize, under: Option<&Path>) -> Vec<(f32, usize)> {
        use rayon::prelude::*;
        let dim = self.model.embed_dim;
        let root = self.root.as_deref().unwrap_or(Path::new("/"));
        let blocks: Vec<Vec<(f32, usize)>> = self
            .features
            .par_chunks(SCAN_BLOCK * dim)
            .enumerate()
            .map(|(b, block)| {
                let scored = block
                    .chunks_exact(dim)
                    .enumerate()
                    .map(|(i, row)| (b * SCAN_BLOCK + i, row))
                    .filter(|(r, _)| {
                        self.owners[*r]
                            .as_ref()
                            .is_some_and(|rel| under.is_none_or(|u| root.join(rel).starts_with(u)))
                    })
                    .map(|(r, row)| (dot(row, feature), r))
                    .collect();
                keep_best(scored, n, &self.owners)
            })
            .collect();
        keep_best(blocks.concat(), n, &self.owners)
    }
}

impl IndexStore for FolderStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn model(&self) -> &ModelIdentity {
        &self.model
    }

    fn tokens(&self) -> TokenStorage {
        self.tokens
    }

    fn len(&mut self) -> Result<usize> {
        Ok(self.entries.len())
    }

    fn indexed_under(&mut self, root: &Path) -> Result<HashMap<PathBuf, Stamp>> {
        // One indexer at a time: wait for the lock, then start from what an indexer that held
        // it committed meanwhile (unless this run starts the index afresh).
        if self.lock.is_none() {
            fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
            let path = self.dir.join(LOCK_FILE);
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            file.lock().map_err(io_err(&path))?;
            if !self.dirty && self.committed_elsewhere() {
                self.reload()?;
            }
            self.lock = Some(file);
        }
        match &self.root {
            Some(old) if old != root && !self.entries.is_empty() => {
                return Err(Error::invalid(format!(
                    "the index in {} is for images under {}, not {}; use another --index or \
                     --rebuild",
                    self.dir.display(),
                    old.display(),
                    root.display()
                )));
            }
            Some(old) if old == root => {}
            _ => {
                self.root = Some(root.to_path_buf());
                self.dirty = true;
            }
        }
        Ok(self
            .entries
            .values()
            .map(|e| (root.join(&e.path), e.stamp()))
            .collect())
    }

    fn remove(&mut self, paths: &[PathBuf]) -> Result<usize> {
        let mut n = 0;
        for p in paths {
            if let Some(e) = self.entries.remove(&self.relative(p)?) {
                self.pending.remove(&e.id);
                self.owners[e.row] = None;
                n += 1;
                self.dirty = true;
            }
        }
        Ok(n)
    }

    fn write(&mut self, rows: Vec<Row>) -> Result<()> {
        let dim = self.model.embed_dim;
        for row in rows {
            if row.feature.len() != dim {
                return Err(Error::invalid(format!(
                    "a feature of {} values for an index of {dim}-wide features",
                    row.feature.len()
                )));
            }
            let rel = self.relative(&row.path)?;
            let id = self.next_id;
            self.next_id = id.checked_add(1).ok_or_else(|| {
                Error::invalid("the index ran out of ids; rebuild it with --rebuild")
            })?;
            if let Some(old) = self.entries.remove(&rel) {
                self.pending.remove(&old.id);
                self.owners[old.row] = None;
            }
            if let Some(t) = row.tokens {
                self.pending.insert(id, t);
            }
            let entry = Entry {
                path: rel.clone(),
                size: row.stamp.size,
                mtime_ns: row.stamp.mtime_ns,
                row: self.features.len() / dim,
                id,
                shard: None,
                caption: row.caption,
            };
            self.features.extend_from_slice(&row.feature);
            self.owners.push(Some(rel.clone()));
            self.entries.insert(rel, entry);
            self.dirty = true;
        }
        if self.pending.len() >= SHARD_IMAGES {
            self.write_shard()?;
        }
        // Commit now and then, less often as a commit takes longer (at most a tenth of the
        // time goes to saving).
        if self.last_commit.elapsed() >= self.commit_every.max(self.commit_took * 10) {
            self.commit()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.dirty || !self.pending.is_empty() {
            self.commit()?;
        }
        Ok(())
    }

    fn nearest(
        &mut self,
        feature: &[f32],
        n: usize,
        under: Option<&Path>,
        with_tokens: bool,
    ) -> Result<Vec<Candidate>> {
        // Another process (`mplug index` while a server searches) committed since: read the
        // index again (kept as it was if that fails, say while a commit is half written).
        if !self.dirty && self.pending.is_empty() && self.committed_elsewhere() {
            let _ = self.reload();
        }
        let Some(root) = self.root.clone() else {
            return Ok(Vec::new());
        };
        let scored: Vec<(f32, &Entry)> = self
            .top_rows(feature, n, under)
            .into_iter()
            .filter_map(|(score, row)| {
                let rel = self.owners[row].as_ref()?;
                Some((score, self.entries.get(rel)?))
            })
            .collect();
        let mut out: Vec<Candidate> = scored
            .iter()
            .map(|(itc, e)| Candidate {
                path: root.join(&e.path),
                stamp: e.stamp(),
                itc: *itc,
                tokens: None,
                caption: e.caption.clone(),
            })
            .collect();
        if with_tokens {
            // Each shard read once.
            let mut by_shard: BTreeMap<u32, Vec<(usize, u32)>> = BTreeMap::new();
            for (i, (_, e)) in scored.iter().enumerate() {
                match e.shard {
                    Some(s) => by_shard.entry(s).or_default().push((i, e.id)),
                    None => out[i].tokens = self.pending.get(&e.id).cloned(),
                }
            }
            for (s, members) in by_shard {
                let mut shard = load_safetensors(&self.dir.join(shard_file(s)))?;
                for (i, id) in members {
                    out[i].tokens = shard.remove(&format!("t{id}"));
                }
            }
        }
        Ok(out)
    }
}
