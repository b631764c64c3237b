//! Short animated clips: one object does one thing (moves, appears, changes colour, grows or
//! shrinks), maybe beside a second object that stays still; each clip has a caption and two or
//! three questions.

use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbImage, RgbaImage};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use serde::Serialize;

use super::language::{count_answer, indefinite, pick};
use super::render::render_scene;
use super::scene::{
    is_heldout, snap_to_lattice, Background, BackgroundKind, Color, Object, Scene, Shape, Size,
    Texture, Tone, LARGE_RADIUS, SMALL_RADIUS,
};

/// Frame delay of the written GIFs, in milliseconds.
pub const FRAME_DELAY_MS: u32 = 100;

/// Where a moving object goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards the left edge.
    Left,
    /// Towards the right edge.
    Right,
    /// Towards the top edge.
    Up,
    /// Towards the bottom edge.
    Down,
}

impl Direction {
    /// The word for it.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Left => "left",
            Direction::Right => "right",
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// What happens in a clip.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// The object moves in a straight line from `from` to `to` (centres, fractions of the
    /// side).
    Move {
        /// The way it goes.
        direction: Direction,
        /// Centre in the first frame.
        from: (f32, f32),
        /// Centre in the last frame.
        to: (f32, f32),
    },
    /// The object is absent in the first third of the frames and present after.
    Appear,
    /// The object switches to another colour halfway through.
    Recolor {
        /// The colour it ends with.
        to: Color,
    },
    /// The object grows from small to large.
    Grow,
    /// The object shrinks from large to small.
    Shrink,
}

/// One clip: an actor with its event, and maybe a still bystander.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Clip {
    /// The object the event happens to, as it is in the first frame where it shows.
    pub actor: Object,
    /// What happens.
    pub event: Event,
    /// A second object that does not change (of another colour and shape).
    pub other: Option<Object>,
    /// The background (plain grey).
    pub background: Background,
    /// Number of frames.
    pub frames: usize,
}

impl Clip {
    /// The actor as drawn in frame `t`, or `None` while it is absent.
    pub fn actor_at(&self, t: usize) -> Option<Object> {
        let p = if self.frames > 1 {
            t as f32 / (self.frames - 1) as f32
        } else {
            0.0
        };
        let mut a = self.actor;
        match self.event {
            Event::Move { from, to, .. } => {
                a.x = from.0 + (to.0 - from.0) * p;
                a.y = from.1 + (to.1 - from.1) * p;
            }
            Event::Appear => {
                if t < self.frames.div_ceil(3) {
                    return None;
                }
            }
            Event::Recolor { to } => {
                if 2 * t >= self.frames {
                    a.color = to;
                }
            }
            Event::Grow => {
                a.radius = SMALL_RADIUS * 0.9 + (LARGE_RADIUS * 1.1 - SMALL_RADIUS * 0.9) * p;
                a.size = if p < 0.5 { Size::Small } else { Size::Large };
            }
            Event::Shrink => {
                a.radius = LARGE_RADIUS * 1.1 + (SMALL_RADIUS * 0.9 - LARGE_RADIUS * 1.1) * p;
                a.size = if p < 0.5 { Size::Large } else { Size::Small };
            }
        }
        Some(a)
    }

    /// The scene of frame `t` (no pixel noise, so that a frame fits a GIF palette exactly).
    pub fn scene_at(&self, t: usize) -> Scene {
        let mut objects: Vec<Object> = self.other.iter().copied().collect();
        objects.extend(self.actor_at(t));
        Scene {
            objects,
            background: self.background,
            noise: 0.0,
            noise_seed: 0,
        }
    }

    /// Every frame at `size` x `size` px.
    pub fn render(&self, size: u32) -> Vec<RgbImage> {
        (0..self.frames)
            .map(|t| render_scene(&self.scene_at(t), size).image)
            .collect()
    }
}

