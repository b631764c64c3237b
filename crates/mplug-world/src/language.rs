//! Text about scenes: captions, VQA questions with ten answers, and referring expressions.
//!
//! Every text is lower case; questions end with `?` and nothing else carries punctuation.
//! Relations are only stated between objects whose centres differ by more than
//! [`CLEAR_OFFSET`] of the image side on the relation's axis, and every definite description
//! ("the red circle") picks out exactly one object of its scene.

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;

use super::scene::{is_heldout, BackgroundKind, Color, Object, Scene, Shape, Size, Texture};

/// Offset of centres (fraction of the side) beyond which a spatial relation is stated.
pub const CLEAR_OFFSET: f32 = 0.15;

/// The word for `n` (0 to 10).
pub fn number(n: usize) -> &'static str {
    const WORDS: [&str; 11] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ];
    WORDS.get(n).copied().unwrap_or("many")
}

/// A count as an answer: digits, as VQA v2's annotations write numbers. The official VQA
/// evaluation turns a predicted "two" into "2" before comparing, so a word answer could never
/// score.
pub fn count_answer(n: usize) -> String {
    n.to_string()
}

/// One of `options` at random (the first when there are none to choose from).
pub(crate) fn pick<'a>(rng: &mut StdRng, options: &[&'a str]) -> &'a str {
    options.choose(rng).copied().unwrap_or_default()
}

/// `a` or `an`, as the next word asks.
pub(crate) fn article(next: &str) -> &'static str {
    match next.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// `phrase` with its indefinite article.
pub(crate) fn indefinite(phrase: &str) -> String {
    format!("{} {phrase}", article(phrase))
}

/// One VQA question with its ten answers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Qa {
    pub question: String,
    pub answers: Vec<String>,
    pub answer: String,
    pub question_type: &'static str,
    pub answer_type: &'static str,
}

/// Everything said about one image.
#[derive(Debug, Clone)]
pub(crate) struct Annotations {
    pub captions: Vec<String>,
    pub questions: Vec<Qa>,
    /// Referring expressions with the index of the object they pick out.
    pub expressions: Vec<(String, usize)>,
}

/// A spatial relation of one object to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Relation {
    Left,
    Right,
    Above,
    Below,
}

impl Relation {
    const ALL: [Relation; 4] = [
        Relation::Left,
        Relation::Right,
        Relation::Above,
        Relation::Below,
    ];

    /// How far `a` lies in this direction from `b` (fraction of the side; negative: the other
    /// way).
    fn offset(self, a: &Object, b: &Object) -> f32 {
        match self {
            Relation::Left => b.x - a.x,
            Relation::Right => a.x - b.x,
            Relation::Above => b.y - a.y,
            Relation::Below => a.y - b.y,
        }
    }

    fn opposite(self) -> Self {
        match self {
            Relation::Left => Relation::Right,
            Relation::Right => Relation::Left,
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
        }
    }

    fn holds(self, a: &Object, b: &Object) -> bool {
        self.offset(a, b) > CLEAR_OFFSET
    }

    fn phrase(self, rng: &mut StdRng) -> &'static str {
        match self {
            Relation::Left => pick(rng, &["left of", "to the left of"]),
            Relation::Right => pick(rng, &["right of", "to the right of"]),
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }
}

/// Which attributes a description names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Desc {
    size: bool,
    texture: bool,
    color: bool,
    shape: bool,
}

const fn desc(size: bool, texture: bool, color: bool, shape: bool) -> Desc {
    Desc {
        size,
        texture,
        color,
        shape,
    }
}

/// Descriptions tried for definite reference, shortest first.
const PATTERNS: [Desc; 9] = [
    desc(false, false, false, true),
    desc(false, false, true, false),
    desc(true, false, false, true),
    desc(false, true, false, true),
    desc(false, false, true, true),
    desc(true, false, true, false),
    desc(false, true, true, false),
    desc(true, false, true, true),
    desc(false, true, true, true),
];

impl Desc {
    fn matches(self, o: &Object, t: &Object) -> bool {
        (!self.size || o.size == t.size)
            && (!self.texture || o.texture == t.texture)
            && (!self.color || o.color == t.color)
            && (!self.shape || o.shape == t.shape)
    }

