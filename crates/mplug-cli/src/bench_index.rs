//! `mplug bench --index N`: the photo index's two stores on `N` synthetic unit vectors of the
//! default model's ITC width, in groups of similar ones as photos come. The folder store (the real one: rows written in batches,
//! committed, searched through `nearest`) searches exactly; PostgreSQL searches its HNSW
//! index (bulk-loaded with COPY, then indexed), whose recall is measured against the exact
//! answer. Build time, query latency (p50 / p99 over 100 queries,
//! top 10 and top 100) and disk size for each.

use anyhow::{Context, Result};
use mplug::index::{FolderStore, IndexStore, ModelIdentity, OpenOptions, Row, Stamp, TokenStorage};
use std::time::Instant;

/// Images per group of similar ones in the synthetic collection.
const GROUP: usize = 50;

/// `maintenance_work_mem` while PostgreSQL builds the HNSW index.
const BUILD_MEMORY: &str = "2GB";

/// A seeded xorshift generator: the benchmark's vectors are the same on every run (no
/// dependency for a handful of random numbers).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // Uniform in [-1, 1).
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn unit(&mut self, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim).map(|_| self.next()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.into_iter().map(|x| x / norm).collect()
    }
}

/// The `k` best rows of `features` (`n x dim`, row-major) for `q`, by inner product.
fn exact_top(features: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = features
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, row)| (row.iter().zip(q).map(|(a, b)| a * b).sum(), i))
        .collect();
    let k = k.min(scored.len());
    scored.select_nth_unstable_by(k.saturating_sub(1), |a, b| b.0.total_cmp(&a.0));
    scored.truncate(k);
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|(_, i)| i).collect()
}

/// p50 and p99 of durations in seconds, as milliseconds.
fn percentiles(mut t: Vec<f64>) -> (f64, f64) {
    t.sort_by(f64::total_cmp);
    let at = |p: f64| t[((t.len() as f64 * p).ceil() as usize).clamp(1, t.len()) - 1] * 1e3;
    (at(0.5), at(0.99))
}

