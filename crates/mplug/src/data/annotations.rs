//! Readers of the annotation files the reference's evaluation scripts take.
//!
//! Every reader accepts a JSON array of entries, JSON Lines (one entry per line) or, where the
//! format has one, the dataset's container object; field names follow the reference's files,
//! with the common aliases of other releases. A malformed file gives an
//! [`AnnotationError::Malformed`] naming the file and the entry (`entry 3` counts from 0 in a
//! JSON array, `line 4` from 1 in JSON Lines). Training ([`crate::data`]) and evaluation
//! ([`crate::eval`]) read the same files through these readers.

/// An annotation or answer-list file that cannot be read or is malformed.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The file is malformed; `msg` names the entry.
    #[error("{path}: {msg}")]
    Malformed {
        /// The annotation file.
        path: PathBuf,
        /// What is wrong, starting with the entry (`entry 3`, `line 4`).
        msg: String,
    },
}

/// The result type of the readers.
pub type Result<T> = std::result::Result<T, AnnotationError>;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One image to caption with its reference captions.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionSample {
    /// `image_id` (or Karpathy's `cocoid`) when given, else the image path.
    pub id: Value,
    /// Image path relative to the image root.
    pub image: String,
    /// Reference captions, raw (empty for a test set without them).
    pub references: Vec<String>,
}

/// One VQA question.
#[derive(Debug, Clone, PartialEq)]
pub struct VqaSample {
    /// `question_id`, or the entry's index when the file has none.
    pub question_id: u64,
    /// Image path relative to the image root.
    pub image: String,
    /// The question, as given.
    pub question: String,
    /// Ground-truth answers (ten in VQA v2; empty for test-dev / test-std).
    pub answers: Vec<String>,
    /// Question type, for the per-type breakdown.
    pub question_type: Option<String>,
    /// Answer type (`yes/no`, `number`, `other`), for the per-type breakdown.
    pub answer_type: Option<String>,
    /// The source dataset of a training entry (`vqa`, `vg`, `gqa`), which sets its answer
    /// weights in training.
    pub dataset: Option<String>,
}

/// One image of an image-text retrieval test set with its captions.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrievalSample {
    /// Image path relative to the image root.
    pub image: String,
    /// Its captions, raw (the runner applies [`pre_caption`]).
    pub captions: Vec<String>,
}

/// The names an image path goes by in caption, retrieval and label entries (`image`, as the
/// reference's files write it, or `file_name` / `filename`).
const IMAGE_FIELDS: &[&str] = &["image", "file_name", "filename"];

/// One labelled image of an image-classification file (`mplug pretrain-tower`).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelsSample {
    /// Image path relative to the image root.
    pub image: String,
    /// Its labels (an empty list: none of the labels applies).
    pub labels: Vec<String>,
}

/// How a grounding file writes its boxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoxFormat {
    /// `[x, y, width, height]` in pixels, as RefCOCO, RefCOCO+ and RefCOCOg store them.
    #[default]
    Xywh,
    /// `[x0, y0, x1, y1]` in pixels, as ReferItGame and Flickr30K Entities store them.
    Xyxy,
}

impl BoxFormat {
    /// Parses `xywh` or `xyxy`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "xywh" => Some(BoxFormat::Xywh),
            "xyxy" => Some(BoxFormat::Xyxy),
            _ => None,
        }
    }
}

/// One referring expression with the box it refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundingSample {
    /// The entry's `id` / `ref_id` when given, else its index; `#j` is appended for the
    /// `j`-th expression of an entry that lists several.
    pub id: Value,
    /// Image path relative to the image root.
    pub image: String,
    /// The expression, lower-cased as the reference does.
    pub text: String,
    /// Ground-truth `[x0, y0, x1, y1]` in pixels of the original image (coordinates truncated
    /// to integers first, as the reference's `np.array(bbox, dtype=int)`).
    pub bbox: [f64; 4],
}

/// One video question.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoQaSample {
    /// `question_id` when given, else the line's index (as the reference numbers them).
    pub question_id: Value,
    /// Video name or path relative to the video root (`video_id`; the extension may be left out).
    pub video: String,
    /// The question.
    pub question: String,
    /// The ground-truth answer, when given.
    pub answer: Option<String>,
    /// Its `question_type`, when given (the generated world's `static`, `change` or `order`):
    /// accuracy is then also reported per type.
    pub question_type: Option<String>,
}

