//! One behavioural suite, two index stores: the folder of safetensors files and PostgreSQL with
//! pgvector (`--store`). Each store indexes a folder of the default model's example images,
//! updates and deletes incrementally, searches by text with a score threshold and pages, and
//! refuses an index made by another model; the two stores give the same scores. PostgreSQL also
//! takes two indexers writing at once.
//!
//! PostgreSQL comes from `MPLUG_TEST_POSTGRES` (a connection string to a server with the
//! pgvector extension; `.ci/run` starts one from the `pgserver` wheel); each test makes a fresh
//! database on it. Without it the PostgreSQL half says so and is skipped, except under CI.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Where an index lives.
enum Store {
    Folder(PathBuf),
    Postgres(String),
}

impl Store {
    fn args(&self) -> Vec<String> {
        match self {
            Store::Folder(dir) => vec!["--index".into(), dir.display().to_string()],
            Store::Postgres(url) => vec!["--store".into(), url.clone()],
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Store::Folder(_) => "folder",
            Store::Postgres(_) => "postgres",
        }
    }
}

/// A fresh database on the test server, as a connection string; `None` when there is none.
fn fresh_database(tag: &str) -> Option<String> {
    let Some(admin) = std::env::var("MPLUG_TEST_POSTGRES").ok() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the PostgreSQL store's tests: set MPLUG_TEST_POSTGRES"
        );
        eprintln!("SKIPPED the PostgreSQL store: MPLUG_TEST_POSTGRES is not set");
        return None;
    };
    let name = format!("mplug_{tag}_{}", std::process::id());
    let mut client = postgres::Client::connect(&admin, postgres::NoTls).expect("connect");
    // One statement each: PostgreSQL runs a multi-statement batch as one transaction, which
    // these may not be part of.
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .expect("drop an old test database");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create the test database");
    let mut config: postgres::Config = admin.parse().expect("connection string");
    config.dbname(&name);
    // Back to a string the command line takes: key=value pairs.
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let mut url = format!("host={} dbname={name}", hosts.join(","));
    if let Some(user) = config.get_user() {
        url.push_str(&format!(" user={user}"));
    }
    if let Some(port) = config.get_ports().first() {
        url.push_str(&format!(" port={port}"));
    }
    Some(url)
}

/// The stores under test: always the folder, PostgreSQL when there is a server.
fn stores(dir: &Path, tag: &str) -> Vec<Store> {
    let mut out = vec![Store::Folder(dir.join("index"))];
    if let Some(url) = fresh_database(tag) {
        out.push(Store::Postgres(url));
    }
    out
}

/// A folder of the default model's example scenes.
fn photos(dir: &Path) -> PathBuf {
    let root = dir.join("photos");
    std::fs::create_dir_all(&root).unwrap();
    let examples = default_model().join("examples");
    for name in ["scene_3.png", "scene_7.png", "scene_12.png", "scene_21.png"] {
        std::fs::copy(examples.join(name), root.join(name)).unwrap();
    }
    root
}

