//! What a picture of the world holds: shapes, colours, sizes, textures, backgrounds, and the
//! sampling of scenes that stay unambiguous (no two objects of one colour and shape, little
//! occlusion).

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use serde::Serialize;

use super::render::{rasterize, Raster};

/// The shapes objects take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A disc.
    Circle,
    /// An axis-aligned square (before rotation).
    Square,
    /// A triangle pointing up.
    Triangle,
    /// A five-pointed star.
    Star,
    /// A rhombus standing on a corner, taller than wide.
    Diamond,
    /// A plus sign.
    Cross,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 6] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Diamond,
        Shape::Cross,
    ];

    /// The word for one.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Diamond => "diamond",
            Shape::Cross => "cross",
        }
    }

    /// The word for several.
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
            Shape::Diamond => "diamonds",
            Shape::Cross => "crosses",
        }
    }
}

/// The colours objects take; backgrounds are grey, so none of these can be mistaken for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
    /// Purple.
    Purple,
    /// Orange.
    Orange,
    /// White (always on a dark background).
    White,
}

impl Color {
    /// Every colour.
    pub const ALL: [Color; 7] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Purple,
        Color::Orange,
        Color::White,
    ];

    /// The word for it.
    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
            Color::Orange => "orange",
            Color::White => "white",
        }
    }

    /// Its 8-bit RGB value.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 30, 30],
            Color::Green => [30, 170, 50],
            Color::Blue => [35, 75, 225],
            Color::Yellow => [245, 215, 20],
            Color::Purple => [145, 45, 190],
            Color::Orange => [250, 135, 15],
            Color::White => [250, 250, 250],
        }
    }
}

/// The two sizes of objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// Radius about [`SMALL_RADIUS`] of the image side.
    Small,
    /// Radius about [`LARGE_RADIUS`] of the image side.
    Large,
}

/// Radius of a small object, as a fraction of the image side.
pub const SMALL_RADIUS: f32 = 0.10;
/// Radius of a large object, as a fraction of the image side.
pub const LARGE_RADIUS: f32 = 0.18;

impl Size {
    /// Both sizes.
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    /// The word for it.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// The nominal radius, as a fraction of the image side.
    pub fn radius(self) -> f32 {
        match self {
            Size::Small => SMALL_RADIUS,
            Size::Large => LARGE_RADIUS,
        }
    }
}

/// How an object's surface is painted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Texture {
    /// One flat colour.
    Solid,
    /// Diagonal stripes in a darker shade of the colour.
    Striped,
    /// Small dots in a slightly darker shade of the colour.
    Dotted,
}

impl Texture {
    /// Every texture.
    pub const ALL: [Texture; 3] = [Texture::Solid, Texture::Striped, Texture::Dotted];

    /// The word for it.
    pub fn name(self) -> &'static str {
        match self {
            Texture::Solid => "solid",
            Texture::Striped => "striped",
            Texture::Dotted => "dotted",
        }
    }
}

/// Light or dark grey background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tone {
    /// Grey levels around 200.
    Light,
    /// Grey levels around 60.
    Dark,
}

impl Tone {
    /// The word for it.
    pub fn name(self) -> &'static str {
        match self {
            Tone::Light => "light",
            Tone::Dark => "dark",
        }
    }
}

/// How a background is painted (always grey).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackgroundKind {
    /// One grey level.
    Plain,
    /// A linear ramp between two grey levels.
    Gradient,
    /// A blotchy grey texture.
    Noisy,
}

/// A background: grey, so that it never looks like an object's colour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Background {
    /// Light or dark.
    pub tone: Tone,
    /// Plain, gradient or noisy.
    pub kind: BackgroundKind,
    /// Grey level (the start of a gradient).
    pub level: u8,
    /// Grey level at the end of a gradient (equal to `level` otherwise).
    pub level2: u8,
    /// Direction of a gradient, in radians.
    pub angle: f32,
    /// Seed of a noisy texture.
    pub seed: u64,
}

impl Background {
    /// A plain background of one grey level.
    pub fn plain(tone: Tone, level: u8) -> Self {
        Self {
            tone,
            kind: BackgroundKind::Plain,
            level,
            level2: level,
            angle: 0.0,
            seed: 0,
        }
    }

