//! The photo index on PostgreSQL with pgvector, beside the folder store: one row per image
//! (absolute path, size, modification time, ITC feature as `vector`, visual tokens for ITM
//! re-ranking as `bytea`, the generated caption as text), an HNSW index on the features (inner product: they are
//! normalized), the model's identity and a schema version in a metadata table, and migrations
//! from version to version. Several machines may index into one database and search it.
//!
//! Indexing commits each batch in its own transaction, so a killed run keeps every batch it
//! finished and the next run encodes only what is missing; rows are keyed by path, so writing
//! the same image twice (two indexers, a resumed run) updates one row.
//!
//! Searching ([`IndexStore::search`]): ITC top `k` by the HNSW index, re-ranked by the ITM
//! positive logit (visual tokens from the row, or the file encoded again). A search under a
//! folder that the HNSW scan answers with fewer rows than asked (pgvector filters after the
//! scan) is answered again by an exact scan.

use super::{Candidate, IndexStore, ModelIdentity, OpenOptions, Row, Stamp, TokenStorage};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The schema this code writes; older databases are migrated up to it.
pub const SCHEMA_VERSION: i32 = 1;

/// An image index in a PostgreSQL database.
pub struct PgStore {
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
pub fn vector_text(v: &[f32]) -> String {
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

impl PgStore {
    /// Connects to `url` (`postgres://user@host/db`, `host=/socket/dir dbname=...`), creates
    /// or migrates the schema, and checks that the index was made by `model`: another model's
    /// index is refused unless `rebuild`, which empties it.
    pub fn connect(url: &str, model: &ModelIdentity, options: OpenOptions) -> Result<Self> {
        let (tokens, rebuild) = (options.tokens, options.rebuild);
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
        let stored = meta(&mut tx, "model")?;
        if stored.is_none() && options.existing {
            return Err(Error::Config(
                "the database holds no image index; build one with `mplug index DIR --store URL`"
                    .into(),
            ));
        }
        if let Some(stored) = stored {
            let stored: ModelIdentity = serde_json::from_str(&stored)
                .map_err(|e| Error::invalid(format!("the index's model record: {e}")))?;
            if !stored.same_model(model) {
                if !rebuild {
                    return Err(Error::Unsupported(format!(
                        "cannot use the index: {}; index again with --rebuild to replace it",
                        stored.mismatch(model)
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
        Ok(PgStore {
            client,
            model: model.clone(),
            tokens,
        })
    }

    /// Sets the HNSW scan's breadth for `n` rows ([`ef_search`]).
    fn set_ef_search(&mut self, n: usize) -> Result<()> {
        self.client
            .batch_execute(&format!("SET hnsw.ef_search = {}", ef_search(n)))
            .map_err(db)
    }

    fn candidates(
        &mut self,
        feature: &str,
        n: usize,
        under: &str,
        with_tokens: bool,
        exact: bool,
    ) -> Result<Vec<Candidate>> {
        let columns = if with_tokens {
            "tokens, token_dtype, tokens_shape"
        } else {
            "NULL::bytea, NULL::text, NULL::integer[]"
        };
        let sql = format!(
            "SELECT path, size, mtime_ns, caption, -(feature <#> $1::text::vector) AS itc, \
             {columns} FROM mplug_images WHERE starts_with(path, $2) \
             ORDER BY feature <#> $1::text::vector LIMIT $3"
        );
        let mut tx = self.client.transaction().map_err(db)?;
        if exact {
            // An exact scan: the HNSW index's candidates are filtered after the scan, so a
            // search under a small folder may find fewer than there are.
            tx.batch_execute("SET LOCAL enable_indexscan = off")
                .map_err(db)?;
        }
        let rows = tx
            .query(&sql, &[&feature, &under, &(n as i64)])
            .map_err(db)?;
        tx.commit().map_err(db)?;
        rows.iter()
            .map(|r| {
                let path: String = r.get(0);
                let (size, mtime): (i64, i64) = (r.get(1), r.get(2));
                let caption: Option<String> = r.get(3);
                let itc: f64 = r.get(4);
                let bytes: Option<Vec<u8>> = r.get(5);
                let dtype: Option<String> = r.get(6);
                let shape: Option<Vec<i32>> = r.get(7);
                let tokens = match (bytes, dtype, shape) {
                    (Some(bytes), Some(dtype), Some(shape)) => {
                        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                        Some(tensor_from_bytes(&bytes, &dtype, &shape)?)
                    }
                    _ => None,
                };
                Ok(Candidate {
                    path: PathBuf::from(path),
                    stamp: Stamp {
                        size: size as u64,
                        mtime_ns: mtime as u64,
                        captioned: caption.is_some(),
                    },
                    itc: itc as f32,
                    tokens,
                    caption,
                })
            })
            .collect()
    }
}

/// The HNSW scan's breadth (`hnsw.ef_search`) for a search of `n` rows: pgvector's scan
/// yields at most that many rows (40 by default, which silently cut larger searches), and a
/// broader scan finds more of the true nearest (`mplug bench --index` measures the recall).
/// Twice the rows asked for, at least 100 (at a million images about 3 ms more than pgvector's
/// default per search, small beside ITM re-ranking) and at most 1,000 (the setting's maximum).
pub fn ef_search(n: usize) -> usize {
    n.saturating_mul(2).clamp(100, 1000)
}

/// A path's key in the table: the absolute path as text (a folder's images share its prefix).
fn key(path: &Path) -> String {
    path.display().to_string()
}

impl IndexStore for PgStore {
    fn location(&self) -> String {
        "PostgreSQL".to_string()
    }

    fn model(&self) -> &ModelIdentity {
        &self.model
    }

    fn tokens(&self) -> TokenStorage {
        self.tokens
    }

    fn len(&mut self) -> Result<usize> {
        let n: i64 = self
            .client
            .query_one("SELECT count(*) FROM mplug_images", &[])
            .map_err(db)?
            .get(0);
        Ok(n as usize)
    }

    fn indexed_under(&mut self, root: &Path) -> Result<HashMap<PathBuf, Stamp>> {
        let prefix = format!("{}/", root.display());
        Ok(self
            .client
            .query(
                "SELECT path, size, mtime_ns, caption IS NOT NULL FROM mplug_images
                 WHERE starts_with(path, $1)",
                &[&prefix],
            )
            .map_err(db)?
            .into_iter()
            .map(|r| {
                let (size, mtime): (i64, i64) = (r.get(1), r.get(2));
                let stamp = Stamp {
                    size: size as u64,
                    mtime_ns: mtime as u64,
                    captioned: r.get(3),
                };
                (PathBuf::from(r.get::<_, String>(0)), stamp)
            })
            .collect())
    }

    fn remove(&mut self, paths: &[PathBuf]) -> Result<usize> {
        let keys: Vec<String> = paths.iter().map(|p| key(p)).collect();
        Ok(self
            .client
            .execute("DELETE FROM mplug_images WHERE path = ANY($1)", &[&keys])
            .map_err(db)? as usize)
    }

    fn write(&mut self, rows: Vec<Row>) -> Result<()> {
        let mut tx = self.client.transaction().map_err(db)?;
        let statement = tx
            .prepare(
                "INSERT INTO mplug_images
                     (path, size, mtime_ns, feature, tokens, token_dtype, tokens_shape, caption)
                 VALUES ($1, $2, $3, $4::text::vector, $5, $6, $7, $8)
                 ON CONFLICT (path) DO UPDATE SET size = EXCLUDED.size,
                     mtime_ns = EXCLUDED.mtime_ns, feature = EXCLUDED.feature,
                     tokens = EXCLUDED.tokens, token_dtype = EXCLUDED.token_dtype,
                     tokens_shape = EXCLUDED.tokens_shape, caption = EXCLUDED.caption",
            )
            .map_err(db)?;
        for row in rows {
            let (tokens, dtype, shape) = match &row.tokens {
                Some(t) => {
                    let shape: Vec<i32> = t.dims().iter().map(|&d| d as i32).collect();
                    (
                        Some(tensor_bytes(t)?),
                        Some(t.dtype().as_str().to_string()),
                        Some(shape),
                    )
                }
                None => (None, None, None),
            };
            tx.execute(
                &statement,
                &[
                    &key(&row.path),
                    &(row.stamp.size as i64),
                    &(row.stamp.mtime_ns as i64),
                    &vector_text(&row.feature),
                    &tokens,
                    &dtype,
                    &shape,
                    &row.caption,
                ],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    fn flush(&mut self) -> Result<()> {
        // Each batch was committed by `write`.
        Ok(())
    }

    fn nearest(
        &mut self,
        feature: &[f32],
        n: usize,
        under: Option<&Path>,
        with_tokens: bool,
    ) -> Result<Vec<Candidate>> {
        let prefix = under
            .map(|u| format!("{}/", u.display()))
            .unwrap_or_default();
        let feature = vector_text(feature);
        self.set_ef_search(n)?;
        let found = self.candidates(&feature, n, &prefix, with_tokens, false)?;
        if found.len() < n && under.is_some() {
            // Fewer than asked under a folder: the HNSW scan may have missed some there.
            return self.candidates(&feature, n, &prefix, with_tokens, true);
        }
        Ok(found)
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
