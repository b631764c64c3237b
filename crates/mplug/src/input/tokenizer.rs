//! BERT uncased WordPiece tokenization, as the reference mPLUG code tokenizes questions, captions
//! and answers, and its post-processing of generated ids back into text.
//!
//! Built on the `tokenizers` crate (BERT normalizer: control characters removed, CJK characters
//! split, lower-casing and accent stripping; BERT pre-tokenizer; WordPiece with `##`
//! continuations and `[UNK]` for words over 100 characters). The five BERT special tokens are
//! matched verbatim in the input text, as the reference's tokenizer never splits them.
//!
//! ```no_run
//! # fn main() -> Result<(), mplug::input::InputError> {
//! use mplug::input::{EncodeOptions, Tokenizer};
//! let tok = Tokenizer::bert_base_uncased()?;
//! let options = EncodeOptions::longest().truncate(25);
//! let batch = tok.encode_batch(&["what is the cat doing?"], &options)?;
//! let (ids, mask) = batch.to_tensors(&candle_core::Device::Cpu)?;
//! # let _ = (ids, mask); Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::AddedToken;

use super::error::{InputError, Result};

/// The `bert-base-uncased` vocabulary (30522 tokens), embedded in the library.
pub const BERT_BASE_UNCASED_VOCAB: &str = include_str!("../../assets/bert-base-uncased-vocab.txt");

/// Default limit on a sequence's length, `[CLS]` and `[SEP]` included: BERT's 512 position
/// embeddings.
pub const DEFAULT_MAX_POSITIONS: usize = 512;

/// Classification token that starts every sequence.
pub const CLS_TOKEN: &str = "[CLS]";
/// Separator token that ends every sequence (and every VQA answer).
pub const SEP_TOKEN: &str = "[SEP]";
/// Padding token.
pub const PAD_TOKEN: &str = "[PAD]";
/// Unknown-word token.
pub const UNK_TOKEN: &str = "[UNK]";
/// Mask token.
pub const MASK_TOKEN: &str = "[MASK]";

/// How a batch is padded to a rectangle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// To the longest sequence of the batch (the reference's `padding='longest'`).
    Longest,
    /// To exactly this many tokens (the reference's `padding='max_length'`); a longer sequence
    /// is an error unless truncation cuts it to this length.
    Fixed(usize),
}

/// Padding and truncation of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    /// How to pad.
    pub padding: Padding,
    /// Cut each sequence to at most this many tokens, `[CLS]` and `[SEP]` included (the reference's
    /// `truncation=True, max_length=n`); `None` leaves sequences whole, and one longer than the
    /// tokenizer's position limit is then an error.
    pub truncation: Option<usize>,
}

impl EncodeOptions {
    /// Pad to the longest sequence, no truncation.
    pub fn longest() -> Self {
        Self {
            padding: Padding::Longest,
            truncation: None,
        }
    }

    /// Pad to exactly `len` tokens and truncate to `len`.
    pub fn fixed(len: usize) -> Self {
        Self {
            padding: Padding::Fixed(len),
            truncation: Some(len),
        }
    }

    /// Truncate to at most `max_len` tokens, `[CLS]` and `[SEP]` included.
    #[must_use]
    pub fn truncate(mut self, max_len: usize) -> Self {
        self.truncation = Some(max_len);
        self
    }

    /// Turn truncation off.
    #[must_use]
    pub fn no_truncation(mut self) -> Self {
        self.truncation = None;
        self
    }
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self::longest()
    }
}

/// A padded batch of token ids with its attention mask, row per text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchEncoding {
    /// Token ids, `[CLS] ... [SEP] [PAD] ...`, all rows of the same length.
    pub input_ids: Vec<Vec<u32>>,
    /// 1 for real tokens (`[CLS]` and `[SEP]` included), 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
}

impl BatchEncoding {
    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the batch holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Length of every row.
    pub fn seq_len(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }

    /// The ids as a `(batch, seq_len)` u32 tensor.
    pub fn input_ids_tensor(&self, device: &Device) -> Result<Tensor> {
        rows_to_tensor(&self.input_ids, device)
    }

