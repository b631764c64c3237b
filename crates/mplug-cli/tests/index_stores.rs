//! One behavioural suite, two index stores: the folder of safetensors files and PostgreSQL with
//! pgvector (`--store`). Each store indexes a folder of the default model's example images,
//! updates and deletes incrementally, searches by text with a score threshold and pages, and
//! refuses an index made by another model; the two stores give the same scores. Both take two
//! indexers writing at once and resume a killed run.
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

/// `mplug search --json [TEXT] STORE EXTRA...`: each hit's file name and JSON object, best
/// first (no text: a search by `--image` in `extra`).
fn search_hits(store: &Store, text: &str, extra: &[&str]) -> Vec<(String, Value)> {
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
            (name, v)
        })
        .collect()
}

/// `(file name, itm, itc)` best first.
fn search(store: &Store, text: &str, extra: &[&str]) -> Vec<(String, f64, f64)> {
    search_hits(store, text, extra)
        .into_iter()
        .map(|(name, v)| {
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

/// Two indexers write into one index at once: into PostgreSQL one folder each (both finish
/// and the index holds both folders' images, each once); into a folder store the same image
/// folder (the second waits for the first, then finds everything indexed).
#[test]
fn two_indexers_write_into_one_index_at_once() {
    let dir = scratch("index-stores-concurrent");
    let first = photos(&dir.join("a"));
    let second = photos(&dir.join("b"));
    for store in stores(&dir, "concurrent") {
        let name = store.name();
        let roots = match store {
            Store::Folder(_) => [&first, &first],
            Store::Postgres(_) => [&first, &second],
        };
        let both: Vec<Value> = std::thread::scope(|scope| {
            let runs: Vec<_> = roots
                .into_iter()
                .map(|root| scope.spawn(|| index(&store, root, &["--batch-size", "1"])))
                .collect();
            runs.into_iter()
                .map(|r| r.join().expect("indexer"))
                .collect()
        });
        let images = if roots[0] == roots[1] { 4 } else { 8 };
        assert_eq!(
            counts(&both[0])[0] + counts(&both[1])[0],
            images,
            "{name}: {both:?}"
        );
        assert_eq!(
            counts(&both[0])[1] + counts(&both[1])[1],
            0,
            "{name}: {both:?}"
        );
        let again = index(&store, &first, &[]);
        assert_eq!(again["images"], images, "{name}: {again}");
        assert_eq!(counts(&again), [0, 0, 0, 4], "{name}: {again}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A run killed halfway through indexing loses nothing it committed, and the next run
/// finishes the job with no image twice: PostgreSQL commits every batch, the folder store here
/// after every batch too (`--commit-every 0`; by default every half minute).
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
            "--commit-every".into(),
            "0".into(),
        ];
        args.extend(store.args());
        let mut child = std::process::Command::new(MPLUG)
            .args(&args)
            .env("RAYON_NUM_THREADS", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mplug index");
        // Kill it once something is committed.
        let start = std::time::Instant::now();
        loop {
            let committed = match &store {
                Store::Postgres(url) => postgres::Client::connect(url, postgres::NoTls)
                    .ok()
                    .and_then(|mut c| c.query_one("SELECT count(*) FROM mplug_images", &[]).ok())
                    .map_or(0, |r| r.get::<_, i64>(0)),
                Store::Folder(dir) => std::fs::read_to_string(dir.join("manifest.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .and_then(|v| v["entries"].as_array().map(|e| e.len() as i64))
                    .unwrap_or(0),
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
        assert!(
            unchanged >= 2,
            "{name}: the killed run's batches were lost: {resumed}"
        );
        let hits = search(&store, "a red cross", &["--k", "32", "--top", "32"]);
        let mut names: Vec<&String> = hits.iter().map(|h| &h.0).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 16, "{name}: {hits:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `(file name, caption)` of a search's hits, in order.
fn captions_of(store: &Store, text: &str, extra: &[&str]) -> Vec<(String, Value)> {
    search_hits(store, text, extra)
        .into_iter()
        .map(|(name, v)| (name, v["caption"].clone()))
        .collect()
}

/// Captions asked for at indexing are the caption model's own (as `mplug caption` gives them)
/// and come back with each hit; an index made without them gets them on a later run with
/// `--captions`. `--under` keeps one folder's images, `--itc-only` ranks by ITC similarity
/// alone. Both stores.
#[test]
fn both_stores_caption_filter_by_folder_and_rank_by_itc() {
    let dir = scratch("index-stores-captions");
    let root = photos(&dir);
    let trip = root.join("trip");
    std::fs::create_dir_all(&trip).unwrap();
    std::fs::copy(root.join("scene_3.png"), trip.join("beach.png")).unwrap();
    std::fs::copy(root.join("scene_12.png"), trip.join("hill.png")).unwrap();
    // What the caption model says of each file.
    let mut expected = std::collections::HashMap::new();
    for name in ["scene_3.png", "scene_7.png", "scene_12.png", "scene_21.png"] {
        let out = mplug_ok(&["caption", "--json", s(&root.join(name))]);
        let v: Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
        expected.insert(name.to_string(), v["captions"][0]["caption"].clone());
    }
    expected.insert("beach.png".into(), expected["scene_3.png"].clone());
    expected.insert("hill.png".into(), expected["scene_12.png"].clone());
    for store in stores(&dir, "captions") {
        let name = store.name();
        // Without captions first: hits carry none.
        assert_eq!(counts(&index(&store, &root, &[])), [6, 0, 0, 0], "{name}");
        let plain = captions_of(&store, "a red cross", &["--k", "8"]);
        assert!(plain.iter().all(|(_, c)| c.is_null()), "{name}: {plain:?}");
        // Asked for later: every image is captioned once, then nothing is left to do.
        let v = index(&store, &root, &["--captions"]);
        assert_eq!(v["captioned"], 6, "{name}: {v}");
        assert_eq!(counts(&v), [0, 6, 0, 0], "{name}: {v}");
        let v = index(&store, &root, &["--captions"]);
        assert_eq!(counts(&v), [0, 0, 0, 6], "{name}: {v}");
        let hits = captions_of(&store, "a red cross", &["--k", "8", "--top", "8"]);
        assert_eq!(hits.len(), 6, "{name}: {hits:?}");
        for (file, caption) in &hits {
            assert_eq!(caption, &expected[file], "{name}: {file}");
        }

        // One folder's images only.
        let under = search(&store, "a red cross", &["--k", "8", "--under", s(&trip)]);
        let mut names: Vec<&str> = under.iter().map(|h| h.0.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["beach.png", "hill.png"], "{name}: {under:?}");

        // ITC alone: best first by ITC, no ITM score, and the same ITC values as re-ranking.
        let itc = search(&store, "a red cross", &["--itc-only", "--top", "6"]);
        assert_eq!(itc.len(), 6, "{name}: {itc:?}");
        assert!(itc.iter().all(|h| h.1.is_nan()), "{name}: {itc:?}");
        for w in itc.windows(2) {
            assert!(w[0].2 >= w[1].2, "{name}: not best first: {itc:?}");
        }
        let reranked = search(&store, "a red cross", &["--k", "8", "--top", "8"]);
        for h in &itc {
            let same = reranked.iter().find(|r| r.0 == h.0).expect("in both");
            assert!((same.2 - h.2).abs() < 1e-5, "{name}: {h:?} vs {same:?}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `mplug serve --index DIR` / `--store URL` answers `POST /v1/search` as `mplug search` does:
/// by text (the same hits and scores, paged), by image (the image itself first), under a
/// folder; a request with neither query nor image, or a server without an index, is refused.
/// The folder store's server sees what a later `mplug index` committed.
#[test]
fn both_stores_answer_search_requests_over_http() {
    let dir = scratch("index-stores-serve");
    let root = photos(&dir);
    let model = default_model();
    for store in stores(&dir, "serve") {
        let name = store.name();
        index(&store, &root, &[]);
        let mut args = vec!["--task".to_string(), "retrieval".to_string()];
        args.extend(store.args());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start(&model, &refs);
        let info = server.get("/openapi.json").json();
        assert!(info["paths"].get("/v1/search").is_some(), "{name}");

        let cli = search(&store, "a red cross", &["--k", "8", "--top", "10"]);
        let r = server.post_json(
            "/v1/search",
            &serde_json::json!({"query": "a red cross", "k": 8, "limit": 10}),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let hits = r.json()["hits"].as_array().expect("hits").clone();
        assert_eq!(hits.len(), cli.len(), "{name}: {hits:?}");
        for (h, c) in hits.iter().zip(&cli) {
            assert!(
                h["path"].as_str().unwrap().ends_with(&c.0),
                "{name}: {h} vs {c:?}"
            );
            assert!(
                (h["itm"].as_f64().unwrap() - c.1).abs() < 1e-4,
                "{name}: {h} vs {c:?}"
            );
            assert_eq!(h["score"], h["itm"], "{name}");
        }
        let page = server
            .post_json(
                "/v1/search",
                &serde_json::json!({"query": "a red cross", "k": 8, "limit": 2, "offset": 1}),
            )
            .json();
        assert_eq!(page["hits"][0]["rank"], 2, "{name}: {page}");
        assert_eq!(page["hits"][0]["path"], hits[1]["path"], "{name}: {page}");
        assert_eq!(page["hits"].as_array().unwrap().len(), 2, "{name}");

        // By image (base64): the image itself first, at cosine 1.
        let r = server.post_json(
            "/v1/search",
            &serde_json::json!({"image": image_b64_path(&root.join("scene_21.png")), "limit": 2}),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let first = &r.json()["hits"][0];
        assert!(
            first["path"].as_str().unwrap().ends_with("scene_21.png"),
            "{name}: {first}"
        );
        assert!(
            (first["itc"].as_f64().unwrap() - 1.0).abs() < 1e-3,
            "{name}: {first}"
        );
        assert!(first["itm"].is_null(), "{name}: {first}");

        let r = server.post_json("/v1/search", &serde_json::json!({"limit": 2}));
        assert_eq!(r.status, 422, "{name}: {}", r.text());
        let r = server.post_json("/v1/search", &serde_json::json!({"query": "x", "limit": 0}));
        assert_eq!(r.status, 422, "{name}: {}", r.text());

        // A photo indexed while the server runs is found by its next search.
        std::fs::copy(root.join("scene_7.png"), root.join("late.png")).unwrap();
        index(&store, &root, &[]);
        let r = server.post_json(
            "/v1/search",
            &serde_json::json!({"query": "a red cross", "k": 8, "limit": 10}),
        );
        let paths: Vec<String> = r.json()["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["path"].as_str().unwrap().to_string())
            .collect();
        assert!(
            paths.iter().any(|p| p.ends_with("late.png")),
            "{name}: {paths:?}"
        );
        std::fs::remove_file(root.join("late.png")).unwrap();
        drop(server);
    }
    // Without an index the endpoint says how to get one.
    let server = Server::start(&model, &["--task", "retrieval"]);
    let r = server.post_json("/v1/search", &serde_json::json!({"query": "a red cross"}));
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("--index"), "{}", r.text());
    std::fs::remove_dir_all(&dir).ok();
}
