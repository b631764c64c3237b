//! Linear weights packed for products of few rows: decoding, where each step multiplies a
//! handful of beams by every weight of the decoder and the product is bound by reading them.
//!
//! The `(k, n)` weight is cut into panels of [`WIDTH`] output columns, each stored as its own
//! contiguous `(k, WIDTH)` block (the last one padded with zero columns); a compact (bf16)
//! panel holds its inputs in pairs, `(k / 2, WIDTH, 2)`, the layout AVX512-BF16's dot products
//! read, so that products of many rows ([`super::bf16_dots`]) use the same packed weight. A
//! thread takes a run of whole panels and reads them front to back, one sequential stream,
//! while the sums of up to [`GROUP`] rows stay in registers over all `k` inputs: each weight
//! is read once per product and each output written once. In the transposed layout the same product reads `k` rows of
//! the weight a few at a time and reloads the partial sums between them.
//!
//! Why by hand: the `gemm` crate packs and blocks for large products and reads the base
//! decoder's weights at 9-13 GB/s with five rows, the row-wise few-row kernel
//! ([`super::simd::accumulate_rows`]) at 17-25 GB/s, whole panels at 25-48 GB/s: about as fast
//! as a plain sum of the same bytes in the same run (two threads, `examples/kernel_speed.rs`;
//! the memory's speed moves with the machine's neighbours). The sums run over the inputs in
//! order, one accumulator per output, so a result does not depend on the number of threads.

use super::matmul::{Epilogue, SendPtr};
use super::simd::{self, Activation, WeightElem};
use rayon::prelude::*;
use std::sync::Arc;

/// Output columns per panel: four AVX-512 vectors.
pub const WIDTH: usize = 64;
/// Rows multiplied together through a panel: six rows of four accumulators, four weight vectors
/// and a broadcast fit AVX-512's 32 vector registers.
pub const GROUP: usize = 6;
/// Least weights a thread takes, so that small layers do not pay for the threads.
const PART: usize = 64 * 1024;

/// A `(k, n)` linear weight (`k` inputs, `n` outputs) in panels of [`WIDTH`] outputs, in f32 or
/// as bf16 bits (a compact weight: half the bytes; few rows multiply in f32 arithmetic, many in
/// bf16 dot products where the CPU has them, see [`product`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Panels {
    k: usize,
    n: usize,
    values: Arc<Values>,
}

#[derive(Debug)]
enum Values {
    F32(Vec<f32>),
    /// In pairs of inputs: see [`pack_pairs`].
    Bf16(Vec<u16>),
}

/// Pairs of inputs of a compact panel: `k` rounded up to even (an odd last input pairs with
/// zeros).
pub fn pairs(k: usize) -> usize {
    k.div_ceil(2)
}

/// Where input `i`, column `c` of panel `p` lies in a compact weight of `k` inputs: panel after
/// panel, in each pair after pair of inputs, in each column after column, the pair's two values
/// side by side (the lane layout of `vdpbf16ps`; zero for padding).
#[inline(always)]
fn pair_index(k: usize, p: usize, i: usize, c: usize) -> usize {
    ((p * pairs(k) + i / 2) * WIDTH + c) * 2 + i % 2
}

/// `src (k, n)` row-major into panels: panel `p` holds columns `p * WIDTH..` for every input,
/// `WIDTH` values per input, zero past `n`.
fn pack<T: Copy + Default>(src: &[T], k: usize, n: usize) -> Vec<T> {
    let panels = n.div_ceil(WIDTH);
    let mut dst = vec![T::default(); panels * k * WIDTH];
    super::advise_huge_pages(dst.as_ptr() as usize, std::mem::size_of_val(dst.as_slice()));
    for (i, row) in src.chunks_exact(n).take(k).enumerate() {
        for (p, cols) in row.chunks(WIDTH).enumerate() {
            let at = (p * k + i) * WIDTH;
            dst[at..at + cols.len()].copy_from_slice(cols);
        }
    }
    dst
}