fn index(store: &Store, root: &Path, extra: &[&str]) -> Value {
    let mut args: Vec<String> = vec![
        "index".into(),
        s(root).into(),
        "--json".into(),
        "--quiet".into(),
    ];
    args.extend(store.args());
    args.extend(extra.iter().map(|e| e.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    serde_json::from_str(mplug_ok(&refs).stdout.trim()).expect("JSON")
}

fn counts(v: &Value) -> [u64; 4] {
    ["added", "updated", "removed", "unchanged"].map(|k| v[k].as_u64().expect(k))
}

/// `(file name, itm, itc)` best first.
fn search(store: &Store, text: &str, extra: &[&str]) -> Vec<(String, f64, f64)> {
    let mut args: Vec<String> = vec!["search".into(), "--json".into()];
    if !text.is_empty() {
        args.push(text.into());
    }
    args.extend(store.args());
    args.extend(extra.iter().map(|e| e.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    mplug_ok(&refs)
        .stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("JSON line");
            let name = Path::new(v["path"].as_str().expect("path"))
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            // `itm` is null for a search by image.
            let itm = v["itm"].as_f64().unwrap_or(f64::NAN);
            (name, itm, v["itc"].as_f64().expect("itc"))
        })
        .collect()
}

#[test]
fn both_stores_index_update_delete_and_search_alike() {
    let dir = scratch("index-stores");
    let root = photos(&dir);
    let mut rankings = Vec::new();
    for store in stores(&dir, "suite") {
        let name = store.name();
        assert_eq!(counts(&index(&store, &root, &[])), [4, 0, 0, 0], "{name}");
        assert_eq!(counts(&index(&store, &root, &[])), [0, 0, 0, 4], "{name}");

        // All four images, best first by the ITM logit.
        let all = search(&store, "a red cross", &["--k", "8", "--top", "10"]);
        assert_eq!(all.len(), 4, "{name}: {all:?}");
        for w in all.windows(2) {
            assert!(w[0].1 >= w[1].1, "{name}: not best first: {all:?}");
        }
        // Pages and the threshold.
        let page = search(
            &store,
            "a red cross",
            &["--k", "8", "--top", "2", "--offset", "1"],
        );
        assert_eq!(page, all[1..3].to_vec(), "{name}");
        let above = search(
            &store,
            "a red cross",
            &["--k", "8", "--min-score", &format!("{}", all[1].1)],
        );
        assert_eq!(above, all[..2].to_vec(), "{name}");
        assert!(search(&store, "a red cross", &["--min-score", "1000"]).is_empty());
        rankings.push(all);

        // By image: the query image itself first, at cosine 1.
        let query = root.join("scene_7.png");
        let like = search(&store, "", &["--image", s(&query), "--top", "2"]);
        assert_eq!(like.len(), 2, "{name}: {like:?}");
        assert_eq!(like[0].0, "scene_7.png", "{name}: {like:?}");
        assert!((like[0].2 - 1.0).abs() < 1e-3, "{name}: {like:?}");

        // A changed file is encoded again, a removed one leaves the index.
        std::fs::copy(root.join("scene_7.png"), root.join("scene_3.png")).unwrap();
        std::fs::rename(root.join("scene_21.png"), dir.join("away.png")).unwrap();
        assert_eq!(counts(&index(&store, &root, &[])), [0, 1, 1, 2], "{name}");
        let now = search(&store, "a red cross", &["--k", "8"]);
        assert_eq!(now.len(), 3, "{name}: {now:?}");
        assert!(now.iter().all(|h| h.0 != "scene_21.png"), "{name}: {now:?}");
        // Back as it was for the next store.
        std::fs::rename(dir.join("away.png"), root.join("scene_21.png")).unwrap();
        std::fs::copy(
            default_model().join("examples").join("scene_3.png"),
            root.join("scene_3.png"),
        )
        .unwrap();
    }
    // The stores keep the same features and tokens: the same ranking and scores.
    if let [folder, pg] = &rankings[..] {
        assert_eq!(folder.len(), pg.len());
        for (a, b) in folder.iter().zip(pg) {
            assert_eq!(a.0, b.0, "{folder:?} vs {pg:?}");
            assert!(
                (a.1 - b.1).abs() < 1e-4 && (a.2 - b.2).abs() < 1e-4,
                "{a:?} vs {b:?}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// An index made by another model is refused (its scores would mean nothing), in both stores;
/// `--rebuild` starts it afresh.
#[test]
fn both_stores_refuse_another_models_index() {
    let dir = scratch("index-stores-model");
    let root = photos(&dir);
    // Another model: the default's folder with one weight changed.
    let other = dir.join("other-model");
    std::fs::create_dir_all(&other).unwrap();
    for entry in std::fs::read_dir(default_model()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, other.join(p.file_name().unwrap())).unwrap();
        }
    }
    let weights = other.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    for store in stores(&dir, "model") {
        let name = store.name();
        index(&store, &root, &[]);
        let mut args: Vec<String> = vec!["index".into(), s(&root).into(), "--quiet".into()];
        args.extend(store.args());
        args.extend(["--model".to_string(), other.display().to_string()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = mplug(&refs);
        assert_eq!(out.code, 1, "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains("another model") || out.stderr.contains("rebuild"),
            "{name}: {}",
            out.stderr
        );
        let mut rebuild = refs.clone();
        rebuild.push("--rebuild");
        let out = mplug_ok(&rebuild);
        assert!(out.stdout.contains("4 images"), "{name}: {}", out.stdout);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Two indexers write into one PostgreSQL index at once, one folder each: both finish and
/// the index holds both folders' images, each once.
#[test]
fn two_indexers_write_into_postgres_at_once() {
    let dir = scratch("index-stores-concurrent");
    let Some(url) = fresh_database("concurrent") else {
        return;
    };
    // The schema exists before the race (the first connection creates it).
    let first = photos(&dir.join("a"));
    let second = photos(&dir.join("b"));
    let store = Store::Postgres(url);
    let both: Vec<Value> = std::thread::scope(|scope| {
        let runs: Vec<_> = [&first, &second]
            .into_iter()
            .map(|root| scope.spawn(|| index(&store, root, &["--batch-size", "1"])))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("indexer"))
            .collect()
    });
    assert_eq!(counts(&both[0])[0] + counts(&both[1])[0], 8, "{both:?}");
    let again = index(&store, &first, &[]);
    assert_eq!(again["images"], 8, "{again}");
    assert_eq!(counts(&again), [0, 0, 0, 4]);
    std::fs::remove_dir_all(&dir).ok();
}

/// A run killed halfway through indexing loses nothing it committed, and the next run
/// finishes the job with no image twice: in PostgreSQL every finished batch stays, in the
/// folder store the index as it was before the run.
#[test]
fn a_killed_indexing_run_is_resumed_without_duplicates() {
    let dir = scratch("index-stores-kill");
    let root = dir.join("many");
    std::fs::create_dir_all(&root).unwrap();
    let examples = default_model().join("examples");
    for i in 0..16 {
        let name = ["scene_3.png", "scene_7.png", "scene_12.png", "scene_21.png"][i % 4];
        std::fs::copy(examples.join(name), root.join(format!("photo_{i:02}.png"))).unwrap();
    }
    for store in stores(&dir, "kill") {
        let name = store.name();
        let mut args: Vec<String> = vec![
            "index".into(),
            s(&root).into(),
            "--quiet".into(),
            "--batch-size".into(),
            "1".into(),
        ];
        args.extend(store.args());
        let mut child = std::process::Command::new(MPLUG)
            .args(&args)
            .env("RAYON_NUM_THREADS", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mplug index");
        // Kill it once something is committed (PostgreSQL), or after a moment (folder).
        let start = std::time::Instant::now();
        loop {
            let committed = match &store {
                Store::Postgres(url) => postgres::Client::connect(url, postgres::NoTls)
                    .ok()
                    .and_then(|mut c| c.query_one("SELECT count(*) FROM mplug_images", &[]).ok())
                    .map_or(0, |r| r.get::<_, i64>(0)),
                Store::Folder(_) => i64::from(start.elapsed().as_millis() > 300),
            };
            let finished = child.try_wait().ok().flatten().is_some();
            if committed >= 2 || finished || start.elapsed().as_secs() > 60 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let resumed = index(&store, &root, &[]);
        let [added, updated, removed, unchanged] = counts(&resumed);
        assert_eq!(resumed["images"], 16, "{name}: {resumed}");
        assert_eq!(added + unchanged, 16, "{name}: {resumed}");
        assert_eq!((updated, removed), (0, 0), "{name}: {resumed}");
        if let Store::Postgres(_) = store {
            assert!(
                unchanged >= 2,
                "{name}: the killed run's batches were lost: {resumed}"
            );
        }
        let hits = search(&store, "a red cross", &["--k", "32", "--top", "32"]);
        let mut names: Vec<&String> = hits.iter().map(|h| &h.0).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 16, "{name}: {hits:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