/// One video of a video-text retrieval test set with its caption.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoRetrievalSample {
    /// Video name or path relative to the video root (`clip_name`; the extension may be left out).
    pub video: String,
    /// Its caption, raw (the runner applies [`pre_caption`]).
    pub caption: String,
}

/// The reference's `pre_caption`: lower-case, delete `,.'!?"()*#:;~`, turn `-` and `/` into
/// spaces and `<person>` into `person`, collapse runs of two or more whitespace characters into
/// one space, strip, and keep the first `max_words` space-separated words.
pub fn pre_caption(caption: &str, max_words: usize) -> String {
    let lowered = caption.to_lowercase();
    let mut s: String = lowered
        .chars()
        .filter(|c| !",.'!?\"()*#:;~".contains(*c))
        .map(|c| if c == '-' || c == '/' { ' ' } else { c })
        .collect();
    s = s.replace("<person>", "person");
    let mut collapsed = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            if j - i >= 2 {
                collapsed.push(' ');
            } else {
                collapsed.push(chars[i]);
            }
            i = j;
        } else {
            collapsed.push(chars[i]);
            i += 1;
        }
    }
    let s = collapsed.trim_end_matches('\n').trim_matches(' ');
    let words: Vec<&str> = s.split(' ').collect();
    if words.len() > max_words {
        words[..max_words].join(" ")
    } else {
        s.to_string()
    }
}

/// One record of an annotation file and where it sits.
struct Record {
    loc: String,
    value: Value,
}

fn annotation(path: &Path, msg: impl Into<String>) -> AnnotationError {
    AnnotationError::Malformed {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn read_text(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| AnnotationError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.trim_start_matches('\u{feff}').to_string())
}

/// A JSON array, JSON Lines, or one object (which `container` may unpack into entries).
fn read_records(path: &Path, container: &[&str]) -> Result<Vec<Record>> {
    let text = read_text(path)?;
    let body = text.trim_start();
    let records = match body.chars().next() {
        None => return Err(annotation(path, "the file is empty")),
        Some('[') => {
            let v: Value = serde_json::from_str(body)
                .map_err(|e| annotation(path, format!("not valid JSON: {e}")))?;
            entries_of(v, "entry")
        }
        Some('{') => match serde_json::from_str::<Value>(body) {
            Ok(Value::Object(mut obj)) => {
                match container
                    .iter()
                    .find(|k| obj.get(**k).is_some_and(Value::is_array))
                {
                    Some(key) => {
                        let items = obj.remove(*key).unwrap_or(Value::Null);
                        entries_of(items, key)
                    }
                    None => vec![Record {
                        loc: "line 1".into(),
                        value: Value::Object(obj),
                    }],
                }
            }
            _ => {
                let mut out = Vec::new();
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    let value: Value = serde_json::from_str(line).map_err(|e| {
                        annotation(path, format!("line {}: not valid JSON: {e}", n + 1))
                    })?;
                    out.push(Record {
                        loc: format!("line {}", n + 1),
                        value,
                    });
                }
                out
            }
        },
        Some(c) => {
            return Err(annotation(
                path,
                format!("expected a JSON array of entries or JSON Lines, found `{c}`"),
            ))
        }
    };
    if records.is_empty() {
        return Err(annotation(path, "the file holds no entries"));
    }
    Ok(records)
}

fn entries_of(v: Value, what: &str) -> Vec<Record> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, value)| Record {
                loc: if what == "entry" {
                    format!("entry {i}")
                } else {
                    format!("{what}[{i}]")
                },
                value,
            })
            .collect(),
        other => vec![Record {
            loc: what.to_string(),
            value: other,
        }],
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field access on one object entry, with errors naming the file and the entry.
struct Entry<'a> {
    path: &'a Path,
    loc: &'a str,
    obj: &'a Map<String, Value>,
}

impl<'a> Entry<'a> {
    fn new(path: &'a Path, rec: &'a Record) -> Result<Self> {
        match &rec.value {
            Value::Object(obj) => Ok(Entry {
                path,
                loc: &rec.loc,
                obj,
            }),
            other => Err(annotation(
                path,
                format!("{}: expected an object, found {}", rec.loc, kind(other)),
            )),
        }
    }

