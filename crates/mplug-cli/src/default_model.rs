//! The default model, embedded in the binary: `mplug-tiny-world` (caption, VQA, retrieval and
//! grounding from one set of weights, with the demo's examples) and its grounding round,
//! `mplug-tiny-world-grounding`. About 12 MB, so that `mplug demo`, `mplug caption photo.png`
//! and `mplug serve` work after `cargo install` with no checkout and no `--model`.
//!
//! Every command reads models from folders (the index fingerprints the checkpoint file, training
//! copies the folder's vocabulary, the demo lists its examples), so the embedded files are
//! written once into a cache folder and read from there like any model folder:
//! `$MPLUG_CACHE_DIR`, else `$XDG_CACHE_HOME/mplug`, else `$HOME/.cache/mplug`, else the system's
//! temporary folder. The cache folder's name carries the version and a fingerprint of the
//! embedded bytes, so a binary with other weights never reads a stale copy. The files are written
//! into a temporary folder beside it that is renamed into place when complete: a killed first run
//! or two first runs at once leave either nothing or a whole folder, never a torn one; a folder
//! whose files lost their sizes is written again.

use anyhow::{Context, Result};
use mplug::Task;
use std::path::{Path, PathBuf};

/// The name of the default model (and of its folder).
pub const NAME: &str = "mplug-tiny-world";

/// The name of the default model's grounding round (a sibling folder).
pub const GROUNDING_NAME: &str = "mplug-tiny-world-grounding";

/// One embedded file: its path inside the cache folder and its bytes.
struct File {
    path: &'static str,
    bytes: &'static [u8],
}

/// Embeds `models/<path>` under `<path>` in the cache folder.
macro_rules! embed {
    ($($path:literal),* $(,)?) => {
        &[$(File {
            path: $path,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/", $path)),
        }),*]
    };
}

/// Every file of both folders (a test checks that the list matches the repository's folders).
const FILES: &[File] = embed![
    "mplug-tiny-world/README.md",
    "mplug-tiny-world/ci-figures.json",
    "mplug-tiny-world/config.json",
    "mplug-tiny-world/model.safetensors",
    "mplug-tiny-world/vocab.txt",
    "mplug-tiny-world/examples/examples.json",
    "mplug-tiny-world/examples/clip_0.gif",
    "mplug-tiny-world/examples/clip_1.gif",
    "mplug-tiny-world/examples/clip_2.gif",
    "mplug-tiny-world/examples/clip_3.gif",
    "mplug-tiny-world/examples/scene_3.png",
    "mplug-tiny-world/examples/scene_7.png",
    "mplug-tiny-world/examples/scene_12.png",
    "mplug-tiny-world/examples/scene_21.png",
    "mplug-tiny-world-grounding/README.md",
    "mplug-tiny-world-grounding/config.json",
    "mplug-tiny-world-grounding/model.safetensors",
    "mplug-tiny-world-grounding/vocab.txt",
];

/// FNV-1a over the bytes' lengths and, of each file, 64 KiB at each end and every 64th KiB in
/// between: a fingerprint that changes whenever the weights do (a retrained model keeps its
/// sizes but not its values) without hashing 12 MB at every start.
fn fingerprint() -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    const CHUNK: usize = 64 << 10;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
    };
    for f in FILES {
        eat(f.path.as_bytes());
        eat(&(f.bytes.len() as u64).to_le_bytes());
        for (i, chunk) in f.bytes.chunks(CHUNK).enumerate() {
            let last = (i + 1) * CHUNK >= f.bytes.len();
            if i == 0 || last || i % 64 == 0 {
                eat(chunk);
            }
        }
    }
    h
}

/// The folder the embedded files are written under.
fn cache_root() -> PathBuf {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = env("MPLUG_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = env("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("mplug");
    }
    if let Some(home) = env("HOME") {
        return PathBuf::from(home).join(".cache").join("mplug");
    }
    std::env::temp_dir().join("mplug-cache")
}

/// Whether `dir` holds every embedded file at its size.
fn is_complete(dir: &Path) -> bool {
    FILES
        .iter()
        .all(|f| std::fs::metadata(dir.join(f.path)).is_ok_and(|m| m.len() == f.bytes.len() as u64))
}

/// Writes every file under a fresh temporary folder beside `dir` and renames it to `dir`.
fn extract(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create the cache folder {}", parent.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let tmp = parent.join(format!(".partial-{}-{stamp}", std::process::id()));
    let write = || -> std::io::Result<()> {
        for f in FILES {
            let path = tmp.join(f.path);
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::write(&path, f.bytes)?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| {
            format!(
                "cannot write the embedded default model under {} (set MPLUG_CACHE_DIR to a \
                 writable folder)",
                parent.display()
            )
        });
    }
    if dir.exists() {
        // A torn or altered copy (the rename below needs the name free).
        let _ = std::fs::remove_dir_all(dir);
    }
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another process finished first: its copy is as good as ours.
        Err(_) if is_complete(dir) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e).with_context(|| format!("cannot move the default model into {}", dir.display()))
        }
    }
}

/// The folder holding both embedded model folders, written on first use.
pub fn folder() -> Result<PathBuf> {
    let dir = cache_root().join(format!(
        "default-{}-{:016x}",
        env!("CARGO_PKG_VERSION"),
        fingerprint()
    ));
    if !is_complete(&dir) {
        extract(&dir)?;
    }
    Ok(dir)
}

/// The default model folder: `mplug-tiny-world`, which serves every task.
pub fn general() -> Result<PathBuf> {
    Ok(folder()?.join(NAME))
}

/// The default folder for `task`: the grounding round for grounding (its boxes are better than
/// the multi-task model's), else the multi-task model.
pub fn for_task(task: Option<Task>) -> Result<PathBuf> {
    Ok(match task {
        Some(Task::Grounding) => folder()?.join(GROUNDING_NAME),
        _ => general()?,
    })
}

/// `model`, or the default folder for `task` when absent.
pub fn or_default(model: Option<&Path>, task: Option<Task>) -> Result<PathBuf> {
    match model {
        Some(m) => Ok(m.to_path_buf()),
        None => for_task(task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded list is every file of the repository's two default folders.
    #[test]
    fn every_file_of_the_default_folders_is_embedded() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let mut on_disk = Vec::new();
        for name in [NAME, GROUNDING_NAME] {
            let mut stack = vec![models.join(name)];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                    } else {
                        let rel = path.strip_prefix(&models).unwrap();
                        on_disk.push(rel.to_string_lossy().replace('\\', "/"));
                    }
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|f| f.path.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }

    /// A first run writes a whole folder; a copy that lost a file is written again.
    #[test]
    fn extraction_is_whole_and_repairs_a_torn_copy() {
        let root = std::env::temp_dir().join(format!("mplug-default-{}", std::process::id()));
        let dir = root.join("default");
        extract(&dir).unwrap();
        assert!(is_complete(&dir));
        std::fs::remove_file(dir.join(NAME).join("vocab.txt")).unwrap();
        assert!(!is_complete(&dir));
        extract(&dir).unwrap();
        assert!(is_complete(&dir));
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "default")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
