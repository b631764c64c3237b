//! Fused multi-head attention on f32 slices: for each (key batch, head, block of query rows),
//! `softmax(q k^T * scale + mask) v` with the score block kept in a per-thread buffer, reading
//! queries, keys and values in place from `(B, L, H*d)` projections (no head split copies) and
//! writing each head's output into its columns of a `(B, L, H*d)` result (no merge copy).

use super::matmul::{gemm, SendPtr};
use super::simd;
use rayon::prelude::*;
use std::cell::RefCell;

/// Query rows per task: a 128 x 577 block of scores (about 300 KB) stays in L2.
const ROW_BLOCK: usize = 128;

/// Rows of a `(B, L, H, d)` operand: element `(b, l, h, c)` at `offset + b * batch + l * row +
/// h * head + c`. A `(B, L, H*d)` projection has `head == d`; keys and values stored head after
/// head (`(B, H, L, d)` in memory, see `model::cache::LayerKv::head_major`) have `head == L *
/// d`, so that each head's rows are one sequential stream.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    /// The storage.
    pub data: &'a [f32],
    /// Offset of element (0, 0, 0, 0).
    pub offset: usize,
    /// Stride between batch entries.
    pub batch: usize,
    /// Stride between sequence positions.
    pub row: usize,
    /// Stride between heads.
    pub head: usize,
}

impl Rows<'_> {
    /// Where head `h` of batch entry `b` starts (its position 0).
    #[inline]
    fn at(&self, b: usize, h: usize) -> usize {
        self.offset + b * self.batch + h * self.head
    }
}

/// An additive mask broadcast to `(Bk, H, G*Lq, Lk)`, as strides (0 where broadcast).
#[derive(Debug, Clone, Copy)]
pub struct Mask<'a> {
    /// The storage.
    pub data: &'a [f32],
    /// Offset of element (0, 0, 0, 0).
    pub offset: usize,
    /// Strides of the four dimensions.
    pub strides: [usize; 4],
}

impl Mask<'_> {
    /// The first value of row `r` of head `h` of key batch entry `b`, and the stride between
    /// its values: what [`simd::softmax_rows`] reads a row's mask through.
    pub fn row(&self, b: usize, h: usize, r: usize) -> (*const f32, isize) {
        let at = self.offset + b * self.strides[0] + h * self.strides[1] + r * self.strides[2];
        // SAFETY: the mask's strides address `(Bk, H, G*Lq, Lk)` values inside `data`, so
        // `at` is the row's first value (checked by the callers' shapes).
        (
            unsafe { self.data.as_ptr().add(at) },
            self.strides[3] as isize,
        )
    }
}

/// Below this many query rows per key row the tiles' transposed copy of the keys costs more
/// than it saves (a decoding step's handful of beams), and `gemm` takes the products.
const TILED_MIN_ROWS: usize = 8;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The tiled path's transposed keys and score block.
    #[cfg(target_arch = "x86_64")]
    static TILES: RefCell<[Vec<f32>; 4]> =
        const { RefCell::new([Vec::new(), Vec::new(), Vec::new(), Vec::new()]) };
}

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// Query batch `Bq = Bk * G`.
    pub bq: usize,
    /// Key batch.
    pub bk: usize,
    /// Query positions.
    pub lq: usize,
    /// Key positions.
    pub lk: usize,
    /// Heads.
    pub heads: usize,
    /// Head width.
    pub d: usize,
}

impl Dims {
    /// Query rows per key batch entry, `G * Lq`.
    fn rows(&self) -> usize {
        self.bq / self.bk * self.lq
    }

    /// Width of a row, `H * d`.
    fn width(&self) -> usize {
        self.heads * self.d
    }

    /// The scores' scale, `1 / sqrt(d)`.
    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}

/// The `(Bq, Lq, H*d)` result that `tasks` parallel calls of `fill(task, out)` write.
///
/// # Safety
/// Together the calls write every element of the result, each its own elements.
unsafe fn fill_result(dims: &Dims, tasks: usize, fill: impl Fn(usize, SendPtr) + Sync) -> Vec<f32> {
    let len = dims.bq * dims.lq * dims.width();
    let mut out = Vec::<f32>::with_capacity(len);
    let dst = SendPtr(out.as_mut_ptr());
    (0..tasks).into_par_iter().for_each(|t| fill(t, dst));
    // SAFETY: the calls wrote every element, as the caller promises.
    unsafe { out.set_len(len) };
    out
}

/// Attention of `q (Bq, Lq, H*d)` over `k`, `v (Bk, Lk, H*d)`: query row `b` reads key row
/// `b / G`. `q` must have `batch == lq * row`, so that a key row's `G * Lq` queries are evenly
/// spaced. Returns `(Bq, Lq, H*d)`. Heads up to 64 wide with at least [`TILED_MIN_ROWS`]
/// query rows per key row run in the AVX-512 tiles where the CPU has them, the rest through
/// `gemm`.
pub fn attention(q: Rows, k: Rows, v: Rows, mask: Option<Mask>, dims: Dims) -> Vec<f32> {
    let Dims {
        bq, bk, lq, lk, d, ..
    } = dims;
    debug_assert_eq!(q.batch, lq * q.row);
    #[cfg(target_arch = "x86_64")]
    if bq / bk * lq < TILED_MIN_ROWS && d.is_multiple_of(16) && avx512::available() {
        return few(q, k, v, mask, dims);
    }
    #[cfg(target_arch = "x86_64")]
    if bq / bk * lq >= TILED_MIN_ROWS
        && lk >= 1
        && (1..=64).contains(&d)
        && k.row
            .checked_mul(16)
            .is_some_and(|x| x <= i32::MAX as usize)
        && avx512::available()
    {
        return tiled(q, k, v, mask, dims);
    }
    blocked(q, k, v, mask, dims)
}

