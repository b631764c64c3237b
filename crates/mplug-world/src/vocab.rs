//! The world's vocabulary: BERT's special tokens, then every word the generator can write.

use std::collections::BTreeSet;

use mplug::input::BERT_BASE_UNCASED_VOCAB;

/// Lines of the BERT uncased vocabulary kept at the top (ids 0 to 103: `[PAD]`, `[unused0]`
/// to `[unused98]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`), so that special tokens keep their
/// usual ids.
pub const SPECIAL_LINES: usize = 104;

/// Upper bound of the vocabulary size (the model config's `vocab_size`).
pub const MAX_VOCAB: usize = 384;

/// Every word the generator can emit (captions, questions, answers, expressions, clips).
pub const WORDS: &[&str] = &[
    // shapes
    "circle",
    "circles",
    "square",
    "squares",
    "triangle",
    "triangles",
    "star",
    "stars",
    "diamond",
    "diamonds",
    "cross",
    "crosses",
    "shape",
    "shapes",
    "object",
    "objects",
    // colours
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "color",
    // sizes and textures
    "small",
    "little",
    "large",
    "big",
    "bigger",
    "larger",
    "smaller",
    "largest",
    "biggest",
    "smallest",
    "size",
    "solid",
    "striped",
    "dotted",
    // backgrounds
    "light",
    "dark",
    "plain",
    "gray",
    "gradient",
    "shaded",
    "noisy",
    "textured",
    "background",
    // numbers: words in captions, digits in answers (as VQA v2 writes them)
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "many",
    "single",
    // places and relations
    "left",
    "right",
    "above",
    "below",
    "up",
    "upward",
    "down",
    "downward",
    "leftmost",
    "rightmost",
    "highest",
    "lowest",
    "next",
    "way",
    "direction",
    // function words
    "a",
    "an",
    "the",
    "and",
    "of",
    "on",
    "to",
    "in",
    "at",
    "from",
    "with",
    "against",
    "while",
    "that",
    "or",
    "first",
    "there",
    "is",
    "are",
    "any",
    "does",
    "what",
    "which",
    "how",
    "yes",
    "no",
    "picture",
    "image",
    "drawing",
    "video",
    // events
    "move",
    "moves",
    "moving",
    "stays",
    "still",
    "appears",
    "turn",
    "turns",
    "become",
    "changes",
    "gets",
    "grow",
    "grows",
    "growing",
    "shrink",
    "shrinks",
    "shrinking",
];

/// The vocabulary file's lines: the first [`SPECIAL_LINES`] lines of the BERT uncased
/// vocabulary, then every word of [`WORDS`] with `?` and `.`, sorted and unique. Token ids are
/// line numbers; the list is shorter than [`MAX_VOCAB`].
pub fn vocabulary() -> Vec<String> {
    let mut lines: Vec<String> = BERT_BASE_UNCASED_VOCAB
        .lines()
        .take(SPECIAL_LINES)
        .map(str::to_string)
        .collect();
    let words: BTreeSet<&str> = WORDS.iter().copied().chain(["?", "."]).collect();
    lines.extend(words.into_iter().map(str::to_string));
    lines
}

/// The words of `text` that the vocabulary lacks (`?` counts as a word of its own).
pub(crate) fn unknown_words<'a>(text: &'a str, known: &BTreeSet<&str>) -> Vec<&'a str> {
    text.split(' ')
        .flat_map(|w| match w.strip_suffix('?') {
            Some(stem) => [stem, "?"],
            None => [w, ""],
        })
        .filter(|w| !w.is_empty() && !known.contains(w))
        .collect()
}