    /// A random background of tone `tone`.
    pub fn sample(rng: &mut StdRng, tone: Tone, kinds: &[BackgroundKind]) -> Self {
        let kind = *kinds.choose(rng).unwrap_or(&BackgroundKind::Plain);
        let (lo, hi) = match tone {
            Tone::Light => (175u8, 215u8),
            Tone::Dark => (35u8, 80u8),
        };
        let level = rng.random_range(lo..=hi);
        let level2 = match kind {
            BackgroundKind::Gradient => {
                let span = rng.random_range(30..=50);
                if level as i32 - lo as i32 > (hi - lo) as i32 / 2 {
                    level.saturating_sub(span)
                } else {
                    level.saturating_add(span)
                }
            }
            _ => level,
        };
        Self {
            tone,
            kind,
            level,
            level2,
            angle: rng.random_range(0.0..std::f32::consts::TAU),
            seed: rng.random(),
        }
    }
}

/// One object of a scene.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Object {
    /// Its shape.
    pub shape: Shape,
    /// Its colour.
    pub color: Color,
    /// Its nominal size.
    pub size: Size,
    /// Its surface.
    pub texture: Texture,
    /// Centre, as a fraction of the image width (0 = left edge).
    pub x: f32,
    /// Centre, as a fraction of the image height (0 = top edge).
    pub y: f32,
    /// Radius, as a fraction of the image side.
    pub radius: f32,
    /// Rotation in radians (at most 15 degrees either way in sampled scenes).
    pub rotation: f32,
}

impl Object {
    /// A solid, unrotated object of nominal radius at `(x, y)`.
    pub fn new(shape: Shape, color: Color, size: Size, x: f32, y: f32) -> Self {
        Self {
            shape,
            color,
            size,
            texture: Texture::Solid,
            x,
            y,
            radius: size.radius(),
            rotation: 0.0,
        }
    }
}

/// A picture: objects drawn in order over a background, then pixel noise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scene {
    /// Objects, back to front.
    pub objects: Vec<Object>,
    /// The background.
    pub background: Background,
    /// Standard deviation of the pixel noise, in 8-bit levels (0 for none).
    pub noise: f32,
    /// Seed of the pixel noise.
    pub noise_seed: u64,
}

/// (colour, shape) pairs that never occur in train, val or test images; every held-out image
/// holds at least one of them.
pub const HELDOUT_PAIRS: [(Color, Shape); 6] = [
    (Color::Red, Shape::Star),
    (Color::Blue, Shape::Triangle),
    (Color::Green, Shape::Square),
    (Color::Yellow, Shape::Circle),
    (Color::Purple, Shape::Cross),
    (Color::Orange, Shape::Diamond),
];

/// Whether (colour, shape) is one of [`HELDOUT_PAIRS`].
pub fn is_heldout(color: Color, shape: Shape) -> bool {
    HELDOUT_PAIRS.contains(&(color, shape))
}

/// Largest share of the smaller object's area that two objects may overlap.
pub const MAX_OVERLAP: f32 = 0.25;

/// Largest share of an object's area that all other objects together may overlap.
pub const MAX_TOTAL_OVERLAP: f32 = 0.3;

/// The areas an accepted candidate shares with each placed object, or `None` when it overlaps
/// one by more than [`MAX_OVERLAP`] of the smaller area, or when any object (itself included)
/// would be overlapped by more than [`MAX_TOTAL_OVERLAP`] of its area in all.
fn fits(placed: &[Raster], areas: &[f32], shared: &[f32], r: &Raster) -> Option<Vec<f32>> {
    let area = r.area();
    let mut own = 0.0;
    let mut out = Vec::with_capacity(placed.len());
    for ((p, &pa), &ps) in placed.iter().zip(areas).zip(shared) {
        let s = p.shared_area(r);
        if s > MAX_OVERLAP * pa.min(area) || ps + s > MAX_TOTAL_OVERLAP * pa {
            return None;
        }
        own += s;
        out.push(s);
    }
    (own <= MAX_TOTAL_OVERLAP * area).then_some(out)
}

/// A random texture: solid half the time.
pub(crate) fn sample_texture(rng: &mut StdRng) -> Texture {
    match rng.random_range(0..4) {
        0 => Texture::Striped,
        1 => Texture::Dotted,
        _ => Texture::Solid,
    }
}

/// The lattice of the tiny preset's 8 x 8 patches (64 px, patch 8): objects on it stand at
/// one alignment with the patches.
pub const TINY_PATCH_PLACES: u32 = 8;

/// Default number of places per image side that objects stand on ([`snap_to_lattice`]): the
/// tiny preset's patches ([`TINY_PATCH_PLACES`]), the world the shipped model learned. 0 puts
/// objects anywhere.
pub const DEFAULT_PLACES: u32 = TINY_PATCH_PLACES;