/// A random clip of `frames` frames (held-out pairs never occur). Its objects stand on the
/// lattice of `places` ([`snap_to_lattice`]; a moving one starts and ends on it).
pub(crate) fn sample_clip(rng: &mut StdRng, frames: usize, places: u32) -> Clip {
    let snap = |v: f32, margin: f32| snap_to_lattice(v, margin, places);
    let kind = rng.random_range(0..6);
    let (color, shape) = loop {
        let c = *Color::ALL.choose(rng).expect("colours");
        let s = *Shape::ALL.choose(rng).expect("shapes");
        if !is_heldout(c, s) {
            break (c, s);
        }
    };
    let size = match kind {
        4 => Size::Small,
        5 => Size::Large,
        _ => *Size::ALL.choose(rng).expect("sizes"),
    };
    let radius = match kind {
        4 => SMALL_RADIUS * 0.9,
        5 => LARGE_RADIUS * 1.1,
        _ => size.radius(),
    };
    // Room for the largest extent the actor reaches.
    let reach = match kind {
        4 | 5 => LARGE_RADIUS * 1.1,
        _ => radius,
    };
    let m = reach * 1.15 + 0.02;
    let rotation = if shape == Shape::Circle {
        0.0
    } else {
        rng.random_range(-15f32..15.0).to_radians()
    };
    let mut actor = Object {
        shape,
        color,
        size,
        texture: Texture::Solid,
        x: snap(rng.random_range(m..1.0 - m), m),
        y: snap(rng.random_range(m..1.0 - m), m),
        radius,
        rotation,
    };
    let event = match kind {
        0 | 1 => {
            let direction = *[
                Direction::Left,
                Direction::Right,
                Direction::Up,
                Direction::Down,
            ]
            .choose(rng)
            .expect("directions");
            let near = snap(rng.random_range(m..m + 0.08), m);
            let far = snap(rng.random_range(1.0 - m - 0.08..1.0 - m), m);
            let across = snap(rng.random_range(m..1.0 - m), m);
            let (from, to) = match direction {
                Direction::Left => ((far, across), (near, across)),
                Direction::Right => ((near, across), (far, across)),
                Direction::Up => ((across, far), (across, near)),
                Direction::Down => ((across, near), (across, far)),
            };
            actor.x = from.0;
            actor.y = from.1;
            Event::Move {
                direction,
                from,
                to,
            }
        }
        2 => Event::Appear,
        3 => {
            let to = loop {
                let c = *Color::ALL.choose(rng).expect("colours");
                if c != color && !is_heldout(c, shape) {
                    break c;
                }
            };
            Event::Recolor { to }
        }
        4 => Event::Grow,
        _ => Event::Shrink,
    };
    let recolor_to = match event {
        Event::Recolor { to } => Some(to),
        _ => None,
    };
    let mut clip = Clip {
        actor,
        event,
        other: None,
        background: Background::plain(Tone::Light, 200),
        frames,
    };
    if rng.random_bool(0.5) {
        for _ in 0..40 {
            let c = *Color::ALL.choose(rng).expect("colours");
            let s = *Shape::ALL.choose(rng).expect("shapes");
            if c == color || Some(c) == recolor_to || s == shape || is_heldout(c, s) {
                continue;
            }
            let osize = *Size::ALL.choose(rng).expect("sizes");
            let r = osize.radius();
            let om = r * 1.15 + 0.02;
            let other = Object {
                shape: s,
                color: c,
                size: osize,
                texture: Texture::Solid,
                x: snap(rng.random_range(om..1.0 - om), om),
                y: snap(rng.random_range(om..1.0 - om), om),
                radius: r,
                rotation: if s == Shape::Circle {
                    0.0
                } else {
                    rng.random_range(-15f32..15.0).to_radians()
                },
            };
            let apart = (0..frames).all(|t| match clip.actor_at(t) {
                Some(a) => {
                    let d = ((a.x - other.x).powi(2) + (a.y - other.y).powi(2)).sqrt();
                    d > 1.2 * (a.radius + other.radius)
                }
                None => true,
            });
            if apart {
                clip.other = Some(other);
                break;
            }
        }
    }
    let white = color == Color::White
        || recolor_to == Some(Color::White)
        || clip.other.is_some_and(|o| o.color == Color::White);
    let tone = if white || rng.random_bool(0.5) {
        Tone::Dark
    } else {
        Tone::Light
    };
    clip.background = Background::sample(rng, tone, &[BackgroundKind::Plain]);
    clip
}

