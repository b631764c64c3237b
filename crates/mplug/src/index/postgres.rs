//! The photo index on PostgreSQL with pgvector, beside the folder store: one row per image
//! (absolute path, size, modification time, ITC feature as `vector`, visual tokens for ITM
//! re-ranking as `bytea`), an HNSW index on the features (inner product: they are
//! normalized), the model's identity and a schema version in a metadata table, and migrations
//! from version to version. Several machines may index into one database and search it.
//!
//! Indexing commits each batch in its own transaction, so a killed run keeps every batch it
//! finished and the next run encodes only what is missing; rows are keyed by path, so writing
//! the same image twice (two indexers, a resumed run) updates one row.
//!
//! Searching: ITC top `k` by the HNSW index (optionally under a folder), re-ranked by the ITM
//! positive logit (visual tokens from the row, or the file encoded again), then `--min-score`,
//! `--offset` and `--limit`.

use super::{
    check_retrieval, itm_of_candidates, load_batch, mtime_ns, AddReport, Hit, ModelIdentity,
    Skipped, TokenStorage,
};
use crate::error::{Error, Result};
use crate::pipeline::{Pipeline, Visual};
use candle_core::{DType, Device, Tensor};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The schema this code writes; older databases are migrated up to it.
pub const SCHEMA_VERSION: i32 = 1;

/// Options of a search.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// Candidates taken by ITC similarity and re-ranked by ITM.
    pub k: usize,
    /// Hits returned after re-ranking (a page).
    pub limit: usize,
    /// Hits skipped before the page.
    pub offset: usize,
    /// Hits scoring below this (the ITM logit; ITC similarity with `itc_only`) are left out.
    pub min_score: Option<f32>,
    /// Only images under this folder.
    pub under: Option<PathBuf>,
    /// Rank by ITC similarity alone, no ITM re-ranking.
    pub itc_only: bool,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            k: 64,
            limit: 10,
            offset: 0,
            min_score: None,
            under: None,
            itc_only: false,
        }
    }
}

/// An image index in a PostgreSQL database.
pub struct PgIndex {
    client: postgres::Client,
    model: ModelIdentity,
    tokens: TokenStorage,
}

fn db(e: postgres::Error) -> Error {
    match e.as_db_error() {
        Some(d) => Error::invalid(format!("PostgreSQL: {}: {}", d.severity(), d.message())),
        None => Error::invalid(format!("PostgreSQL: {e}")),
    }
}

/// The advisory lock that serializes schema creation and migration between indexers starting
/// at once (`CREATE ... IF NOT EXISTS` races otherwise).
const SCHEMA_LOCK: i64 = 0x6d70_6c75_6700; // "mplug"

/// A vector as pgvector's text form, `[a,b,...]`.
fn vector_text(v: &[f32]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
    format!("[{}]", items.join(","))
}

/// The schema at each version: statements that bring version `n - 1` to `n`.
fn migrations(embed_dim: usize) -> Vec<String> {
    vec![format!(
        "CREATE EXTENSION IF NOT EXISTS vector;
         CREATE TABLE IF NOT EXISTS mplug_images (
             path text PRIMARY KEY,
             size bigint NOT NULL,
             mtime_ns bigint NOT NULL,
             feature vector({embed_dim}) NOT NULL,
             tokens bytea,
             token_dtype text,
             tokens_shape integer[],
             caption text
         );
         CREATE INDEX IF NOT EXISTS mplug_images_feature
             ON mplug_images USING hnsw (feature vector_ip_ops);"
    )]
}