    fn err(&self, msg: impl fmt::Display) -> AnnotationError {
        annotation(self.path, format!("{}: {msg}", self.loc))
    }

    /// The first of `names` present and not null.
    fn get(&self, names: &[&'static str]) -> Option<(&'static str, &'a Value)> {
        names
            .iter()
            .find_map(|n| self.obj.get(*n).filter(|v| !v.is_null()).map(|v| (*n, v)))
    }

    fn missing(&self, names: &[&str]) -> AnnotationError {
        let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        self.err(format!("missing field {}", list.join(" or ")))
    }

    fn string(&self, names: &[&'static str]) -> Result<String> {
        self.opt_string(names)?.ok_or_else(|| self.missing(names))
    }

    fn opt_string(&self, names: &[&'static str]) -> Result<Option<String>> {
        match self.get(names) {
            None => Ok(None),
            Some((name, Value::String(s))) => {
                if s.trim().is_empty() {
                    Err(self.err(format!("`{name}` is empty")))
                } else {
                    Ok(Some(s.clone()))
                }
            }
            Some((name, v)) => {
                Err(self.err(format!("`{name}` must be a string, found {}", kind(v))))
            }
        }
    }

    /// A string, or a list of strings / objects with an `answer`, `raw` or `caption` field.
    fn opt_texts(&self, names: &[&'static str]) -> Result<Option<Vec<String>>> {
        let Some((name, v)) = self.get(names) else {
            return Ok(None);
        };
        let one = |v: &Value, at: String| -> Result<String> {
            let s = match v {
                Value::String(s) => s,
                Value::Object(o) => match ["answer", "raw", "caption"]
                    .iter()
                    .find_map(|k| o.get(*k).and_then(Value::as_str))
                {
                    Some(s) => s,
                    None => {
                        return Err(self.err(format!(
                            "{at} is an object without an `answer`, `raw` or `caption` string"
                        )))
                    }
                },
                other => {
                    return Err(self.err(format!("{at} must be a string, found {}", kind(other))))
                }
            };
            if s.trim().is_empty() {
                Err(self.err(format!("{at} is empty")))
            } else {
                Ok(s.to_string())
            }
        };
        match v {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| one(item, format!("`{name}[{i}]`")))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            other => one(other, format!("`{name}`")).map(|s| Some(vec![s])),
        }
    }

    /// An integer or a string.
    fn opt_id(&self, names: &[&'static str]) -> Result<Option<Value>> {
        match self.get(names) {
            None => Ok(None),
            Some((_, v @ Value::String(_))) => Ok(Some(v.clone())),
            Some((_, v @ Value::Number(n))) if n.is_i64() || n.is_u64() => Ok(Some(v.clone())),
            Some((name, v)) => Err(self.err(format!(
                "`{name}` must be an integer or a string, found {}",
                if v.is_number() { "a fraction" } else { kind(v) }
            ))),
        }
    }
}

/// Fails when two samples share an id.
fn check_unique<'a>(path: &Path, ids: impl IntoIterator<Item = (&'a str, String)>) -> Result<()> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (loc, id) in ids {
        if let Some(first) = seen.insert(id.clone(), loc) {
            return Err(annotation(
                path,
                format!("{loc}: id {id} repeats the id of {first}"),
            ));
        }
    }
    Ok(())
}

/// Reads a caption test set: the `[{image, caption: [...], image_id?}]` form (COCO Karpathy
/// test as mPLUG, BLIP and ALBEF ship it; `caption` may be one string), or Karpathy's
/// `dataset_coco.json` entries `{filename, filepath?, sentences: [{raw}], cocoid?, split?}`,
/// bare or inside its `{"images": [...]}` object. With `split`, only entries whose `split`
/// field equals it are kept (Karpathy's file holds every split).
pub fn read_caption(path: impl AsRef<Path>, split: Option<&str>) -> Result<Vec<CaptionSample>> {
    let path = path.as_ref();
    let records = read_records(path, &["images"])?;
    let mut out = Vec::with_capacity(records.len());
    let mut locs = Vec::with_capacity(records.len());
    for rec in &records {
        let e = Entry::new(path, rec)?;
        if let Some(want) = split {
            match e.opt_string(&["split"])? {
                Some(s) if s == want => {}
                Some(_) => continue,
                None => return Err(e.err("no `split` field, but a split was asked for")),
            }
        }
        let sample = if e.get(&["sentences"]).is_some() {
            let file = e.string(&["filename", "file_name"])?;
            let image = match e.opt_string(&["filepath"])? {
                Some(dir) => format!("{dir}/{file}"),
                None => file,
            };
            let references = e.opt_texts(&["sentences"])?.unwrap_or_default();
            let id = e
                .opt_id(&["image_id", "cocoid", "imgid"])?
                .unwrap_or_else(|| Value::String(image.clone()));
            CaptionSample {
                id,
                image,
                references,
            }
        } else {
            let image = e.string(IMAGE_FIELDS)?;
            let references = e
                .opt_texts(&["caption", "captions", "gold_caption"])?
                .unwrap_or_default();
            let id = e
                .opt_id(&["image_id", "id"])?
                .unwrap_or_else(|| Value::String(image.clone()));
            CaptionSample {
                id,
                image,
                references,
            }
        };
        locs.push(rec.loc.as_str());
        out.push(sample);
    }
    if out.is_empty() {
        return Err(annotation(
            path,
            format!("no entry of split `{}`", split.unwrap_or_default()),
        ));
    }
    check_unique(
        path,
        locs.iter().zip(&out).map(|(l, s)| (*l, s.id.to_string())),
    )?;
    Ok(out)
}

/// Reads VQA questions as mPLUG's `vqa_*.json`: `[{question_id, image, question, answer:
/// [...]}]`; `answer` (or `answers`) may hold strings or the official `{answer: ...}` objects,
/// or be absent (test sets). `question_type` and `answer_type` feed the per-type breakdown. A
/// missing `question_id` is replaced by the entry's index.
pub fn read_vqa(path: impl AsRef<Path>) -> Result<Vec<VqaSample>> {
    let path = path.as_ref();
    let records = read_records(path, &["questions", "annotations"])?;
    let mut out = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        let e = Entry::new(path, rec)?;
        let question_id = match e.opt_id(&["question_id"])? {
            None => i as u64,
            Some(Value::Number(n)) => n
                .as_u64()
                .ok_or_else(|| e.err(format!("`question_id` {n} is negative")))?,
            Some(Value::String(s)) => s.trim().parse::<u64>().map_err(|_| {
                e.err(format!(
                    "`question_id` \"{s}\" is not a non-negative integer (the VQA tools need one)"
                ))
            })?,
            Some(other) => return Err(e.err(format!("bad `question_id` {other}"))),
        };
        out.push(VqaSample {
            question_id,
            image: e.string(&["image", "file_name"])?,
            question: e.string(&["question"])?,
            answers: e.opt_texts(&["answer", "answers"])?.unwrap_or_default(),
            question_type: e.opt_string(&["question_type"])?,
            answer_type: e.opt_string(&["answer_type"])?,
            dataset: e.opt_string(&["dataset"])?,
        });
    }
    check_unique(
        path,
        records
            .iter()
            .zip(&out)
            .map(|(r, s)| (r.loc.as_str(), s.question_id.to_string())),
    )?;
    Ok(out)
}

