//! Helpers shared by the golden parity tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod fixture_images;
#[allow(unused_imports)]
pub use fixture_images::*;

/// The golden folder: `MPLUG_GOLDEN_DIR`, else the committed copy.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("MPLUG_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden"),
    }
}

/// Every configuration folder (one holding a `config.json`), sorted; at least one must exist.
pub fn config_dirs() -> Vec<PathBuf> {
    let root = golden_dir();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("golden dir {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no configuration folder in {}",
        root.display()
    );
    dirs
}

/// The images that the golden folder's own list (`io/preprocess.json`) names, each once, in
/// its order; every one must exist in `io/images/`.
pub fn golden_images() -> Vec<PathBuf> {
    let io = golden_dir().join("io");
    let spec = json(&io, "preprocess.json");
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in spec["images"].as_array().expect("preprocess.json: images") {
        let name = entry["file"].as_str().expect("preprocess.json: file");
        let path = file(&io.join("images"), name);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    assert!(!files.is_empty(), "preprocess.json lists no images");
    files
}

/// A fresh, empty folder for one test: `CARGO_TARGET_TMPDIR/mplug-tests/<test binary>/<name>-<pid>`
/// (whatever an earlier run left there is removed).
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("mplug-tests")
        .join(env!("CARGO_CRATE_NAME"))
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// A JSON file, which must exist and parse.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("missing file {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

/// A JSON file of the golden folder's `io/` (tokenizer, preprocessing, metrics references).
pub fn golden_io_json(name: &str) -> serde_json::Value {
    read_json(&golden_dir().join("io").join(name))
}

/// A required golden file.
pub fn file(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    assert!(p.is_file(), "missing golden file {}", p.display());
    p
}

/// The tensors of a golden `*.safetensors`.
pub struct Io {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Io {
    pub fn load(dir: &Path, name: &str) -> Io {
        let path = file(dir, name);
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Io { path, tensors }
    }

    pub fn get(&self, name: &str) -> Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{} has no tensor `{name}`", self.path.display()))
            .clone()
    }

    pub fn f32s(&self, name: &str) -> Vec<f32> {
        self.get(name)
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    pub fn i64s(&self, name: &str) -> Vec<i64> {
        self.get(name)
            .to_dtype(DType::I64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }
}

/// A golden JSON file.
pub fn json(dir: &Path, name: &str) -> serde_json::Value {
    let p = file(dir, name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Asserts `|a - b| <= tol * max(1, |b|)` element-wise, reporting the worst element.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tol: f32) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    let a: Vec<f32> = actual
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = expected
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_close_slices(what, &a, &b, tol);
}

/// Slice form of [`assert_close`].
pub fn assert_close_slices(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let mut worst = (0usize, 0f32);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let excess = (x - y).abs() / y.abs().max(1.0);
        if excess.is_nan() || excess > worst.1 {
            worst = (i, excess);
        }
    }
    let (i, e) = worst;
    assert!(
        e <= tol,
        "{what}: element {i} is {} but the reference has {} (relative error {e:e} > {tol:e})",
        a[i],
        b[i]
    );
}

/// The golden tolerance for tensors.
pub const TOL: f32 = 1e-4;
/// The golden tolerance for beam scores and probabilities.
pub const SCORE_TOL: f32 = 1e-3;