impl PgIndex {
    /// Connects to `url` (`postgres://user@host/db`, `host=/socket/dir dbname=...`), creates
    /// or migrates the schema, and checks that the index was made by `model`: another model's
    /// index is refused unless `rebuild`, which empties it.
    pub fn connect(
        url: &str,
        model: &ModelIdentity,
        tokens: TokenStorage,
        rebuild: bool,
    ) -> Result<Self> {
        let mut client = postgres::Client::connect(url, postgres::NoTls).map_err(db)?;
        let mut tx = client.transaction().map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS mplug_meta (key text PRIMARY KEY, value text NOT NULL)",
        )
        .map_err(db)?;
        let meta = |tx: &mut postgres::Transaction, key: &str| -> Result<Option<String>> {
            Ok(tx
                .query_opt("SELECT value FROM mplug_meta WHERE key = $1", &[&key])
                .map_err(db)?
                .map(|r| r.get::<_, String>(0)))
        };
        let mut version: i32 = meta(&mut tx, "schema_version")?
            .map(|v| v.parse().unwrap_or(0))
            .unwrap_or(0);
        if version > SCHEMA_VERSION {
            return Err(Error::Unsupported(format!(
                "the index's schema is version {version}; this mplug writes {SCHEMA_VERSION} \
                 (a newer mplug made it)"
            )));
        }
        let identity = serde_json::to_string(model).map_err(|e| Error::invalid(e.to_string()))?;
        if let Some(stored) = meta(&mut tx, "model")? {
            let stored: ModelIdentity = serde_json::from_str(&stored)
                .map_err(|e| Error::invalid(format!("the index's model record: {e}")))?;
            if !stored.same_model(model) {
                if !rebuild {
                    return Err(Error::Unsupported(format!(
                        "the index was made by another model ({}); index again with --rebuild \
                         to replace it",
                        stored.checkpoint.display()
                    )));
                }
                tx.batch_execute("DROP TABLE IF EXISTS mplug_images; DELETE FROM mplug_meta")
                    .map_err(db)?;
                version = 0;
            }
        }
        for (n, step) in migrations(model.embed_dim).iter().enumerate() {
            if (n as i32) < version {
                continue;
            }
            tx.batch_execute(step).map_err(db)?;
        }
        for (key, value) in [
            ("schema_version", SCHEMA_VERSION.to_string()),
            ("model", identity),
        ] {
            tx.execute(
                "INSERT INTO mplug_meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&key, &value],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(PgIndex {
            client,
            model: model.clone(),
            tokens,
        })
    }

    /// Images in the index.
    pub fn len(&mut self) -> Result<usize> {
        let n: i64 = self
            .client
            .query_one("SELECT count(*) FROM mplug_images", &[])
            .map_err(db)?
            .get(0);
        Ok(n as usize)
    }

    /// Whether the index holds no image.
    pub fn is_empty(&mut self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Brings the rows under `root` up to date with its images, as the folder store does:
    /// encodes new and changed files `batch_size` at a time (each batch committed on its own),
    /// deletes the rows of files that are gone, skips and reports unreadable ones.
    pub fn add_folder(
        &mut self,
        pipeline: &Pipeline,
        root: impl AsRef<Path>,
        batch_size: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<AddReport> {
        check_retrieval(pipeline, self.model.embed_dim)?;
        let root = root.as_ref();
        let root = std::fs::canonicalize(root).map_err(|source| Error::Io {
            path: root.to_path_buf(),
            source,
        })?;
        if !root.is_dir() {
            return Err(Error::invalid(format!(
                "{} is not a folder",
                root.display()
            )));
        }
        let prefix = format!("{}/", root.display());
        let known: HashMap<String, (i64, i64)> = self
            .client
            .query(
                "SELECT path, size, mtime_ns FROM mplug_images WHERE starts_with(path, $1)",
                &[&prefix],
            )
            .map_err(db)?
            .into_iter()
            .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2))))
            .collect();
        let mut report = AddReport::default();
        let mut todo: Vec<(String, PathBuf, i64, i64, bool)> = Vec::new();
        let mut present: HashSet<String> = HashSet::new();
        for (_, abs) in crate::input::image_files(&root)? {
            let meta = match std::fs::metadata(&abs) {
                Ok(m) => m,
                Err(e) => {
                    report.skipped.push(Skipped {
                        path: abs,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let key = abs.display().to_string();
            let (size, mtime) = (meta.len() as i64, mtime_ns(&meta) as i64);
            present.insert(key.clone());
            match known.get(&key) {
                Some(&(s, m)) if s == size && m == mtime => report.unchanged += 1,
                found => todo.push((key, abs, size, mtime, found.is_some())),
            }
        }
        let gone: Vec<String> = known
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        if !gone.is_empty() {
            report.removed += self
                .client
                .execute("DELETE FROM mplug_images WHERE path = ANY($1)", &[&gone])
                .map_err(db)? as usize;
        }
        let token_dtype = self.tokens.dtype();
        let total = todo.len();
        progress(0, total);
        let mut done = 0;
        for chunk in todo.chunks(batch_size.max(1)) {
            let paths: Vec<&Path> = chunk.iter().map(|t| t.1.as_path()).collect();
            let (images, ok, failed) = load_batch(pipeline, &paths);
            for (i, reason) in failed {
                let (key, abs, _, _, existed) = &chunk[i];
                // An indexed file that became unreadable leaves the index.
                if *existed {
                    self.client
                        .execute("DELETE FROM mplug_images WHERE path = $1", &[key])
                        .map_err(db)?;
                    report.removed += 1;
                }
                report.skipped.push(Skipped {
                    path: abs.clone(),
                    reason,
                });
            }
            if !images.is_empty() {
                let side = pipeline.image_side(Visual::Images(&Tensor::cat(&images, 0)?))?;
                let feats = side.feat.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                let mut tx = self.client.transaction().map_err(db)?;
                for (b, &i) in ok.iter().enumerate() {
                    let (key, _, size, mtime, existed) = &chunk[i];
                    let (tokens, dtype, shape): (
                        Option<Vec<u8>>,
                        Option<String>,
                        Option<Vec<i32>>,
                    ) = match token_dtype {
                        Some(dt) => {
                            let t = side.embeds.get(b)?.to_dtype(dt)?;
                            let shape: Vec<i32> = t.dims().iter().map(|&d| d as i32).collect();
                            (
                                Some(tensor_bytes(&t)?),
                                Some(dt.as_str().to_string()),
                                Some(shape),
                            )
                        }
                        None => (None, None, None),
                    };
                    tx.execute(
                        "INSERT INTO mplug_images (path, size, mtime_ns, feature, tokens, token_dtype, tokens_shape)
                         VALUES ($1, $2, $3, $4::text::vector, $5, $6, $7)
                         ON CONFLICT (path) DO UPDATE SET size = EXCLUDED.size,
                             mtime_ns = EXCLUDED.mtime_ns, feature = EXCLUDED.feature,
                             tokens = EXCLUDED.tokens, token_dtype = EXCLUDED.token_dtype,
                             tokens_shape = EXCLUDED.tokens_shape",
                        &[key, size, mtime, &vector_text(&feats[b]), &tokens, &dtype, &shape],
                    )
                    .map_err(db)?;
                    if *existed {
                        report.updated += 1;
                    } else {
                        report.added += 1;
                    }
                }
                tx.commit().map_err(db)?;
            }
            done += chunk.len();
            progress(done, total);
        }
        Ok(report)
    }

    /// The indexed images most like the image file `query` by ITC similarity (the HNSW
    /// index; no ITM, which scores an image against a text), then `min_score`, `offset` and
    /// `limit` as for text; each hit's `itm` is NaN.
    pub fn search_image(
        &mut self,
        pipeline: &Pipeline,
        query: impl AsRef<Path>,
        opts: &SearchOptions,
    ) -> Result<Vec<Hit>> {
        check_retrieval(pipeline, self.model.embed_dim)?;
        if opts.limit == 0 {
            return Err(Error::invalid("--limit must be at least 1"));
        }
        let images = pipeline.load_images(&[query.as_ref()])?;
        let q = pipeline
            .image_side(Visual::Images(&images))?
            .feat
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let under = self.under(opts)?;
        self.candidates(opts.offset + opts.limit)?;
        let rows = self
            .client
            .query(
                "SELECT path, -(feature <#> $1::text::vector) AS itc FROM mplug_images
                 WHERE starts_with(path, $2) ORDER BY feature <#> $1::text::vector
                 LIMIT $3 OFFSET $4",
                &[
                    &vector_text(&q[0]),
                    &under,
                    &(opts.limit as i64),
                    &(opts.offset as i64),
                ],
            )
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| {
                let path: String = r.get(0);
                let itc: f64 = r.get(1);
                Hit {
                    relative: path.clone(),
                    path: PathBuf::from(path),
                    itm: f32::NAN,
                    itc: itc as f32,
                }
            })
            .filter(|h| opts.min_score.is_none_or(|m| h.itc >= m))
            .collect())
    }

    /// Lets the HNSW search return `n` rows: pgvector's scan yields at most `hnsw.ef_search`
    /// (40 by default), so a larger `k` would silently get fewer candidates. The setting's
    /// maximum is 1,000.
    fn candidates(&mut self, n: usize) -> Result<()> {
        self.client
            .batch_execute(&format!("SET hnsw.ef_search = {}", n.clamp(40, 1000)))
            .map_err(db)
    }

    /// The `under` folder of a search as a path prefix (`""`: every image).
    fn under(&self, opts: &SearchOptions) -> Result<String> {
        Ok(opts
            .under
            .as_ref()
            .map(|u| {
                std::fs::canonicalize(u)
                    .map(|p| format!("{}/", p.display()))
                    .map_err(|source| Error::Io {
                        path: u.clone(),
                        source,
                    })
            })
            .transpose()?
            .unwrap_or_default())
    }

    /// Ranks the indexed images for `text` (see [`SearchOptions`]); hits best first.
    pub fn search(
        &mut self,
        pipeline: &Pipeline,
        text: &str,
        opts: &SearchOptions,
    ) -> Result<Vec<Hit>> {
        check_retrieval(pipeline, self.model.embed_dim)?;
        if opts.k == 0 || opts.limit == 0 {
            return Err(Error::invalid("--k and --limit must be at least 1"));
        }
        if text.trim().is_empty() {
            return Err(Error::invalid("the query text is empty"));
        }
        let texts = pipeline.text_side(&[text])?;
        let q = texts.feat.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        self.candidates(opts.k)?;
        let under = self.under(opts)?;
        let rows = self
            .client
            .query(
                "SELECT path, -(feature <#> $1::text::vector) AS itc, tokens, token_dtype,
                        tokens_shape
                 FROM mplug_images WHERE starts_with(path, $2)
                 ORDER BY feature <#> $1::text::vector LIMIT $3",
                &[&vector_text(&q[0]), &under, &(opts.k as i64)],
            )
            .map_err(db)?;
        let model = pipeline.model();
        let dev = model.device();
        let mut hits: Vec<Hit> = Vec::with_capacity(rows.len());
        let mut embeds: Vec<Tensor> = Vec::new();
        for r in &rows {
            let path: String = r.get(0);
            let itc: f64 = r.get(1);
            hits.push(Hit {
                relative: path.clone(),
                path: PathBuf::from(&path),
                itm: f32::NAN,
                itc: itc as f32,
            });
            if opts.itc_only {
                continue;
            }
            let tokens: Option<Vec<u8>> = r.get(2);
            let dtype: Option<String> = r.get(3);
            let shape: Option<Vec<i32>> = r.get(4);
            let t = match (tokens, dtype, shape) {
                (Some(bytes), Some(dtype), Some(shape)) => {
                    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                    tensor_from_bytes(&bytes, &dtype, &shape)?
                        .to_dtype(model.dtype())?
                        .to_device(dev)?
                }
                _ => {
                    let images = pipeline.load_images(&[PathBuf::from(&path)])?;
                    pipeline.visual_tokens(Visual::Images(&images))?.get(0)?
                }
            };
            embeds.push(t.unsqueeze(0)?);
        }
        if !opts.itc_only {
            let itm = itm_of_candidates(pipeline, &embeds, &texts)?;
            for (h, s) in hits.iter_mut().zip(itm) {
                h.itm = s;
            }
            hits.sort_by(|a, b| b.itm.total_cmp(&a.itm).then(b.itc.total_cmp(&a.itc)));
        }
        let score = |h: &Hit| if opts.itc_only { h.itc } else { h.itm };
        Ok(hits
            .into_iter()
            .filter(|h| opts.min_score.is_none_or(|m| score(h) >= m))
            .skip(opts.offset)
            .take(opts.limit)
            .collect())
    }
}

/// A tensor's elements as little-endian bytes (f16 or f32).
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F16 => flat
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        _ => flat
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    })
}

/// The tensor [`tensor_bytes`] wrote.
fn tensor_from_bytes(bytes: &[u8], dtype: &str, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let t = match dtype {
        "f16" if bytes.len() == 2 * n => {
            let v: Vec<half::f16> = bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                .collect();
            Tensor::from_vec(v, shape, &Device::Cpu)?
        }
        "f32" if bytes.len() == 4 * n => {
            let v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Tensor::from_vec(v, shape, &Device::Cpu)?
        }
        _ => {
            return Err(Error::invalid(format!(
                "stored visual tokens of {} bytes do not hold {n} {dtype} values; index again",
                bytes.len()
            )))
        }
    };
    Ok(t)
}