/// Runs the benchmark on `n` vectors of width `dim`; PostgreSQL too when `store` is given.
pub fn run(n: usize, dim: usize, store: Option<&str>) -> Result<()> {
    anyhow::ensure!(n > 0, "--index needs at least one vector");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Photos come in groups of similar ones (an event, a place): vectors around one center per
    // `GROUP` images, at cosine about 0.85 to it. Uniform random vectors would be the worst
    // case for an approximate index, whose "nearest" are barely nearer than any other.
    let centers: Vec<Vec<f32>> = (0..n.div_ceil(GROUP)).map(|_| rng.unit(dim)).collect();
    let mut features = Vec::with_capacity(n * dim);
    for i in 0..n {
        let center = &centers[i % centers.len()];
        let noise = rng.unit(dim);
        let v: Vec<f32> = center
            .iter()
            .zip(&noise)
            .map(|(c, e)| c + 0.6 * e)
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        features.extend(v.into_iter().map(|x| x / norm));
    }
    // Queries near stored vectors (a photo search asks for something that is there).
    let queries: Vec<Vec<f32>> = (0..100)
        .map(|i| {
            let row = &features[(i * 7919 % n) * dim..][..dim];
            let noise = rng.unit(dim);
            let v: Vec<f32> = row.iter().zip(&noise).map(|(a, b)| a + 0.3 * b).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect();
    let exact: Vec<Vec<usize>> = queries
        .iter()
        .map(|q| exact_top(&features, dim, q, 100))
        .collect();

    // The folder store itself: rows written a batch at a time as indexing does, committed,
    // then searched exactly through `nearest`.
    let dir = std::env::temp_dir().join(format!("mplug-bench-index-{}", std::process::id()));
    let root = dir.join("photos");
    std::fs::create_dir_all(&root)?;
    let identity = ModelIdentity {
        config_hash: "bench".into(),
        checkpoint: "bench".into(),
        size: 0,
        mtime_ns: 0,
        fingerprint: "bench".into(),
        embed_dim: dim,
        weights: Default::default(),
    };
    let options = OpenOptions {
        tokens: TokenStorage::None,
        ..OpenOptions::default()
    };
    let t0 = Instant::now();
    let mut folder = FolderStore::open(dir.join("index"), &identity, options)?;
    folder.indexed_under(&root)?;
    let mut batch = Vec::new();
    for (i, row) in features.chunks_exact(dim).enumerate() {
        batch.push(Row {
            path: root.join(format!("{:03}/{i:08}.jpg", i % 1000)),
            stamp: Stamp {
                size: 100_000 + i as u64,
                mtime_ns: 1_700_000_000_000_000_000 + i as u64,
                captioned: false,
            },
            feature: row.to_vec(),
            tokens: None,
            caption: None,
        });
        if batch.len() == 1000 {
            folder.write(std::mem::take(&mut batch))?;
        }
    }
    folder.write(batch)?;
    folder.flush()?;
    let build = t0.elapsed().as_secs_f64();
    let size: u64 = std::fs::read_dir(dir.join("index"))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let t0 = Instant::now();
    let mut folder = FolderStore::open(dir.join("index"), &identity, options)?;
    let opened = t0.elapsed().as_secs_f64();
    for k in [10, 100] {
        let mut times = Vec::new();
        let mut found = 0usize;
        for (q, truth) in queries.iter().zip(&exact) {
            let t = Instant::now();
            let hits = folder.nearest(q, k, None, false)?;
            times.push(t.elapsed().as_secs_f64());
            let rows: Vec<usize> = hits
                .iter()
                .filter_map(|h| h.path.file_stem()?.to_str()?.parse().ok())
                .collect();
            found += truth[..k].iter().filter(|t| rows.contains(t)).count();
        }
        let (p50, p99) = percentiles(times);
        let recall = found as f64 / (k * queries.len()) as f64;
        println!(
            "folder store, {n} vectors x {dim}: top {k}: p50 {p50:.2} ms, p99 {p99:.2} ms \
             (exact; recall@{k} {recall:.3}); written in {build:.1} s, opened in {opened:.1} s, \
             {:.1} MB",
            size as f64 / 1e6
        );
    }
    drop(folder);
    std::fs::remove_dir_all(&dir).ok();
    if let Some(url) = store {
        postgres_bench(url, &features, dim, &queries, &exact)?;
    }
    Ok(())
}

#[cfg(feature = "postgres")]
fn postgres_bench(
    url: &str,
    features: &[f32],
    dim: usize,
    queries: &[Vec<f32>],
    exact: &[Vec<usize>],
) -> Result<()> {
    use std::io::Write as _;
    let n = features.len() / dim;
    let mut client =
        postgres::Client::connect(url, postgres::NoTls).context("connecting to --store")?;
    let table = format!("mplug_bench_{}", std::process::id());
    let text = mplug::index::postgres::vector_text;
    client.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS vector;
         DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (id integer PRIMARY KEY, feature vector({dim}) NOT NULL)"
    ))?;
    let t0 = Instant::now();
    let mut copy = client.copy_in(&format!("COPY {table} (id, feature) FROM STDIN"))?;
    for (i, row) in features.chunks_exact(dim).enumerate() {
        writeln!(copy, "{i}\t{}", text(row))?;
    }
    copy.finish()?;
    let loaded = t0.elapsed().as_secs_f64();
    // The graph is built in memory when it fits (pgvector's advice for large builds; the
    // default 64 MB holds about 100k of these rows) with a second process helping.
    client.batch_execute(&format!(
        "SET maintenance_work_mem = '{BUILD_MEMORY}';
         SET max_parallel_maintenance_workers = 1;
         CREATE INDEX ON {table} USING hnsw (feature vector_ip_ops)"
    ))?;
    let build = t0.elapsed().as_secs_f64();
    let size: i64 = client
        .query_one(&format!("SELECT pg_total_relation_size('{table}')"), &[])?
        .get(0);
    let statement = client.prepare(&format!(
        "SELECT id FROM {table} ORDER BY feature <#> $1::text::vector LIMIT $2"
    ))?;
    // pgvector's default breadth, then the store's own (`ef_search`).
    let runs = [
        (10i64, 40),
        (10, mplug::index::postgres::ef_search(10)),
        (100, mplug::index::postgres::ef_search(100)),
    ];
    for (k, ef) in runs {
        client.batch_execute(&format!("SET hnsw.ef_search = {ef}"))?;
        let mut times = Vec::new();
        let mut found = 0usize;
        for (q, truth) in queries.iter().zip(exact) {
            let t = Instant::now();
            let rows = client.query(&statement, &[&text(q), &k])?;
            times.push(t.elapsed().as_secs_f64());
            let ids: Vec<usize> = rows.iter().map(|r| r.get::<_, i32>(0) as usize).collect();
            found += truth[..k as usize]
                .iter()
                .filter(|t| ids.contains(t))
                .count();
        }
        let (p50, p99) = percentiles(times);
        let recall = found as f64 / (k as usize * queries.len()) as f64;
        println!(
            "PostgreSQL + pgvector HNSW, {n} vectors x {dim}: top {k} (ef_search {ef}): p50 \
             {p50:.2} ms, p99 {p99:.2} ms (recall@{k} {recall:.3}); loaded in {loaded:.1} s, \
             indexed by {build:.1} s, {:.1} MB",
            size as f64 / 1e6
        );
    }
    client.batch_execute(&format!("DROP TABLE {table}"))?;
    Ok(())
}

#[cfg(not(feature = "postgres"))]
fn postgres_bench(_: &str, _: &[f32], _: usize, _: &[Vec<f32>], _: &[Vec<usize>]) -> Result<()> {
    anyhow::bail!("this mplug was built without the `postgres` feature; --store needs it")
}