/// Moves `v`, an object's centre coordinate (a fraction of the image side) that lies in
/// `[margin, 1 - margin]`, to the nearest centre of the `places` equal cells of the side that
/// lies in that range too. `places == 0` (objects anywhere), or a range that holds no cell
/// centre, leaves `v` as it is.
///
/// A lattice matching a ViT's patch grid puts every object at one of a few alignments with the
/// patches. A tower trained from nothing learns a shape seen at one alignment in a few hundred
/// updates, and one seen at every alignment only in thousands (README, the generated world);
/// the released models' towers start from CLIP's and meet no such limit.
pub fn snap_to_lattice(v: f32, margin: f32, places: u32) -> f32 {
    if places == 0 {
        return v;
    }
    let n = places as f32;
    let nearest = ((v * n - 0.5).round().clamp(0.0, n - 1.0) + 0.5) / n;
    [nearest, nearest - 1.0 / n, nearest + 1.0 / n]
        .into_iter()
        .filter(|c| (margin..=1.0 - margin).contains(c))
        .min_by(|a, b| (a - v).abs().total_cmp(&(b - v).abs()))
        .unwrap_or(v)
}

/// A random object of `(color, shape)` placed at a random spot (on the lattice of `places`,
/// see [`snap_to_lattice`]), not yet checked for overlap. The lattice moves the spot drawn and
/// draws nothing itself, so `places` 0 gives the spots of a world without the option.
fn sample_object(rng: &mut StdRng, color: Color, shape: Shape, size: Size, places: u32) -> Object {
    let radius = size.radius() * rng.random_range(0.94..1.06);
    let margin = radius * 1.12 + 0.01;
    let rotation = if shape == Shape::Circle {
        0.0
    } else {
        rng.random_range(-15f32..15.0).to_radians()
    };
    Object {
        shape,
        color,
        size,
        texture: sample_texture(rng),
        x: snap_to_lattice(rng.random_range(margin..1.0 - margin), margin, places),
        y: snap_to_lattice(rng.random_range(margin..1.0 - margin), margin, places),
        radius,
        rotation,
    }
}

