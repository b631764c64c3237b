//! Products of many rows by a compact (bf16) weight in bf16 dot products, for models built
//! with compact weights (`--dtype bf16`) on CPUs with AVX512-BF16.
//!
//! `vdpbf16ps` multiplies two pairs of bf16 numbers per 32-bit lane and adds both products to
//! an f32 accumulator: 64 FLOPs an instruction against an f32 fused multiply-add's 32, at the
//! same rate on this project's machine (`examples/fma_peak`: 460 against 230 GFLOP/s on two
//! threads). The activations are rounded to bf16 (to nearest, ties to even) on the way in, as
//! PyTorch's bf16 autocast and oneDNN's bf16 kernels do; the sums stay f32.
//!
//! Why by hand: candle has no bf16 product on the CPU without MKL, the `gemm` crate has no
//! kernel with these instructions, and the oneDNN 2.6 C API this project links behind a
//! feature offers f32 and int8 products only. The loop is the usual blocked product: each
//! thread takes a range of output columns and, a block of the weight at a time (small enough
//! to stay in L2), sweeps the rows six at a time through a 6 x 64 tile of accumulators held in
//! registers. The weight comes packed once, at load, in pairs of rows interleaved (the layout
//! the instruction reads: [`super::panels`]' compact panels); packing it on every call took 4 %
//! of the bf16 tower's time, and the separate pass of bias, activation and residual after the
//! product another 3.6 % (`RUNS=30 WINDOW=50%-100% ONLY=tower DTYPE=bf16 FEATURES=dnnl
//! scripts/profile-tower.sh`): that pass now runs on each tile of rows as it completes.

use super::matmul::SendPtr;
#[cfg(target_arch = "x86_64")]
use super::matmul::{strip_parts, Epilogue};
use super::simd::Activation;
use rayon::prelude::*;

