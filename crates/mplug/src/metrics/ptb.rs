//! Penn-Treebank-style caption tokenization as pycocoevalcap performs it.
//!
//! pycocoevalcap's `PTBTokenizer` pipes every caption (with `\n` replaced by a
//! space, one caption per line) through Stanford CoreNLP 3.4.1's
//! `edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`, splits
//! each output line on `' '` and drops the tokens listed in [`PUNCTUATIONS`].
//! [`tokenize_caption`] reproduces that pipeline without Java.
//!
//! The lexer below re-implements the CoreNLP PTBLexer rules (default
//! `ptb3Escaping` options) that matter for English captions, with JFlex
//! semantics: at every position the rule with the **longest** match wins
//! (trailing context counts towards the length), ties go to the rule listed
//! first. Covered, among others:
//! * contractions: `don't → do n't`, `can't → ca n't`, `cannot → can not`,
//!   `it's → it 's`, `we'll → we 'll`, `o'clock`, `y'all → y' all`;
//! * parentheses and brackets → `-LRB-`/`-RRB-`/`-LCB-`/`-RCB-` (after
//!   lower-casing these become `-lrb-` … and, exactly as in pycocoevalcap, are
//!   **not** removed, since the punctuation list holds the upper-case forms);
//! * quotes → `` ` ``, ` `` `, `'`, `''`; dashes → `--`; ellipses → `...`;
//! * `/` and `*` are escaped (`and/or → and\/or`), `&amp;` → `&`;
//! * numbers (`1.5`, `10,000`, `3:30`), fractions, dates, hyphenated words,
//!   acronyms and the PTBLexer abbreviation lists (`mr.`, `st.`, `etc.` keep
//!   their period; single letters followed by a period such as `a.` too);
//! * British spellings are americanized (`colour → color`, `grey → gray`).
//!
//! Not reproduced: URL/e-mail forms other than `http(s)://…`, SGML beyond
//! simple tags, and the cross-line look-ahead of the abbreviation rule (the
//! duplicated sentence-final period it can emit is a removed punctuation
//! token, so tokenized captions are unaffected). Line-break characters other
//! than `\n` (e.g. `\r`, U+2028) are treated as spaces; the Java tool would
//! split the caption there and misalign all following captions.

use std::sync::OnceLock;