    fn count(self, scene: &Scene, t: &Object) -> usize {
        scene.objects.iter().filter(|o| self.matches(o, t)).count()
    }

    fn words(self) -> usize {
        self.size as usize + self.texture as usize + self.color as usize + self.shape as usize
    }

    /// The noun phrase (no article); `noun` stands in when the shape is not named.
    fn phrase(self, t: &Object, noun: &str) -> String {
        let mut w: Vec<&str> = Vec::new();
        if self.size {
            w.push(t.size.name());
        }
        if self.texture {
            w.push(t.texture.name());
        }
        if self.color {
            w.push(t.color.name());
        }
        w.push(if self.shape { t.shape.name() } else { noun });
        w.join(" ")
    }
}

/// A phrase that picks out object `t` alone, not naming what `without` forbids; among the
/// shortest that work, one at random.
fn refer(rng: &mut StdRng, scene: &Scene, t: usize, without: Desc) -> Option<String> {
    let obj = &scene.objects[t];
    let ok: Vec<Desc> = PATTERNS
        .iter()
        .copied()
        .filter(|d| {
            !(d.size && without.size
                || d.texture && without.texture
                || d.color && without.color
                || d.shape && without.shape)
        })
        // "the solid circle" is a legal but odd description; keep textures for patterned ones.
        .filter(|d| !d.texture || obj.texture != Texture::Solid)
        .filter(|d| d.count(scene, obj) == 1)
        .collect();
    let shortest = ok.iter().map(|d| d.words()).min()?;
    let pool: Vec<Desc> = ok
        .into_iter()
        .filter(|d| d.words() <= shortest + 1)
        .collect();
    let d = *pool.choose(rng)?;
    let noun = pick(rng, &["shape", "object"]);
    Some(d.phrase(obj, noun))
}

/// The phrase that always names object `t`'s colour and shape (unique by construction).
fn color_shape(o: &Object) -> String {
    format!("{} {}", o.color.name(), o.shape.name())
}

/// A caption's noun phrase for `o` with random adjectives (no article).
fn caption_np(rng: &mut StdRng, o: &Object, force_color: bool) -> String {
    let mut w: Vec<&str> = Vec::new();
    if rng.random_bool(0.35) {
        w.push(match o.size {
            Size::Small => pick(rng, &["small", "small", "little"]),
            Size::Large => pick(rng, &["large", "large", "big"]),
        });
    }
    if o.texture != Texture::Solid && rng.random_bool(0.4) {
        w.push(o.texture.name());
    }
    if force_color || rng.random_bool(0.85) {
        w.push(o.color.name());
    }
    w.push(o.shape.name());
    w.join(" ")
}

/// `a b and c` (no commas: captions carry no punctuation).
fn list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(" ")),
    }
}

fn background_phrase(rng: &mut StdRng, scene: &Scene) -> String {
    let bg = &scene.background;
    let kind = match bg.kind {
        BackgroundKind::Plain => pick(rng, &["", "plain ", "gray "]),
        BackgroundKind::Gradient => pick(rng, &["gradient ", "shaded "]),
        BackgroundKind::Noisy => pick(rng, &["noisy ", "textured "]),
    };
    format!("{} {kind}background", bg.tone.name())
}

fn shapes_word(rng: &mut StdRng, n: usize) -> &'static str {
    match (n == 1, rng.random_bool(0.5)) {
        (true, true) => "shape",
        (true, false) => "object",
        (false, true) => "shapes",
        (false, false) => "objects",
    }
}

/// Pairs `(a, b, relation)` with `a` clearly in that relation to `b`.
fn clear_pairs(scene: &Scene) -> Vec<(usize, usize, Relation)> {
    let mut out = Vec::new();
    for (i, a) in scene.objects.iter().enumerate() {
        for (j, b) in scene.objects.iter().enumerate() {
            if i != j {
                for r in Relation::ALL {
                    if r.holds(a, b) {
                        out.push((i, j, r));
                    }
                }
            }
        }
    }
    out
}