/// Whether this CPU runs [`product`] (AVX-512 with the bf16 and byte/word extensions).
pub fn available() -> bool {
    // The standard library caches what the CPU reports.
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Output columns of the register tile (four vectors of 16 lanes).
pub const STRIP: usize = 64;
/// Rows of the register tile: 6 x 4 accumulators, 4 weight vectors and one broadcast use 29 of
/// the 32 vector registers.
pub const TILE_ROWS: usize = 6;
/// Weight rows (inputs) per block: one pass over the inputs of the base model's 768-wide
/// layers, three of its 3072-wide ones.
const BLOCK_K: usize = 1024;
/// Output columns per block: `BLOCK_K x BLOCK_N` bf16 is 512 KiB, inside L2, read from there
/// by every tile of rows.
const BLOCK_N: usize = 256;
const _: () = assert!(STRIP == super::panels::WIDTH, "a strip is a panel");

/// `x (m, k) @ w` for `bits`, the `(k, n)` weight as bf16 bits, into a new `(m, n)`, with `x`
/// rounded to bf16, on up to `threads` threads of the current pool. Packs the weight first:
/// layers hold theirs packed once ([`super::panels::Panels`], see [`product_panels`]).
///
/// # Panics
/// If [`available`] is false, or a slice is shorter than its shape.
pub fn product(x: &[f32], m: usize, k: usize, bits: &[u16], n: usize, threads: usize) -> Vec<f32> {
    assert!(bits.len() >= k * n, "operands shorter than their shapes");
    let packed = super::panels::Panels::from_bf16_bits(bits, k, n);
    let bits = packed.compact_bits().expect("packed from bf16 bits");
    product_panels(x, m, k, bits, n, None, Activation::None, None, threads)
}

/// `act(x (m, k) @ w + bias) + residual` into a new `(m, n)` for `w` packed in compact panels
/// (`bits`, see [`super::panels`]: strips of [`STRIP`] columns, in each the inputs in pairs),
/// `x` rounded to bf16, on up to `threads` threads of the current pool. The bias, activation
/// and residual are applied to each tile of the result as its sums complete, while it is in L1.
///
/// # Panics
/// If [`available`] is false, or a slice is shorter than its shape.
#[allow(clippy::too_many_arguments)]
pub fn product_panels(
    x: &[f32],
    m: usize,
    k: usize,
    bits: &[u16],
    n: usize,
    bias: Option<&[f32]>,
    act: Activation,
    residual: Option<&[f32]>,
    threads: usize,
) -> Vec<f32> {
    assert!(available(), "bf16 dot products need AVX512-BF16");
    assert!(
        x.len() >= m * k && bits.len() >= n.div_ceil(STRIP) * k.div_ceil(2) * STRIP * 2,
        "operands shorter than their shapes"
    );
    assert!(bias.is_none_or(|b| b.len() >= n), "bias shorter than {n}");
    assert!(
        residual.is_none_or(|r| r.len() >= m * n),
        "residual shorter than ({m}, {n})"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let epilogue = Epilogue {
            bias,
            act,
            residual,
        };
        imp::product(x, m, k, bits, n, &epilogue, threads)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("available() is false off x86-64")
}

#[cfg(target_arch = "x86_64")]
pub(crate) use imp::{pack, round_row, tile_rows};

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::*;
    use std::arch::x86_64::*;

    pub fn product(
        x: &[f32],
        m: usize,
        k: usize,
        bits: &[u16],
        n: usize,
        epilogue: &Epilogue,
        threads: usize,
    ) -> Vec<f32> {
        // Inputs padded to an even count: an odd last input pairs with a zero.
        let kp = k.next_multiple_of(2);
        let mut xb = Vec::<u16>::with_capacity(m * kp);
        let rows_per_task = (m / (threads * 4)).max(1);
        // SAFETY: every element is written below (`round_row` fills each row, padding
        // included) before any is read; u16 has no invalid values.
        unsafe { xb.set_len(m * kp) };
        xb.par_chunks_mut(rows_per_task * kp)
            .zip(x[..m * k].par_chunks(rows_per_task * k))
            .for_each(|(dst, src)| {
                for (d, s) in dst.chunks_exact_mut(kp).zip(src.chunks_exact(k)) {
                    // SAFETY: `available` checked the features; the row lengths are as named.
                    unsafe { round_row(s, d) };
                }
            });
        let mut out = Vec::<f32>::with_capacity(m * n);
        let parts = strip_parts(m, n, STRIP, TILE_ROWS, threads);
        let dst = SendPtr(out.as_mut_ptr());
        parts
            .into_par_iter()
            .filter(|(r, c)| !r.is_empty() && !c.is_empty())
            .for_each(|(rows, cols)| {
                #[allow(clippy::redundant_locals)]
                let dst = dst;
                // SAFETY: the features are present; each part writes only its rows and columns
                // of `out`, which has room for (m, n); `xb` and `bits` hold their shapes.
                unsafe { part(&xb, kp, bits, n, rows, cols, epilogue, dst.0) };
            });
        // SAFETY: the parts cover every (row, column) and each wrote its cells (the first
        // block of inputs stores without reading).
        unsafe { out.set_len(m * n) };
        out
    }

    /// One row of f32 into bf16 bits, rounded to nearest even (`dst` one longer than `src`
    /// when `src` is odd: that last element becomes 0).
    ///
    /// # Safety
    /// The CPU has the features enabled here.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(crate) unsafe fn round_row(src: &[f32], dst: &mut [u16]) {
        let mut i = 0;
        while i < src.len() {
            let take = (src.len() - i).min(16);
            let mask: __mmask16 = if take == 16 { !0 } else { (1u16 << take) - 1 };
            // SAFETY: the mask keeps the accesses within the slices.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
                let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                _mm256_mask_storeu_epi16(dst.as_mut_ptr().add(i) as *mut i16, mask, h);
            }
            i += take;
        }
        dst[src.len()..].fill(0);
    }

    /// The product for `rows` x `cols` of the output (`cols` starting on a strip), then the
    /// epilogue on each tile as its last block of inputs completes it.
    ///
    /// # Safety
    /// The CPU has the features enabled here; `bits` holds the packed `(kp, n)` weight; `out`
    /// has room for `(m, n)` and no one else writes these cells meanwhile.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn part(
        xb: &[u16],
        kp: usize,
        bits: &[u16],
        n: usize,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        epilogue: &Epilogue,
        out: *mut f32,
    ) {
        // One strip's pairs of inputs, all of them: `kp / 2` pairs of STRIP columns.
        let strip_len = kp / 2 * STRIP * 2;
        let mut jc = cols.start;
        while jc < cols.end {
            let nc = (cols.end - jc).min(BLOCK_N);
            let mut pc = 0;
            while pc < kp {
                let kc = (kp - pc).min(BLOCK_K);
                let pairs = kc / 2;
                let last = pc + kc == kp;
                let mut r0 = rows.start;
                while r0 < rows.end {
                    let r = (rows.end - r0).min(TILE_ROWS);
                    let a = xb[r0 * kp + pc..].as_ptr();
                    for s in 0..nc.div_ceil(STRIP) {
                        let j0 = jc + s * STRIP;
                        let b = bits[j0 / STRIP * strip_len + pc * STRIP..].as_ptr();
                        let c = out.add(r0 * n + j0);
                        let width = (nc - s * STRIP).min(STRIP);
                        // SAFETY: `a` has r rows of kc inputs kp apart, `b` `pairs` packed
                        // pairs, `c` r rows of `width` cells n apart, all in bounds.
                        unsafe { tile_rows(r, a, kp, b, pairs, c, n, width, pc == 0) };
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

    /// Packs inputs `pc..pc + 2 pairs` and columns `jc..jc + nc` of the `(k, n)` weight into
    /// `packed`: strip after strip of 64 columns, in each, pair after pair of input rows, in
    /// each, column after column of the two rows' values side by side (the lane layout of
    /// `vdpbf16ps`). Missing rows (past `k`) and columns (past the strip's end) are 0.
    ///
    /// # Safety
    /// The CPU has the features enabled here; `pc + 2 pairs <= k + 1` and `jc + nc <= n`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(crate) unsafe fn pack(
        bits: &[u16],
        k: usize,
        n: usize,
        pc: usize,
        pairs: usize,
        jc: usize,
        nc: usize,
        packed: &mut [u16],
    ) {
        // 64-bit lanes of the two unpacked halves, in column order: the unpacks interleave
        // within 128-bit lanes, four columns from each.
        let first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
        let second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
        let mut dst = packed.as_mut_ptr() as *mut __m512i;
        for s in 0..nc.div_ceil(STRIP) {
            for p in 0..pairs {
                let (i0, i1) = (pc + 2 * p, pc + 2 * p + 1);
                for half in 0..2 {
                    let j = s * STRIP + half * 32;
                    let take = nc.saturating_sub(j).min(32);
                    let mask: __mmask32 = if take == 32 { !0 } else { (1u32 << take) - 1 };
                    // SAFETY: the masks keep the loads within row `i` and columns < jc + nc;
                    // the stores go to `packed`, which holds every strip's pairs.
                    unsafe {
                        let mut rows = [_mm512_setzero_si512(); 2];
                        for (row, i) in rows.iter_mut().zip([i0, i1]) {
                            if i < k && take > 0 {
                                let src = bits.as_ptr().add(i * n + jc + j) as *const i16;
                                *row = _mm512_maskz_loadu_epi16(mask, src);
                            }
                        }
                        let [even, odd] = rows;
                        let lo = _mm512_unpacklo_epi16(even, odd);
                        let hi = _mm512_unpackhi_epi16(even, odd);
                        _mm512_storeu_si512(dst, _mm512_permutex2var_epi64(lo, first, hi));
                        _mm512_storeu_si512(dst.add(1), _mm512_permutex2var_epi64(lo, second, hi));
                        dst = dst.add(2);
                    }
                }
            }
        }
    }

    /// [`tile`] for `r` rows, 1 to [`TILE_ROWS`].
    ///
    /// # Safety
    /// As [`tile`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(crate) unsafe fn tile_rows(
        r: usize,
        a: *const u16,
        a_rs: usize,
        b: *const u16,
        pairs: usize,
        c: *mut f32,
        c_rs: usize,
        width: usize,
        first: bool,
    ) {
        // SAFETY: as the caller promises.
        unsafe {
            match r {
                1 => tile::<1>(a, a_rs, b, pairs, c, c_rs, width, first),
                2 => tile::<2>(a, a_rs, b, pairs, c, c_rs, width, first),
                3 => tile::<3>(a, a_rs, b, pairs, c, c_rs, width, first),
                4 => tile::<4>(a, a_rs, b, pairs, c, c_rs, width, first),
                5 => tile::<5>(a, a_rs, b, pairs, c, c_rs, width, first),
                _ => tile::<6>(a, a_rs, b, pairs, c, c_rs, width, first),
            }
        }
    }

    /// `c[r][0..width] (+)= sum over pairs p of a[r][2p..2p + 2] . b[p][..]` for `R` rows, in
    /// 4 x `R` accumulators; `first` stores without adding what `c` holds.
    ///
    /// # Safety
    /// The CPU has the features enabled here; the pointers address what the shapes say.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn tile<const R: usize>(
        a: *const u16,
        a_rs: usize,
        b: *const u16,
        pairs: usize,
        c: *mut f32,
        c_rs: usize,
        width: usize,
        first: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        let mut b = b as *const __m512i;
        for p in 0..pairs {
            // SAFETY: as the caller promises.
            unsafe {
                let w: [__m512bh; 4] = [
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b)),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(1))),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(2))),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(3))),
                ];
                b = b.add(4);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pair = (a.add(r * a_rs + 2 * p) as *const i32).read_unaligned();
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    for (acc, w) in acc.iter_mut().zip(w) {
                        *acc = _mm512_dpbf16_ps(*acc, x, w);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                let take = width.saturating_sub(16 * v).min(16);
                if take == 0 {
                    break;
                }
                let mask: __mmask16 = if take == 16 { !0 } else { (1u16 << take) - 1 };
                // SAFETY: the mask keeps the accesses within the row's `width` cells.
                unsafe {
                    let ptr = c.add(r * c_rs + 16 * v);
                    let sum = if first {
                        *acc
                    } else {
                        _mm512_add_ps(*acc, _mm512_maskz_loadu_ps(mask, ptr))
                    };
                    _mm512_mask_storeu_ps(ptr, mask, sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(v: f32) -> f64 {
        half::bf16::from_f32(v).to_f64()
    }

    /// The product is that of the bf16-rounded operands up to summation order, for shapes
    /// with row tails (not a multiple of 6), column tails (not a multiple of 16 or 64), odd
    /// input counts, several input blocks, several column blocks, and fewer strips than
    /// threads (the row split).
    #[test]
    fn matches_the_product_of_rounded_operands() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (m, k, n, threads) in [
            (1, 1, 1, 1),
            (7, 5, 3, 2),
            (13, 70, 45, 2),
            (6, 2051, 130, 2),
            (25, 64, 600, 3),
            (40, 33, 64, 4),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104_729 % 2003) as f32 - 1001.0) / 311.0)
                .collect();
            let bits: Vec<u16> = w
                .iter()
                .map(|v| half::bf16::from_f32(*v).to_bits())
                .collect();
            let got = product(&x, m, k, &bits, n, threads);
            assert_eq!(got.len(), m * n);
            for r in 0..m {
                for j in 0..n {
                    let (mut want, mut size) = (0f64, 0f64);
                    for i in 0..k {
                        let t = round(x[r * k + i]) * round(w[i * n + j]);
                        want += t;
                        size += t.abs();
                    }
                    let g = got[r * n + j] as f64;
                    // f32 sums of k terms in another order: a few f32 ulps of the terms' size.
                    assert!(
                        (g - want).abs() <= 1e-6 * size.max(1.0) * (k as f64).sqrt(),
                        "{m}x{k}x{n} at ({r}, {j}): {g} against {want}"
                    );
                }
            }
        }
    }
}
