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

/// Rows of a `(B, L, W)` operand: element `(b, l, c)` at `offset + b * batch + l * row + c`.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    /// The storage.
    pub data: &'a [f32],
    /// Offset of element (0, 0, 0).
    pub offset: usize,
    /// Stride between batch entries.
    pub batch: usize,
    /// Stride between sequence positions.
    pub row: usize,
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

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
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

/// Attention of `q (Bq, Lq, H*d)` over `k`, `v (Bk, Lk, H*d)`: query row `b` reads key row
/// `b / G`. `q` must have `batch == lq * row`, so that a key row's `G * Lq` queries are evenly
/// spaced. Returns `(Bq, Lq, H*d)`.
pub fn attention(q: Rows, k: Rows, v: Rows, mask: Option<Mask>, dims: Dims) -> Vec<f32> {
    let Dims {
        bq,
        bk,
        lq,
        lk,
        heads,
        d,
    } = dims;
    debug_assert_eq!(q.batch, lq * q.row);
    let g = bq / bk;
    let rows = g * lq; // query rows per key batch entry
    let width = heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = Vec::<f32>::with_capacity(bq * lq * width);
    let dst = SendPtr(out.as_mut_ptr());
    let blocks = rows.div_ceil(ROW_BLOCK);
    (0..bk * heads * blocks).into_par_iter().for_each(|task| {
        // Capture the whole wrapper (not its raw-pointer field) so the closure is Send.
        #[allow(clippy::redundant_locals)]
        let dst = dst;
        let (bh, blk) = (task / blocks, task % blocks);
        let (b, h) = (bh / heads, bh % heads);
        let r0 = blk * ROW_BLOCK;
        let n_rows = ROW_BLOCK.min(rows - r0);
        let q_at = q.offset + b * rows * q.row + r0 * q.row + h * d;
        let k_at = k.offset + b * k.batch + h * d;
        let v_at = v.offset + b * v.batch + h * d;
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
    });
    // SAFETY: the tasks wrote every (row, head) block.
    unsafe { out.set_len(bq * lq * width) };
    out
}