/// The one object that lies clearly in relation `r` to object `b`, when every other object
/// lies clearly elsewhere (so "what is left of the square" has one answer).
fn sole_in_relation(scene: &Scene, b: usize, r: Relation) -> Option<usize> {
    let anchor = &scene.objects[b];
    let mut found = None;
    for (i, o) in scene.objects.iter().enumerate() {
        if i == b {
            continue;
        }
        let d = r.offset(o, anchor);
        if d > CLEAR_OFFSET {
            if found.is_some() {
                return None;
            }
            found = Some(i);
        } else if d > -0.03 {
            return None;
        }
    }
    found
}

/// Objects of `scene` grouped by a key, in first-seen order, with counts.
fn counts_by<K: PartialEq + Copy>(scene: &Scene, key: impl Fn(&Object) -> K) -> Vec<(K, usize)> {
    let mut out: Vec<(K, usize)> = Vec::new();
    for o in &scene.objects {
        let k = key(o);
        match out.iter_mut().find(|(x, _)| *x == k) {
            Some((_, n)) => *n += 1,
            None => out.push((k, 1)),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Captions

/// Which caption template a caption came from (so that five captions vary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Template {
    List,
    Count,
    ThereAre,
    Relation,
    ShapeCount,
    ColorCount,
    Attribute,
}

fn caption(rng: &mut StdRng, scene: &Scene, focus: Option<usize>, t: Template) -> Option<String> {
    let n = scene.objects.len();
    let pick_object = |rng: &mut StdRng| -> usize {
        match focus {
            Some(f) if rng.random_bool(0.7) => f,
            _ => rng.random_range(0..n),
        }
    };
    match t {
        Template::List => {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(rng);
            let items: Vec<String> = order
                .iter()
                .map(|&i| indefinite(&caption_np(rng, &scene.objects[i], Some(i) == focus)))
                .collect();
            let mut text = list(&items);
            let prefix = pick(
                rng,
                &["", "", "a picture of ", "an image of ", "a drawing of "],
            );
            text = format!("{prefix}{text}");
            if rng.random_bool(0.35) && text.split(' ').count() < 22 {
                let on = pick(rng, &["on", "against"]);
                text = format!("{text} {on} {}", indefinite(&background_phrase(rng, scene)));
            }
            Some(text)
        }
        Template::Count => {
            let count = if n == 1 && rng.random_bool(0.5) {
                "a single".to_string()
            } else {
                number(n).to_string()
            };
            let on = pick(rng, &["on", "against"]);
            Some(format!(
                "{count} {} {on} {}",
                shapes_word(rng, n),
                indefinite(&background_phrase(rng, scene))
            ))
        }
        Template::ThereAre => {
            let noun = shapes_word(rng, n);
            let place = pick(rng, &["", " in the image", " in the picture"]);
            Some(if n == 1 {
                format!("there is one {noun}{place}")
            } else {
                format!("there are {} {noun}{place}", number(n))
            })
        }
        Template::Relation => {
            let pairs = clear_pairs(scene);
            let preferred: Vec<&(usize, usize, Relation)> = match focus {
                Some(f) => pairs.iter().filter(|p| p.0 == f || p.1 == f).collect(),
                None => Vec::new(),
            };
            let &(a, b, r) = if preferred.is_empty() {
                pairs.choose(rng)?
            } else {
                *preferred.choose(rng)?
            };
            let na = indefinite(&caption_np(rng, &scene.objects[a], Some(a) == focus));
            let nb = indefinite(&caption_np(rng, &scene.objects[b], Some(b) == focus));
            let lead = pick(rng, &["", "", "there is "]);
            Some(format!("{lead}{na} {} {nb}", r.phrase(rng)))
        }
        Template::ShapeCount => {
            let mut groups = counts_by(scene, |o| o.shape);
            groups.shuffle(rng);
            let items: Vec<String> = groups
                .iter()
                .map(|&(s, k)| match k {
                    1 => indefinite(s.name()),
                    _ => format!("{} {}", number(k), s.plural()),
                })
                .collect();
            let lead = pick(rng, &["", "", "an image with ", "a picture with "]);
            Some(format!("{lead}{}", list(&items)))
        }
        Template::ColorCount => {
            let mut groups = counts_by(scene, |o| o.color);
            groups.shuffle(rng);
            let noun_one = pick(rng, &["shape", "object"]);
            let noun_many = if noun_one == "shape" {
                "shapes"
            } else {
                "objects"
            };
            let items: Vec<String> = groups
                .iter()
                .map(|&(c, k)| match k {
                    1 => indefinite(&format!("{} {noun_one}", c.name())),
                    _ => format!("{} {} {noun_many}", number(k), c.name()),
                })
                .collect();
            Some(list(&items))
        }
        Template::Attribute => {
            let i = pick_object(rng);
            let o = &scene.objects[i];
            let subject = format!("the {}", color_shape(o));
            let mut options: Vec<String> = vec![format!("{subject} is {}", o.size.name())];
            if o.texture != Texture::Solid {
                options.push(format!("{subject} is {}", o.texture.name()));
            }
            let larges = scene
                .objects
                .iter()
                .filter(|x| x.size == Size::Large)
                .count();
            if n >= 2 && o.size == Size::Large && larges == 1 {
                let sup = pick(rng, &["largest", "biggest"]);
                options.push(format!(
                    "the {sup} shape is {}",
                    indefinite(&color_shape(o))
                ));
            }
            if n >= 2 && o.size == Size::Small && larges == n - 1 {
                options.push(format!(
                    "the smallest shape is {}",
                    indefinite(&color_shape(o))
                ));
            }
            options.choose(rng).cloned()
        }
    }
}

/// Five distinct captions of `scene`, from at least three templates.
fn captions(rng: &mut StdRng, scene: &Scene, focus: Option<usize>) -> Vec<String> {
    const ALL: [Template; 7] = [
        Template::List,
        Template::Count,
        Template::ThereAre,
        Template::Relation,
        Template::ShapeCount,
        Template::ColorCount,
        Template::Attribute,
    ];
    let mut out: Vec<String> = Vec::new();
    let mut used: Vec<Template> = Vec::new();
    // A held-out image's first caption lists every object, naming the held-out pair.
    if focus.is_some() {
        if let Some(c) = caption(rng, scene, focus, Template::List) {
            out.push(c);
            used.push(Template::List);
        }
    }
    for attempt in 0..200 {
        if out.len() == 5 {
            break;
        }
        let cap = if attempt < 120 { 1 } else { 3 };
        let t = *ALL.choose(rng).expect("templates");
        if used.iter().filter(|u| **u == t).count() >= cap {
            continue;
        }
        if let Some(c) = caption(rng, scene, focus, t) {
            if !out.contains(&c) {
                out.push(c);
                used.push(t);
            }
        }
    }
    // Scenes are never so bare that 200 draws give fewer than five captions, but stay total.
    while out.len() < 5 {
        let c = out
            .first()
            .cloned()
            .unwrap_or_else(|| "a shape".to_string());
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Questions

/// Question families, so that one image's questions vary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Color,
    Shape,
    Count,
    Exist,
    Relation,
    Size,
    Texture,
    Background,
}

/// Ten answers: mostly `right`, with a few annotators' slips drawn from `wrong` (never more
/// than three, so the majority always holds).
fn ten_answers(rng: &mut StdRng, right: &str, wrong: &[String]) -> Vec<String> {
    let mut answers = vec![right.to_string(); 10];
    if wrong.is_empty() {
        return answers;
    }
    let slips = match rng.random_range(0..20) {
        0..=10 => 0,
        11..=15 => 1,
        16..=18 => 2,
        _ => 3,
    };
    let mut slots: Vec<usize> = (0..10).collect();
    slots.shuffle(rng);
    for &s in &slots[..slips] {
        answers[s] = wrong.choose(rng).expect("alternatives").clone();
    }
    answers
}

fn qa(
    rng: &mut StdRng,
    question: String,
    right: &str,
    wrong: Vec<String>,
    question_type: &'static str,
    answer_type: &'static str,
) -> Qa {
    Qa {
        answers: ten_answers(rng, right, &wrong),
        question,
        answer: right.to_string(),
        question_type,
        answer_type,
    }
}

fn yes_no(rng: &mut StdRng, question: String, yes: bool, question_type: &'static str) -> Qa {
    let (right, wrong) = if yes { ("yes", "no") } else { ("no", "yes") };
    qa(
        rng,
        question,
        right,
        vec![wrong.to_string()],
        question_type,
        "yes/no",
    )
}

fn other_colors(c: Color) -> Vec<String> {
    Color::ALL
        .iter()
        .filter(|x| **x != c)
        .map(|x| x.name().to_string())
        .collect()
}

fn other_shapes(s: Shape) -> Vec<String> {
    Shape::ALL
        .iter()
        .filter(|x| **x != s)
        .map(|x| x.name().to_string())
        .collect()
}

fn near_numbers(n: usize) -> Vec<String> {
    let mut v = vec![count_answer(n + 1)];
    if n > 0 {
        v.push(count_answer(n - 1));
    }
    v
}

fn question(
    rng: &mut StdRng,
    scene: &Scene,
    family: Family,
    target: usize,
    heldout: bool,
) -> Option<Qa> {
    let n = scene.objects.len();
    let o = scene.objects[target];
    let none = Desc::default();
    match family {
        Family::Color => {
            let d = refer(rng, scene, target, desc(false, false, true, false))?;
            let q = format!("what color is the {d}?");
            Some(qa(
                rng,
                q,
                o.color.name(),
                other_colors(o.color),
                "what color is the",
                "other",
            ))
        }
        Family::Shape => {
            let d = refer(rng, scene, target, desc(false, false, false, true))?;
            let q = format!("what shape is the {d}?");
            Some(qa(
                rng,
                q,
                o.shape.name(),
                other_shapes(o.shape),
                "what shape is the",
                "other",
            ))
        }
        Family::Count => {
            let (q, k) = match rng.random_range(0..3) {
                0 => {
                    let noun = pick(rng, &["shapes", "objects"]);
                    let place = pick(rng, &[" are there", " are there", " are in the image"]);
                    (format!("how many {noun}{place}?"), n)
                }
                1 => {
                    let s = if rng.random_bool(0.6) {
                        o.shape
                    } else {
                        *Shape::ALL.choose(rng).expect("shapes")
                    };
                    let k = scene.objects.iter().filter(|x| x.shape == s).count();
                    (format!("how many {} are there?", s.plural()), k)
                }
                _ => {
                    let c = if rng.random_bool(0.6) {
                        o.color
                    } else {
                        *Color::ALL.choose(rng).expect("colours")
                    };
                    let k = scene.objects.iter().filter(|x| x.color == c).count();
                    let noun = pick(rng, &["shapes", "objects"]);
                    (format!("how many {} {noun} are there?", c.name()), k)
                }
            };
            Some(qa(
                rng,
                q,
                &count_answer(k),
                near_numbers(k),
                "how many",
                "number",
            ))
        }
        Family::Exist => {
            if rng.random_bool(0.25) {
                let s = if rng.random_bool(0.5) {
                    o.shape
                } else {
                    *Shape::ALL.choose(rng).expect("shapes")
                };
                let yes = scene.objects.iter().any(|x| x.shape == s);
                let q = format!("are there any {}?", s.plural());
                return Some(yes_no(rng, q, yes, "are there any"));
            }
            let (c, s) = if rng.random_bool(0.5) {
                (o.color, o.shape)
            } else {
                // A near miss: one attribute of a present object, the other changed.
                let mut pick = None;
                for _ in 0..20 {
                    let (c, s) = if rng.random_bool(0.5) {
                        (o.color, *Shape::ALL.choose(rng).expect("shapes"))
                    } else {
                        (*Color::ALL.choose(rng).expect("colours"), o.shape)
                    };
                    let present = scene.objects.iter().any(|x| x.color == c && x.shape == s);
                    if !present && (heldout || !is_heldout(c, s)) {
                        pick = Some((c, s));
                        break;
                    }
                }
                pick?
            };
            let yes = scene.objects.iter().any(|x| x.color == c && x.shape == s);
            let q = format!(
                "is there {}?",
                indefinite(&format!("{} {}", c.name(), s.name()))
            );
            Some(yes_no(rng, q, yes, "is there a"))
        }
        Family::Relation => {
            if n < 2 {
                return None;
            }
            // Every (anchor, relation, answer) with exactly one object in that relation.
            let mut sole: Vec<(usize, Relation, usize)> = Vec::new();
            for b in 0..n {
                for r in Relation::ALL {
                    if let Some(a) = sole_in_relation(scene, b, r) {
                        sole.push((b, r, a));
                    }
                }
            }
            if sole.is_empty() || rng.random_bool(0.3) {
                // Yes/no about a clear pair.
                let pairs: Vec<(usize, usize, Relation)> = clear_pairs(scene);
                let &(a, b, r) = pairs.choose(rng)?;
                // Half the time ask the opposite relation, whose answer is no.
                let (r, yes) = if rng.random_bool(0.5) {
                    (r, true)
                } else {
                    (r.opposite(), false)
                };
                let da = refer(rng, scene, a, none)?;
                let db = refer(rng, scene, b, none)?;
                let q = format!("is the {da} {} the {db}?", r.phrase(rng));
                return Some(yes_no(rng, q, yes, "is the"));
            }
            // The answer is the one object in relation `r` to the anchor.
            let &(anchor, r, a) = sole.choose(rng)?;
            let db = refer(rng, scene, anchor, none)?;
            let rel = r.phrase(rng);
            let ao = scene.objects[a];
            Some(match rng.random_range(0..3) {
                0 => qa(
                    rng,
                    format!("what is {rel} the {db}?"),
                    ao.shape.name(),
                    other_shapes(ao.shape),
                    "what is",
                    "other",
                ),
                1 => qa(
                    rng,
                    format!("what shape is {rel} the {db}?"),
                    ao.shape.name(),
                    other_shapes(ao.shape),
                    "what shape is",
                    "other",
                ),
                _ => qa(
                    rng,
                    format!("what color is the shape {rel} the {db}?"),
                    ao.color.name(),
                    other_colors(ao.color),
                    "what color is the",
                    "other",
                ),
            })
        }
        Family::Size => {
            let d = refer(rng, scene, target, desc(true, false, false, false))?;
            if rng.random_bool(0.4) {
                let other = match o.size {
                    Size::Small => Size::Large,
                    Size::Large => Size::Small,
                };
                return Some(qa(
                    rng,
                    format!("what size is the {d}?"),
                    o.size.name(),
                    vec![other.name().to_string()],
                    "what size is the",
                    "other",
                ));
            }
            let asked = *Size::ALL.choose(rng).expect("sizes");
            let q = format!("is the {d} {}?", asked.name());
            Some(yes_no(rng, q, asked == o.size, "is the"))
        }
        Family::Texture => {
            let d = refer(rng, scene, target, desc(false, true, false, false))?;
            let asked = if o.texture != Texture::Solid && rng.random_bool(0.6) {
                o.texture
            } else {
                *[Texture::Striped, Texture::Dotted]
                    .choose(rng)
                    .expect("textures")
            };
            let q = format!("is the {d} {}?", asked.name());
            Some(yes_no(rng, q, asked == o.texture, "is the"))
        }
        Family::Background => {
            // Easy and the same for every object: asked only now and then.
            if rng.random_bool(0.6) {
                return None;
            }
            let asked = pick(rng, &["dark", "light"]);
            let q = format!("is the background {asked}?");
            Some(yes_no(
                rng,
                q,
                asked == scene.background.tone.name(),
                "is the background",
            ))
        }
    }
}

/// Four to six questions of different kinds about `scene`.
fn questions(rng: &mut StdRng, scene: &Scene, focus: Option<usize>, heldout: bool) -> Vec<Qa> {
    const WEIGHTED: [Family; 13] = [
        Family::Color,
        Family::Color,
        Family::Shape,
        Family::Shape,
        Family::Count,
        Family::Count,
        Family::Exist,
        Family::Exist,
        Family::Relation,
        Family::Relation,
        Family::Size,
        Family::Texture,
        Family::Background,
    ];
    let n = scene.objects.len();
    let want = rng.random_range(4..=6usize);
    let mut out: Vec<Qa> = Vec::new();
    let mut used: Vec<Family> = Vec::new();
    if let Some(f) = focus {
        // A held-out image is asked about its held-out object.
        for family in [Family::Color, Family::Shape, Family::Exist] {
            if let Some(q) = question(rng, scene, family, f, heldout) {
                if family != Family::Exist || q.answer == "yes" {
                    out.push(q);
                    used.push(family);
                    break;
                }
            }
        }
    }
    for attempt in 0..300 {
        if out.len() >= want {
            break;
        }
        let family = *WEIGHTED.choose(rng).expect("families");
        let cap = if attempt < 200 { 1 } else { 2 };
        if used.iter().filter(|u| **u == family).count() >= cap {
            continue;
        }
        let target = rng.random_range(0..n);
        if let Some(q) = question(rng, scene, family, target, heldout) {
            if !out.iter().any(|x| x.question == q.question) {
                out.push(q);
                used.push(family);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Referring expressions

/// Every expression that picks out object `t` alone.
fn expressions_for(rng: &mut StdRng, scene: &Scene, t: usize) -> Vec<String> {
    let n = scene.objects.len();
    let o = scene.objects[t];
    let mut out: Vec<String> = Vec::new();
    for d in PATTERNS {
        if d.texture && o.texture == Texture::Solid {
            continue;
        }
        if d.count(scene, &o) == 1 {
            let noun = pick(rng, &["shape", "object"]);
            out.push(format!("the {}", d.phrase(&o, noun)));
        }
    }
    // "the square left of the star": unique among the objects of its shape.
    for (b, anchor) in scene.objects.iter().enumerate() {
        if b == t {
            continue;
        }
        for r in Relation::ALL {
            if !r.holds(&o, anchor) {
                continue;
            }
            let rivals_clear = scene.objects.iter().enumerate().all(|(i, x)| {
                i == t || i == b || x.shape != o.shape || r.offset(x, anchor) < -0.03
            });
            if rivals_clear {
                if let Some(db) = refer(rng, scene, b, Desc::default()) {
                    out.push(format!("the {} {} the {db}", o.shape.name(), r.phrase(rng)));
                }
            }
        }
    }
    if n >= 2 {
        let larges = scene
            .objects
            .iter()
            .filter(|x| x.size == Size::Large)
            .count();
        if o.size == Size::Large && larges == 1 {
            let w = pick(rng, &["largest", "biggest"]);
            out.push(format!("the {w} shape"));
        }
        if o.size == Size::Small && larges == n - 1 {
            out.push("the smallest shape".to_string());
        }
        let others = || scene.objects.iter().enumerate().filter(|(i, _)| *i != t);
        let extreme = [
            (Relation::Left, "the leftmost shape"),
            (Relation::Right, "the rightmost shape"),
            (Relation::Above, "the highest shape"),
            (Relation::Below, "the lowest shape"),
        ];
        for (r, text) in extreme {
            if others().all(|(_, x)| r.holds(&o, x)) {
                out.push(text.to_string());
            }
        }
    }
    out
}

/// One to three expressions, each for a different object.
fn expressions(rng: &mut StdRng, scene: &Scene, focus: Option<usize>) -> Vec<(String, usize)> {
    let n = scene.objects.len();
    let k = rng.random_range(1..=3usize).min(n);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    if let Some(f) = focus {
        order.retain(|&i| i != f);
        order.insert(0, f);
    }
    let mut out = Vec::new();
    for &t in order.iter().take(k) {
        let mut options = expressions_for(rng, scene, t);
        if Some(t) == focus {
            // Name the held-out pair itself.
            let pair = color_shape(&scene.objects[t]);
            options.retain(|e| e.contains(&pair));
        }
        if let Some(e) = options.choose(rng) {
            out.push((e.clone(), t));
        }
    }
    out
}

/// Captions, questions and expressions of one scene. `focus` is the held-out object of a
/// held-out image; `heldout` allows held-out pairs in the text (only held-out images may name
/// them).
pub(crate) fn annotate(
    rng: &mut StdRng,
    scene: &Scene,
    focus: Option<usize>,
    heldout: bool,
) -> Annotations {
    Annotations {
        captions: captions(rng, scene, focus),
        questions: questions(rng, scene, focus, heldout),
        expressions: expressions(rng, scene, focus),
    }
}