/// The compact `bits (k, n)` row-major into panels of pairs ([`pair_index`]): where the CPU
/// has them, by the AVX-512 packer of the bf16 dot products ([`super::bf16_dots::pack`], the
/// whole weight as one block: the same layout), else one value at a time.
fn pack_pairs(bits: &[u16], k: usize, n: usize) -> Vec<u16> {
    let mut dst = vec![0u16; n.div_ceil(WIDTH) * pairs(k) * WIDTH * 2];
    super::advise_huge_pages(dst.as_ptr() as usize, std::mem::size_of_val(dst.as_slice()));
    #[cfg(target_arch = "x86_64")]
    if super::bf16_dots::available() {
        // SAFETY: the features are present; the block is every pair of inputs (`2 * pairs(k)
        // <= k + 1`) and every column, and `dst` holds every panel's pairs.
        unsafe { super::bf16_dots::pack(bits, k, n, 0, pairs(k), 0, n, &mut dst) };
        return dst;
    }
    pack_pairs_scalar(bits, k, n, &mut dst);
    dst
}

/// [`pack_pairs`] one value at a time into the zeroed `dst`.
fn pack_pairs_scalar(bits: &[u16], k: usize, n: usize, dst: &mut [u16]) {
    for (i, row) in bits.chunks_exact(n).take(k).enumerate() {
        for (j, &b) in row.iter().enumerate() {
            dst[pair_index(k, j / WIDTH, i, j % WIDTH)] = b;
        }
    }
}

/// Panels back into `(n, k)` row-major (an output's weights together).
fn unpack<T: Copy>(values: &[T], k: usize, n: usize, out: &mut Vec<T>) {
    for j in 0..n {
        let (p, c) = (j / WIDTH, j % WIDTH);
        out.extend((0..k).map(|i| values[(p * k + i) * WIDTH + c]));
    }
}

/// Compact panels back into `(n, k)` row-major.
fn unpack_pairs(values: &[u16], k: usize, n: usize, out: &mut Vec<u16>) {
    for j in 0..n {
        let (p, c) = (j / WIDTH, j % WIDTH);
        out.extend((0..k).map(|i| values[pair_index(k, p, i, c)]));
    }
}

impl Panels {
    /// Packs the f32 weight `w (k, n)` (the transposed layout, see [`super::transposed_weight`]).
    ///
    /// # Panics
    /// If `w` holds fewer than `k * n` values.
    pub fn from_f32(w: &[f32], k: usize, n: usize) -> Self {
        assert!(w.len() >= k * n, "weight shorter than ({k}, {n})");
        Self {
            k,
            n,
            values: Arc::new(Values::F32(pack(w, k, n))),
        }
    }

    /// Packs the compact weight `bits (k, n)`, bf16 bits in the transposed layout.
    ///
    /// # Panics
    /// If `bits` holds fewer than `k * n` values.
    pub fn from_bf16_bits(bits: &[u16], k: usize, n: usize) -> Self {
        assert!(bits.len() >= k * n, "weight shorter than ({k}, {n})");
        Self {
            k,
            n,
            values: Arc::new(Values::Bf16(pack_pairs(bits, k, n))),
        }
    }

    /// Inputs of the layer.
    pub fn inputs(&self) -> usize {
        self.k
    }

    /// Outputs of the layer.
    pub fn outputs(&self) -> usize {
        self.n
    }

    /// Whether the weights are held as bf16.
    pub fn is_compact(&self) -> bool {
        matches!(*self.values, Values::Bf16(_))
    }

    /// The weight as `(n, k)` f32 values (a checkpoint's layout, bf16 widened exactly), for
    /// the paths that take a plain matrix.
    pub fn to_rows(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.k * self.n);
        match &*self.values {
            Values::F32(v) => unpack(v, self.k, self.n, &mut out),
            Values::Bf16(v) => {
                let mut bits = Vec::with_capacity(self.k * self.n);
                unpack_pairs(v, self.k, self.n, &mut bits);
                out.extend(bits.iter().map(|b| b.widen()));
            }
        }
        out
    }

    /// The bits of a compact weight, in pairs of inputs ([`pair_index`]); `None` for f32.
    pub(crate) fn compact_bits(&self) -> Option<&[u16]> {
        match &*self.values {
            Values::Bf16(v) => Some(v),
            Values::F32(_) => None,
        }
    }
}