/// A random scene of 1 to 4 objects at `size` px, their centres on the lattice of `places`
/// ([`snap_to_lattice`]), with their coverage rasters (in drawing order). Held-out pairs are left out unless `heldout`, in which case at least one object is
/// one (and it comes first in the returned focus index).
pub(crate) fn sample_scene(
    rng: &mut StdRng,
    size: u32,
    heldout: bool,
    places: u32,
) -> (Scene, Vec<Raster>, Option<usize>) {
    let wanted = rng.random_range(1..=4usize);
    let mut objects: Vec<Object> = Vec::new();
    let mut rasters: Vec<Raster> = Vec::new();
    // Each placed object's area and the area the others overlap of it.
    let mut areas: Vec<f32> = Vec::new();
    let mut shared: Vec<f32> = Vec::new();
    for i in 0..wanted {
        let (color, shape) = if heldout && i == 0 {
            *HELDOUT_PAIRS.choose(rng).expect("held-out pairs")
        } else {
            let mut pair = None;
            for _ in 0..100 {
                let c = *Color::ALL.choose(rng).expect("colours");
                let s = *Shape::ALL.choose(rng).expect("shapes");
                let taken = objects.iter().any(|o| o.color == c && o.shape == s);
                if !taken && (heldout || !is_heldout(c, s)) {
                    pair = Some((c, s));
                    break;
                }
            }
            match pair {
                Some(p) => p,
                None => continue,
            }
        };
        let mut size_choice = *Size::ALL.choose(rng).expect("sizes");
        let mut placed = false;
        for attempt in 0..60 {
            if attempt == 30 {
                size_choice = Size::Small;
            }
            let obj = sample_object(rng, color, shape, size_choice, places);
            let r = rasterize(&obj, size);
            if let Some(overlaps) = fits(&rasters, &areas, &shared, &r) {
                for (total, s) in shared.iter_mut().zip(&overlaps) {
                    *total += s;
                }
                shared.push(overlaps.iter().sum());
                areas.push(r.area());
                objects.push(obj);
                rasters.push(r);
                placed = true;
                break;
            }
        }
        if !placed && i == 0 {
            // Cannot happen on an empty canvas, but keep the scene non-empty regardless.
            let obj = Object::new(shape, color, Size::Small, 0.5, 0.5);
            rasters.push(rasterize(&obj, size));
            objects.push(obj);
        }
    }
    // Drawing order is random; the held-out object (first sampled) is tracked through it.
    let mut order: Vec<usize> = (0..objects.len()).collect();
    order.shuffle(rng);
    let focus = if heldout {
        order.iter().position(|&i| i == 0)
    } else {
        None
    };
    let objects: Vec<Object> = order.iter().map(|&i| objects[i]).collect();
    let mut slots: Vec<Option<Raster>> = rasters.into_iter().map(Some).collect();
    let rasters: Vec<Raster> = order
        .iter()
        .map(|&i| slots[i].take().expect("each raster once"))
        .collect();
    let tone = if objects.iter().any(|o| o.color == Color::White) {
        Tone::Dark
    } else if rng.random_bool(0.5) {
        Tone::Light
    } else {
        Tone::Dark
    };
    let background = Background::sample(
        rng,
        tone,
        &[
            BackgroundKind::Plain,
            BackgroundKind::Gradient,
            BackgroundKind::Noisy,
        ],
    );
    let scene = Scene {
        objects,
        background,
        noise: rng.random_range(1.5..4.0),
        noise_seed: rng.random(),
    };
    (scene, rasters, focus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sampled_scenes_keep_their_promises() {
        for i in 0..300u64 {
            let heldout = i % 3 == 0;
            let places = if i % 2 == 0 { TINY_PATCH_PLACES } else { 0 };
            let mut rng = StdRng::seed_from_u64(i);
            let (scene, rasters, focus) = sample_scene(&mut rng, 96, heldout, places);
            let n = scene.objects.len();
            assert!((1..=4).contains(&n));
            assert_eq!(rasters.len(), n);
            for (a, oa) in scene.objects.iter().enumerate() {
                let mut total = 0.0;
                for (b, ob) in scene.objects.iter().enumerate() {
                    if a == b {
                        continue;
                    }
                    assert!(oa.color != ob.color || oa.shape != ob.shape, "{scene:?}");
                    let s = rasters[a].shared_area(&rasters[b]);
                    let smaller = rasters[a].area().min(rasters[b].area());
                    assert!(s <= MAX_OVERLAP * smaller + 1e-3, "{scene:?}");
                    total += s;
                }
                assert!(total <= MAX_TOTAL_OVERLAP * rasters[a].area() + 1e-3);
                if oa.color == Color::White {
                    assert_eq!(scene.background.tone, Tone::Dark);
                }
            }
            let held = scene
                .objects
                .iter()
                .filter(|o| is_heldout(o.color, o.shape))
                .count();
            if heldout {
                let f = focus.expect("a held-out focus");
                assert!(is_heldout(scene.objects[f].color, scene.objects[f].shape));
            } else {
                assert_eq!((held, focus), (0, None));
            }
        }
    }

    #[test]
    fn objects_stand_on_the_lattice_inside_the_image() {
        let mut off_lattice = 0;
        for i in 0..200u64 {
            for places in [0, 4, TINY_PATCH_PLACES, 16] {
                let mut rng = StdRng::seed_from_u64(i);
                let (scene, _, _) = sample_scene(&mut rng, 96, i % 4 == 0, places);
                for o in &scene.objects {
                    for c in [o.x, o.y] {
                        // Whole objects stay inside the image, lattice or not.
                        assert!(c - o.radius > 0.0 && c + o.radius < 1.0, "{o:?}");
                        let on = |n: u32| {
                            let cell = c * n as f32 - 0.5;
                            (cell - cell.round()).abs() < 1e-4
                        };
                        if places > 0 {
                            assert!(on(places), "{places} places: {o:?}");
                        } else if !on(TINY_PATCH_PLACES) {
                            off_lattice += 1;
                        }
                    }
                }
            }
        }
        assert!(
            off_lattice > 300,
            "without a lattice, objects stand anywhere"
        );
    }

    #[test]
    fn snapping_picks_the_nearest_cell_centre_in_range() {
        assert_eq!(snap_to_lattice(0.437, 0.2, 0), 0.437);
        assert_eq!(snap_to_lattice(0.437, 0.2, 8), 0.4375);
        assert_eq!(snap_to_lattice(0.51, 0.2, 8), 0.5625);
        // 0.1875 is nearest but outside [0.21, 0.79]: the next centre inward.
        assert_eq!(snap_to_lattice(0.21, 0.21, 8), 0.3125);
        assert_eq!(snap_to_lattice(0.79, 0.21, 8), 0.6875);
        assert_eq!(snap_to_lattice(0.3, 0.3, 1), 0.5);
        // No cell centre in range: left as drawn.
        assert_eq!(snap_to_lattice(0.3, 0.3, 2), 0.3);
    }
}
