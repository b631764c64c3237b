//! Linear layers with int8 weights (`--dtype int8`): each output column's weights scaled to
//! -127..=127 at load (symmetric, one scale per column), each input row scaled the same way on
//! every call (one scale per row, from its largest magnitude), the products summed exactly in
//! 32-bit integers, then scaled back to f32 for the bias, activation and residual.
//!
//! `vpdpbusd` (AVX512-VNNI) multiplies four unsigned bytes by four signed bytes per 32-bit lane
//! and adds the four products to an integer accumulator: 128 operations an instruction, twice
//! a bf16 dot product's and four times an f32 fused multiply-add's. Its first operand is
//! unsigned, so each quantized input `q` (-127..=127) enters as `q + 128`; the excess,
//! `128 x` the column's sum of weights, is known at load and starts each accumulator.
//! Decoding reads a quarter of the f32 weights' bytes.
//!
//! Why by hand: candle has no integer products, the `gemm` crate none with these instructions,
//! and the oneDNN this project may link is a feature the default build leaves out. The loop
//! is [`super::bf16_dots`]' blocked product with bytes in place of bf16 pairs: each thread
//! takes a range of output columns and, a block of the weight at a time (inside L2), sweeps
//! the rows six at a time through a 6 x 64 tile of accumulators held in registers. Partial
//! sums of a long input wait in the output's own cells as integers.
//!
//! The integer sums are exact, so the result depends only on the quantized operands: the
//! portable loop used on CPUs without AVX512-VNNI gives the same bits, slowly (it is there
//! so that an int8 model runs anywhere; it is not meant to be fast).

use super::matmul::{self, Epilogue, SendPtr};
use super::simd::Activation;
use rayon::prelude::*;