/// [`attention`] for fewer than [`TILED_MIN_ROWS`] query rows per key row (decoding's beams):
/// one task per (key batch entry, head) reads the keys and values in place, each score a dot
/// product, each output row the weighted sum of the values with its sums in registers.
///
/// Why not `gemm`: per head it packs the keys for a product of five rows, and a decoding step
/// of the base decoder spent a fifth of its time there (the cross-attention over 585 states).
#[cfg(target_arch = "x86_64")]
fn few(q: Rows, k: Rows, v: Rows, mask: Option<Mask>, dims: Dims) -> Vec<f32> {
    let Dims { lk, heads, d, .. } = dims;
    let (rows, width, scale) = (dims.rows(), dims.width(), dims.scale());
    let task = |bh: usize, dst: SendPtr| {
        let (b, h) = (bh / heads, bh % heads);
        let q_at = q.at(0, h) + b * rows * q.row;
        let k_at = k.at(b, h);
        let v_at = v.at(b, h);
        SCORES.with(|s| {
            let mut s = s.borrow_mut();
            s.resize(rows * lk + rows * d, 0.0);
            let (s, out) = s.split_at_mut(rows * lk);
            // SAFETY: AVX-512F and `d % 16 == 0` were checked before choosing this path; the
            // offsets and strides stay within each operand (checked by the caller's shapes).
            unsafe {
                avx512::few_scores(
                    q.data.as_ptr().add(q_at),
                    q.row,
                    rows,
                    k.data.as_ptr().add(k_at),
                    k.row,
                    lk,
                    d,
                    s,
                )
            };
            let mask_row = |r: usize| mask.map(|m| m.row(b, h, r));
            simd::softmax_rows(s, lk, scale, &mask_row);
            // SAFETY: as above.
            unsafe { avx512::few_values(s, rows, lk, v.data.as_ptr().add(v_at), v.row, d, out) };
            for (r, o) in out.chunks_exact(d).enumerate() {
                // SAFETY: each task writes its own head's columns of its own rows, inside the
                // (Bq, Lq, H*d) result.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        o.as_ptr(),
                        dst.0.add((b * rows + r) * width + h * d),
                        d,
                    )
                };
            }
        });
    };
    // SAFETY: the tasks cover every (key batch entry, head), all rows of each.
    unsafe { fill_result(&dims, dims.bk * heads, task) }
}

/// [`attention`] through `gemm`: one task per (key batch entry, head, block of query rows).
/// Public so that `examples/in_turns` can time it against the tiles.
pub fn blocked(q: Rows, k: Rows, v: Rows, mask: Option<Mask>, dims: Dims) -> Vec<f32> {
    let Dims { lk, heads, d, .. } = dims;
    let (rows, width, scale) = (dims.rows(), dims.width(), dims.scale());
    let blocks = rows.div_ceil(ROW_BLOCK);
    let task = |task: usize, dst: SendPtr| {
        let (bh, blk) = (task / blocks, task % blocks);
        let (b, h) = (bh / heads, bh % heads);
        let r0 = blk * ROW_BLOCK;
        let n_rows = ROW_BLOCK.min(rows - r0);
        let q_at = q.at(0, h) + (b * rows + r0) * q.row;
        let k_at = k.at(b, h);
        let v_at = v.at(b, h);
        SCORES.with(|s| {
            let mut s = s.borrow_mut();
            s.resize(n_rows * lk, 0.0);
            // SAFETY: the offsets and strides stay within each operand (checked by the
            // caller's shapes); each task writes its own rows of its own head's columns.
            unsafe {
                gemm(
                    n_rows,
                    lk,
                    d,
                    s.as_mut_ptr(),
                    lk,
                    q.data.as_ptr().add(q_at),
                    q.row,
                    k.data.as_ptr().add(k_at),
                    1,
                    k.row,
                    1,
                );
            }
            let mask_row = |r: usize| mask.map(|m| m.row(b, h, r0 + r));
            simd::softmax_rows(&mut s[..n_rows * lk], lk, scale, &mask_row);
            // SAFETY: as above.
            unsafe {
                gemm(
                    n_rows,
                    d,
                    lk,
                    dst.0.add((b * rows + r0) * width + h * d),
                    width,
                    s.as_ptr(),
                    lk,
                    v.data.as_ptr().add(v_at),
                    v.row,
                    1,
                    1,
                );
            }
        });
    };
    // SAFETY: the tasks cover every (key batch entry, head, row block): all of the result.
    unsafe { fill_result(&dims, dims.bk * heads * blocks, task) }
}

/// [`attention`] through the AVX-512 tiles: one task per (key batch entry, head), which
/// transposes that head's keys once and then takes its query rows a block at a time.
#[cfg(target_arch = "x86_64")]
fn tiled(q: Rows, k: Rows, v: Rows, mask: Option<Mask>, dims: Dims) -> Vec<f32> {
    let Dims { lk, heads, d, .. } = dims;
    let (rows, width, scale) = (dims.rows(), dims.width(), dims.scale());
    let lkp = lk.next_multiple_of(16);
    let task = |bh: usize, dst: SendPtr| {
        let (b, h) = (bh / heads, bh % heads);
        let k_at = k.at(b, h);
        let v_at = v.at(b, h);
        TILES.with(|t| {
            let [kt, vs, s, inv] = &mut *t.borrow_mut();
            kt.resize(d * lkp, 0.0);
            // The head's values side by side: in place they are `v.row` apart (9 KB in the base
            // tower's packed projection), a stride that maps every fourth position to the same
            // L1 sets, so a block of them did not stay in L1.
            vs.clear();
            for j in 0..lk {
                let at = v_at + j * v.row;
                vs.extend_from_slice(&v.data[at..at + d]);
            }
            s.resize(ROW_BLOCK * lkp, 0.0);
            inv.resize(ROW_BLOCK, 0.0);
            // SAFETY: the offsets and strides stay within each operand (checked by the
            // caller's shapes); `d <= 64` and AVX-512F were checked before choosing this path;
            // each task writes its own head's columns.
            unsafe { avx512::pack_keys(k.data.as_ptr().add(k_at), k.row, lk, d, lkp, kt) };
            for r0 in (0..rows).step_by(ROW_BLOCK) {
                let n = ROW_BLOCK.min(rows - r0);
                let q_at = q.at(0, h) + (b * rows + r0) * q.row;
                // SAFETY: as above.
                unsafe {
                    avx512::scores(q.data.as_ptr().add(q_at), q.row, n, kt, lkp, d, scale, s)
                };
                let mask_row = |r: usize| mask.map(|m| m.row(b, h, r0 + r));
                // SAFETY: as above.
                unsafe { avx512::softmax_rows(s, lkp, lk, n, &mask_row, inv) };
                // SAFETY: as above.
                unsafe {
                    avx512::weighted_values(
                        s,
                        lkp,
                        n,
                        lk,
                        vs.as_ptr(),
                        d,
                        d,
                        inv,
                        dst.0.add((b * rows + r0) * width + h * d),
                        width,
                    )
                };
            }
        });
    };
    // SAFETY: the tasks cover every (key batch entry, head), all rows of each.
    unsafe { fill_result(&dims, dims.bk * heads, task) }
}

/// [`attention`] with both products in bf16 dot products (`super::bf16_dots`), for models with
/// compact (bf16) weights: the scaled queries, keys, values and the softmax's exponentials are
/// rounded to bf16 as they are read, sums and the softmax stay f32. Where the CPU lacks
/// AVX512-BF16, or for shapes the f32 tiles would not take (or odd head widths), it is
/// [`attention`].
pub fn attention_bf16(q: Rows, k: Rows, v: Rows, mask: Option<Mask>, dims: Dims) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if in_bf16_tiles(&dims) {
        return tiled_bf16(q, k, v, mask, dims);
    }
    attention(q, k, v, mask, dims)
}