    /// The mask as a `(batch, seq_len)` tensor of `dtype` (u32 keeps it exact; f32 suits masks
    /// that are turned into additive attention biases).
    pub fn attention_mask_tensor(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        Ok(rows_to_tensor(&self.attention_mask, device)?.to_dtype(dtype)?)
    }

    /// `(input_ids, attention_mask)`, both `(batch, seq_len)` u32 tensors.
    pub fn to_tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        Ok((
            self.input_ids_tensor(device)?,
            rows_to_tensor(&self.attention_mask, device)?,
        ))
    }
}

fn rows_to_tensor(rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let b = rows.len();
    let l = rows.first().map_or(0, Vec::len);
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Ok(Tensor::from_vec(flat, (b, l), device)?)
}

/// BERT WordPiece tokenizer with the reference's encoding and decoding conventions.
///
/// Thread-safe (`Send + Sync`) and cheap to share behind an `Arc`.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    cls_id: u32,
    sep_id: u32,
    pad_id: u32,
    max_positions: usize,
    allow_empty: bool,
}

impl Tokenizer {
    /// The `bert-base-uncased` tokenizer from the embedded vocabulary (what every released mPLUG
    /// checkpoint uses).
    pub fn bert_base_uncased() -> Result<Self> {
        Self::from_vocab_bytes(BERT_BASE_UNCASED_VOCAB.as_bytes(), Path::new("<embedded>"))
    }

    /// A BERT uncased tokenizer from a `vocab.txt` (one token per line, id = line number).
    pub fn from_vocab_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| InputError::TokenizerLoad {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_vocab_bytes(&bytes, path)
    }

    /// A BERT uncased tokenizer from the bytes of a `vocab.txt`; `origin` names them in errors.
    pub fn from_vocab_bytes(bytes: &[u8], origin: &Path) -> Result<Self> {
        let load_err = |message: String| InputError::TokenizerLoad {
            path: origin.to_path_buf(),
            message,
        };
        let vocab = WordPiece::read_bytes(bytes).map_err(|e| load_err(e.to_string()))?;
        if vocab.is_empty() {
            return Err(load_err("the vocabulary is empty".into()));
        }
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token(UNK_TOKEN.into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| load_err(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .map_err(|e| load_err(e.to_string()))?;
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        let specials = [PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN];
        for token in specials {
            if inner.token_to_id(token).is_none() {
                return Err(InputError::MissingSpecialToken {
                    token: token.into(),
                });
            }
        }
        inner
            .add_special_tokens(specials.iter().map(|t| AddedToken::from(*t, true)))
            .map_err(|e| load_err(e.to_string()))?;
        Self::finish(inner)
    }

    /// A tokenizer from a Hugging Face `tokenizer.json` (for instance the one saved with
    /// `BertTokenizerFast`). Its own truncation, padding and post-processor settings are ignored:
    /// this type adds `[CLS]`/`[SEP]` and pads itself.
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| InputError::TokenizerLoad {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Self::finish(inner)
    }

    /// A tokenizer from a file: `*.json` is read as a `tokenizer.json`, anything else as a
    /// `vocab.txt`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        if is_json {
            Self::from_tokenizer_json(path)
        } else {
            Self::from_vocab_file(path)
        }
    }

