//! Linear layers `act(x W^T + b) + residual` on f32 slices.
//!
//! The product runs in the `gemm` crate, candle's own matrix library, here with its AVX-512
//! micro-kernels enabled (`x86-v4`, dispatched at run time); the bias, activation and residual
//! follow in one pass over each block of rows while it is in cache.
//!
//! Weights are best stored transposed, `(in, out)` ([`Weight::Cols`], done once at load by
//! [`super::super::ops::Linear`]): with the checkpoint's `(out, in)` layout `gemm`'s AVX-512
//! kernels ran 5-row products (beam decoding) five times slower and 577-row products of
//! 3072 inputs 30 % slower (`examples/kernel_speed.rs`).

use super::simd::{self, Activation};
use rayon::prelude::*;

/// A raw pointer that may cross threads: each task writes a disjoint part of the buffer.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: used only for writes to disjoint elements, while the owner outlives the tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Threads for one operation: the pool candle uses (sized by `RAYON_NUM_THREADS`).
pub fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// How a product of `m` rows by `n` columns, in strips of `strip` columns and tiles of
/// `tile_rows` rows, is split among `threads` threads: whole strips, one range per thread; with
/// fewer strips than threads, ranges of rows instead (of whole tiles where the rows allow). The
/// split of [`super::bf16_dots`] and [`super::int8_dots`]; some parts may be empty.
pub(crate) fn strip_parts(
    m: usize,
    n: usize,
    strip: usize,
    tile_rows: usize,
    threads: usize,
) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let threads = threads.max(1);
    let strips = n.div_ceil(strip);
    if strips >= threads {
        (0..threads)
            .map(|p| {
                let s0 = strips * p / threads;
                let s1 = strips * (p + 1) / threads;
                (0..m, (s0 * strip).min(n)..(s1 * strip).min(n))
            })
            .collect()
    } else {
        let parts = threads.min(m.div_ceil(tile_rows)).max(1);
        (0..parts)
            .map(|p| (m * p / parts..m * (p + 1) / parts, 0..n))
            .collect()
    }
}

/// `dst (m, n) = a (m, k) @ b` where `b`'s element `(kk, j)` is at `b[kk * b_rs + j * b_cs]`;
/// `a` rows have stride `a_rs`, `dst` rows stride `dst_rs`.
///
/// # Safety
/// Every pointer must address the elements its shape and strides describe; `dst` may not
/// overlap the inputs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    a: *const f32,
    a_rs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
    threads: usize,
) {
    // SAFETY: as the caller promises.
    unsafe { gemm_strided(m, n, k, dst, dst_rs, a, a_rs, 1, b, b_rs, b_cs, threads) }
}