/// Whether this CPU runs the vectorized product (AVX-512 with the byte/word and VNNI
/// extensions); without it [`Int8Weight::product`] runs a portable loop with the same results.
pub fn available() -> bool {
    // The standard library caches what the CPU reports.
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Output columns of the register tile (four vectors of 16 lanes), and of a packed strip.
pub const STRIP: usize = 64;
/// Rows of the register tile: 6 x 4 accumulators, 4 weight vectors and one broadcast use 29 of
/// the 32 vector registers.
const TILE_ROWS: usize = 6;
/// Inputs per block: `BLOCK_K x BLOCK_N` bytes is 512 KiB, inside L2, read from there by
/// every tile of rows; one block covers the inputs of the base model's layers but the MLP's
/// second (3072 inputs).
const BLOCK_K: usize = 2048;
/// Output columns per block.
const BLOCK_N: usize = 256;
/// The largest input count whose sums cannot overflow 32 bits: `k x 255 x 127 < 2^31`.
pub const MAX_INPUTS: usize = (i32::MAX as usize) / (255 * 127);

/// A linear layer's weight in int8: `(k, n)` (inputs by outputs) as `q[i][j] * scale[j]`.
#[derive(Debug, Clone)]
pub struct Int8Weight {
    k: usize,
    n: usize,
    /// Strip after strip of [`STRIP`] columns; in each, quad after quad of inputs (the inputs
    /// padded with zeros to a multiple of 4); in each, column after column of the quad's four
    /// bytes (the lane layout of `vpdpbusd`). Columns past `n` are zero.
    packed: Vec<i8>,
    /// Per column: the scale that gives back the weight from its integer.
    scales: Vec<f32>,
    /// Per column: `-128 x` the sum of its integers, where each sum starts (see the module).
    start: Vec<i32>,
}

impl Int8Weight {
    /// Quantizes the `(k, n)` row-major weight `w` (the transposed layout [`super::ops`]'
    /// layers hold): per column `scale = max |w| / 127`, `q = round(w / scale)` (ties to even).
    ///
    /// # Panics
    /// If `w` is shorter than `k x n`, or `k` is so large that the sums could overflow.
    pub fn quantize(w: &[f32], k: usize, n: usize) -> Self {
        assert!(w.len() >= k * n, "weight shorter than ({k}, {n})");
        assert!(k <= MAX_INPUTS, "{k} inputs overflow 32-bit sums");
        let mut largest = vec![0f32; n];
        for row in w[..k * n].chunks_exact(n.max(1)) {
            for (m, v) in largest.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        let inverse: Vec<f32> = largest.iter().map(|&m| inverse_scale(m)).collect();
        let scales: Vec<f32> = largest.iter().map(|&m| m / 127.0).collect();
        let kq = k.next_multiple_of(4);
        let strips = n.div_ceil(STRIP);
        let mut packed = vec![0i8; strips * kq * STRIP];
        let mut sums = vec![0i32; n];
        for i in 0..k {
            let (quad, t) = (i / 4, i % 4);
            for j in 0..n {
                let q = quantize(w[i * n + j], inverse[j]);
                sums[j] += q as i32;
                let (s, c) = (j / STRIP, j % STRIP);
                packed[s * kq * STRIP + quad * STRIP * 4 + c * 4 + t] = q;
            }
        }
        let start = sums.iter().map(|s| -128 * s).collect();
        Self {
            k,
            n,
            packed,
            scales,
            start,
        }
    }

    /// Inputs (`k`).
    pub fn inputs(&self) -> usize {
        self.k
    }

    /// Outputs (`n`).
    pub fn outputs(&self) -> usize {
        self.n
    }

    /// The integer of input `i`, output `j`.
    fn at(&self, i: usize, j: usize) -> i8 {
        let kq = self.k.next_multiple_of(4);
        let (s, c) = (j / STRIP, j % STRIP);
        self.packed[s * kq * STRIP + i / 4 * STRIP * 4 + c * 4 + i % 4]
    }

    /// The weight the integers stand for, `(n, k)` row-major (the checkpoint's layout).
    pub fn to_rows(&self) -> Vec<f32> {
        let mut rows = vec![0f32; self.n * self.k];
        for j in 0..self.n {
            for i in 0..self.k {
                rows[j * self.k + i] = self.at(i, j) as f32 * self.scales[j];
            }
        }
        rows
    }

    /// `act(x (m, k) @ w + bias) + residual` into a new `(m, n)`, each row of `x` quantized
    /// as the module says, on up to `threads` threads of the current pool.
    ///
    /// # Panics
    /// If a slice is shorter than its shape.
    #[allow(clippy::too_many_arguments)]
    pub fn product(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        act: Activation,
        residual: Option<&[f32]>,
        threads: usize,
    ) -> Vec<f32> {
        self.product_with(x, m, bias, act, residual, threads, available())
    }

    /// [`Self::product`] in the vectorized kernel (`fast`, which needs [`available`]) or the
    /// portable loop.
    #[allow(clippy::too_many_arguments)]
    fn product_with(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        act: Activation,
        residual: Option<&[f32]>,
        threads: usize,
        fast: bool,
    ) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        assert!(x.len() >= m * k, "input shorter than ({m}, {k})");
        assert!(bias.is_none_or(|b| b.len() >= n), "bias shorter than {n}");
        assert!(
            residual.is_none_or(|r| r.len() >= m * n),
            "residual shorter than ({m}, {n})"
        );
        let epilogue = Epilogue {
            bias,
            act,
            residual,
        };
        let kq = k.next_multiple_of(4);
        let (xq, row_scales) = quantize_rows(x, m, k, kq, threads);
        let threads = threads.max(1);
        // Without inputs no block would store a cell: the portable loop writes the zeros.
        #[cfg(target_arch = "x86_64")]
        if fast && available() && k > 0 {
            let mut out = Vec::<f32>::with_capacity(m * n);
            let dst = SendPtr(out.as_mut_ptr());
            matmul::strip_parts(m, n, STRIP, TILE_ROWS, threads)
                .into_par_iter()
                .filter(|(r, c)| !r.is_empty() && !c.is_empty())
                .for_each(|(rows, cols)| {
                    #[allow(clippy::redundant_locals)]
                    let dst = dst;
                    // SAFETY: the features are present; each part writes only its rows and
                    // columns of `out`, which holds (m, n); the operands hold their shapes.
                    unsafe { vnni::part(self, &xq, kq, &row_scales, rows, cols, &epilogue, dst.0) };
                });
            // SAFETY: the parts cover every (row, column) and each wrote its cells (the first
            // block of inputs stores without reading).
            unsafe { out.set_len(m * n) };
            return out;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = fast;
        let mut out = vec![0f32; m * n];
        out.par_chunks_mut(n.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                let a = &xq[r * kq..(r + 1) * kq];
                for (j, cell) in row.iter_mut().enumerate() {
                    let mut acc = self.start[j];
                    for (i, &u) in a[..k].iter().enumerate() {
                        acc += u as i32 * self.at(i, j) as i32;
                    }
                    *cell = acc as f32 * row_scales[r] * self.scales[j];
                }
                // SAFETY: the row's cells, this task's alone.
                unsafe { epilogue.apply(row.as_mut_ptr(), n, n, r, 1, 0, n) };
            });
        out
    }
}

/// `127 / largest`, 0 for a zero (or non-finite) largest magnitude: everything quantizes to 0.
fn inverse_scale(largest: f32) -> f32 {
    if largest > 0.0 && largest.is_finite() {
        127.0 / largest
    } else {
        0.0
    }
}

/// `round(v * inverse)` (ties to even) within -127..=127.
fn quantize(v: f32, inverse: f32) -> i8 {
    // Rounded by the adder itself: past 2^23 an f32 has no fraction bits, so adding and taking
    // away 1.5 x 2^23 rounds to an integer, to nearest even as the default rounding does (and as
    // the AVX-512 conversion does), exactly for magnitudes below 2^22. `round_ties_even` is a
    // call into libm on the baseline x86-64, which made quantizing at load slow.
    const SHIFT: f32 = 12_582_912.0;
    let r = (v * inverse).clamp(-127.0, 127.0);
    ((r + SHIFT) - SHIFT) as i8
}

/// Each row of `x (m, k)` as bytes `q + 128` (`kq` per row, the padding 128: zero) and its
/// scale `max |x| / 127`.
fn quantize_rows(x: &[f32], m: usize, k: usize, kq: usize, threads: usize) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = vec![128u8; m * kq];
    let mut scales = vec![0f32; m];
    if k == 0 {
        return (bytes, scales);
    }
    let rows_per_task = (m / (threads.max(1) * 4)).max(1);
    #[cfg(target_arch = "x86_64")]
    let fast = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw");
    bytes
        .par_chunks_mut(rows_per_task * kq)
        .zip(scales.par_chunks_mut(rows_per_task))
        .zip(x[..m * k].par_chunks(rows_per_task * k))
        .for_each(|((dst, scales), src)| {
            for ((d, s), scale) in dst
                .chunks_exact_mut(kq)
                .zip(src.chunks_exact(k))
                .zip(scales.iter_mut())
            {
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: the features were checked above.
                    *scale = unsafe { vnni::quantize_row(s, d) };
                    continue;
                }
                *scale = quantize_row(s, d);
            }
        });
    (bytes, scales)
}