    fn finish(mut inner: tokenizers::Tokenizer) -> Result<Self> {
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| InputError::TokenizerLoad {
                path: PathBuf::from("<tokenizer>"),
                message: e.to_string(),
            })?;
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| InputError::MissingSpecialToken {
                    token: token.into(),
                })
        };
        let (cls_id, sep_id, pad_id) = (id(CLS_TOKEN)?, id(SEP_TOKEN)?, id(PAD_TOKEN)?);
        Ok(Self {
            inner,
            cls_id,
            sep_id,
            pad_id,
            max_positions: DEFAULT_MAX_POSITIONS,
            allow_empty: false,
        })
    }

    /// Sets the longest sequence accepted, `[CLS]` and `[SEP]` included (the model's
    /// `max_position_embeddings`; default 512).
    #[must_use]
    pub fn with_max_positions(mut self, max_positions: usize) -> Self {
        self.max_positions = max_positions;
        self
    }

    /// Whether a text with no tokens is encoded as `[CLS] [SEP]`, as the reference does
    /// (`true`), or refused with [`InputError::EmptyText`] (`false`, the default).
    #[must_use]
    pub fn with_allow_empty(mut self, allow_empty: bool) -> Self {
        self.allow_empty = allow_empty;
        self
    }

    /// The position limit in force.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Number of tokens in the vocabulary (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of `[CLS]`.
    pub fn cls_id(&self) -> u32 {
        self.cls_id
    }

    /// Id of `[SEP]`.
    pub fn sep_id(&self) -> u32 {
        self.sep_id
    }

    /// Id of `[PAD]`.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of a token, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token of an id, if the id is in the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The WordPiece tokens of a text, without `[CLS]`/`[SEP]`.
    pub fn tokenize(&self, text: &str) -> Result<Vec<String>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| InputError::Tokenize {
                index: 0,
                message: e.to_string(),
            })?;
        Ok(enc.get_tokens().to_vec())
    }

    fn raw_ids(&self, index: usize, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| InputError::Tokenize {
                index,
                message: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    fn raw_ids_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        // The library's parallel batch encoding only pays off on large batches.
        if texts.len() < 256 {
            return texts
                .iter()
                .enumerate()
                .map(|(i, t)| self.raw_ids(i, t))
                .collect();
        }
        match self.inner.encode_batch(texts.to_vec(), false) {
            Ok(encs) => Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect()),
            // Find which text failed, so that the error names it.
            Err(_) => texts
                .iter()
                .enumerate()
                .map(|(i, t)| self.raw_ids(i, t))
                .collect(),
        }
    }

    /// Adds `[CLS]`/`[SEP]` to the word-piece ids of text `index`, truncating and checking limits.
    fn frame(
        &self,
        index: usize,
        mut ids: Vec<u32>,
        truncation: Option<usize>,
        fixed: Option<usize>,
    ) -> Result<Vec<u32>> {
        if ids.is_empty() && !self.allow_empty {
            return Err(InputError::EmptyText { index });
        }
        if let Some(max_len) = truncation {
            if max_len < 2 {
                return Err(InputError::InvalidConfig(format!(
                    "truncation length {max_len} leaves no room for [CLS] and [SEP]"
                )));
            }
            ids.truncate(max_len - 2);
        }
        let len = ids.len() + 2;
        let limit = match fixed {
            Some(n) => n.min(self.max_positions),
            None => self.max_positions,
        };
        if len > limit {
            return Err(InputError::TextTooLong {
                index,
                tokens: len,
                limit,
            });
        }
        let mut out = Vec::with_capacity(len);
        out.push(self.cls_id);
        out.extend_from_slice(&ids);
        out.push(self.sep_id);
        Ok(out)
    }

    /// `[CLS] tokens [SEP]` for one text, optionally truncated to `truncation` tokens
    /// (`[CLS]`/`[SEP]` included). Errors on an empty text (unless allowed) and on a text over the
    /// position limit.
    pub fn encode(&self, text: &str, truncation: Option<usize>) -> Result<Vec<u32>> {
        let ids = self.raw_ids(0, text)?;
        self.frame(0, ids, truncation, None)
    }

    /// Encodes a batch of texts, padded with `[PAD]` to a rectangle, with attention masks.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        options: &EncodeOptions,
    ) -> Result<BatchEncoding> {
        if texts.is_empty() {
            return Err(InputError::EmptyBatch);
        }
        let refs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let raw = self.raw_ids_batch(&refs)?;
        self.pad_batch(raw, options, 0)
    }

    fn pad_batch(
        &self,
        raw: Vec<Vec<u32>>,
        options: &EncodeOptions,
        min_tokens: usize,
    ) -> Result<BatchEncoding> {
        let fixed = match options.padding {
            Padding::Fixed(n) => {
                if n < 2 {
                    return Err(InputError::InvalidConfig(format!(
                        "fixed padding length {n} leaves no room for [CLS] and [SEP]"
                    )));
                }
                Some(n)
            }
            Padding::Longest => None,
        };
        let mut rows = Vec::with_capacity(raw.len());
        for (index, ids) in raw.into_iter().enumerate() {
            if ids.len() <= min_tokens && !self.allow_empty {
                return Err(InputError::EmptyText { index });
            }
            rows.push(self.frame(index, ids, options.truncation, fixed)?);
        }
        let width = fixed.unwrap_or_else(|| rows.iter().map(Vec::len).max().unwrap_or(0));
        let mut attention_mask = Vec::with_capacity(rows.len());
        for row in &mut rows {
            let mut mask = vec![1u32; row.len()];
            mask.resize(width, 0);
            row.resize(width, self.pad_id);
            attention_mask.push(mask);
        }
        Ok(BatchEncoding {
            input_ids: rows,
            attention_mask,
        })
    }

    /// Encodes VQA answers (candidate lists or training targets) as the reference does:
    /// each answer followed by `[SEP]` (`answer + "[SEP]"`, no space), so a sequence reads
    /// `[CLS] answer [SEP] [SEP]`, padded to the longest, not truncated. An empty answer is an
    /// error unless empty texts are allowed.
    pub fn encode_answers<S: AsRef<str>>(&self, answers: &[S]) -> Result<BatchEncoding> {
        if answers.is_empty() {
            return Err(InputError::EmptyBatch);
        }
        let texts: Vec<String> = answers
            .iter()
            .map(|a| format!("{}{SEP_TOKEN}", a.as_ref()))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let raw = self.raw_ids_batch(&refs)?;
        // The appended [SEP] is one token: an answer of its own adds at least one more.
        self.pad_batch(raw, &EncodeOptions::longest(), 1)
    }

    /// The reference's `tokenizer.decode(ids)` (transformers 4.14 `BertTokenizer`, default
    /// arguments): tokens joined by spaces, `" ##"` removed, then its clean-up of spaces before
    /// punctuation and in English contractions. Special tokens are kept; ids outside the
    /// vocabulary read as `[UNK]`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let tokens: Vec<String> = ids
            .iter()
            .map(|&id| {
                self.inner
                    .id_to_token(id)
                    .unwrap_or_else(|| UNK_TOKEN.to_string())
            })
            .collect();
        let joined = tokens.join(" ").replace(" ##", "");
        clean_up_tokenization(joined.trim())
    }

    /// The reference's caption / answer text from generated ids: [`Tokenizer::decode`], then
    /// `[SEP]`, `[CLS]` and `[PAD]` removed and surrounding whitespace stripped.
    pub fn decode_postprocessed(&self, ids: &[u32]) -> String {
        self.decode(ids)
            .replace(SEP_TOKEN, "")
            .replace(CLS_TOKEN, "")
            .replace(PAD_TOKEN, "")
            .trim()
            .to_string()
    }

    /// [`Tokenizer::decode_postprocessed`] for each row.
    pub fn decode_postprocessed_batch<R: AsRef<[u32]>>(&self, rows: &[R]) -> Vec<String> {
        rows.iter()
            .map(|r| self.decode_postprocessed(r.as_ref()))
            .collect()
    }
}

/// transformers 4.x `clean_up_tokenization`: removes the spaces a whitespace join puts before
/// punctuation and inside English contractions.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_vocab_loads() {
        let tok = Tokenizer::bert_base_uncased().expect("embedded vocab");
        assert_eq!(tok.vocab_size(), 30522);
        assert_eq!((tok.cls_id(), tok.sep_id(), tok.pad_id()), (101, 102, 0));
    }

    #[test]
    fn clean_up_matches_transformers() {
        assert_eq!(
            clean_up_tokenization("a man ' s dog , isn ' t it ?"),
            "a man's dog, isn't it?"
        );
        assert_eq!(clean_up_tokenization("i do not"), "i do not");
    }
}