/// Keys of a JSON object in file order (serde_json's map would sort them).
struct OrderedKeys(Vec<String>);

impl<'de> serde::Deserialize<'de> for OrderedKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = OrderedKeys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OrderedKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(OrderedKeys(keys))
            }
        }
        d.deserialize_map(Keys)
    }
}

/// Reads the candidate answers for ranking: a JSON array of strings (VQA's `answer_list.json`),
/// a JSON object whose keys are the answers, in file order (MSRVTT-QA's `train_ans2label.json`),
/// or a text file with one answer per line.
pub fn read_answer_list(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let text = read_text(path)?;
    let body = text.trim_start();
    let answers: Vec<String> = match body.chars().next() {
        Some('[') => {
            let items: Vec<Value> = serde_json::from_str(body)
                .map_err(|e| annotation(path, format!("not a JSON array: {e}")))?;
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s),
                    other => Err(annotation(
                        path,
                        format!("entry {i}: expected a string, found {}", kind(&other)),
                    )),
                })
                .collect::<Result<_>>()?
        }
        Some('{') => {
            serde_json::from_str::<OrderedKeys>(body)
                .map_err(|e| annotation(path, format!("not a JSON object: {e}")))?
                .0
        }
        _ => body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
    };
    if answers.is_empty() {
        return Err(annotation(path, "lists no answers"));
    }
    if let Some(i) = answers.iter().position(|a| a.trim().is_empty()) {
        return Err(annotation(path, format!("answer {i} is empty")));
    }
    Ok(answers)
}