/// One row as bytes `q + 128` into `dst` (as long as `src` at least); returns its scale.
fn quantize_row(src: &[f32], dst: &mut [u8]) -> f32 {
    let largest = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inverse = inverse_scale(largest);
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = (quantize(v, inverse) as i32 + 128) as u8;
    }
    largest / 127.0
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::*;
    use std::arch::x86_64::*;

    /// [`super::quantize_row`] in AVX-512, with the same results: the largest magnitude is
    /// exact in any order, and the conversion rounds to nearest even as `round_ties_even`.
    ///
    /// # Safety
    /// The CPU has the features enabled here; `dst` is as long as `src` at least.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize_row(src: &[f32], dst: &mut [u8]) -> f32 {
        assert!(dst.len() >= src.len());
        let mask_of = |i: usize| -> __mmask16 {
            let take = (src.len() - i).min(16);
            if take == 16 {
                !0
            } else {
                (1u16 << take) - 1
            }
        };
        let mut largest = _mm512_setzero_ps();
        let mut i = 0;
        while i < src.len() {
            // SAFETY: the mask keeps the load within `src`.
            let v = unsafe { _mm512_maskz_loadu_ps(mask_of(i), src.as_ptr().add(i)) };
            largest = _mm512_max_ps(largest, _mm512_abs_ps(v));
            i += 16;
        }
        let largest = _mm512_reduce_max_ps(largest);
        let inverse = _mm512_set1_ps(inverse_scale(largest));
        let (low, high, zero) = (
            _mm512_set1_epi32(-127),
            _mm512_set1_epi32(127),
            _mm512_set1_epi32(128),
        );
        let mut i = 0;
        while i < src.len() {
            let mask = mask_of(i);
            // SAFETY: the mask keeps the accesses within `src` and `dst`.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
                let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inverse));
                let q = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, low), high), zero);
                _mm512_mask_cvtepi32_storeu_epi8(dst.as_mut_ptr().add(i) as *mut i8, mask, q);
            }
            i += 16;
        }
        largest / 127.0
    }

    /// The product for `rows` x `cols` of the output (`cols` starting on a strip), then the
    /// epilogue on each tile as its last block of inputs completes it.
    ///
    /// # Safety
    /// The CPU has AVX512-VNNI ([`available`]); `xq` holds `m` rows of `kq` bytes and
    /// `row_scales` `m` scales; `out` has room for `(m, n)` and no one else writes these
    /// cells meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn part(
        w: &Int8Weight,
        xq: &[u8],
        kq: usize,
        row_scales: &[f32],
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        epilogue: &Epilogue,
        out: *mut f32,
    ) {
        let n = w.n;
        let strip_len = kq * STRIP;
        let mut jc = cols.start;
        while jc < cols.end {
            let nc = (cols.end - jc).min(BLOCK_N);
            let mut pc = 0;
            while pc < kq {
                let kc = (kq - pc).min(BLOCK_K);
                let (first, last) = (pc == 0, pc + kc == kq);
                let mut r0 = rows.start;
                while r0 < rows.end {
                    let r = (rows.end - r0).min(TILE_ROWS);
                    let tile = Tile {
                        a: xq[r0 * kq + pc..].as_ptr(),
                        a_rs: kq,
                        quads: kc / 4,
                        c_rs: n,
                        first,
                        last,
                        row_scales: row_scales[r0..].as_ptr(),
                    };
                    for s in 0..nc.div_ceil(STRIP) {
                        let j0 = jc + s * STRIP;
                        let b = w.packed[j0 / STRIP * strip_len + pc * STRIP..].as_ptr();
                        let width = (nc - s * STRIP).min(STRIP);
                        // SAFETY: `a` has r rows of kc bytes kq apart, `b` kc / 4 packed
                        // quads, the output r rows of `width` cells n apart, the column
                        // vectors `width` entries from j0, all in bounds.
                        unsafe {
                            tile.run(
                                r,
                                b,
                                out.add(r0 * n + j0),
                                w.start[j0..].as_ptr(),
                                w.scales[j0..].as_ptr(),
                                width,
                            )
                        };
                    }
                    if last {
                        // SAFETY: the tile's rows and the block's columns, complete now.
                        unsafe { epilogue.apply(out.add(r0 * n + jc), n, n, r0, r, jc, nc) };
                    }
                    r0 += r;
                }
                pc += kc;
            }
            jc += nc;
        }
    }

    /// What the tiles of one block of rows and inputs share.
    struct Tile {
        /// The block's first row, first input.
        a: *const u8,
        a_rs: usize,
        /// Quads of inputs in the block.
        quads: usize,
        c_rs: usize,
        /// The block's inputs are the first: sums start from the columns' `start`, else from
        /// the partial sums the cells hold (as integers).
        first: bool,
        /// The block's inputs are the last: the cells get the scaled f32 results, else the
        /// partial sums.
        last: bool,
        /// The block's first row's scale.
        row_scales: *const f32,
    }

    impl Tile {
        /// [`tile`] for `r` rows, 1 to [`TILE_ROWS`].
        ///
        /// # Safety
        /// As [`tile`].
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn run(
            &self,
            r: usize,
            b: *const i8,
            c: *mut f32,
            start: *const i32,
            scales: *const f32,
            width: usize,
        ) {
            // SAFETY: as the caller promises.
            unsafe {
                match r {
                    1 => tile::<1>(self, b, c, start, scales, width),
                    2 => tile::<2>(self, b, c, start, scales, width),
                    3 => tile::<3>(self, b, c, start, scales, width),
                    4 => tile::<4>(self, b, c, start, scales, width),
                    5 => tile::<5>(self, b, c, start, scales, width),
                    _ => tile::<6>(self, b, c, start, scales, width),
                }
            }
        }
    }

    /// The sums of `R` rows by one strip of `width` columns over the block's quads, in 4 x `R`
    /// integer accumulators, stored as the block says (partial integers or scaled f32).
    ///
    /// # Safety
    /// The CPU has the features enabled here; the pointers address what the shapes say.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize>(
        t: &Tile,
        b: *const i8,
        c: *mut f32,
        start: *const i32,
        scales: *const f32,
        width: usize,
    ) {
        let masks: [__mmask16; 4] = std::array::from_fn(|v| {
            let take = width.saturating_sub(16 * v).min(16);
            if take == 16 {
                !0
            } else {
                (1u16 << take) - 1
            }
        });
        let mut acc = [[_mm512_setzero_si512(); 4]; R];
        for (r, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: the masks keep the loads within the strip's `width` columns and
                // this row's cells.
                *acc = unsafe {
                    if t.first {
                        _mm512_maskz_loadu_epi32(masks[v], start.add(16 * v))
                    } else {
                        _mm512_maskz_loadu_epi32(
                            masks[v],
                            (c.add(r * t.c_rs + 16 * v)) as *const i32,
                        )
                    }
                };
            }
        }
        let mut b = b as *const __m512i;
        for q in 0..t.quads {
            // SAFETY: as the caller promises.
            unsafe {
                let w = [
                    _mm512_loadu_si512(b),
                    _mm512_loadu_si512(b.add(1)),
                    _mm512_loadu_si512(b.add(2)),
                    _mm512_loadu_si512(b.add(3)),
                ];
                b = b.add(4);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let quad = (t.a.add(r * t.a_rs + 4 * q) as *const i32).read_unaligned();
                    let x = _mm512_set1_epi32(quad);
                    for (acc, w) in acc.iter_mut().zip(w) {
                        *acc = _mm512_dpbusd_epi32(*acc, x, w);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                if masks[v] == 0 {
                    break;
                }
                // SAFETY: the masks keep the accesses within the row's `width` cells.
                unsafe {
                    let ptr = c.add(r * t.c_rs + 16 * v);
                    if t.last {
                        let row_scale = _mm512_set1_ps(*t.row_scales.add(r));
                        let col_scales = _mm512_maskz_loadu_ps(masks[v], scales.add(16 * v));
                        let y = _mm512_mul_ps(
                            _mm512_mul_ps(_mm512_cvtepi32_ps(*acc), row_scale),
                            col_scales,
                        );
                        _mm512_mask_storeu_ps(ptr, masks[v], y);
                    } else {
                        _mm512_mask_storeu_epi32(ptr as *mut i32, masks[v], *acc);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operands(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let x = (0..m * k)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0)
            .collect();
        let w = (0..k * n)
            .map(|i| ((i * 104_729 % 2003) as f32 - 1001.0) / 311.0)
            .collect();
        (x, w)
    }

    /// The result is that of the quantized operands, computed here in f64 from the scales'
    /// definitions, for shapes with row tails (not a multiple of 6), column tails (not a
    /// multiple of 16 or 64), input counts not a multiple of 4, several blocks of inputs and
    /// of columns, and fewer strips than threads (the row split); a row of zeros gives zeros.
    #[test]
    fn is_the_product_of_the_quantized_operands() {
        for (m, k, n, threads) in [
            (1, 1, 1, 1),
            (7, 5, 3, 2),
            (13, 70, 45, 2),
            (6, 4099, 130, 2),
            (25, 64, 600, 3),
            (40, 33, 64, 4),
        ] {
            let (mut x, w) = operands(m, k, n);
            x[..k].fill(0.0);
            let q = Int8Weight::quantize(&w, k, n);
            let got = q.product(&x, m, None, Activation::None, None, threads);
            assert_eq!(got.len(), m * n);
            let quantized = |v: &[f32]| -> (Vec<i64>, f32) {
                let largest = v.iter().fold(0f32, |a, v| a.max(v.abs()));
                let q = v
                    .iter()
                    .map(|v| {
                        if largest > 0.0 {
                            (v * (127.0 / largest)).round_ties_even() as i64
                        } else {
                            0
                        }
                    })
                    .collect();
                (q, largest / 127.0)
            };
            let columns: Vec<(Vec<i64>, f32)> = (0..n)
                .map(|j| quantized(&(0..k).map(|i| w[i * n + j]).collect::<Vec<_>>()))
                .collect();
            for r in 0..m {
                let (xq, xs) = quantized(&x[r * k..(r + 1) * k]);
                assert!(xq.iter().all(|q| q.abs() <= 127));
                for (j, (wq, ws)) in columns.iter().enumerate() {
                    let sum: i64 = xq.iter().zip(wq).map(|(a, b)| a * b).sum();
                    let want = sum as f64 * xs as f64 * *ws as f64;
                    let g = got[r * n + j] as f64;
                    // The integer sum is exact; its conversion and two scalings round thrice.
                    assert!(
                        (g - want).abs() <= 2.0 * f32::EPSILON as f64 * want.abs(),
                        "{m}x{k}x{n} at ({r}, {j}): {g} against {want}"
                    );
                }
            }
        }
    }

    /// A layer without inputs gives its bias (every sum is empty), on either loop.
    #[test]
    fn no_inputs_give_the_bias() {
        let q = Int8Weight::quantize(&[], 0, 20);
        let bias: Vec<f32> = (0..20).map(|j| j as f32).collect();
        for fast in [false, true] {
            let got = q.product_with(&[], 3, Some(&bias), Activation::None, None, 2, fast);
            assert_eq!(got, [bias.clone(), bias.clone(), bias.clone()].concat());
        }
    }

    /// The vectorized kernel and the portable loop give the same bits, with every epilogue.
    #[test]
    fn both_loops_give_the_same_bits() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-VNNI");
            return;
        }
        let (m, k, n) = (13, 2100, 150);
        let (x, w) = operands(m, k, n);
        let bias: Vec<f32> = (0..n).map(|j| j as f32 / 7.0 - 10.0).collect();
        let residual: Vec<f32> = (0..m * n).map(|i| (i % 11) as f32 - 5.0).collect();
        let q = Int8Weight::quantize(&w, k, n);
        for act in [Activation::None, Activation::GeluErf, Activation::QuickGelu] {
            for (b, res) in [
                (None, None),
                (Some(&bias[..]), None),
                (Some(&bias[..]), Some(&residual[..])),
            ] {
                let fast = q.product_with(&x, m, b, act, res, 2, true);
                let slow = q.product_with(&x, m, b, act, res, 2, false);
                assert_eq!(
                    fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    slow.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{act:?}, bias {}, residual {}",
                    b.is_some(),
                    res.is_some()
                );
            }
        }
    }

    /// Rows quantize alike in AVX-512 and in the portable loop: ties (values landing on a half
    /// step), the largest magnitude negative, zeros, and lengths past the vector lanes.
    #[test]
    fn rows_quantize_alike_either_way() {
        #[cfg(target_arch = "x86_64")]
        {
            if !std::arch::is_x86_feature_detected!("avx512bw") {
                eprintln!("skipped: this CPU has no AVX-512");
                return;
            }
            for len in [1, 15, 16, 17, 70] {
                let mut row: Vec<f32> = (0..len).map(|i| (i as f32 - 20.0) / 2.0).collect();
                row[0] = -127.0; // the largest: steps of 1, every x.5 a tie
                for zeros in [false, true] {
                    if zeros {
                        row.fill(0.0);
                    }
                    let (mut a, mut b) = (vec![0u8; len + 3], vec![0u8; len + 3]);
                    let sa = quantize_row(&row, &mut a);
                    // SAFETY: the features were checked above; `b` is longer than the row.
                    let sb = unsafe { vnni::quantize_row(&row, &mut b) };
                    assert_eq!((a, sa.to_bits()), (b, sb.to_bits()), "length {len}");
                }
            }
        }
    }

    /// The weight read back is each column's integers times its scale, within half a step of
    /// the original.
    #[test]
    fn weights_read_back_within_half_a_step() {
        let (k, n) = (70, 45);
        let (_, w) = operands(1, k, n);
        let q = Int8Weight::quantize(&w, k, n);
        let rows = q.to_rows();
        for j in 0..n {
            let scale = (0..k).fold(0f32, |a, i| a.max(w[i * n + j].abs())) / 127.0;
            for i in 0..k {
                let err = (rows[j * k + i] - w[i * n + j]).abs();
                assert!(
                    err <= 0.5001 * scale,
                    "({i}, {j}): off by {err}, step {scale}"
                );
            }
        }
    }
}
