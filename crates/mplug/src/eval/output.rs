//! The files of an evaluation run: the predictions log that makes a run resumable, and JSON
//! results written whole.

use super::error::{EvalError, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The key of an id in the log: its JSON text (so `3` and `"3"` differ).
pub fn id_key(id: &Value) -> String {
    id.to_string()
}

/// Predictions written one JSON object per line, each with an `"id"`, appended and flushed as
/// they are made. Opening an existing log reads the predictions of an earlier run so that they
/// are skipped; a last line cut short by an interrupted write is dropped.
#[derive(Debug)]
pub struct PredictionLog {
    path: PathBuf,
    file: File,
    records: HashMap<String, Value>,
    lines: HashMap<String, usize>,
    last_line: usize,
}

impl PredictionLog {
    /// Opens (or creates) the log at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut records = HashMap::new();
        let mut lines = HashMap::new();
        let mut last_line = 0;
        if path.exists() {
            let bytes = std::fs::read(&path).map_err(|e| EvalError::io(&path, e))?;
            let mut good_end = 0usize;
            let mut good_lines = 0usize;
            let mut start = 0usize;
            let mut line_no = 0usize;
            while start < bytes.len() {
                line_no += 1;
                let (end, complete) = match bytes[start..].iter().position(|&b| b == b'\n') {
                    Some(i) => (start + i, true),
                    None => (bytes.len(), false),
                };
                let line = &bytes[start..end];
                let next = if complete { end + 1 } else { end };
                if line.iter().all(u8::is_ascii_whitespace) {
                    start = next;
                    good_end = next;
                    good_lines = line_no;
                    continue;
                }
                match serde_json::from_slice::<Value>(line) {
                    Ok(v) => {
                        let id = v.get("id").ok_or_else(|| EvalError::Output {
                            path: path.clone(),
                            msg: format!("line {line_no} has no \"id\""),
                        })?;
                        let key = id_key(id);
                        lines.insert(key.clone(), line_no);
                        records.insert(key, v);
                        good_end = next;
                        good_lines = line_no;
                    }
                    // An interrupted write leaves a last line without its newline.
                    Err(_) if !complete => break,
                    Err(e) => {
                        return Err(EvalError::Output {
                            path: path.clone(),
                            msg: format!(
                                "line {line_no} is not valid JSON ({e}); remove it or choose \
                                 another output folder"
                            ),
                        })
                    }
                }
                start = next;
            }
            last_line = good_lines;
            if good_end < bytes.len() {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| EvalError::io(&path, e))?;
                f.set_len(good_end as u64)
                    .map_err(|e| EvalError::io(&path, e))?;
            } else if good_end > 0 && bytes[good_end - 1] != b'\n' {
                // A complete last record without its newline: end the line before appending.
                let mut f = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|e| EvalError::io(&path, e))?;
                f.write_all(b"\n").map_err(|e| EvalError::io(&path, e))?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| EvalError::io(&path, e))?;
        Ok(Self {
            path,
            file,
            records,
            lines,
            last_line,
        })
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of predictions held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the log holds no prediction.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Whether a prediction for `id` is held.
    pub fn contains(&self, id: &Value) -> bool {
        self.records.contains_key(&id_key(id))
    }

    /// The prediction for `id`.
    pub fn get(&self, id: &Value) -> Option<&Value> {
        self.records.get(&id_key(id))
    }

    /// Fails when the log holds a prediction whose id is not in `expected` (a log of another
    /// annotation file).
    pub fn check_ids(&self, expected: &std::collections::HashSet<String>) -> Result<()> {
        let mut stray: Vec<(&usize, &String)> = self
            .lines
            .iter()
            .filter(|(k, _)| !expected.contains(*k))
            .map(|(k, l)| (l, k))
            .collect();
        stray.sort();
        match stray.first() {
            None => Ok(()),
            Some((line, key)) => Err(EvalError::Output {
                path: self.path.clone(),
                msg: format!(
                    "line {line} holds a prediction for id {key}, which the annotation file does \
                     not list ({} such lines): this output folder belongs to another evaluation; \
                     choose another one",
                    stray.len()
                ),
            }),
        }
    }

    /// A string field of the prediction for `id`.
    pub fn str_field(&self, id: &Value, field: &str) -> Result<String> {
        self.field(id, field)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.bad_field(id, field, "a string"))
    }

    /// A field of the prediction for `id`.
    pub fn field(&self, id: &Value, field: &str) -> Result<&Value> {
        let key = id_key(id);
        let rec = self.records.get(&key).ok_or_else(|| EvalError::Output {
            path: self.path.clone(),
            msg: format!("no prediction for id {key}"),
        })?;
        rec.get(field)
            .ok_or_else(|| self.bad_field(id, field, "present"))
    }

    /// The error for a prediction whose `field` is not what it should be.
    pub fn bad_field(&self, id: &Value, field: &str, expected: &str) -> EvalError {
        let key = id_key(id);
        let line = self.lines.get(&key).copied().unwrap_or(0);
        EvalError::Output {
            path: self.path.clone(),
            msg: format!("line {line} (id {key}): field \"{field}\" should be {expected}"),
        }
    }

    /// Appends a prediction (an object with an `"id"`) and flushes it to the file.
    pub fn append(&mut self, record: Value) -> Result<()> {
        let id = record.get("id").ok_or_else(|| EvalError::Output {
            path: self.path.clone(),
            msg: "a prediction without an \"id\"".into(),
        })?;
        let key = id_key(id);
        let mut line = serde_json::to_string(&record).map_err(|e| EvalError::Output {
            path: self.path.clone(),
            msg: e.to_string(),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| EvalError::io(&self.path, e))?;
        self.last_line += 1;
        self.lines.insert(key.clone(), self.last_line);
        self.records.insert(key, record);
        Ok(())
    }
}

/// Writes `value` as pretty JSON to `path` through a temporary file and a rename, so that a
/// reader never sees half a file.
pub fn write_json(path: impl AsRef<Path>, value: &Value) -> Result<()> {
    let path = path.as_ref();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let text = serde_json::to_string_pretty(value).map_err(|e| EvalError::Output {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })? + "\n";
    std::fs::write(&tmp, text).map_err(|e| EvalError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EvalError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("mplug-eval-log-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("predictions.jsonl")
    }

    #[test]
    fn resumes_and_drops_a_cut_line() {
        let p = temp("cut");
        {
            let mut log = PredictionLog::open(&p).unwrap();
            log.append(json!({"id": 1, "caption": "a"})).unwrap();
            log.append(json!({"id": "x", "caption": "b"})).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"id\": 3, \"capt").unwrap();
        drop(f);
        let mut log = PredictionLog::open(&p).unwrap();
        assert_eq!(log.len(), 2);
        assert!(log.contains(&json!(1)) && log.contains(&json!("x")));
        assert!(!log.contains(&json!("1")));
        log.append(json!({"id": 3, "caption": "c"})).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()));
    }

    #[test]
    fn a_bad_middle_line_is_an_error() {
        let p = temp("bad");
        std::fs::write(&p, "{\"id\": 1}\nnot json\n{\"id\": 2}\n").unwrap();
        let e = PredictionLog::open(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