/// Reads an image-text retrieval test set: `[{image, caption: [...]}]` (mPLUG's
/// `coco_test.json`, `flickr30k_test.json`); `caption` may be one string.
pub fn read_retrieval(path: impl AsRef<Path>) -> Result<Vec<RetrievalSample>> {
    let path = path.as_ref();
    let records = read_records(path, &["images"])?;
    let mut out = Vec::with_capacity(records.len());
    for rec in &records {
        let e = Entry::new(path, rec)?;
        let image = e.string(IMAGE_FIELDS)?;
        let captions = e
            .opt_texts(&["caption", "captions", "sentences"])?
            .ok_or_else(|| e.missing(&["caption"]))?;
        if let Some(j) = captions
            .iter()
            .position(|c| pre_caption(c, usize::MAX).is_empty())
        {
            return Err(e.err(format!(
                "caption {j} holds nothing but punctuation: {:?}",
                captions[j]
            )));
        }
        out.push(RetrievalSample { image, captions });
    }
    Ok(out)
}

/// Reads image labels `[{image, labels: [...]}]` (a JSON array or JSON Lines; `labels` may
/// also be one string), as the generated world's `labels_{split}.json`. An entry without
/// `labels` or with an empty label is an error naming it.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<LabelsSample>> {
    let path = path.as_ref();
    let records = read_records(path, &["images"])?;
    let mut out = Vec::with_capacity(records.len());
    for rec in &records {
        let e = Entry::new(path, rec)?;
        let image = e.string(IMAGE_FIELDS)?;
        let labels = e
            .opt_texts(&["labels"])?
            .ok_or_else(|| e.missing(&["labels"]))?;
        out.push(LabelsSample { image, labels });
    }
    Ok(out)
}