/// Tokens removed after tokenization (pycocoevalcap's `PUNCTUATIONS`).
pub const PUNCTUATIONS: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// Tokenize one caption exactly like pycocoevalcap's `PTBTokenizer`:
/// PTB tokens, lower-cased, punctuation tokens removed, joined by single spaces.
///
/// An empty caption (or one made only of punctuation) yields `""`.
pub fn tokenize_caption(caption: &str) -> String {
    ptb_tokens(&caption.replace('\n', " "))
        .into_iter()
        .map(|t| t.to_lowercase())
        .filter(|t| !PUNCTUATIONS.contains(&t.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Tokenize many captions with [`tokenize_caption`].
pub fn tokenize_captions<S: AsRef<str>>(captions: &[S]) -> Vec<String> {
    captions
        .iter()
        .map(|c| tokenize_caption(c.as_ref()))
        .collect()
}

/// Raw PTBLexer tokens of `text` (original case, punctuation kept), as
/// CoreNLP's `PTBTokenizer` prints them for a single line.
pub fn ptb_tokens(text: &str) -> Vec<String> {
    lex(text, true)
}

fn lex(text: &str, fast_paths: bool) -> Vec<String> {
    // The Java tool sees each caption followed by a line break.
    let mut chars: Vec<char> = text.chars().collect();
    chars.push('\n');
    let rules = rules();
    let mut out = Vec::new();
    let mut i = 0;
    let mut ends = Vec::new();
    let mut ctx_ends = Vec::new();
    while i < chars.len() {
        // Fast paths with results identical to the full rule set: whitespace
        // (no rule but the skip rule starts with it) and a plain ASCII word
        // followed by whitespace (only WORD, or rules emitting the same text,
        // can match it).
        if fast_paths && is_spacenl(chars[i]) {
            i += 1;
            continue;
        }
        if fast_paths && chars[i].is_ascii_alphabetic() {
            let mut j = i + 1;
            while j < chars.len() && chars[j].is_ascii_alphabetic() {
                j += 1;
            }
            if j < chars.len() && is_spacenl(chars[j]) {
                let w: String = chars[i..j].iter().collect();
                if !w.eq_ignore_ascii_case("cannot") {
                    out.push(americanize(&w));
                    i = j;
                    continue;
                }
            }
        }
        // (total length incl. trailing context, token end, rule index)
        let mut best: Option<(usize, usize, usize)> = None;
        for (idx, rule) in rules.iter().enumerate() {
            let c = chars[i];
            let possible = if c.is_ascii() {
                rule.ascii_first[c as usize]
            } else {
                rule.pat.can_start(c)
            };
            if !possible {
                continue;
            }
            ends.clear();
            rule.pat.ends(&chars, i, &mut ends);
            for &e in ends.iter() {
                if e <= i {
                    continue;
                }
                let total = match &rule.ctx {
                    None => e,
                    Some(ctx) => {
                        ctx_ends.clear();
                        ctx.ends(&chars, e, &mut ctx_ends);
                        match ctx_ends.iter().copied().filter(|&x| x > e).max() {
                            Some(t) => t,
                            None => continue,
                        }
                    }
                };
                let better = match best {
                    None => true,
                    Some((bt, be, bidx)) => total > bt || (total == bt && bidx == idx && e > be),
                };
                if better {
                    best = Some((total, e, idx));
                }
            }
        }
        let Some((_, end, idx)) = best else {
            // Unreachable in practice (the catch-all rule matches any char);
            // untokenizable characters are deleted.
            i += 1;
            continue;
        };
        let text: String = chars[i..end].iter().collect();
        let (token, consumed) = apply(rules[idx].act, text);
        if let Some(t) = token {
            out.push(t);
        }
        i += consumed.max(1);
    }
    out
}

// ---------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Act {
    /// Emit the matched text.
    Keep,
    /// Emit nothing (whitespace, deleted characters).
    Skip,
    /// Remove soft hyphens, then americanize.
    Word,
    /// Remove soft hyphens.
    NoSoft,
    /// Emit a fixed string.
    Const(&'static str),
    /// Latex-style quote normalization; `true` when probably an opening quote.
    Quotes(bool),
    /// `cannot` → `can`, `not` is lexed again.
    Cannot,
    /// Emit the text (with its final period) and lex the period again.
    PeriodPushback,
    /// Escape `/` with a backslash.
    Slash,
    /// Escape `/` and `*`.
    SlashStar,
    /// Escape `*`.
    Star,
    /// Fraction: escape `/`, spaces become non-breaking.
    Frac,
    /// Composed fraction characters.
    Frac2,
    /// Currency symbol normalization.
    Currency,
    /// `&amp;` → `&`.
    Amp,
    /// Runs of 3–4 hyphens become `--`.
    Hyphens,
    /// Phone number: spaces become non-breaking, parentheses escaped.
    Phone,
}

fn apply(act: Act, text: String) -> (Option<String>, usize) {
    let n = text.chars().count();
    let tok = match act {
        Act::Keep => text,
        Act::Skip => return (None, n),
        Act::Word => americanize(&remove_soft_hyphens(&text)),
        Act::NoSoft => remove_soft_hyphens(&text),
        Act::Const(s) => s.to_string(),
        Act::Quotes(left) => latex_quotes(&text, left),
        Act::Cannot => {
            let t: String = text.chars().take(3).collect();
            return (Some(t), 3);
        }
        Act::PeriodPushback => return (Some(text), n - 1),
        Act::Slash => delimit(&text, '/'),
        Act::SlashStar => delimit(&delimit(&text, '/'), '*'),
        Act::Star => delimit(&text, '*'),
        Act::Frac => delimit(&text, '/').replace(' ', "\u{a0}"),
        Act::Frac2 => text
            .replace('\u{bc}', "1\\/4")
            .replace('\u{bd}', "1\\/2")
            .replace('\u{be}', "3\\/4")
            .replace('\u{2153}', "1\\/3"),
        Act::Currency => text
            .replace('\u{a2}', "cents")
            .replace('\u{a3}', "#")
            .replace(['\u{80}', '\u{a4}', '\u{20a0}', '\u{20ac}'], "$"),
        Act::Amp => replace_caseless(&text, "&amp;", "&"),
        Act::Hyphens => {
            if (3..=4).contains(&n) {
                "--".to_string()
            } else {
                text
            }
        }
        Act::Phone => text
            .replace(' ', "\u{a0}")
            .replace('(', "-LRB-")
            .replace(')', "-RRB-"),
    };
    (Some(tok), n)
}

fn remove_soft_hyphens(s: &str) -> String {
    s.replace('\u{ad}', "")
}

/// Put a backslash before every `c` not already preceded by one.
fn delimit(s: &str, c: char) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    let mut prev = None;
    for ch in s.chars() {
        if ch == c && prev != Some('\\') {
            out.push('\\');
        }
        out.push(ch);
        prev = Some(ch);
    }
    out
}

fn replace_caseless(s: &str, pat: &str, rep: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if lower[i..].starts_with(pat) {
            out.push_str(rep);
            i += pat.len();
        } else {
            let ch = s[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn latex_quotes(s: &str, left: bool) -> String {
    let s = s.replace("&apos;", "'").replace("&quot;", "\"");
    let mut out = String::with_capacity(s.len() + 2);
    for ch in s.chars() {
        match ch {
            '\'' if left => out.push('`'),
            '"' if left => out.push_str("``"),
            '"' => out.push_str("''"),
            '\u{91}' | '\u{2018}' | '\u{201b}' | '\u{2039}' => out.push('`'),
            '\u{92}' | '\u{2019}' | '\u{203a}' => out.push('\''),
            '\u{93}' | '\u{201c}' | '\u{ab}' => out.push_str("``"),
            '\u{94}' | '\u{201d}' | '\u{bb}' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Americanize (CoreNLP `Americanize.americanize(word, capitalizeTimex=true)`)
// ---------------------------------------------------------------------------

const BRITISH_AMERICAN: &[(&str, &str)] = &[
    ("anaesthetic", "anesthetic"),
    ("analogue", "analog"),
    ("analogues", "analogs"),
    ("analyse", "analyze"),
    ("analysed", "analyzed"),
    ("analysing", "analyzing"),
    ("armoured", "armored"),
    ("cancelled", "canceled"),
    ("cancelling", "canceling"),
    ("candour", "candor"),
    ("capitalise", "capitalize"),
    ("capitalised", "capitalized"),
    ("capitalisation", "capitalization"),
    ("centre", "center"),
    ("chimaeric", "chimeric"),
    ("clamour", "clamor"),
    ("coloured", "colored"),
    ("colouring", "coloring"),
    ("colourful", "colorful"),
    ("defence", "defense"),
    ("Defence", "Defense"),
    ("discolour", "discolor"),
    ("discolours", "discolors"),
    ("discoloured", "discolored"),
    ("discolouring", "discoloring"),
    ("encyclopaedia", "encyclopedia"),
    ("endeavour", "endeavor"),
    ("endeavours", "endeavors"),
    ("endeavoured", "endeavored"),
    ("endeavouring", "endeavoring"),
    ("fervour", "fervor"),
    ("favour", "favor"),
    ("favours", "favors"),
    ("favoured", "favored"),
    ("favouring", "favoring"),
    ("favourite", "favorite"),
    ("favourites", "favorites"),
    ("fibre", "fiber"),
    ("fibres", "fibers"),
    ("finalise", "finalize"),
    ("finalised", "finalized"),
    ("finalising", "finalizing"),
    ("flavour", "flavor"),
    ("flavours", "flavors"),
    ("flavoured", "flavored"),
    ("flavouring", "flavoring"),
    ("glamour", "glamour"),
    ("grey", "gray"),
    ("harbour", "harbor"),
    ("harbours", "harbors"),
    ("homologue", "homolog"),
    ("homologues", "homologs"),
    ("honour", "honor"),
    ("honours", "honors"),
    ("honoured", "honored"),
    ("honouring", "honoring"),
    ("honourable", "honorable"),
    ("humour", "humor"),
    ("humours", "humors"),
    ("humoured", "humored"),
    ("humouring", "humoring"),
    ("kerb", "curb"),
    ("labelled", "labeled"),
    ("labelling", "labeling"),
    ("labour", "labor"),
    ("Labour", "Labor"),
    ("labours", "labors"),
    ("laboured", "labored"),
    ("labouring", "laboring"),
    ("leant", "leaned"),
    ("learnt", "learned"),
    ("localise", "localize"),
    ("localised", "localized"),
    ("manoeuvre", "maneuver"),
    ("manoeuvres", "maneuvers"),
    ("maximise", "maximize"),
    ("maximised", "maximized"),
    ("maximising", "maximizing"),
    ("meagre", "meager"),
    ("minimise", "minimize"),
    ("minimised", "minimized"),
    ("minimising", "minimizing"),
    ("modernise", "modernize"),
    ("modernised", "modernized"),
    ("modernising", "modernizing"),
    ("misdemeanour", "misdemeanor"),
    ("misdemeanours", "misdemeanors"),
    ("neighbour", "neighbor"),
    ("neighbours", "neighbors"),
    ("neighbourhood", "neighborhood"),
    ("neighbourhoods", "neighborhoods"),
    ("oestrogen", "estrogen"),
    ("oestrogens", "estrogens"),
    ("organisation", "organization"),
    ("organisations", "organizations"),
    ("penalise", "penalize"),
    ("penalised", "penalized"),
    ("popularise", "popularize"),
    ("popularised", "popularized"),
    ("popularises", "popularizes"),
    ("popularising", "popularizing"),
    ("practise", "practice"),
    ("practised", "practiced"),
    ("pressurise", "pressurize"),
    ("pressurised", "pressurized"),
    ("pressurises", "pressurizes"),
    ("pressurising", "pressurizing"),
    ("realise", "realize"),
    ("realised", "realized"),
    ("realising", "realizing"),
    ("realises", "realizes"),
    ("recognise", "recognize"),
    ("recognised", "recognized"),
    ("recognising", "recognizing"),
    ("recognises", "recognizes"),
    ("rumoured", "rumored"),
    ("rumouring", "rumoring"),
    ("savour", "savor"),
    ("savours", "savors"),
    ("savoured", "savored"),
    ("savouring", "savoring"),
    ("splendour", "splendor"),
    ("splendours", "splendors"),
    ("theatre", "theater"),
    ("theatres", "theaters"),
    ("titre", "titer"),
    ("titres", "titers"),
    ("travelled", "traveled"),
    ("travelling", "traveling"),
];

const TIMEX: &[(&str, &str)] = &[
    ("january", "January"),
    ("february", "February"),
    ("april", "April"),
    ("june", "June"),
    ("july", "July"),
    ("august", "August"),
    ("september", "September"),
    ("october", "October"),
    ("november", "November"),
    ("december", "December"),
    ("monday", "Monday"),
    ("tuesday", "Tuesday"),
    ("wednesday", "Wednesday"),
    ("thursday", "Thursday"),
    ("friday", "Friday"),
    ("saturday", "Saturday"),
    ("sunday", "Sunday"),
];

/// Substrings that block the `…our → …or` rewrite.
const OUR_EXCEPTIONS: &[&str] = &[
    "abatjour",
    "beflour",
    "bonjour",
    "calambour",
    "carrefour",
    "cornflour",
    "contour",
    "detour",
    "devour",
    "dortour",
    "dyvour",
    "downpour",
    "giaour",
    "glamour",
    "holour",
    "inpour",
    "outpour",
    "pandour",
    "paramour",
    "pompadour",
    "recontour",
    "repour",
    "ryeflour",
    "sompnour",
    "tambour",
    "troubadour",
    "tregetour",
    "velour",
];

/// British → American spelling of a single word (case-sensitive, as CoreNLP).
pub fn americanize(word: &str) -> String {
    if let Some((_, v)) = TIMEX.iter().find(|(k, _)| *k == word) {
        return v.to_string();
    }
    if let Some((_, v)) = BRITISH_AMERICAN.iter().find(|(k, _)| *k == word) {
        return v.to_string();
    }
    // haem(at)?o → hem$1o (all occurrences)
    if word.contains("haemo") || word.contains("haemato") {
        let mut out = String::new();
        let mut rest = word;
        while let Some(p) = rest.find("haem") {
            out.push_str(&rest[..p]);
            let after = &rest[p + 4..];
            if let Some(r) = after.strip_prefix("ato") {
                out.push_str("hemato");
                rest = r;
            } else if let Some(r) = after.strip_prefix('o') {
                out.push_str("hemo");
                rest = r;
            } else {
                out.push_str("haem");
                rest = after;
            }
        }
        out.push_str(rest);
        return out;
    }
    if let Some(stem) = word.strip_suffix("aemia") {
        return format!("{stem}emia");
    }
    if word.contains("leukaem") || word.contains("Leukaem") {
        return word
            .replace("leukaem", "leukem")
            .replace("Leukaem", "Leukem");
    }
    if let Some(stem) = word.strip_suffix("programmes") {
        return format!("{stem}programs");
    }
    if let Some(stem) = word.strip_suffix("programme") {
        return format!("{stem}program");
    }
    // ^([a-z]{3,})our(s?)$ unless an exception occurs anywhere in the word.
    if OUR_EXCEPTIONS.iter().any(|e| word.contains(e)) {
        return word.to_string();
    }
    let (base, plural) = match word.strip_suffix("ours") {
        Some(b) => (b, "s"),
        None => match word.strip_suffix("our") {
            Some(b) => (b, ""),
            None => return word.to_string(),
        },
    };
    if base.len() >= 3 && base.bytes().all(|b| b.is_ascii_lowercase()) {
        return format!("{base}or{plural}");
    }
    word.to_string()
}

// ---------------------------------------------------------------------------
// A tiny pattern engine with JFlex-like semantics (all possible match ends)
// ---------------------------------------------------------------------------

#[derive(Clone)]
enum Pat {
    /// One character satisfying the predicate.
    Class(fn(char) -> bool),
    /// A literal, matched case-insensitively (JFlex `%caseless`).
    Lit(&'static str),
    Seq(Vec<Pat>),
    Alt(Vec<Pat>),
    /// `min..=max` repetitions (`usize::MAX` = unbounded).
    Rep(Box<Pat>, usize, usize),
}

impl Pat {
    /// Push every position at which a match starting at `i` can end.
    fn ends(&self, s: &[char], i: usize, out: &mut Vec<usize>) {
        match self {
            Pat::Class(f) => {
                if i < s.len() && f(s[i]) {
                    out.push(i + 1);
                }
            }
            Pat::Lit(l) => {
                let mut j = i;
                for lc in l.chars() {
                    if j < s.len() && caseless_eq(s[j], lc) {
                        j += 1;
                    } else {
                        return;
                    }
                }
                out.push(j);
            }
            Pat::Seq(ps) => {
                let mut cur = vec![i];
                let mut next = Vec::new();
                for p in ps {
                    next.clear();
                    for &c in &cur {
                        p.ends(s, c, &mut next);
                    }
                    if next.is_empty() {
                        return;
                    }
                    if next.len() > 1 {
                        next.sort_unstable();
                        next.dedup();
                    }
                    std::mem::swap(&mut cur, &mut next);
                }
                out.extend_from_slice(&cur);
            }
            Pat::Alt(ps) => {
                for p in ps {
                    p.ends(s, i, out);
                }
            }
            Pat::Rep(p, min, max) => {
                if *min == 0 {
                    out.push(i);
                }
                if let Pat::Class(f) = **p {
                    // Fast path: a run of single characters.
                    let mut j = i;
                    while j < s.len() && j - i < *max && f(s[j]) {
                        j += 1;
                        if j - i >= *min {
                            out.push(j);
                        }
                    }
                    return;
                }
                let mut cur = vec![i];
                let mut next = Vec::new();
                let mut tmp = Vec::new();
                let mut count = 0usize;
                while count < *max && !cur.is_empty() {
                    count += 1;
                    next.clear();
                    for &c in &cur {
                        tmp.clear();
                        p.ends(s, c, &mut tmp);
                        next.extend(tmp.iter().copied().filter(|&e| e > c));
                    }
                    if next.len() > 1 {
                        next.sort_unstable();
                        next.dedup();
                    }
                    if count >= *min {
                        out.extend_from_slice(&next);
                    }
                    std::mem::swap(&mut cur, &mut next);
                }
            }
        }
    }

    /// Whether the pattern can match the empty string.
    fn nullable(&self) -> bool {
        match self {
            Pat::Class(_) => false,
            Pat::Lit(l) => l.is_empty(),
            Pat::Seq(ps) => ps.iter().all(Pat::nullable),
            Pat::Alt(ps) => ps.iter().any(Pat::nullable),
            Pat::Rep(p, min, _) => *min == 0 || p.nullable(),
        }
    }

    /// Whether a non-empty match can start with `c`.
    fn can_start(&self, c: char) -> bool {
        match self {
            Pat::Class(f) => f(c),
            Pat::Lit(l) => l.chars().next().is_some_and(|lc| caseless_eq(c, lc)),
            Pat::Seq(ps) => {
                for p in ps {
                    if p.can_start(c) {
                        return true;
                    }
                    if !p.nullable() {
                        return false;
                    }
                }
                false
            }
            Pat::Alt(ps) => ps.iter().any(|p| p.can_start(c)),
            Pat::Rep(p, _, max) => *max > 0 && p.can_start(c),
        }
    }
}

fn caseless_eq(a: char, b: char) -> bool {
    a == b || (a.is_ascii() && b.is_ascii() && a.eq_ignore_ascii_case(&b))
}

fn lit(s: &'static str) -> Pat {
    Pat::Lit(s)
}
fn cls(f: fn(char) -> bool) -> Pat {
    Pat::Class(f)
}
fn seq(v: Vec<Pat>) -> Pat {
    Pat::Seq(v)
}
fn alt(v: Vec<Pat>) -> Pat {
    Pat::Alt(v)
}
fn rep(p: Pat, min: usize, max: usize) -> Pat {
    Pat::Rep(Box::new(p), min, max)
}
fn opt(p: Pat) -> Pat {
    rep(p, 0, 1)
}
fn plus(p: Pat) -> Pat {
    rep(p, 1, usize::MAX)
}
fn star(p: Pat) -> Pat {
    rep(p, 0, usize::MAX)
}
fn lits(v: &[&'static str]) -> Pat {
    alt(v.iter().map(|s| lit(s)).collect())
}
/// A word whose first letter is case-sensitive (`[A]bout` in JFlex).
fn cap(first: fn(char) -> bool, rest: &'static str) -> Pat {
    seq(vec![cls(first), lit(rest)])
}

// Character classes -----------------------------------------------------------

fn is_letter(c: char) -> bool {
    c.is_alphabetic()
}
fn is_digit(c: char) -> bool {
    c.is_ascii_digit()
        || ('\u{660}'..='\u{669}').contains(&c)
        || ('\u{6f0}'..='\u{6f9}').contains(&c)
        || ('\u{7c0}'..='\u{7c9}').contains(&c)
        || ('\u{966}'..='\u{96f}').contains(&c)
        || ('\u{ff10}'..='\u{ff19}').contains(&c)
}
fn is_word_char(c: char) -> bool {
    is_letter(c)
        || c == '\u{ad}'
        || ('\u{237}'..='\u{24f}').contains(&c)
        || ('\u{300}'..='\u{36f}').contains(&c)
}
fn is_letter_or_digit(c: char) -> bool {
    is_letter(c) || is_digit(c)
}
fn is_ascii_alpha(c: char) -> bool {
    c.is_ascii_alphabetic()
}
fn is_ascii_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}
fn is_upper_ascii(c: char) -> bool {
    c.is_ascii_uppercase()
}
fn is_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\u{a0}' | '\u{2000}'..='\u{200a}' | '\u{3000}'
    )
}
fn is_newline_char(c: char) -> bool {
    matches!(
        c,
        '\r' | '\n' | '\u{2028}' | '\u{2029}' | '\u{b}' | '\u{c}' | '\u{85}'
    )
}
fn is_spacenl(c: char) -> bool {
    is_space(c) || is_newline_char(c)
}
fn is_apos_char(c: char) -> bool {
    matches!(c, '\'' | '\u{92}' | '\u{2019}')
}
fn is_apos_etc_char(c: char) -> bool {
    is_apos_char(c) || matches!(c, '\u{91}' | '\u{2018}' | '\u{201b}')
}
fn is_hyphen(c: char) -> bool {
    matches!(c, '-' | '_' | '\u{58a}' | '\u{2010}' | '\u{2011}')
}
fn is_quote_char(c: char) -> bool {
    matches!(
        c,
        '`' | '\u{2018}'
            | '\u{2019}'
            | '\u{201a}'
            | '\u{201b}'
            | '\u{201c}'
            | '\u{201d}'
            | '\u{91}'
            | '\u{92}'
            | '\u{93}'
            | '\u{94}'
            | '\u{201e}'
            | '\u{201f}'
            | '\u{2039}'
            | '\u{203a}'
            | '\u{ab}'
            | '\u{bb}'
    )
}
fn is_misc_symbol(c: char) -> bool {
    matches!(c,
        '\u{a6}' | '\u{a7}' | '\u{a8}' | '\u{a9}' | '\u{ac}' | '\u{ae}' | '\u{af}'
        | '\u{b0}'..='\u{ba}' | '\u{d7}' | '\u{f7}' | '\u{387}' | '\u{5be}' | '\u{5c0}'
        | '\u{5c3}' | '\u{5c6}' | '\u{5f3}' | '\u{5f4}' | '\u{600}'..='\u{603}'
        | '\u{606}'..='\u{60a}' | '\u{60c}' | '\u{614}' | '\u{61b}' | '\u{61e}' | '\u{66a}'
        | '\u{66d}' | '\u{703}'..='\u{70d}' | '\u{7f6}'..='\u{7f8}' | '\u{964}' | '\u{965}'
        | '\u{e4f}' | '\u{2020}'..='\u{2023}' | '\u{2032}'..='\u{2038}' | '\u{2044}'
        | '\u{207a}'..='\u{207f}' | '\u{208a}'..='\u{208e}' | '\u{2100}'..='\u{214f}'
        | '\u{2190}'..='\u{23ff}' | '\u{2600}'..='\u{26ff}' | '\u{3012}' | '\u{30fb}'
        | '\u{ff01}'..='\u{ff0f}' | '\u{ff1a}'..='\u{ff20}' | '\u{ff3b}'..='\u{ff40}'
        | '\u{ff5b}'..='\u{ff65}')
}

// Rules -----------------------------------------------------------------------

struct Rule {
    /// `ascii_first[c]`: whether a match can start with ASCII character `c`.
    ascii_first: [bool; 128],
    pat: Pat,
    /// Trailing context (`r/s` in JFlex).
    ctx: Option<Pat>,
    act: Act,
}

fn rule(pat: Pat, act: Act) -> Rule {
    Rule {
        ascii_first: [true; 128],
        pat,
        ctx: None,
        act,
    }
}
fn rule_ctx(pat: Pat, ctx: Pat, act: Act) -> Rule {
    Rule {
        ascii_first: [true; 128],
        pat,
        ctx: Some(ctx),
        act,
    }
}

fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(build_rules)
}

fn build_rules() -> Vec<Rule> {
    let letter = || cls(is_letter);
    let digit = || cls(is_digit);
    let ld = || cls(is_letter_or_digit);
    let apos = || alt(vec![cls(is_apos_char), lit("&apos;")]);
    let apos_etc = || alt(vec![cls(is_apos_etc_char), lit("&apos;")]);
    let space = || cls(is_space);
    let spacenl = || cls(is_spacenl);
    let sgml = || {
        seq(vec![
            lit("<"),
            opt(lit("/")),
            cls(|c| c.is_ascii_alphabetic() || c == '!'),
            star(cls(|c| c != '>')),
            lit(">"),
        ])
    };
    let splet = || {
        seq(vec![
            lit("&"),
            cls(|c| "aeiouAEIOU".contains(c)),
            lits(&["acute", "grave", "uml"]),
            lit(";"),
        ])
    };
    let word = || plus(alt(vec![cls(is_word_char), splet()]));
    let redaux = || {
        seq(vec![
            apos(),
            alt(vec![
                cls(|c| "msdMSD".contains(c)),
                lits(&["re", "ve", "ll"]),
            ]),
        ])
    };
    let sword = || {
        seq(vec![
            star(cls(|c| c.is_ascii_alphabetic() || c == '\u{ad}')),
            cls(|c| c.is_ascii_alphabetic() && c != 'n' && c != 'N'),
            star(cls(|c| c == '\u{ad}')),
        ])
    };
    let sredaux = || seq(vec![lit("n"), apos_etc(), lit("t")]);
    let insentp = || cls(|c| matches!(c, ',' | ';' | ':'));
    let acro = || {
        alt(vec![
            seq(vec![
                cls(is_ascii_alpha),
                plus(seq(vec![lit("."), cls(is_ascii_alpha)])),
            ]),
            seq(vec![
                lits(&["Canada", "Sino", "Korean", "EU", "Japan", "non"]),
                lit("-U.S"),
            ]),
            seq(vec![lit("U.S.-"), lits(&["U.K", "U.S.S.R"])]),
        ])
    };
    let num = || {
        alt(vec![
            plus(digit()),
            seq(vec![
                star(digit()),
                plus(seq(vec![
                    cls(|c| matches!(c, '.' | ':' | ',' | '\u{ad}' | '\u{66b}' | '\u{66c}')),
                    plus(digit()),
                ])),
            ]),
        ])
    };
    let thing_prefix = || opt(seq(vec![cls(|c| "dDoOlL".contains(c)), apos_etc(), ld()]));
    let thing = || {
        seq(vec![
            thing_prefix(),
            plus(ld()),
            star(seq(vec![cls(is_hyphen), thing_prefix(), plus(ld())])),
        ])
    };
    let hthing = || {
        seq(vec![
            cls(is_ascii_alnum),
            star(cls(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | ',' | '\u{ad}')
            })),
            plus(seq(vec![
                lit("-"),
                alt(vec![
                    plus(cls(|c| c.is_ascii_alphanumeric() || c == '\u{ad}')),
                    seq(vec![acro(), lit(".")]),
                ]),
            ])),
        ])
    };
    let thinga = || {
        seq(vec![
            plus(cls(is_upper_ascii)),
            plus(seq(vec![
                alt(vec![cls(|c| c == '+' || c == '&'), lit("&amp;")]),
                plus(cls(is_upper_ascii)),
            ])),
        ])
    };
    let dblquot = || alt(vec![lit("\""), lit("&quot;")]);

    // Abbreviation lists (JFlex macros). `[A]rk` style entries have a
    // case-sensitive first letter.
    let ab_month = || {
        lits(&[
            "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec",
        ])
    };
    let ab_days = || lits(&["Mon", "Tue", "Tues", "Wed", "Thu", "Thurs", "Fri"]);
    let ab_state = || {
        alt(vec![
            lits(&[
                "Ala", "Ariz", "Calif", "Colo", "Conn", "Dak", "Del", "Fla", "Ga", "Ind", "Kan",
                "Kans", "Ky", "La", "Md", "Mich", "Minn", "Mo", "Mont", "Neb", "Nev", "Okla", "Pa",
                "Penn", "Tenn", "Tex", "Va", "Vt", "Wis", "Wisc", "Wyo",
            ]),
            cap(|c| c == 'A', "rk"),
            cap(|c| c == 'I', "ll"),
            cap(|c| c == 'M', "ass"),
            cap(|c| c == 'M', "iss"),
            cap(|c| c == 'O', "re"),
            cap(|c| c == 'W', "ash"),
        ])
    };
    let ab_comp = || {
        lits(&[
            "Inc", "Co", "Cos", "Corp", "Pty", "Ptys", "Ppty", "Pptys", "Ltd", "Plc", "Bancorp",
            "Dept", "Bhd", "Assn", "Univ", "Intl", "Sys",
        ])
    };
    let ab_num = || lits(&["No", "Nos", "Prop", "Ph", "tel", "est", "ext", "sq", "ft"]);
    let ab_ptit = || lits(&["Jr", "Sr", "Bros", "Ed.D", "Ph.D", "Blvd", "Rd", "Esq"]);
    let abbrev1 = || {
        seq(vec![
            alt(vec![
                ab_month(),
                ab_days(),
                ab_state(),
                ab_comp(),
                ab_num(),
                ab_ptit(),
                lits(&["etc", "al", "seq"]),
            ]),
            lit("."),
        ])
    };
    let ab_title = || {
        alt(vec![
            lits(&[
                "Mr", "Mrs", "Ms", "Dr", "Drs", "Prof", "Profs", "Sen", "Sens", "Rep", "Reps",
                "Atty", "Attys", "Lt", "Col", "Gen", "Messrs", "Gov", "Govs", "Adm", "Rev", "Maj",
                "Sgt", "Cpl", "Pvt", "Mt", "Capt", "St", "Ste", "Ave", "Pres", "Lieut", "Hon",
                "Brig", "Cmdr", "Comdr", "Pfc", "Spc", "Supt", "Supts", "Det",
            ]),
            cap(|c| c == 'M', "iss"),
        ])
    };
    let ab_comp2 = || {
        alt(vec![
            lits(&["Invt", "Elec", "Natl"]),
            seq(vec![lit("M"), cls(|c| c == 'f' || c == 't'), lit("g")]),
        ])
    };
    let abbrev4 = || {
        alt(vec![
            cls(is_ascii_alpha),
            ab_title(),
            lits(&["vs", "Alex", "Wm", "Jos", "Cie", "a.k.a", "cf", "TREAS"]),
            acro(),
            ab_comp2(),
        ])
    };
    let sentend = || {
        seq(vec![
            spacenl(),
            alt(vec![spacenl(), cls(is_upper_ascii), sgml()]),
        ])
    };
    let acronym_follow = || {
        alt(vec![
            cap(|c| c == 'A', "bout"),
            cap(|c| c == 'A', "ccording"),
            cap(|c| c == 'A', "dditionally"),
            cap(|c| c == 'A', "fter"),
            cap(|c| c == 'A', "n"),
            cls(|c| c == 'A'),
            cap(|c| c == 'A', "s"),
            cap(|c| c == 'A', "t"),
            cap(|c| c == 'B', "ut"),
            cap(|c| c == 'E', "arlier"),
            cap(|c| c == 'H', "e"),
            cap(|c| c == 'H', "er"),
            cap(|c| c == 'H', "ere"),
            cap(|c| c == 'H', "owever"),
            cap(|c| c == 'I', "f"),
            cap(|c| c == 'I', "n"),
            cap(|c| c == 'I', "t"),
            cap(|c| c == 'L', "ast"),
            cap(|c| c == 'M', "any"),
            cap(|c| c == 'M', "ore"),
            cap(|c| c == 'M', "r."),
            cap(|c| c == 'M', "s."),
            cap(|c| c == 'N', "ow"),
            cap(|c| c == 'O', "nce"),
            cap(|c| c == 'O', "ne"),
            cap(|c| c == 'O', "ther"),
            cap(|c| c == 'O', "ur"),
            cap(|c| c == 'S', "he"),
            cap(|c| c == 'S', "ince"),
            cap(|c| c == 'S', "o"),
            cap(|c| c == 'S', "ome"),
            cap(|c| c == 'S', "uch"),
            cap(|c| c == 'T', "hat"),
            cap(|c| c == 'T', "he"),
            cap(|c| c == 'T', "hen"),
            cap(|c| c == 'T', "here"),
            cap(|c| c == 'T', "hese"),
            cap(|c| c == 'T', "hey"),
            cap(|c| c == 'T', "his"),
            cap(|c| c == 'W', "e"),
            cap(|c| c == 'W', "hen"),
            cap(|c| c == 'W', "hile"),
            cap(|c| c == 'W', "hat"),
            cap(|c| c == 'Y', "et"),
            cap(|c| c == 'Y', "ou"),
        ])
    };

    let mut r = vec![
        // cannot → can + not
        rule(lit("cannot"), Act::Cannot),
        rule(sgml(), Act::Keep),
        // SPMDASH
        rule(
            alt(vec![
                seq(vec![lit("&"), lits(&["MD", "mdash", "ndash"]), lit(";")]),
                cls(|c| {
                    matches!(
                        c,
                        '\u{96}' | '\u{97}' | '\u{2013}' | '\u{2014}' | '\u{2015}'
                    )
                }),
            ]),
            Act::Const("--"),
        ),
        rule(lit("&amp;"), Act::Const("&")),
        // SPPUNC
        rule(
            seq(vec![
                lit("&"),
                alt(vec![
                    lits(&["HT", "TL", "UR", "LR", "QC", "QL", "QR", "odq", "cdq"]),
                    seq(vec![lit("#"), plus(cls(|c| c.is_ascii_digit()))]),
                ]),
                lit(";"),
            ]),
            Act::Keep,
        ),
        rule_ctx(word(), redaux(), Act::Word),
        rule_ctx(sword(), sredaux(), Act::NoSoft),
        rule(word(), Act::Word),
        // APOWORD
        rule(
            alt(vec![
                seq(vec![apos(), lit("n"), opt(apos())]),
                seq(vec![cls(|c| "lLdDjJ".contains(c)), apos()]),
                seq(vec![lits(&["Dunkin", "somethin", "ol"]), apos()]),
                seq(vec![apos(), lit("em")]),
                seq(vec![
                    cls(|c| matches!(c, 'A'..='H' | 'J'..='X' | 'Z' | 'n')),
                    apos_etc(),
                    letter(),
                    letter(),
                    star(letter()),
                ]),
                seq(vec![apos(), cls(|c| ('2'..='9').contains(&c)), lit("0s")]),
                seq(vec![apos(), lit("til"), opt(lit("l"))]),
                seq(vec![
                    letter(),
                    star(letter()),
                    cls(|c| "aeiouyAEIOUY".contains(c)),
                    apos_etc(),
                    cls(|c| "aeiou".contains(c) || c.is_ascii_uppercase()),
                    star(letter()),
                ]),
                seq(vec![apos(), lit("cause")]),
                seq(vec![lit("cont'd"), opt(lit("."))]),
                lits(&[
                    "'twas",
                    "nor'easter",
                    "c'mon",
                    "e'er",
                    "s'mores",
                    "ev'ry",
                    "li'l",
                    "nat'l",
                ]),
            ]),
            Act::Keep,
        ),
        // APOWORD2
        rule_ctx(seq(vec![lit("y"), apos()]), letter(), Act::Keep),
        // FULLURL
        rule(
            seq(vec![
                lit("http"),
                opt(lit("s")),
                lit("://"),
                plus(cls(|c| !" \t\n\u{c}\r\"<>|()".contains(c))),
                cls(|c| !" \t\n\u{c}\r\"<>|.!?(){},-".contains(c)),
            ]),
            Act::SlashStar,
        ),
        rule_ctx(
            redaux(),
            cls(|c| !c.is_ascii_alphabetic()),
            Act::Quotes(false),
        ),
        rule(sredaux(), Act::Quotes(false)),
        // DATE
        rule(
            seq(vec![
                rep(digit(), 1, 2),
                cls(|c| c == '-' || c == '/'),
                rep(digit(), 1, 2),
                cls(|c| c == '-' || c == '/'),
                rep(digit(), 2, 4),
            ]),
            Act::Slash,
        ),
        // NUMBER
        rule(
            seq(vec![opt(cls(|c| c == '-' || c == '+')), num()]),
            Act::NoSoft,
        ),
        // FRAC (traditional treebank 3)
        rule(
            seq(vec![
                opt(seq(vec![
                    rep(digit(), 1, 4),
                    cls(|c| matches!(c, '-' | ' ' | '\u{a0}')),
                ])),
                rep(digit(), 1, 4),
                alt(vec![seq(vec![opt(lit("\\")), lit("/")]), lit("\u{2044}")]),
                rep(digit(), 1, 4),
            ]),
            Act::Frac,
        ),
        // FRAC2
        rule(
            cls(|c| matches!(c, '\u{bc}' | '\u{bd}' | '\u{be}' | '\u{2153}'..='\u{215e}')),
            Act::Frac2,
        ),
        // TBSPEC
        rule(
            alt(vec![
                seq(vec![
                    lit("-"),
                    lits(&["RRB", "LRB", "RCB", "LCB", "RSB", "LSB"]),
                    lit("-"),
                ]),
                lits(&["C.D.s", "pro-", "anti-"]),
                seq(vec![
                    lit("S"),
                    alt(vec![lit("&"), lit("&amp;")]),
                    lits(&["P-500", "Ls"]),
                ]),
                seq(vec![lit("Cap"), apos(), lit("n")]),
                seq(vec![lit("c"), apos(), lit("est")]),
            ]),
            Act::Amp,
        ),
        // THING3
        rule(
            seq(vec![
                plus(cls(is_ascii_alnum)),
                rep(seq(vec![lit("-"), plus(cls(is_ascii_alpha))]), 0, 2),
                rep(
                    seq(vec![
                        opt(lit("\\")),
                        lit("/"),
                        plus(cls(is_ascii_alnum)),
                        rep(seq(vec![lit("-"), plus(cls(is_ascii_alpha))]), 0, 2),
                    ]),
                    1,
                    2,
                ),
            ]),
            Act::Slash,
        ),
        // DOLSIGN
        rule(
            alt(vec![
                seq(vec![star(cls(is_upper_ascii)), lit("$")]),
                lit("#"),
            ]),
            Act::Keep,
        ),
        // DOLSIGN2
        rule(
            cls(|c| {
                matches!(
                    c,
                    '\u{a2}'
                        | '\u{a3}'
                        | '\u{a4}'
                        | '\u{a5}'
                        | '\u{80}'
                        | '\u{20a0}'
                        | '\u{20ac}'
                        | '\u{60b}'
                        | '\u{e3f}'
                        | '\u{20a4}'
                        | '\u{ffe0}'
                        | '\u{ffe1}'
                        | '\u{ffe5}'
                        | '\u{ffe6}'
                )
            }),
            Act::Currency,
        ),
        // ACRONYM followed by a likely sentence start: keep "U.S." and lex the period again.
        rule_ctx(
            seq(vec![acro(), lit(".")]),
            seq(vec![plus(space()), acronym_follow(), space()]),
            Act::PeriodPushback,
        ),
        rule_ctx(abbrev1(), sentend(), Act::PeriodPushback),
        rule(abbrev1(), Act::Keep),
        rule(seq(vec![abbrev4(), lit(".")]), Act::Keep),
        rule_ctx(abbrev4(), space(), Act::Keep),
        rule_ctx(acro(), spacenl(), Act::Keep),
        // TBSPEC2
        rule_ctx(
            seq(vec![
                apos(),
                cls(|c| c.is_ascii_digit()),
                cls(|c| c.is_ascii_digit()),
            ]),
            spacenl(),
            Act::Keep,
        ),
        rule_ctx(seq(vec![word(), lit(".")]), insentp(), Act::NoSoft),
        // PHONE
        rule(
            seq(vec![
                alt(vec![
                    seq(vec![
                        lit("("),
                        rep(cls(|c| c.is_ascii_digit()), 3, 3),
                        lit(")"),
                        opt(cls(|c| c == ' ' || c == '\u{a0}')),
                    ]),
                    seq(vec![
                        rep(cls(|c| c.is_ascii_digit()), 3, 3),
                        cls(|c| matches!(c, '-' | ' ' | '\u{a0}' | '.')),
                    ]),
                ]),
                rep(cls(|c| c.is_ascii_digit()), 3, 3),
                cls(|c| matches!(c, '-' | ' ' | '\u{a0}' | '.')),
                rep(cls(|c| c.is_ascii_digit()), 4, 4),
            ]),
            Act::Phone,
        ),
        rule_ctx(
            dblquot(),
            cls(|c| c.is_ascii_alphanumeric() || c == '$'),
            Act::Quotes(true),
        ),
        rule(dblquot(), Act::Quotes(false)),
        rule(lit("+"), Act::Keep),
        rule(
            cls(|c| matches!(c, '%' | '&' | '\u{2030}' | '\u{2031}')),
            Act::Keep,
        ),
        rule(cls(|c| c == '~' || c == '^'), Act::Keep),
        rule(
            alt(vec![cls(|c| c == '|' || c == '\\'), lit("0x7f")]),
            Act::Skip,
        ),
        rule(
            alt(vec![cls(|c| c == '<' || c == '['), lit("&lt;")]),
            Act::Const("-LRB-"),
        ),
        rule(
            alt(vec![cls(|c| c == '>' || c == ']'), lit("&gt;")]),
            Act::Const("-RRB-"),
        ),
        rule(lit("{"), Act::Const("-LCB-")),
        rule(lit("}"), Act::Const("-RCB-")),
        rule(lit("("), Act::Const("-LRB-")),
        rule(lit(")"), Act::Const("-RRB-")),
        rule(plus(lit("-")), Act::Hyphens),
        // LDOTS
        rule(
            alt(vec![
                rep(lit("."), 3, 5),
                seq(vec![
                    rep(
                        seq(vec![lit("."), cls(|c| c == ' ' || c == '\u{a0}')]),
                        2,
                        4,
                    ),
                    lit("."),
                ]),
                cls(|c| c == '\u{85}' || c == '\u{2026}'),
            ]),
            Act::Const("..."),
        ),
        // FNMARKS
        rule(
            alt(vec![plus(lit("@")), plus(lit("#")), plus(lit("_"))]),
            Act::Keep,
        ),
        // ASTS
        rule(alt(vec![plus(lit("*")), rep(lit("\\*"), 1, 3)]), Act::Star),
        rule(insentp(), Act::Keep),
        rule(plus(cls(|c| c == '?' || c == '!')), Act::Keep),
        rule(
            cls(|c| {
                matches!(
                    c,
                    '.' | '\u{a1}'
                        | '\u{bf}'
                        | '\u{37e}'
                        | '\u{589}'
                        | '\u{61f}'
                        | '\u{6d4}'
                        | '\u{700}'..='\u{702}' | '\u{7fa}'
                )
            }),
            Act::Keep,
        ),
        rule(lit("="), Act::Keep),
        rule(lit("/"), Act::Slash),
        rule_ctx(seq(vec![hthing(), lit(".")]), insentp(), Act::NoSoft),
        rule(hthing(), Act::NoSoft),
        rule_ctx(seq(vec![thing(), lit(".")]), insentp(), Act::Keep),
        rule(thing(), Act::Keep),
        rule_ctx(seq(vec![thinga(), lit(".")]), insentp(), Act::Amp),
        rule(thinga(), Act::Amp),
        // An apostrophe before a word: probably an opening quote.
        rule_ctx(
            lit("'"),
            seq(vec![
                cls(is_ascii_alpha),
                cls(|c| !matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{a0}')),
            ]),
            Act::Quotes(true),
        ),
        rule(redaux(), Act::Quotes(false)),
        // QUOTES
        rule(
            alt(vec![apos(), lit("''"), rep(cls(is_quote_char), 1, 2)]),
            Act::Quotes(false),
        ),
        rule(cls(is_misc_symbol), Act::Keep),
        // Whitespace, zero-width characters and (see module docs) line breaks.
        rule(
            alt(vec![
                lit("\0"),
                plus(space()),
                cls(|c| matches!(c, '\u{200b}' | '\u{200e}' | '\u{200f}' | '\u{feff}')),
                cls(is_newline_char),
                lit("&nbsp;"),
            ]),
            Act::Skip,
        ),
        // Anything else is untokenizable and deleted.
        rule(cls(|_| true), Act::Skip),
    ];

    for rl in r.iter_mut() {
        for (c, slot) in rl.ascii_first.iter_mut().enumerate() {
            *slot = rl.pat.can_start(char::from(c as u8));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_paths_agree_with_full_rules() {
        let cases = [
            "Mr. Smith walks on the St. corner with a T.V. and No. 5",
            "U.S. flag. The end; a 10-year-old boy costs $5 or 50%",
            "an e-mail in the '90s, rock 'n' roll at 3:30 pm",
            "a man's hat, y'all & cats &amp; dogs [red] {blue} <green>",
            "the letter a. dogs, cats, etc. she said 'hello' loudly",
            "Isn't it?! A colourful kite 1/2 a pizza B&W photo",
            "A   man\tsits naïve café hello 😀 world AT&T store co-ed dorm.",
            "a man who's there I'd like ain't gonna go the dog’s toy “quoted”",
            "ice-cream, cones cannot CANNOT can't won't o'clock http://x.org/a*b",
            "Grey favourite colours travelled Monday cat ... -- --- . . . \"hi\"",
        ];
        for c in cases {
            assert_eq!(lex(c, true), lex(c, false), "{c:?}");
        }
    }
}