/// [`gemm`] with `a`'s element `(i, kk)` at `a[i * a_rs + kk * a_cs]` (a transposed `a` for
/// the weight gradients of training).
///
/// # Safety
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
    threads: usize,
) {
    #[cfg(feature = "dnnl")]
    if threads > 1 {
        // SAFETY: as the caller promises.
        let done =
            unsafe { dnnl::sgemm(m, n, k, dst, dst_rs, a, a_rs, a_cs, b, b_rs, b_cs, threads) };
        if done {
            return;
        }
    }
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: as the caller promises; gemm's argument order is (column stride, row stride).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

/// oneDNN's `dnnl_sgemm` (feature `dnnl`: Debian's `libdnnl-dev`, or any oneDNN 2.x or 3.x on
/// the linker's path): its JIT-compiled AVX-512 kernels ran the towers' large products at
/// 290-330 GFLOP/s on the 2-core Intel machine of earlier sessions against `gemm`'s 210-240
/// (`examples/kernel_speed`; `examples/fma_peak` put that machine's f32 peak at 290-350), and
/// at about 95 % of the 226-230 GFLOP/s peak of the AMD machine since. A C library, so behind
/// a feature: the default build stays pure Rust. Each product is split among candle's pool
/// and run single-threaded in each of its threads: oneDNN's own OpenMP threads, spinning beside the
/// pool's between products, made the tower slower than without oneDNN. The one C function is
/// declared here by hand: the -sys crates on crates.io are at 0.0.1 and either build oneDNN
/// from source with cmake (`onednn-sys`) or need Intel's oneAPI install (`onednnl-sys`).
#[cfg(feature = "dnnl")]
mod dnnl {
    use std::ops::Range;
    use std::os::raw::{c_char, c_int};

    #[link(name = "dnnl")]
    extern "C" {
        /// Row-major `C = alpha op(A) op(B) + beta C`; returns a `dnnl_status_t` (0: success).
        fn dnnl_sgemm(
            transa: c_char,
            transb: c_char,
            m: i64,
            n: i64,
            k: i64,
            alpha: f32,
            a: *const f32,
            lda: i64,
            b: *const f32,
            ldb: i64,
            beta: f32,
            c: *mut f32,
            ldc: i64,
        ) -> c_int;
    }

    // The OpenMP runtime oneDNN runs on (Debian builds it with GNU OpenMP): its threads for the
    // calling thread's next parallel region.
    #[link(name = "gomp")]
    extern "C" {
        fn omp_set_num_threads(n: c_int);
    }

    /// One operand's layout for `dnnl_sgemm`: not transposed with rows `rs` apart, or
    /// transposed with columns `cs` apart; `None` when neither stride is 1.
    fn layout(rs: usize, cs: usize) -> Option<(c_char, i64)> {
        if cs == 1 {
            Some((b'N' as c_char, rs as i64))
        } else if rs == 1 {
            Some((b'T' as c_char, cs as i64))
        } else {
            None
        }
    }

    /// [`super::gemm_strided`] through oneDNN on `threads` threads; `false` (nothing done)
    /// when a layout does not fit it.
    ///
    /// # Safety
    /// As [`super::gemm_strided`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_rs: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        b_rs: usize,
        b_cs: usize,
        threads: usize,
    ) -> bool {
        let (Some((ta, lda)), Some((tb, ldb))) = (layout(a_rs, a_cs), layout(b_rs, b_cs)) else {
            return false;
        };
        // The product split among the threads of candle's pool, each part single-threaded
        // in its own thread: OpenMP threads spinning beside the pool's would share the cores.
        // Products with fewer outputs than inputs (the MLP's second layer: 768 outputs of
        // 3072 inputs) split by rows, the rest by columns: a column split would leave each
        // thread a narrow strip of 384 columns, which ran at 230-290 GFLOP/s against 270-330
        // by rows on the Intel machine, measured in turns in one process
        // (`examples/kernel_speed`'s shapes); the other shapes ran alike either way.
        let parts: Vec<(Range<usize>, Range<usize>)> = if n < k {
            let parts = threads.min(m.div_ceil(16)).max(1);
            (0..parts)
                .map(|p| (m * p / parts..m * (p + 1) / parts, 0..n))
                .collect()
        } else {
            // Column strips start on multiples of 16 (whole vectors of `b` and `dst`).
            let parts = threads.min(n.div_ceil(64)).max(1);
            let start = |p: usize| {
                if p == parts {
                    n
                } else {
                    n * p / parts / 16 * 16
                }
            };
            (0..parts).map(|p| (0..m, start(p)..start(p + 1))).collect()
        };
        let (dst, a, b) = (super::SendPtr(dst), a as usize, b as usize);
        let ok = std::sync::atomic::AtomicBool::new(true);
        rayon::scope(|scope| {
            for (rows, cols) in parts
                .into_iter()
                .filter(|(r, c)| !r.is_empty() && !c.is_empty())
            {
                let ok = &ok;
                scope.spawn(move |_| {
                    #[allow(clippy::redundant_locals)]
                    let dst = dst;
                    // SAFETY: the operands are as the caller promises; oneDNN reads this
                    // part's rows of `a` and columns of `b` and writes this part of `dst`,
                    // only within the shapes and leading dimensions given. With `a`
                    // transposed `a_rs` is 1, so row i starts at element i either way; the
                    // same holds for `b`'s columns.
                    let status = unsafe {
                        omp_set_num_threads(1);
                        dnnl_sgemm(
                            ta,
                            tb,
                            rows.len() as i64,
                            cols.len() as i64,
                            k as i64,
                            1.0,
                            (a as *const f32).add(rows.start * a_rs),
                            lda,
                            (b as *const f32).add(cols.start * b_cs),
                            ldb,
                            0.0,
                            dst.0.add(rows.start * dst_rs + cols.start),
                            dst_rs as i64,
                        )
                    };
                    if status != 0 {
                        ok.store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        ok.into_inner()
    }
}

/// Up to this many rows a product runs in [`simd::accumulate_rows`] (bound by reading the
/// weights), above it in `gemm`.
pub const FEW_ROWS: usize = 8;

/// `act(x (m, k) @ w + b) + residual` for few rows: the `k` rows of the weights split into one
/// contiguous range per thread, each accumulated by `acc(x, i0, i1, partial)` into its own
/// `(m, n)` partial sum, the partials added, then the epilogue.
#[allow(clippy::too_many_arguments)]
pub fn few_rows(
    x: &[f32],
    m: usize,
    k: usize,
    acc: impl Fn(&[f32], usize, usize, &mut [f32]) + Sync,
    n: usize,
    bias: Option<&[f32]>,
    act: Activation,
    residual: Option<&[f32]>,
    threads: usize,
) -> Vec<f32> {
    // Ranges of at least 64 rows, so that small layers do not pay for the threads.
    let parts = threads.min(k / 64).max(1);
    let mut partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let mut y = vec![0f32; m * n];
            acc(x, k * p / parts, k * (p + 1) / parts, &mut y);
            y
        })
        .collect();
    let mut out = partials.swap_remove(0);
    for p in &partials {
        out.iter_mut().zip(p).for_each(|(o, v)| *o += *v);
    }
    simd::epilogue(&mut out, n, bias, act, residual);
    out
}

/// A weight matrix of a linear layer with `n` outputs and `k` inputs, in either layout.
#[derive(Debug, Clone, Copy)]
pub enum Weight<'a> {
    /// `(n, k)` row-major, as checkpoints store it.
    Rows(&'a [f32]),
    /// `(k, n)` row-major (transposed once at load), the layout the matrix products prefer.
    Cols(&'a [f32]),
}

/// `act(x W^T + b) + residual` for `x (m, k)` and `w` with `n` outputs, into a new `(m, n)`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    m: usize,
    k: usize,
    w: Weight,
    n: usize,
    bias: Option<&[f32]>,
    act: Activation,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let threads = threads();
    if let Weight::Cols(w) = w {
        if m <= FEW_ROWS {
            let acc =
                |x: &[f32], i0, i1, y: &mut [f32]| simd::accumulate_rows(x, m, k, w, n, i0, i1, y);
            return few_rows(x, m, k, acc, n, bias, act, residual, threads);
        }
    }
    let mut out = Vec::<f32>::with_capacity(m * n);
    let (w, b_rs, b_cs) = match w {
        Weight::Rows(w) => (w, 1, k),
        Weight::Cols(w) => (w, n, 1),
    };
    // SAFETY: `out` has room for (m, n); the products write every element before any read.
    unsafe {
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            n,
            x.as_ptr(),
            k,
            w.as_ptr(),
            b_rs,
            b_cs,
            threads,
        );
        out.set_len(m * n);
    }
    epilogue_rows(&mut out, m, n, bias, act, residual);
    out
}

/// [`linear`] with a compact weight: `bits` holds the `(k, n)` weight (the transposed layout)
/// as bf16 bits. Few rows read the bits directly ([`simd::accumulate_rows_bf16`], half the
/// bytes of f32, arithmetic in f32). More rows multiply in bf16 dot products where the CPU has
/// them ([`super::bf16_dots`]: the activations rounded to bf16, sums in f32, twice the f32
/// peak), and elsewhere widen the weight for the f32 product ([`linear_bf16_widening`]). The
/// model's layers hold compact weights packed once, in panels ([`super::panels::product`]);
/// this path serves a compact weight tensor.
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16(
    x: &[f32],
    m: usize,
    k: usize,
    bits: &[u16],
    n: usize,
    bias: Option<&[f32]>,
    act: Activation,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    if m <= FEW_ROWS {
        let acc = |x: &[f32], i0, i1, y: &mut [f32]| {
            simd::accumulate_rows_bf16(x, m, k, bits, n, i0, i1, y)
        };
        return few_rows(x, m, k, acc, n, bias, act, residual, threads());
    }
    if !super::bf16_dots::available() {
        return linear_bf16_widening(x, m, k, bits, n, bias, act, residual);
    }
    let mut out = super::bf16_dots::product(x, m, k, bits, n, threads());
    epilogue_rows(&mut out, m, n, bias, act, residual);
    out
}

/// [`linear_bf16`] for many rows in f32 arithmetic: the weight widened to f32 once per call
/// (a pass over the weight, small beside a product of many rows), then [`linear`].
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16_widening(
    x: &[f32],
    m: usize,
    k: usize,
    bits: &[u16],
    n: usize,
    bias: Option<&[f32]>,
    act: Activation,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let mut wide = vec![0f32; k * n];
    let chunk = (k * n).div_ceil(threads() * 4).max(1);
    wide.par_chunks_mut(chunk)
        .zip(bits.par_chunks(chunk))
        .for_each(|(w, b)| simd::widen_bf16(b, w));
    linear(x, m, k, Weight::Cols(&wide), n, bias, act, residual)
}

/// What follows the sums of a product that applies it tile by tile, while each tile is in L1
/// (`panels::product`, `bf16_dots::product_panels`): `act(y + bias) + residual`, the same
/// operations per cell as [`simd::epilogue`], so the bits do not depend on the tiling.
pub(crate) struct Epilogue<'a> {
    /// `(n,)`, added first.
    pub bias: Option<&'a [f32]>,
    /// Then the activation.
    pub act: Activation,
    /// `(m, n)`, added last.
    pub residual: Option<&'a [f32]>,
}

impl Epilogue<'_> {
    /// Whether it changes anything.
    pub fn is_noop(&self) -> bool {
        self.bias.is_none() && self.act == Activation::None && self.residual.is_none()
    }

    /// Applies to `rows` rows of `width` cells at `c` (rows `stride` apart), which hold row
    /// `r0` on, columns `j0..j0 + width`, of an `(m, n)` result.
    ///
    /// # Safety
    /// `c` addresses those cells and no one else touches them meanwhile; `bias` and `residual`
    /// hold their shapes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn apply(
        &self,
        c: *mut f32,
        stride: usize,
        n: usize,
        r0: usize,
        rows: usize,
        j0: usize,
        width: usize,
    ) {
        if self.is_noop() {
            return;
        }
        for r in 0..rows {
            // SAFETY: as the caller promises.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * stride), width) };
            let at = (r0 + r) * n + j0;
            simd::epilogue(
                row,
                width,
                self.bias.map(|b| &b[j0..j0 + width]),
                self.act,
                self.residual.map(|res| &res[at..at + width]),
            );
        }
    }
}