/// `act(x (m, k) @ w + bias) + residual` into a new `(m, n)`, the panels split among up to
/// `threads` threads of the current pool. Compact panels take more than
/// [`super::matmul::FEW_ROWS`] rows in bf16 dot products where the CPU has them
/// ([`super::bf16_dots::product_panels`]: the rows rounded to bf16, sums in f32), and fewer in
/// f32 arithmetic on the widened weights.
///
/// # Panics
/// If `x`, `bias` or `residual` is shorter than its shape.
pub fn product(
    x: &[f32],
    m: usize,
    w: &Panels,
    bias: Option<&[f32]>,
    act: Activation,
    residual: Option<&[f32]>,
    threads: usize,
) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    assert!(x.len() >= m * k, "input shorter than ({m}, {k})");
    assert!(bias.is_none_or(|b| b.len() >= n), "bias shorter than {n}");
    assert!(
        residual.is_none_or(|r| r.len() >= m * n),
        "residual shorter than ({m}, {n})"
    );
    if let Some(bits) = w.compact_bits() {
        if m > super::matmul::FEW_ROWS && super::bf16_dots::available() {
            return super::bf16_dots::product_panels(
                x, m, k, bits, n, bias, act, residual, threads,
            );
        }
    }
    let panels = n.div_ceil(WIDTH);
    let parts = threads.min(panels).min((k * n / PART).max(1)).max(1);
    let mut out = Vec::<f32>::with_capacity(m * n);
    let dst = SendPtr(out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    let epilogue = Epilogue {
        bias,
        act,
        residual,
    };
    let part = |p: usize| {
        let (dst, epilogue) = (&dst, &epilogue);
        for panel in panels * p / parts..panels * (p + 1) / parts {
            let cols = panel * WIDTH..(panel * WIDTH + WIDTH).min(n);
            let mut r0 = 0;
            while r0 < m {
                let rows = (m - r0).min(GROUP);
                let mut tile = [0f32; GROUP * WIDTH];
                let xs = &x[r0 * k..(r0 + rows) * k];
                let span = panel * k * WIDTH..(panel + 1) * k * WIDTH;
                let pair_span = panel * pairs(k) * WIDTH * 2..(panel + 1) * pairs(k) * WIDTH * 2;
                match &*w.values {
                    #[cfg(target_arch = "x86_64")]
                    Values::F32(v) if avx512 => {
                        // SAFETY: AVX-512F is present; the operands hold their shapes.
                        unsafe { avx512::tile(xs, k, rows, &v[span], &mut tile[..rows * WIDTH]) }
                    }
                    Values::F32(v) => {
                        simd::panel_tile(xs, k, rows, &v[span], &mut tile[..rows * WIDTH])
                    }
                    #[cfg(target_arch = "x86_64")]
                    Values::Bf16(v) if avx512 => {
                        // SAFETY: as above.
                        unsafe {
                            avx512::tile_bf16(xs, k, rows, &v[pair_span], &mut tile[..rows * WIDTH])
                        }
                    }
                    Values::Bf16(v) => {
                        simd::panel_tile_bf16(xs, k, rows, &v[pair_span], &mut tile[..rows * WIDTH])
                    }
                }
                // SAFETY: the tile holds `rows` rows of WIDTH cells, these rows and columns
                // of the result; the shapes of `bias` and `residual` were checked above.
                unsafe {
                    epilogue.apply(
                        tile.as_mut_ptr(),
                        WIDTH,
                        n,
                        r0,
                        rows,
                        cols.start,
                        cols.len(),
                    )
                };
                for r in 0..rows {
                    let src = &tile[r * WIDTH..r * WIDTH + cols.len()];
                    // SAFETY: `out` has room for (m, n); each part writes only its panels'
                    // columns, and within them each (row, column) once.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.as_ptr(),
                            dst.0.add((r0 + r) * n + cols.start),
                            src.len(),
                        )
                    };
                }
                r0 += rows;
            }
        }
    };
    if parts == 1 {
        part(0);
    } else {
        (0..parts).into_par_iter().for_each(part);
    }
    // SAFETY: the parts cover every panel, so every (row, column) was written.
    unsafe { out.set_len(m * n) };
    out
}

