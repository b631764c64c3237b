//! The horizontal flip every augmentation shares: the image mirrored, and the reference's
//! swap of `left` and `right` in the text that goes with it.

use image::RgbImage;

/// The image mirrored left to right.
pub fn hflip(img: &RgbImage) -> RgbImage {
    ::image::imageops::flip_horizontal(img)
}

/// The reference's text change on a flip: every `left` becomes `right` and every `right`
/// becomes `left`, as substrings (so `brighter` becomes `blefter`, as in the reference).
pub fn swap_left_right(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("left") {
            out.push_str("right");
            rest = r;
        } else if let Some(r) = rest.strip_prefix("right") {
            out.push_str("left");
            rest = r;
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}