fn parse_box(e: &Entry, name: &str, v: &Value, format: BoxFormat) -> Result<[f64; 4]> {
    let nums: Option<Vec<f64>> = v
        .as_array()
        .map(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
        .unwrap_or(None);
    let b = match nums.as_deref() {
        Some([a, b, c, d]) if [a, b, c, d].iter().all(|x| x.is_finite()) => {
            // The reference casts the stored box to int (truncation) before using it.
            [a.trunc(), b.trunc(), c.trunc(), d.trunc()]
        }
        _ => {
            return Err(e.err(format!(
                "`{name}` must be four finite numbers, found {}",
                serde_json::to_string(v).unwrap_or_default()
            )))
        }
    };
    let xyxy = match format {
        BoxFormat::Xywh => {
            if b[2] < 0.0 || b[3] < 0.0 {
                return Err(e.err(format!(
                    "`{name}` {b:?} has a negative width or height (is it xyxy? pass the xyxy box format)"
                )));
            }
            [b[0], b[1], b[0] + b[2], b[1] + b[3]]
        }
        BoxFormat::Xyxy => {
            if b[2] < b[0] || b[3] < b[1] {
                return Err(e.err(format!(
                    "`{name}` {b:?} has x1 < x0 or y1 < y0 (is it xywh? pass the xywh box format)"
                )));
            }
            b
        }
    };
    Ok(xyxy)
}

/// Reads referring expressions with their boxes. Entries are objects `{image, text, bbox,
/// id?}` (aliases: `img_file`/`file_name`, `expression`/`phrase`/`sentence`, `box`,
/// `ref_id`; `text` may list several expressions of one box), or the tuples of the
/// reference's split files converted to JSON: `[img_file, mask_file, bbox, phrase, attributes]`
/// (RefCOCO, RefCOCO+, RefCOCOg, ReferItGame) or `[img_file, bbox, phrase, ...]` (Flickr30K).
/// `format` says how `bbox` is written.
pub fn read_grounding(path: impl AsRef<Path>, format: BoxFormat) -> Result<Vec<GroundingSample>> {
    let path = path.as_ref();
    let records = read_records(path, &["refs", "annotations"])?;
    let mut out = Vec::with_capacity(records.len());
    let mut locs = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        // Tuples become objects so that one code path checks them.
        let value = match &rec.value {
            Value::Array(t) => {
                let (img, bbox, text) = match t.len() {
                    5 => (&t[0], &t[2], &t[3]),
                    3 | 4 if t[1].is_array() => (&t[0], &t[1], &t[2]),
                    n => {
                        return Err(annotation(
                            path,
                            format!(
                                "{}: a tuple entry needs [image, mask, bbox, phrase, attributes] \
                                 or [image, bbox, phrase, ...], found {n} items",
                                rec.loc
                            ),
                        ))
                    }
                };
                let mut m = Map::new();
                m.insert("image".into(), img.clone());
                m.insert("bbox".into(), bbox.clone());
                m.insert("text".into(), text.clone());
                Value::Object(m)
            }
            v => v.clone(),
        };
        let rec = Record {
            loc: rec.loc.clone(),
            value,
        };
        let e = Entry::new(path, &rec)?;
        let image = e.string(&["image", "img_file", "file_name", "filename"])?;
        let texts = e
            .opt_texts(&[
                "text",
                "expression",
                "phrase",
                "sentence",
                "sentences",
                "caption",
            ])?
            .ok_or_else(|| e.missing(&["text", "expression", "phrase"]))?;
        let (name, bv) = e
            .get(&["bbox", "box"])
            .ok_or_else(|| e.missing(&["bbox"]))?;
        let bbox = parse_box(&e, name, bv, format)?;
        let base = e
            .opt_id(&["id", "ref_id", "item_id"])?
            .unwrap_or_else(|| Value::from(i as u64));
        let several = texts.len() > 1;
        for (j, text) in texts.into_iter().enumerate() {
            let id = if several {
                let b = match &base {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Value::String(format!("{b}#{j}"))
            } else {
                base.clone()
            };
            locs.push(rec.loc.clone());
            out.push(GroundingSample {
                id,
                image: image.clone(),
                text: text.to_lowercase(),
                bbox,
            });
        }
    }
    check_unique(
        path,
        locs.iter()
            .zip(&out)
            .map(|(l, s)| (l.as_str(), s.id.to_string())),
    )?;
    Ok(out)
}

/// Reads video questions as MSRVTT-QA's `test.jsonl`: `{video_id, question, answer}` per line
/// (a JSON array works too), with an optional `question_type`. Questions are numbered by their
/// index, as the reference does, unless they carry a `question_id`.
pub fn read_videoqa(path: impl AsRef<Path>) -> Result<Vec<VideoQaSample>> {
    let path = path.as_ref();
    let records = read_records(path, &[])?;
    let mut out = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        let e = Entry::new(path, rec)?;
        let answer = match e.get(&["answer"]) {
            Some((_, Value::Number(n))) => Some(n.to_string()),
            _ => e.opt_string(&["answer"])?,
        };
        out.push(VideoQaSample {
            question_id: e
                .opt_id(&["question_id"])?
                .unwrap_or_else(|| Value::from(i as u64)),
            video: e.string(&["video_id", "video", "clip_name"])?,
            question: e.string(&["question"])?,
            answer,
            question_type: e.opt_string(&["question_type"])?,
        });
    }
    check_unique(
        path,
        records
            .iter()
            .zip(&out)
            .map(|(r, s)| (r.loc.as_str(), s.question_id.to_string())),
    )?;
    Ok(out)
}