/// The panel tile in AVX-512 intrinsics, for f32 and bf16 panels.
///
/// Why not only [`simd::panel_tile`]: its autovectorized loop streams the decoder's weights
/// as fast, but with six rows it kept part of the tile out of registers and multiplied many
/// rows at 88 GFLOP/s (577 rows, two threads) where this loop runs at 216-220.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{GROUP, WIDTH};
    use std::arch::x86_64::*;

    /// `out (rows, WIDTH) = x (rows, k) @ panel (k, WIDTH)` for 1 to [`GROUP`] rows.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile(x: &[f32], k: usize, rows: usize, panel: &[f32], out: &mut [f32]) {
        assert!(panel.len() >= k * WIDTH);
        tile_with(x, k, rows, out, |i| {
            let w = panel.as_ptr().add(i * WIDTH);
            std::array::from_fn(|c| _mm512_loadu_ps(w.add(16 * c)))
        })
    }

    /// [`tile`] for a compact panel (pairs of inputs, see [`super::pair_index`]), each value
    /// widened to f32: the pair's first input shifted into the top half of its 32-bit lane,
    /// the second kept there by a mask.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_bf16(x: &[f32], k: usize, rows: usize, panel: &[u16], out: &mut [f32]) {
        assert!(panel.len() >= super::pairs(k) * WIDTH * 2);
        let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
        tile_with(x, k, rows, out, |i| {
            let w = panel.as_ptr().add(i / 2 * WIDTH * 2);
            std::array::from_fn(|c| {
                let both = _mm512_loadu_si512(w.add(32 * c) as *const __m512i);
                _mm512_castsi512_ps(if i % 2 == 0 {
                    _mm512_slli_epi32::<16>(both)
                } else {
                    _mm512_and_si512(both, high)
                })
            })
        })
    }

    /// The tile's loop, with `weights(i)` giving input `i`'s four vectors of the panel.
    #[inline(always)]
    unsafe fn tile_with(
        x: &[f32],
        k: usize,
        rows: usize,
        out: &mut [f32],
        weights: impl Fn(usize) -> [__m512; 4],
    ) {
        assert!((1..=GROUP).contains(&rows) && x.len() >= rows * k && out.len() >= rows * WIDTH);
        macro_rules! with_rows {
            ($r:literal) => {{
                let mut acc = [[_mm512_setzero_ps(); 4]; $r];
                let xp = x.as_ptr();
                for i in 0..k {
                    let wv = weights(i);
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = _mm512_set1_ps(*xp.add(r * k + i));
                        for c in 0..4 {
                            a[c] = _mm512_fmadd_ps(xv, wv[c], a[c]);
                        }
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    for c in 0..4 {
                        _mm512_storeu_ps(out.as_mut_ptr().add(r * WIDTH + 16 * c), a[c]);
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
            _ => with_rows!(6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for r in 0..m {
            for j in 0..n {
                y[r * n + j] = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[i * n + j] as f64)
                    .sum();
            }
        }
        y
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0)
            .collect()
    }

    /// Every row count up to two groups and more, outputs that fill and do not fill the last
    /// panel, one and several threads: within f32 rounding of a product in f64, with bias,
    /// GELU and residual applied after.
    #[test]
    fn products_match_a_naive_product() {
        for &(k, n) in &[(3, 5), (64, 64), (70, 130), (300, 1030)] {
            let w = values(k * n, 1);
            let packed = Panels::from_f32(&w, k, n);
            assert_eq!((packed.inputs(), packed.outputs()), (k, n));
            for m in [1, 2, 5, 6, 7, 13] {
                let x = values(m * k, m);
                let bias = values(n, 3);
                let residual = values(m * n, 4);
                let want = naive(&x, m, k, &w, n);
                for threads in [1, 2, 3] {
                    let plain = product(&x, m, &packed, None, Activation::None, None, threads);
                    let full = product(
                        &x,
                        m,
                        &packed,
                        Some(&bias),
                        Activation::GeluErf,
                        Some(&residual),
                        threads,
                    );
                    for (idx, (&got, &want)) in plain.iter().zip(&want).enumerate() {
                        let tol = 1e-5 * (k as f64).sqrt().max(1.0) * (1.0 + want.abs());
                        assert!(
                            (got as f64 - want).abs() <= tol,
                            "({k}, {n}) m={m} threads={threads} at {idx}: {got} vs {want}"
                        );
                    }
                    let mut after = plain.clone();
                    simd::epilogue(
                        &mut after,
                        n,
                        Some(&bias),
                        Activation::GeluErf,
                        Some(&residual),
                    );
                    assert_eq!(full, after, "epilogue after the product");
                }
            }
        }
    }

    /// The sums run over the inputs in order, whatever the thread count: identical bits.
    #[test]
    fn results_do_not_depend_on_threads() {
        let (m, k, n) = (5, 777, 1000);
        let (x, w) = (values(m * k, 1), values(k * n, 2));
        let packed = Panels::from_f32(&w, k, n);
        let one = product(&x, m, &packed, None, Activation::None, None, 1);
        for threads in [2, 3, 8] {
            assert_eq!(
                one,
                product(&x, m, &packed, None, Activation::None, None, threads)
            );
        }
    }

    /// The AVX-512 packer (where the CPU has it) lays compact panels out exactly as the loop
    /// over [`pair_index`] does: odd and even input counts, partial and whole last panels.
    #[test]
    fn compact_packing_is_the_same_either_way() {
        for (k, n) in [(200usize, 150usize), (201, 64), (3, 5), (1, 130)] {
            let bits: Vec<u16> = (0..k * n).map(|i| (i * 7919 % 65_521) as u16).collect();
            let mut scalar = vec![0u16; n.div_ceil(WIDTH) * pairs(k) * WIDTH * 2];
            pack_pairs_scalar(&bits, k, n, &mut scalar);
            assert_eq!(pack_pairs(&bits, k, n), scalar, "({k}, {n})");
        }
    }

    /// Compact panels (odd and even input counts, a partial last panel) unpack to the widened
    /// bf16 values; few rows multiply by those values in f32 arithmetic, exactly as f32 panels
    /// of them do; more rows, where the CPU has AVX512-BF16, multiply the rows rounded to bf16
    /// as well (to within f32 rounding of that product in f64), else as few rows do.
    #[test]
    fn compact_panels_multiply_the_rounded_weights() {
        for (k, n) in [(200, 150), (201, 64), (3, 5)] {
            let w = values(k * n, 2);
            let bits: Vec<u16> = w
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect();
            let rounded: Vec<f32> = bits.iter().map(|b| b.widen()).collect();
            let compact = Panels::from_bf16_bits(&bits, k, n);
            assert!(compact.is_compact());
            let wide = Panels::from_f32(&rounded, k, n);
            let mut rows = vec![0f32; n * k];
            for i in 0..k {
                for j in 0..n {
                    rows[j * k + i] = rounded[i * n + j];
                }
            }
            assert_eq!(compact.to_rows(), rows);
            assert_eq!(wide.to_rows(), rows);
            for m in [1, 5, super::super::matmul::FEW_ROWS, 13] {
                let x = values(m * k, m);
                let bias = values(n, 3);
                let residual = values(m * n, 4);
                let run = |p: &Panels| {
                    product(
                        &x,
                        m,
                        p,
                        Some(&bias),
                        Activation::GeluErf,
                        Some(&residual),
                        2,
                    )
                };
                let got = run(&compact);
                if m <= super::super::matmul::FEW_ROWS || !super::super::bf16_dots::available() {
                    assert_eq!(got, run(&wide), "({k}, {n}) m={m}");
                    continue;
                }
                let x_rounded: Vec<f32> = x
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_f32())
                    .collect();
                let mut want: Vec<f32> = naive(&x_rounded, m, k, &rounded, n)
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                simd::epilogue(
                    &mut want,
                    n,
                    Some(&bias),
                    Activation::GeluErf,
                    Some(&residual),
                );
                for (idx, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (k as f32).sqrt() * (1.0 + w.abs());
                    assert!(
                        (g - w).abs() <= tol,
                        "({k}, {n}) m={m} at {idx}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