/// What a clip question needs to see, written as its `question_type`. The reference's video
/// path encodes frames one by one and concatenates them with no notion of time, so only the
/// first two kinds are answerable by it; the split lets a report say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipQuestionKind {
    /// Any single frame answers it (how many shapes, which shape is in the clip).
    Static,
    /// Comparing frames answers it, in any order (which shape moves, appears, grows or changes
    /// colour, and its colour).
    Change,
    /// Only the frames' order answers it (which way it moves, grow or shrink, the colour it
    /// turns, its first colour).
    Order,
}

impl ClipQuestionKind {
    /// Every kind, in the order above.
    pub const ALL: [ClipQuestionKind; 3] = [Self::Static, Self::Change, Self::Order];

    /// The `question_type` written for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Change => "change",
            Self::Order => "order",
        }
    }
}

/// One clip question with its answer and kind.
#[derive(Debug, Clone)]
pub(crate) struct ClipQa {
    pub question: String,
    pub answer: String,
    pub kind: ClipQuestionKind,
}

/// A clip's caption and its questions with their answers.
#[derive(Debug, Clone)]
pub(crate) struct ClipText {
    pub caption: String,
    pub questions: Vec<ClipQa>,
}

/// The caption and two or three questions of `clip`.
pub(crate) fn describe(rng: &mut StdRng, clip: &Clip) -> ClipText {
    let a = clip.actor;
    let (c, s) = (a.color.name(), a.shape.name());
    let cs = format!("{c} {s}");
    let other_np = clip
        .other
        .map(|o| indefinite(&format!("{} {}", o.color.name(), o.shape.name())));
    use ClipQuestionKind::{Change, Order, Static};
    let mut questions: Vec<ClipQa> = Vec::new();
    let mut ask = |question: String, answer: String, kind| {
        questions.push(ClipQa {
            question,
            answer,
            kind,
        })
    };
    let caption = match clip.event {
        Event::Move { direction, .. } => {
            let way = match direction {
                Direction::Left => pick(rng, &["to the left", "left"]),
                Direction::Right => pick(rng, &["to the right", "right"]),
                Direction::Up => pick(rng, &["up", "upward"]),
                Direction::Down => pick(rng, &["down", "downward"]),
            };
            let np = if rng.random_bool(0.3) {
                format!("{} {cs}", a.size.name())
            } else {
                cs.clone()
            };
            let mut text = format!("{} moves {way}", indefinite(&np));
            if let Some(o) = &other_np {
                if rng.random_bool(0.6) {
                    text = format!("{text} while {o} stays still");
                }
            }
            let d = direction.name().to_string();
            ask(format!("which way does the {cs} move?"), d.clone(), Order);
            ask(format!("in which direction does the {s} move?"), d, Order);
            ask("what color is the moving shape?".into(), c.into(), Change);
            ask("what shape is moving?".into(), s.into(), Change);
            text
        }
        Event::Appear => {
            let mut text = format!("{} appears", indefinite(&cs));
            if let Some(o) = &other_np {
                if rng.random_bool(0.7) {
                    text = format!("{text} next to {o}");
                }
            }
            ask("what shape appears?".into(), s.into(), Change);
            ask("what shape appears in the video?".into(), s.into(), Change);
            ask(
                "what color is the shape that appears?".into(),
                c.into(),
                Change,
            );
            text
        }
        Event::Recolor { to } => {
            let t = to.name();
            let text = match rng.random_range(0..3) {
                0 => format!("{} turns {t}", indefinite(&cs)),
                1 => format!("{} changes color to {t}", indefinite(&cs)),
                _ => format!("{} changes from {c} to {t}", indefinite(s)),
            };
            ask(format!("what color does the {s} turn?"), t.into(), Order);
            ask(format!("what color does the {s} become?"), t.into(), Order);
            ask(format!("what color is the {s} at first?"), c.into(), Order);
            ask("what shape changes color?".into(), s.into(), Change);
            text
        }
        Event::Grow | Event::Shrink => {
            let grow = clip.event == Event::Grow;
            let text = match (grow, rng.random_range(0..3)) {
                (true, 0) => format!("a small {cs} grows"),
                (true, 1) => format!("{} gets bigger", indefinite(&cs)),
                (true, _) => format!("{} grows larger", indefinite(&cs)),
                (false, 0) => format!("a large {cs} shrinks"),
                (false, 1) => format!("{} gets smaller", indefinite(&cs)),
                (false, _) => format!("{} shrinks", indefinite(&cs)),
            };
            let (verb, ing) = if grow {
                ("grow", "growing")
            } else {
                ("shrink", "shrinking")
            };
            ask(format!("does the {cs} grow or shrink?"), verb.into(), Order);
            ask(format!("what shape is {ing}?"), s.into(), Change);
            ask(format!("what color is the {ing} shape?"), c.into(), Change);
            text
        }
    };
    let count = 1 + clip.other.is_some() as usize;
    ask(
        "how many shapes are in the video?".into(),
        count_answer(count),
        Static,
    );
    if clip.other.is_none() {
        ask("what shape is in the video?".into(), s.into(), Static);
    }
    // The first question is about the event itself; one or two more at random.
    let first = questions.remove(0);
    questions.shuffle(rng);
    questions.truncate(rng.random_range(1..=2usize));
    questions.insert(0, first);
    ClipText { caption, questions }
}