/// Bias, activation and residual over `out (m, n)` in blocks of rows on the pool.
pub(crate) fn epilogue_rows(
    out: &mut [f32],
    m: usize,
    n: usize,
    bias: Option<&[f32]>,
    act: Activation,
    residual: Option<&[f32]>,
) {
    let rows = (m / (threads() * 4)).max(1);
    out.par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(i, chunk)| {
            let res = residual.map(|r| &r[i * rows * n..i * rows * n + chunk.len()]);
            simd::epilogue(chunk, n, bias, act, res);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, b: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                    .sum();
                y[r * n + j] = s as f32 + b[j];
            }
        }
        y
    }

    #[test]
    fn both_layouts_match_a_naive_product() {
        let (k, n) = (70, 45);
        for m in [1, 3, 5, 9, 40] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 19) as f32 - 9.0) / 7.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 3 % 17) as f32 - 8.0) / 9.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|j| j as f32 / 10.0).collect();
            let res: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32).collect();
            let want = naive(&x, m, k, &w, n, &b);
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            for weight in [Weight::Rows(&w), Weight::Cols(&wt)] {
                let got = linear(&x, m, k, weight, n, Some(&b), Activation::None, Some(&res));
                for i in 0..m * n {
                    assert!((got[i] - want[i] - res[i]).abs() < 1e-4, "m {m} at {i}");
                }
                let got = linear(&x, m, k, weight, n, Some(&b), Activation::QuickGelu, None);
                for i in 0..m * n {
                    let v = want[i];
                    let q = v / (1.0 + (-1.702 * v).exp());
                    assert!((got[i] - q).abs() < 1e-4, "m {m} at {i}");
                }
            }
        }
    }

    /// oneDNN takes every layout the kernels ask for (both operands plain or transposed,
    /// split among 1 to 3 threads, by rows with fewer outputs than inputs and by columns
    /// otherwise) and gives the naive product.
    #[cfg(feature = "dnnl")]
    #[test]
    fn dnnl_products_match_a_naive_product() {
        for (m, k, n) in [(37, 70, 45), (37, 45, 70)] {
            dnnl_product_matches(m, k, n);
        }
    }

    #[cfg(feature = "dnnl")]
    fn dnnl_product_matches(m: usize, k: usize, n: usize) {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 19) as f32 - 9.0) / 7.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 3 % 17) as f32 - 8.0) / 9.0)
            .collect();
        let want = naive(&x, m, k, &w, n, &vec![0.0; n]);
        let xt: Vec<f32> = (0..k * m).map(|i| x[(i % m) * k + i / m]).collect();
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        // (a, a_rs, a_cs) x (b, b_rs, b_cs): element (i, kk) of a, (kk, j) of b.
        let lhs = [(&x, k, 1), (&xt, 1, m)];
        let rhs = [(&w, 1, k), (&wt, n, 1)];
        for (a, a_rs, a_cs) in lhs {
            for (b, b_rs, b_cs) in rhs {
                for threads in [1, 2, 3] {
                    let mut got = vec![f32::NAN; m * n];
                    // SAFETY: the operands hold the shapes and strides given.
                    let done = unsafe {
                        dnnl::sgemm(
                            m,
                            n,
                            k,
                            got.as_mut_ptr(),
                            n,
                            a.as_ptr(),
                            a_rs,
                            a_cs,
                            b.as_ptr(),
                            b_rs,
                            b_cs,
                            threads,
                        )
                    };
                    assert!(done, "oneDNN refused a_cs {a_cs}, b_cs {b_cs}");
                    for i in 0..m * n {
                        assert!(
                            (got[i] - want[i]).abs() < 1e-3,
                            "{m}x{k}x{n}: a_cs {a_cs} b_cs {b_cs} threads {threads} at {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn few_rows_split_across_threads_match_a_naive_product() {
        // Two weight ranges of 100 rows, a last tile of 22 columns, row groups of 8 and 3.
        let (k, n) = (200, 150);
        for m in [1, 2, 5, 8, 11] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 5 % 23) as f32 - 11.0) / 9.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
                .collect();
            let want = naive(&x, m, k, &w, n, &vec![0.0; n]);
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            for threads in [1, 2, 3] {
                let got = few_rows(
                    &x,
                    m,
                    k,
                    |x, i0, i1, y| simd::accumulate_rows(x, m, k, &wt, n, i0, i1, y),
                    n,
                    None,
                    Activation::None,
                    None,
                    threads,
                );
                for i in 0..m * n {
                    assert!(
                        (got[i] - want[i]).abs() < 1e-3,
                        "m {m} threads {threads} at {i}"
                    );
                }
                // The same weights rounded to bf16 give the product of the rounded weights.
                let bits: Vec<u16> = wt.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
                let rounded: Vec<f32> = (0..n * k)
                    .map(|i| f32::from_bits((w[i].to_bits() >> 16) << 16))
                    .collect();
                let want16 = naive(&x, m, k, &rounded, n, &vec![0.0; n]);
                let got = few_rows(
                    &x,
                    m,
                    k,
                    |x, i0, i1, y| simd::accumulate_rows_bf16(x, m, k, &bits, n, i0, i1, y),
                    n,
                    None,
                    Activation::None,
                    None,
                    threads,
                );
                for i in 0..m * n {
                    assert!((got[i] - want16[i]).abs() < 1e-3, "bf16 m {m} at {i}");
                }
            }
        }
    }

    /// Many rows with a compact weight: widening computes the f32 product of the rounded
    /// weight; the dispatching `linear_bf16` computes that of the rounded weight and rounded
    /// inputs where the CPU has bf16 dot products (and the widening product elsewhere), with
    /// its bias, activation and residual.
    #[test]
    fn compact_weights_of_many_rows_match_rounded_products() {
        let (m, k, n) = (20, 70, 45);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 19) as f32 - 9.0) / 7.0 + 1e-3)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 3 % 17) as f32 - 8.0) / 9.0 + 1e-3)
            .collect();
        let b: Vec<f32> = (0..n).map(|j| j as f32 / 10.0).collect();
        let res: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32).collect();
        let round = |v: &f32| half::bf16::from_f32(*v);
        let bits: Vec<u16> = (0..k * n)
            .map(|i| round(&w[(i % n) * k + i / n]).to_bits())
            .collect();
        let rw: Vec<f32> = w.iter().map(|v| round(v).to_f32()).collect();
        let rx: Vec<f32> = x.iter().map(|v| round(v).to_f32()).collect();
        let wide = naive(&x, m, k, &rw, n, &b);
        let got = linear_bf16_widening(&x, m, k, &bits, n, Some(&b), Activation::None, Some(&res));
        for i in 0..m * n {
            assert!((got[i] - wide[i] - res[i]).abs() < 1e-4, "widening at {i}");
        }
        let want = if super::super::bf16_dots::available() {
            naive(&rx, m, k, &rw, n, &b)
        } else {
            wide
        };
        let got = linear_bf16(&x, m, k, &bits, n, Some(&b), Activation::None, Some(&res));
        for i in 0..m * n {
            assert!((got[i] - want[i] - res[i]).abs() < 1e-4, "dispatch at {i}");
        }
    }
}