/// Whether [`attention_bf16`] takes `dims` through the bf16 tiles (else it is [`attention`]).
fn in_bf16_tiles(dims: &Dims) -> bool {
    let Dims {
        bq, bk, lq, lk, d, ..
    } = *dims;
    cfg!(target_arch = "x86_64")
        && bq / bk * lq >= TILED_MIN_ROWS
        && lk >= 1
        && (2..=64).contains(&d)
        && d.is_multiple_of(2)
        && super::bf16_dots::available()
}

/// Per-thread buffers of [`tiled_bf16`].
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
struct Bf16Buffers {
    /// One key rounded.
    key: Vec<u16>,
    /// The head's keys as bf16 pairs, 64 keys per strip, pair after pair.
    keys: Vec<u32>,
    /// The head's values rounded, row after row, then packed in pairs of rows.
    values: Vec<u16>,
    packed_values: Vec<u16>,
    /// A block's scaled queries and exponentials rounded.
    queries: Vec<u16>,
    probs: Vec<u16>,
    scores: Vec<f32>,
    inv: Vec<f32>,
    row: Vec<f32>,
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    static BF16: RefCell<Bf16Buffers> = RefCell::new(Bf16Buffers::default());
}

/// [`attention_bf16`]'s work: one task per (key batch entry, head), as [`tiled`].
#[cfg(target_arch = "x86_64")]
fn tiled_bf16(q: Rows, k: Rows, v: Rows, mask: Option<Mask>, dims: Dims) -> Vec<f32> {
    let task = |bh: usize, dst: SendPtr| {
        BF16.with(|t| {
            // SAFETY: `in_bf16_tiles` checked the CPU's features and the shapes; the task
            // writes only its own head's columns of the result.
            unsafe { head_bf16(q, k, v, mask, &dims, bh, dst, &mut t.borrow_mut()) }
        });
    };
    // SAFETY: the tasks cover every (key batch entry, head), all rows of each.
    unsafe { fill_result(&dims, dims.bk * dims.heads, task) }
}

/// One (key batch entry, head) of [`tiled_bf16`], compiled for the CPU features it needs so
/// that its plain loops (the keys' pairing, the queries' scale, the final division) use them
/// too.
///
/// # Safety
/// The CPU has AVX512-BF16 ([`super::bf16_dots::available`]); `dims` passed [`in_bf16_tiles`];
/// `dst` is the `(Bq, Lq, H*d)` result, whose columns of this head no one else writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn head_bf16(
    q: Rows,
    k: Rows,
    v: Rows,
    mask: Option<Mask>,
    dims: &Dims,
    bh: usize,
    dst: SendPtr,
    t: &mut Bf16Buffers,
) {
    use super::bf16_dots::{pack, round_row, tile_rows, STRIP, TILE_ROWS};
    let Dims { lk, heads, d, .. } = *dims;
    let (rows, width, scale) = (dims.rows(), dims.width(), dims.scale());
    let (lkp, lk2, pairs) = (lk.next_multiple_of(16), lk.next_multiple_of(2), d / 2);
    let strips = lk.div_ceil(STRIP);
    let (b, h) = (bh / heads, bh % heads);
    let k_at = k.at(b, h);
    let v_at = v.at(b, h);
    t.key.resize(d, 0);
    t.keys.clear();
    t.keys.resize(strips * pairs * STRIP, 0);
    t.values.resize(lk * d, 0);
    for j in 0..lk {
        let at = k_at + j * k.row;
        // SAFETY: the features are the caller's promise.
        unsafe { round_row(&k.data[at..at + d], &mut t.key) };
        let base = j / STRIP * pairs * STRIP + j % STRIP;
        for p in 0..pairs {
            t.keys[base + p * STRIP] = t.key[2 * p] as u32 | (t.key[2 * p + 1] as u32) << 16;
        }
        let at = v_at + j * v.row;
        // SAFETY: as above.
        unsafe { round_row(&v.data[at..at + d], &mut t.values[j * d..(j + 1) * d]) };
    }
    t.packed_values.resize(lk2 / 2 * 2 * STRIP, 0);
    // SAFETY: as above; `values` holds lk rows of d, `packed_values` one strip of lk2 / 2
    // pairs.
    unsafe { pack(&t.values, lk, d, 0, lk2 / 2, 0, d, &mut t.packed_values) };
    t.queries.resize(ROW_BLOCK * d, 0);
    t.probs.resize(ROW_BLOCK * lk2, 0);
    t.scores.resize(ROW_BLOCK * lkp, 0.0);
    t.inv.resize(ROW_BLOCK, 0.0);
    t.row.resize(d, 0.0);
    for r0 in (0..rows).step_by(ROW_BLOCK) {
        let n = ROW_BLOCK.min(rows - r0);
        for r in 0..n {
            let at = q.at(0, h) + (b * rows + r0 + r) * q.row;
            for (x, q) in t.row.iter_mut().zip(&q.data[at..at + d]) {
                *x = q * scale;
            }
            // SAFETY: as above.
            unsafe { round_row(&t.row, &mut t.queries[r * d..(r + 1) * d]) };
        }
        for g in (0..n).step_by(TILE_ROWS) {
            let rr = TILE_ROWS.min(n - g);
            for s in 0..strips {
                // SAFETY: rr rows of d rounded queries; a strip of `pairs` packed key pairs;
                // rr rows of scores lkp apart with room for the strip's keys.
                unsafe {
                    tile_rows(
                        rr,
                        t.queries[g * d..].as_ptr(),
                        d,
                        t.keys[s * pairs * STRIP..].as_ptr() as *const u16,
                        pairs,
                        t.scores[g * lkp + s * STRIP..].as_mut_ptr(),
                        lkp,
                        STRIP.min(lk - s * STRIP),
                        true,
                    )
                };
            }
        }
        let mask_row = |r: usize| mask.map(|m| m.row(b, h, r0 + r));
        // SAFETY: the buffers hold n rows.
        unsafe {
            avx512::softmax_rows_bf16(
                &mut t.scores,
                lkp,
                lk,
                n,
                &mask_row,
                &mut t.inv,
                &mut t.probs,
                lk2,
            )
        };
        for g in (0..n).step_by(TILE_ROWS) {
            let rr = TILE_ROWS.min(n - g);
            // SAFETY: rr rows of lk2 rounded exponentials; the packed values; rr rows of this
            // head's d output columns, `width` apart, which only this task writes.
            unsafe {
                let out = dst.0.add((b * rows + r0 + g) * width + h * d);
                tile_rows(
                    rr,
                    t.probs[g * lk2..].as_ptr(),
                    lk2,
                    t.packed_values.as_ptr(),
                    lk2 / 2,
                    out,
                    width,
                    d,
                    true,
                );
                for r in 0..rr {
                    let row = std::slice::from_raw_parts_mut(out.add(r * width), d);
                    let inv = t.inv[g + r];
                    row.iter_mut().for_each(|x| *x *= inv);
                }
            }
        }
    }
}