/// Whether `frame` has more than 256 distinct colours (counting stops there).
fn too_many_colors(frame: &RgbaImage) -> bool {
    // Open addressing over 24-bit colours; u32::MAX marks a free slot.
    const SLOTS: usize = 1024;
    let mut table = [u32::MAX; SLOTS];
    let mut n = 0;
    for p in frame.pixels() {
        let c = (u32::from(p.0[0]) << 16) | (u32::from(p.0[1]) << 8) | u32::from(p.0[2]);
        let mut h = (c.wrapping_mul(0x9e37_79b1) >> 22) as usize;
        loop {
            if table[h] == c {
                break;
            }
            if table[h] == u32::MAX {
                table[h] = c;
                n += 1;
                if n > 256 {
                    return true;
                }
                break;
            }
            h = (h + 1) % SLOTS;
        }
    }
    false
}

/// Rounds colours until a frame has at most 256 (the GIF palette), so that the GIF encoder keeps
/// them exactly instead of quantizing (slow, and lossy across the whole frame). Frames are
/// opaque.
fn fit_palette(frame: &mut RgbaImage) {
    for q in [4u32, 8, 16, 32] {
        if !too_many_colors(frame) {
            return;
        }
        for p in frame.pixels_mut() {
            for k in 0..3 {
                let v = u32::from(p.0[k]);
                p.0[k] = ((v / q) * q + q / 2).min(255) as u8;
            }
        }
    }
}

/// The frames as an endlessly looping GIF with [`FRAME_DELAY_MS`] per frame.
pub(crate) fn encode_gif(frames: &[RgbImage]) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut bytes);
        enc.set_repeat(Repeat::Infinite)?;
        for f in frames {
            let mut rgba = image::DynamicImage::ImageRgb8(f.clone()).into_rgba8();
            fit_palette(&mut rgba);
            let delay = Delay::from_numer_denom_ms(FRAME_DELAY_MS, 1);
            enc.encode_frame(Frame::from_parts(rgba, 0, 0, delay))?;
        }
    }
    Ok(bytes)
}