/// Reads a video-text retrieval test set as MSRVTT's `msrvtt_test.jsonl`: `{clip_name,
/// caption}` per line (aliases `video`, `video_id`; a JSON array works too). Each video has one
/// caption; `caption` may be a one-element list.
pub fn read_video_retrieval(path: impl AsRef<Path>) -> Result<Vec<VideoRetrievalSample>> {
    let path = path.as_ref();
    let records = read_records(path, &[])?;
    let mut out = Vec::with_capacity(records.len());
    for rec in &records {
        let e = Entry::new(path, rec)?;
        let video = e.string(&["clip_name", "video", "video_id"])?;
        let mut captions = e
            .opt_texts(&["caption", "captions", "sentence"])?
            .ok_or_else(|| e.missing(&["caption"]))?;
        if captions.len() != 1 {
            return Err(e.err(format!(
                "video retrieval takes one caption per video, found {}",
                captions.len()
            )));
        }
        let caption = captions.remove(0);
        if pre_caption(&caption, usize::MAX).is_empty() {
            return Err(e.err(format!(
                "the caption holds nothing but punctuation: {caption:?}"
            )));
        }
        out.push(VideoRetrievalSample { video, caption });
    }
    Ok(out)
}

/// The file of a video named `name` under `root`: `root/name` itself (a file, a GIF, or a folder
/// of frames), else `root/name` with one of the usual extensions, else a frame folder.
pub fn resolve_video(root: &Path, name: &str) -> Option<PathBuf> {
    let direct = root.join(name);
    if direct.exists() {
        return Some(direct);
    }
    ["mp4", "avi", "webm", "mkv", "mov", "gif"]
        .iter()
        .map(|ext| root.join(format!("{name}.{ext}")))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mplug-eval-ann-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn karpathy_entries_with_a_split() {
        let p = file(
            "karpathy.json",
            r#"{"images": [
                {"filepath": "val2014", "filename": "a.jpg", "cocoid": 5, "split": "test",
                 "sentences": [{"raw": "A dog."}, {"raw": "a pet"}]},
                {"filepath": "val2014", "filename": "b.jpg", "cocoid": 6, "split": "val",
                 "sentences": [{"raw": "x"}]}
            ]}"#,
        );
        let all = read_caption(&p, None).unwrap();
        assert_eq!(all.len(), 2);
        let test = read_caption(&p, Some("test")).unwrap();
        assert_eq!(
            test,
            vec![CaptionSample {
                id: Value::from(5),
                image: "val2014/a.jpg".into(),
                references: vec!["A dog.".into(), "a pet".into()],
            }]
        );
        let e = read_caption(&p, Some("train")).unwrap_err().to_string();
        assert!(e.contains("no entry of split `train`"), "{e}");
    }

    #[test]
    fn answer_lists_in_every_form() {
        let a = file("list.json", r#"["yes", "no", "2"]"#);
        assert_eq!(read_answer_list(&a).unwrap(), ["yes", "no", "2"]);
        let b = file("ans2label.json", r#"{"zebra": 0, "apple": 1, "mango": 2}"#);
        assert_eq!(read_answer_list(&b).unwrap(), ["zebra", "apple", "mango"]);
        let c = file("answers.txt", "red\n\n blue \n");
        assert_eq!(read_answer_list(&c).unwrap(), ["red", "blue"]);
        let d = file("none.txt", "\n");
        assert!(read_answer_list(&d)
            .unwrap_err()
            .to_string()
            .contains("no answers"));
    }

    #[test]
    fn vqa_ids_and_answers() {
        let p = file(
            "vqa.jsonl",
            "{\"question_id\": \"42\", \"image\": \"a.jpg\", \"question\": \"q?\", \"answers\": [{\"answer\": \"x\"}]}\n\
             {\"image\": \"b.jpg\", \"question\": \"r?\"}\n",
        );
        let v = read_vqa(&p).unwrap();
        assert_eq!((v[0].question_id, v[1].question_id), (42, 1));
        assert_eq!(v[0].answers, ["x"]);
        assert!(v[1].answers.is_empty());
        let bad = file(
            "vqa_bad.json",
            r#"[{"question_id": -1, "image": "a", "question": "q"}]"#,
        );
        let e = read_vqa(&bad).unwrap_err().to_string();
        assert!(e.contains("entry 0") && e.contains("negative"), "{e}");
    }

    #[test]
    fn pre_caption_matches_the_reference() {
        assert_eq!(
            pre_caption("A man's  <person>-shaped, red/blue kite!", 30),
            "a mans person shaped red blue kite"
        );
        assert_eq!(pre_caption("one two three four", 2), "one two");
        assert_eq!(pre_caption("  Hello.  ", 5), "hello");
        assert_eq!(pre_caption("a\tb", 5), "a\tb");
    }
}
