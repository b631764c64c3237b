//! Finding image files: a folder walked recursively, as `mplug index` and the task commands
//! take folders of photos.

use super::error::InputError;
use std::fs;
use std::path::{Path, PathBuf};

/// Image file extensions a folder walk picks up (compared case-insensitively).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InputError + '_ {
    move |source| InputError::Read {
        name: path.display().to_string(),
        source,
    }
}

/// Image files under `root`, sorted, as `(relative path, absolute path)`. Hidden files and
/// folders (names starting with `.`, such as the default index folder) are left out;
/// symbolic links to folders are not followed.
pub fn image_files(root: &Path) -> Result<Vec<(String, PathBuf)>, InputError> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        let read = fs::read_dir(&dir).map_err(io_err(&dir))?;
        for item in read {
            let item = item.map_err(io_err(&dir))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let path = item.path();
            let child = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let Ok(kind) = item.file_type() else { continue };
            if kind.is_dir() {
                stack.push((child, path));
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
            {
                out.push((child, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_files_are_sorted_recursive_and_skip_hidden() {
        let dir = std::env::temp_dir().join(format!("mplug-index-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for d in ["b", ".hidden", "a"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        for f in [
            "z.JPG",
            "a/x.png",
            "b/y.webp",
            ".hidden/h.png",
            ".dot.png",
            "notes.txt",
        ] {
            fs::write(dir.join(f), b"x").unwrap();
        }
        let found: Vec<String> = image_files(&dir)
            .unwrap()
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(found, ["a/x.png", "b/y.webp", "z.JPG"]);
        let _ = fs::remove_dir_all(&dir);
    }
}