/// Hand-written AVX-512 tiles of the two per-head products, used when the CPU has AVX-512 and
/// a head is at most 64 wide.
///
/// Why by hand: `gemm` handles each head's products as general matrix products, packing both
/// operands for every call; with a depth of 64 (`q k^T`) or 64 outputs (`p v`) that packing
/// and its blocking cost as much as the arithmetic, and the per-head products ran at about 180
/// GFLOP/s on two threads against 300 for the linear layers. Here the keys are transposed once
/// per head into a buffer of `d` rows (and [`tiled`] packs the values side by side), and each
/// tile keeps its sums in registers: 6 query rows
/// by 64 scores, or 6 rows by the head's 64 outputs, 24 of the 32 vector registers.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Query rows of a tile.
    const MR: usize = 6;

    /// How many key or value rows ahead [`few_scores`] and [`few_values`] ask for memory.
    const AHEAD: usize = 8;

    /// `s[r * lk + j] = q_r . k_j` for 1 to 7 query rows (`q_row` apart) and `lk` keys
    /// (`k_row` apart), `d` wide: per key and row, the products summed in 16 lanes, then across
    /// them.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `d` is a multiple of 16; the rows are inside their operands; `s`
    /// holds `rows * lk`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn few_scores(
        q: *const f32,
        q_row: usize,
        rows: usize,
        k: *const f32,
        k_row: usize,
        lk: usize,
        d: usize,
        s: &mut [f32],
    ) {
        debug_assert!(d.is_multiple_of(16) && (1..8).contains(&rows) && s.len() >= rows * lk);
        // The rows' sums interleaved, each key's vectors loaded once for all of them.
        macro_rules! with_rows {
            ($r:literal) => {{
                for j in 0..lk {
                    let kj = k.add(j * k_row);
                    // The keys are rows of the projection, `k_row` apart: the hardware
                    // prefetcher alone left each load waiting on memory.
                    if j + AHEAD < lk {
                        for c in (0..d).step_by(16) {
                            _mm_prefetch::<_MM_HINT_T0>(kj.add(AHEAD * k_row + c) as *const i8);
                        }
                    }
                    let mut acc = [_mm512_setzero_ps(); $r];
                    for c in (0..d).step_by(16) {
                        let kc = _mm512_loadu_ps(kj.add(c));
                        for (r, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(r * q_row + c)), kc, *a);
                        }
                    }
                    for (r, a) in acc.iter().enumerate() {
                        *s.get_unchecked_mut(r * lk + j) = _mm512_reduce_add_ps(*a);
                    }
                }
            }};
        }
        match rows {
            1 => with_rows!(1),
            2 => with_rows!(2),
            3 => with_rows!(3),
            4 => with_rows!(4),
            5 => with_rows!(5),
            6 => with_rows!(6),
            _ => with_rows!(7),
        }
    }

    /// `out[r * d + c] = sum_j p[r * lk + j] * v_j[c]` for 1 to 7 rows of weights and `lk`
    /// values (`v_row` apart), `d` wide: up to 64 columns at a time with the rows' sums in
    /// registers, so that each value row's columns are read together.
    ///
    /// # Safety
    /// As [`few_scores`]; `p` holds `rows * lk`, `out` `rows * d`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn few_values(
        p: &[f32],
        rows: usize,
        lk: usize,
        v: *const f32,
        v_row: usize,
        d: usize,
        out: &mut [f32],
    ) {
        debug_assert!(p.len() >= rows * lk && out.len() >= rows * d);
        /// `$r` rows by `$c` vectors of 16 columns from column `c0`.
        macro_rules! block {
            ($r:literal, $c:literal, $c0:expr) => {{
                let c0 = $c0;
                let mut acc = [[_mm512_setzero_ps(); $c]; $r];
                for j in 0..lk {
                    let at = v.add(j * v_row + c0);
                    if j + AHEAD < lk {
                        for c in 0..$c {
                            _mm_prefetch::<_MM_HINT_T0>(at.add(AHEAD * v_row + 16 * c) as *const i8);
                        }
                    }
                    let vj: [__m512; $c] = std::array::from_fn(|c| _mm512_loadu_ps(at.add(16 * c)));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let w = _mm512_set1_ps(*p.get_unchecked(r * lk + j));
                        for c in 0..$c {
                            a[c] = _mm512_fmadd_ps(w, vj[c], a[c]);
                        }
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    for c in 0..$c {
                        _mm512_storeu_ps(out.as_mut_ptr().add(r * d + c0 + 16 * c), a[c]);
                    }
                }
            }};
        }
        macro_rules! with_rows {
            ($r:literal) => {{
                let mut c0 = 0;
                while c0 + 64 <= d {
                    block!($r, 4, c0);
                    c0 += 64;
                }
                match (d - c0) / 16 {
                    0 => {}
                    1 => block!($r, 1, c0),
                    2 => block!($r, 2, c0),
                    _ => block!($r, 3, c0),
                }
            }};
        }
        match rows {
            1 => with_rows!(1),
            2 => with_rows!(2),
            3 => with_rows!(3),
            4 => with_rows!(4),
            5 => with_rows!(5),
            6 => with_rows!(6),
            _ => with_rows!(7),
        }
    }

    /// Whether the CPU runs these tiles.
    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// `kt (d, lkp)`: `kt[c * lkp + j] = k[j * row + c]` for `j < lk`, zero for the padding.
    /// Sixteen positions at a time by a gather (a scalar transpose took 8 % of the attention's
    /// time, its writes spread over `d` rows).
    ///
    /// # Safety
    /// `k` addresses `lk` rows of `d` readable values `row` apart, `16 * row` fits an `i32`;
    /// `kt` holds `d * lkp`, `lkp >= lk` a multiple of 16. The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn pack_keys(
        k: *const f32,
        row: usize,
        lk: usize,
        d: usize,
        lkp: usize,
        kt: &mut [f32],
    ) {
        debug_assert!(kt.len() >= d * lkp && lkp >= lk && lkp.is_multiple_of(16));
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(row as i32));
        let kt = kt.as_mut_ptr();
        for j0 in (0..lkp).step_by(16) {
            let n = lk.saturating_sub(j0).min(16);
            let live: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
            for c in 0..d {
                let x = if n == 0 {
                    _mm512_setzero_ps()
                } else {
                    // SAFETY: the live lanes read positions j0..j0+n < lk, value c < d;
                    // masked-off lanes read nothing.
                    unsafe {
                        _mm512_mask_i32gather_ps::<4>(
                            _mm512_setzero_ps(),
                            live,
                            offsets,
                            k.add(j0 * row + c),
                        )
                    }
                };
                // SAFETY: row c of kt has room for positions j0..j0+16 <= lkp.
                unsafe { _mm512_storeu_ps(kt.add(c * lkp + j0), x) };
            }
        }
    }

    /// One tile of scores: `s[r][16 t ..] = q_r . kt[:, 16 t ..]` for `R` rows and `C` vectors
    /// of 16 positions.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn score_tile<const R: usize, const C: usize>(
        q: *const f32,
        q_row: usize,
        kt: *const f32,
        lkp: usize,
        d: usize,
        scale: __m512,
        s: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for c in 0..d {
            // SAFETY (whole function): the caller's bounds; see `scores`.
            let krow = unsafe { kt.add(c * lkp) };
            let mut kv = [_mm512_setzero_ps(); C];
            for (t, v) in kv.iter_mut().enumerate() {
                *v = unsafe { _mm512_loadu_ps(krow.add(16 * t)) };
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let qv = _mm512_set1_ps(unsafe { *q.add(r * q_row + c) });
                for t in 0..C {
                    a[t] = _mm512_fmadd_ps(qv, kv[t], a[t]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (t, v) in a.iter().enumerate() {
                unsafe { _mm512_storeu_ps(s.add(r * lkp + 16 * t), _mm512_mul_ps(*v, scale)) };
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn score_rows<const R: usize>(
        q: *const f32,
        q_row: usize,
        kt: *const f32,
        lkp: usize,
        d: usize,
        scale: __m512,
        s: *mut f32,
        j0: usize,
    ) {
        // SAFETY: as in `scores`.
        unsafe {
            let (kt, s) = (kt.add(j0), s.add(j0));
            match (lkp - j0) / 16 {
                1 => score_tile::<R, 1>(q, q_row, kt, lkp, d, scale, s),
                2 => score_tile::<R, 2>(q, q_row, kt, lkp, d, scale, s),
                3 => score_tile::<R, 3>(q, q_row, kt, lkp, d, scale, s),
                _ => score_tile::<R, 4>(q, q_row, kt, lkp, d, scale, s),
            }
        }
    }

    /// `s (rows, lkp) = scale * q (rows, d) kt`, every one of the `lkp` columns written (the
    /// padding columns get 0).
    ///
    /// # Safety
    /// `q` addresses `rows` rows of `d` readable values `q_row` apart, `kt` is `(d, lkp)` with
    /// `lkp` a multiple of 16, `s` has room for `rows * lkp`. The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn scores(
        q: *const f32,
        q_row: usize,
        rows: usize,
        kt: &[f32],
        lkp: usize,
        d: usize,
        scale: f32,
        s: &mut [f32],
    ) {
        let scale = _mm512_set1_ps(scale);
        debug_assert!(lkp.is_multiple_of(16) && kt.len() >= d * lkp && s.len() >= rows * lkp);
        let (kt, s) = (kt.as_ptr(), s.as_mut_ptr());
        // Columns outside, rows inside: a 64-column strip of `kt` (16 KB at d = 64) stays in
        // L1 while every row block passes over it.
        for j0 in (0..lkp).step_by(64) {
            let mut r0 = 0;
            while r0 < rows {
                let n = (rows - r0).min(MR);
                // SAFETY: rows r0..r0+n of q and s, columns j0.. of kt and s.
                unsafe {
                    let (q, s) = (q.add(r0 * q_row), s.add(r0 * lkp));
                    match n {
                        1 => score_rows::<1>(q, q_row, kt, lkp, d, scale, s, j0),
                        2 => score_rows::<2>(q, q_row, kt, lkp, d, scale, s, j0),
                        3 => score_rows::<3>(q, q_row, kt, lkp, d, scale, s, j0),
                        4 => score_rows::<4>(q, q_row, kt, lkp, d, scale, s, j0),
                        5 => score_rows::<5>(q, q_row, kt, lkp, d, scale, s, j0),
                        _ => score_rows::<6>(q, q_row, kt, lkp, d, scale, s, j0),
                    }
                }
                r0 += n;
            }
        }
    }

    /// `e^x` for every lane (Cephes' `expf` as [`super::simd::exp`] computes it: `2^n e^r`,
    /// `|r| <= ln2/2`, the same degree-6 polynomial, to within 2 ulp), with fused multiply-adds
    /// and AVX-512's `scalef` for the `2^n` (a third of the instructions of the portable loop,
    /// which cannot fuse). Inputs below -87.3 give about 1e-38, as there.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn exp_ps(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.336_55));
        let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5e-1,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_fmadd_ps(
            p,
            _mm512_mul_ps(r, r),
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        _mm512_scalef_ps(e, n)
    }

    /// The softmax of `rows` rows of `lk` scores, `lkp` apart, except for its division: adds
    /// each row's mask (as [`super::Mask::row`] gives it, `None` for none), replaces each score
    /// `s` by `e^(s - max)`, and sets `inv[r]` to one over the row's sum (the values' products
    /// multiply by it). Two passes over each row, the second writing; the padding after `lk` may
    /// be overwritten.
    ///
    /// # Safety
    /// `s` holds `rows * lkp` values, `lkp >= lk >= 1` a multiple of 16, `inv` `rows`; a mask
    /// row addresses `lk` readable values at its stride. The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn softmax_rows(
        s: &mut [f32],
        lkp: usize,
        lk: usize,
        rows: usize,
        mask: &dyn Fn(usize) -> Option<(*const f32, isize)>,
        inv: &mut [f32],
    ) {
        // SAFETY: as the caller promises; no bf16 output.
        unsafe { softmax_core::<false>(s, lkp, lk, rows, mask, inv, std::ptr::null_mut(), 0) }
    }

    /// The work of [`softmax_rows`] and, with `BF16`, of [`softmax_rows_bf16`], which writes
    /// the exponentials rounded to `probs` (rows `lk2` apart) instead of back into `s`.
    ///
    /// # Safety
    /// As those functions'; `BF16` only where the CPU has AVX512-BF16.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn softmax_core<const BF16: bool>(
        s: &mut [f32],
        lkp: usize,
        lk: usize,
        rows: usize,
        mask: &dyn Fn(usize) -> Option<(*const f32, isize)>,
        inv: &mut [f32],
        probs: *mut u16,
        lk2: usize,
    ) {
        debug_assert!(s.len() >= rows * lkp && inv.len() >= rows && lk >= 1);
        let body = lk / 16 * 16;
        let tail: __mmask16 = ((1u32 << (lk - body)) - 1) as u16;
        for (r, inv) in inv[..rows].iter_mut().enumerate() {
            let row = &mut s[r * lkp..r * lkp + lk];
            match mask(r) {
                Some((m, 1)) => {
                    // SAFETY: a mask row of lk values.
                    let m = unsafe { std::slice::from_raw_parts(m, lk) };
                    row.iter_mut().zip(m).for_each(|(x, m)| *x += *m);
                }
                Some((m, stride)) => {
                    for (c, x) in row.iter_mut().enumerate() {
                        // SAFETY: as above, at the mask's stride (0: one value broadcast).
                        *x += unsafe { *m.offset(c as isize * stride) };
                    }
                }
                None => {}
            }
            let p = row.as_mut_ptr();
            let neg = _mm512_set1_ps(f32::NEG_INFINITY);
            let mut mx = neg;
            for j in (0..body).step_by(16) {
                // SAFETY (the loops): j + 16 <= body <= lk; the tail's lanes are masked.
                mx = _mm512_max_ps(mx, unsafe { _mm512_loadu_ps(p.add(j)) });
            }
            if body < lk {
                mx = _mm512_max_ps(mx, unsafe { _mm512_mask_loadu_ps(neg, tail, p.add(body)) });
            }
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
            let mut sum = _mm512_setzero_ps();
            // SAFETY (the stores): with BF16, `probs` has a row of lk2 >= lk values for row r.
            let out = probs.wrapping_add(r * lk2);
            for j in (0..body).step_by(16) {
                let e = exp_ps(_mm512_sub_ps(unsafe { _mm512_loadu_ps(p.add(j)) }, max));
                if BF16 {
                    let h: __m256i = unsafe { std::mem::transmute(_mm512_cvtneps_pbh(e)) };
                    unsafe { _mm256_storeu_si256(out.add(j) as *mut __m256i, h) };
                } else {
                    unsafe { _mm512_storeu_ps(p.add(j), e) };
                }
                sum = _mm512_add_ps(sum, e);
            }
            if body < lk {
                let x = unsafe { _mm512_maskz_loadu_ps(tail, p.add(body)) };
                let e = exp_ps(_mm512_sub_ps(x, max));
                if BF16 {
                    let h: __m256i = unsafe { std::mem::transmute(_mm512_cvtneps_pbh(e)) };
                    unsafe { _mm256_mask_storeu_epi16(out.add(body) as *mut i16, tail, h) };
                } else {
                    unsafe { _mm512_mask_storeu_ps(p.add(body), tail, e) };
                }
                sum = _mm512_mask_add_ps(sum, tail, sum, e);
            }
            if BF16 && lk2 > lk {
                // SAFETY: the padding value, inside the row's lk2.
                unsafe { *out.add(lk) = 0 };
            }
            *inv = 1.0 / _mm512_reduce_add_ps(sum);
        }
    }

    /// [`softmax_rows`] that also writes each row's exponentials rounded to bf16 (to nearest
    /// even, as [`super::super::bf16_dots::round_row`] rounds them) into `probs`, rows `lk2`
    /// apart (`lk` rounded up to even, the padding 0), for the values' bf16 products: one pass
    /// less over the scores. The sums, and so `inv`, are those of the f32 exponentials.
    ///
    /// # Safety
    /// As [`softmax_rows`], with `probs` holding `rows * lk2` values, `lk2 >= lk` even; the CPU
    /// has AVX512-BF16 (with AVX512BW and VL).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn softmax_rows_bf16(
        s: &mut [f32],
        lkp: usize,
        lk: usize,
        rows: usize,
        mask: &dyn Fn(usize) -> Option<(*const f32, isize)>,
        inv: &mut [f32],
        probs: &mut [u16],
        lk2: usize,
    ) {
        debug_assert!(probs.len() >= rows * lk2 && lk2 >= lk && lk2.is_multiple_of(2));
        // SAFETY: as the caller promises.
        unsafe { softmax_core::<true>(s, lkp, lk, rows, mask, inv, probs.as_mut_ptr(), lk2) }
    }

    /// Positions per block of the values' sums: 64 values of a 64-wide head (16 KB) stay in L1
    /// while every row tile of the block passes over them.
    const VALUE_BLOCK: usize = 64;

    /// One tile of outputs: `out_r (+)= sum_j p[r][j] v_j` over the block's `lk` positions for
    /// `R` rows and the head's `V` vectors of 16 values, the last one masked by `last`. The
    /// first block starts from zero, later ones from `out`; the last multiplies by `inv`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn value_tile<const R: usize, const V: usize>(
        p: *const f32,
        p_row: usize,
        lk: usize,
        v: *const f32,
        v_row: usize,
        last: __mmask16,
        out: *mut f32,
        out_row: usize,
        first: bool,
        inv: Option<*const f32>,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if !first {
            for (r, a) in acc.iter_mut().enumerate() {
                for (t, x) in a.iter_mut().enumerate() {
                    // SAFETY (whole function): the caller's bounds; see `weighted_values`.
                    let src = unsafe { out.add(r * out_row + 16 * t) };
                    *x = if t + 1 < V {
                        unsafe { _mm512_loadu_ps(src) }
                    } else {
                        unsafe { _mm512_maskz_loadu_ps(last, src) }
                    };
                }
            }
        }
        for j in 0..lk {
            let vrow = unsafe { v.add(j * v_row) };
            let mut vv = [_mm512_setzero_ps(); V];
            for (t, x) in vv.iter_mut().enumerate() {
                *x = if t + 1 < V {
                    unsafe { _mm512_loadu_ps(vrow.add(16 * t)) }
                } else {
                    // Masked-off lanes are neither read nor faulted on.
                    unsafe { _mm512_maskz_loadu_ps(last, vrow.add(16 * t)) }
                };
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let pv = _mm512_set1_ps(unsafe { *p.add(r * p_row + j) });
                for t in 0..V {
                    a[t] = _mm512_fmadd_ps(pv, vv[t], a[t]);
                }
            }
        }
        if let Some(inv) = inv {
            for (r, a) in acc.iter_mut().enumerate() {
                let f = _mm512_set1_ps(unsafe { *inv.add(r) });
                a.iter_mut().for_each(|x| *x = _mm512_mul_ps(*x, f));
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (t, x) in a.iter().enumerate() {
                let dst = unsafe { out.add(r * out_row + 16 * t) };
                if t + 1 < V {
                    unsafe { _mm512_storeu_ps(dst, *x) };
                } else {
                    unsafe { _mm512_mask_storeu_ps(dst, last, *x) };
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn value_rows<const R: usize>(
        p: *const f32,
        p_row: usize,
        lk: usize,
        v: *const f32,
        v_row: usize,
        d: usize,
        out: *mut f32,
        out_row: usize,
        first: bool,
        inv: Option<*const f32>,
    ) {
        let last: __mmask16 = if d.is_multiple_of(16) {
            0xffff
        } else {
            (1u16 << (d % 16)) - 1
        };
        // SAFETY: as in `weighted_values`.
        unsafe {
            match d.div_ceil(16) {
                1 => value_tile::<R, 1>(p, p_row, lk, v, v_row, last, out, out_row, first, inv),
                2 => value_tile::<R, 2>(p, p_row, lk, v, v_row, last, out, out_row, first, inv),
                3 => value_tile::<R, 3>(p, p_row, lk, v, v_row, last, out, out_row, first, inv),
                _ => value_tile::<R, 4>(p, p_row, lk, v, v_row, last, out, out_row, first, inv),
            }
        }
    }

    /// `out (rows, d) = diag(inv) p (rows, lk) v (lk, d)`, `p`'s rows `p_row` apart, `v`'s
    /// `v_row` apart, `out`'s `out_row` apart.
    ///
    /// # Safety
    /// `1 <= d <= 64`, `lk >= 1`; `p` holds `rows` rows of `lk` values, `inv` `rows` values,
    /// `v` addresses `lk` rows of `d` readable values, `out` `rows` rows of `d` writable values.
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn weighted_values(
        p: &[f32],
        p_row: usize,
        rows: usize,
        lk: usize,
        v: *const f32,
        v_row: usize,
        d: usize,
        inv: &[f32],
        out: *mut f32,
        out_row: usize,
    ) {
        debug_assert!((1..=64).contains(&d) && lk >= 1 && inv.len() >= rows);
        debug_assert!(p.len() >= (rows - 1) * p_row + lk);
        let (p, inv) = (p.as_ptr(), inv.as_ptr());
        for j0 in (0..lk).step_by(VALUE_BLOCK) {
            let n_j = VALUE_BLOCK.min(lk - j0);
            let first = j0 == 0;
            let last_block = j0 + n_j == lk;
            let mut r0 = 0;
            while r0 < rows {
                let n = (rows - r0).min(MR);
                // SAFETY: rows r0..r0+n of p, inv and out; positions j0..j0+n_j of p and v.
                unsafe {
                    let (p, v) = (p.add(r0 * p_row + j0), v.add(j0 * v_row));
                    let out = out.add(r0 * out_row);
                    let inv = last_block.then(|| inv.add(r0));
                    match n {
                        1 => value_rows::<1>(p, p_row, n_j, v, v_row, d, out, out_row, first, inv),
                        2 => value_rows::<2>(p, p_row, n_j, v, v_row, d, out, out_row, first, inv),
                        3 => value_rows::<3>(p, p_row, n_j, v, v_row, d, out, out_row, first, inv),
                        4 => value_rows::<4>(p, p_row, n_j, v, v_row, d, out, out_row, first, inv),
                        5 => value_rows::<5>(p, p_row, n_j, v, v_row, d, out, out_row, first, inv),
                        _ => value_rows::<6>(p, p_row, n_j, v, v_row, d, out, out_row, first, inv),
                    }
                }
                r0 += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic value in [-2, 2).
    fn value(i: usize, seed: usize) -> f32 {
        let x = (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97_531)) % 10_007;
        x as f32 / 10_007.0 * 4.0 - 2.0
    }

    /// The naive attention in f64 over the same operands.
    fn naive(q: Rows, k: Rows, v: Rows, mask: Option<Mask>, dims: Dims) -> Vec<f64> {
        assert!(std::ptr::eq(q.data, k.data) && std::ptr::eq(q.data, v.data));
        let values: Vec<f64> = q.data.iter().map(|x| *x as f64).collect();
        naive_f64(&values, q, k, v, mask, dims)
    }

    /// [`naive`] with the operands' elements read from `values` (at the same offsets).
    fn naive_f64(
        values: &[f64],
        q: Rows,
        k: Rows,
        v: Rows,
        mask: Option<Mask>,
        dims: Dims,
    ) -> Vec<f64> {
        let Dims {
            bq,
            bk,
            lq,
            lk,
            heads,
            d,
        } = dims;
        let g = bq / bk;
        let width = heads * d;
        let mut out = vec![0f64; bq * lq * width];
        for b in 0..bq {
            let kb = b / g;
            for h in 0..heads {
                for i in 0..lq {
                    let r = (b % g) * lq + i; // row within the key batch entry
                    let qi = q.at(b, h) + i * q.row;
                    let mut p: Vec<f64> = (0..lk)
                        .map(|j| {
                            let kj = k.at(kb, h) + j * k.row;
                            let dot: f64 = (0..d).map(|c| values[qi + c] * values[kj + c]).sum();
                            let m = mask.map_or(0.0, |m| {
                                let at = m.offset
                                    + kb * m.strides[0]
                                    + h * m.strides[1]
                                    + r * m.strides[2]
                                    + j * m.strides[3];
                                m.data[at] as f64
                            });
                            dot / (d as f64).sqrt() + m
                        })
                        .collect();
                    let max = p.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    p.iter_mut().for_each(|x| *x = (*x - max).exp());
                    let sum: f64 = p.iter().sum();
                    for c in 0..d {
                        let o: f64 = (0..lk)
                            .map(|j| p[j] * values[v.at(kb, h) + j * v.row + c])
                            .sum();
                        out[(b * lq + i) * width + h * d + c] = o / sum;
                    }
                }
            }
        }
        out
    }

    /// The keys or values `t` copied head after head: `(Bk, H, Lk, d)` in memory.
    fn head_major(t: Rows, dims: Dims) -> Vec<f32> {
        let mut out = Vec::with_capacity(dims.bk * dims.lk * dims.width());
        for b in 0..dims.bk {
            for h in 0..dims.heads {
                for j in 0..dims.lk {
                    let at = t.at(b, h) + j * t.row;
                    out.extend_from_slice(&t.data[at..at + dims.d]);
                }
            }
        }
        out
    }

    /// The largest magnitude among the values the attention reads.
    fn v_largest(v: Rows, dims: Dims) -> f64 {
        let mut largest = 0f64;
        for b in 0..dims.bk {
            for j in 0..dims.lk {
                let at = v.offset + b * v.batch + j * v.row;
                for x in &v.data[at..at + dims.width()] {
                    largest = largest.max(x.abs() as f64);
                }
            }
        }
        largest
    }

    /// [`naive`] on bf16-rounded operands, as [`attention_bf16`] takes them where the CPU has
    /// bf16 dot products (the queries scaled before rounding); elsewhere, on the operands.
    fn naive_rounded(q: Rows, k: Rows, v: Rows, mask: Option<Mask>, dims: Dims) -> Vec<f64> {
        if !crate::model::kernels::bf16_dots::available() {
            return naive(q, k, v, mask, dims);
        }
        let round = |x: f32| half::bf16::from_f32(x).to_f32();
        let scale = dims.scale();
        // Queries, keys and values live side by side in one buffer: each is rounded where it
        // is read, the queries after scaling.
        let mut mark = vec![0u8; q.data.len()];
        for i in 0..dims.bq * dims.lq {
            let (b, l) = (i / dims.lq, i % dims.lq);
            let at = q.offset + b * q.batch + l * q.row;
            mark[at..at + dims.width()].fill(1);
        }
        for b in 0..dims.bk {
            for j in 0..dims.lk {
                for t in [k, v] {
                    let at = t.offset + b * t.batch + j * t.row;
                    mark[at..at + dims.width()].fill(2);
                }
            }
        }
        // The naive attention divides the scores by sqrt(d): the rounded scaled queries are
        // given to it multiplied back.
        let sqrt_d = (dims.d as f64).sqrt();
        let wide: Vec<f64> = q
            .data
            .iter()
            .zip(&mark)
            .map(|(x, m)| match m {
                1 => round(*x * scale) as f64 * sqrt_d,
                2 => round(*x) as f64,
                _ => *x as f64,
            })
            .collect();
        naive_f64(&wide, q, k, v, mask, dims)
    }

    /// Every path agrees with the naive attention: heads of 16, 24, 40 and 64 (whole and
    /// partial vectors), key lengths around the tiles' 16 and 64, shared keys (G > 1), masks
    /// of each stride pattern, and operands read from a packed projection. Fails if a tile
    /// drops or misplaces a row, a column, the padding, the mask or the final division.
    #[test]
    fn every_path_matches_a_naive_attention() {
        let cases = [
            // (bk, g, lq, lk, heads, d)
            (1, 1, 8, 1, 2, 16),
            (1, 1, 17, 17, 4, 16),
            (2, 1, 17, 17, 4, 24),
            (1, 3, 5, 33, 2, 64),
            (2, 2, 9, 64, 3, 40),
            (1, 1, 131, 65, 2, 64),
            (1, 1, 20, 130, 1, 8),
            (2, 1, 3, 577, 2, 64),
            // Decoding: five beams over one state batch entry, and two; single rows.
            (1, 5, 1, 585, 3, 64),
            (2, 5, 1, 20, 2, 32),
            (1, 1, 7, 9, 2, 16),
            (1, 1, 1, 1, 1, 16),
        ];
        for (case, &(bk, g, lq, lk, heads, d)) in cases.iter().enumerate() {
            let bq = bk * g;
            let width = heads * d;
            // q, k and v side by side in one (B, L, 3W) buffer, as the projections give them;
            // the queries of a key batch entry are its G * Lq rows.
            let len = bq.max(bk) * lq.max(lk) * 3 * width;
            let data: Vec<f32> = (0..len).map(|i| value(i, case)).collect();
            let q = Rows {
                data: &data,
                offset: 0,
                batch: lq * 3 * width,
                row: 3 * width,
                head: d,
            };
            let k = Rows {
                data: &data,
                offset: width,
                batch: lk * 3 * width,
                row: 3 * width,
                head: d,
            };
            let v = Rows {
                data: &data,
                offset: 2 * width,
                batch: lk * 3 * width,
                row: 3 * width,
                head: d,
            };
            let dims = Dims {
                bq,
                bk,
                lq,
                lk,
                heads,
                d,
            };
            let rows = g * lq;
            let full: Vec<f32> = (0..bk * heads * rows * lk)
                .map(|i| if i % 7 == 3 { -10_000.0 } else { value(i, 99) })
                .collect();
            let padding: Vec<f32> = (0..bk * lk)
                .map(|i| if i % 5 == 4 { -10_000.0 } else { 0.0 })
                .collect();
            let transposed: Vec<f32> = (0..rows * lk).map(|i| value(i, 7)).collect();
            let one = [-0.5f32];
            let masks = [
                None,
                Some(Mask {
                    data: &full,
                    offset: 0,
                    strides: [heads * rows * lk, rows * lk, lk, 1],
                }),
                Some(Mask {
                    data: &padding,
                    offset: 0,
                    strides: [lk, 0, 0, 1],
                }),
                Some(Mask {
                    data: &transposed,
                    offset: 0,
                    strides: [0, 0, 1, rows],
                }),
                Some(Mask {
                    data: &one,
                    offset: 0,
                    strides: [0, 0, 0, 0],
                }),
            ];
            for (m, mask) in masks.iter().enumerate() {
                let want = naive(q, k, v, *mask, dims);
                let mut paths = vec![
                    ("attention", attention(q, k, v, *mask, dims)),
                    ("blocked", blocked(q, k, v, *mask, dims)),
                ];
                #[cfg(target_arch = "x86_64")]
                if avx512::available() {
                    paths.push(("tiled", tiled(q, k, v, *mask, dims)));
                }
                // Keys and values stored head after head give the same bits on every path.
                let (kh, vh) = (head_major(k, dims), head_major(v, dims));
                let (kh, vh) = (
                    Rows {
                        data: &kh,
                        offset: 0,
                        batch: heads * lk * d,
                        row: d,
                        head: lk * d,
                    },
                    Rows {
                        data: &vh,
                        offset: 0,
                        batch: heads * lk * d,
                        row: d,
                        head: lk * d,
                    },
                );
                let mut head_major_paths = vec![
                    attention(q, kh, vh, *mask, dims),
                    blocked(q, kh, vh, *mask, dims),
                ];
                #[cfg(target_arch = "x86_64")]
                if avx512::available() {
                    head_major_paths.push(tiled(q, kh, vh, *mask, dims));
                }
                head_major_paths.push(attention_bf16(q, kh, vh, *mask, dims));
                let mut side_by_side = paths.iter().map(|(_, got)| got.clone()).collect::<Vec<_>>();
                side_by_side.push(attention_bf16(q, k, v, *mask, dims));
                for (i, (a, b)) in head_major_paths.iter().zip(&side_by_side).enumerate() {
                    assert!(a == b, "head-major path {i}, case {case}, mask {m}");
                }
                for (name, got) in paths {
                    assert_eq!(got.len(), want.len());
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (*a as f64 - b).abs())
                        .fold(0f64, f64::max);
                    assert!(
                        worst < 2e-5,
                        "{name}, case {case} {:?}, mask {m}: off by {worst}",
                        (bk, g, lq, lk, heads, d)
                    );
                }
                // In bf16: the naive attention of the rounded scaled queries, keys and values.
                // Rounding the exponentials moves each weight by at most 2^-9 of itself, so the
                // weighted mean of the values by at most 2^-9 of the largest value; the values'
                // own rounding is in the reference.
                let got = attention_bf16(q, k, v, *mask, dims);
                if !in_bf16_tiles(&dims) {
                    // Shapes the tiles do not take run in f32.
                    assert_eq!(got, attention(q, k, v, *mask, dims), "bf16, case {case}");
                    continue;
                }
                let want = naive_rounded(q, k, v, *mask, dims);
                let largest = v_largest(v, dims);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (*a as f64 - b).abs())
                    .fold(0f64, f64::max);
                assert!(
                    worst <= largest / 512.0 + 2e-5,
                    "bf16, case {case} {:?}, mask {m}: off by {worst} (largest value {largest})",
                    (bk, g, lq, lk, heads, d)
                );
            }
        }
    }
}
