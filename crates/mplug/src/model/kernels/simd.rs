//! Vector loops with run-time CPU dispatch: each kernel is written once as plain Rust over
//! fixed-width lane arrays, and compiled three times, for AVX-512, for AVX2 + FMA, and for the
//! baseline target, choosing at run time by what the CPU reports. The shipped binary therefore
//! runs on any x86-64 (and any other target, through the baseline copy) without
//! `-C target-cpu=native`, and uses the widest vectors the machine has.
//!
//! Why by hand: candle 0.11 vectorizes its elementwise kernels only when the crate itself is
//! compiled with `target_feature = "avx2"`, computes `exp` one scalar at a time in softmax and
//! GELU, and makes a pass over memory per operation. These loops fuse what follows a matrix
//! product (bias, activation, residual, softmax) into one pass over data still in cache.

/// Lanes of the accumulator arrays: one AVX-512 register, two AVX2 registers.
pub const LANES: usize = 16;

/// Defines `pub fn $name(...)` that runs `$body` compiled for the best instruction set found
/// at run time (checked once and cached by the standard library's feature detection).
macro_rules! multiversion {
    // `=> body::<FMA>`: the body takes `const FMA: bool`, true in the copies for CPUs with fused
    // multiply-add (where `f32::mul_add` is one instruction; elsewhere it is a library call).
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident::<FMA>) => {
        multiversion!(@define [$(#[$meta])*] $name ($($arg: $ty),*) ($($ret)?) $body::<true>, $body::<false>);
    };
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident) => {
        multiversion!(@define [$(#[$meta])*] $name ($($arg: $ty),*) ($($ret)?) $body, $body);
    };
    (@define [$($meta:tt)*] $name:ident ($($arg:ident: $ty:ty),*) ($($ret:ty)?) $fast:path, $base:path) => {
        $($meta)*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { $fast($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { $fast($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has the features the copy was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $base($($arg),*)
        }
    };
}

/// `e^x` in f32 for every lane, to within 2 ulp over the range softmax and GELU use
/// (Cephes' `expf`: `2^n * e^r` with `|r| <= ln2/2`, a degree-6 polynomial for `e^r`), written
/// without branches so that it vectorizes. Inputs below -87.3 give 0, above 88.7 give infinity.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.722_83);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let e = p * r2 + r + 1.0;
    // 2^n through the exponent bits; n is in [-126, 128] after the clamp, so scale in two
    // halves to stay in range at both ends.
    // The integer n read from t's bits (t = 1.5 * 2^23 + n, one unit per ulp): a float-to-int
    // `as` cast would saturate and check for NaN lane by lane, which stops vectorization.
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let half = n >> 1;
    let s1 = f32::from_bits(((half + 127) as u32) << 23);
    let s2 = f32::from_bits(((n - half + 127) as u32) << 23);
    e * s1 * s2
}

/// `erf(x)`, absolute error below 1.5e-7 (Abramowitz and Stegun 7.1.26), branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let y = 1.0 - (((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t) * exp(-a * a);
    y.copysign(x)
}

/// Which function follows a matrix product, applied in the same pass as its bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Nothing.
    None,
    /// BERT's exact GELU, `x/2 (1 + erf(x / sqrt 2))`.
    GeluErf,
    /// CLIP's QuickGELU, `x sigmoid(1.702 x)`.
    QuickGelu,
}

#[inline(always)]
fn activate(x: f32, act: Activation) -> f32 {
    match act {
        Activation::None => x,
        Activation::GeluErf => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::QuickGelu => x / (1.0 + exp(-1.702 * x)),
    }
}

#[inline(always)]
fn activate_rows_impl(data: &mut [f32], act: Activation) {
    match act {
        Activation::None => {}
        Activation::GeluErf => data
            .iter_mut()
            .for_each(|x| *x = activate(*x, Activation::GeluErf)),
        Activation::QuickGelu => data
            .iter_mut()
            .for_each(|x| *x = activate(*x, Activation::QuickGelu)),
    }
}

multiversion! {
    /// Applies `act` to every element in place.
    pub fn activate_in_place(data: &mut [f32], act: Activation) => activate_rows_impl
}

/// `d act(z) / dz` at `z`.
#[inline(always)]
fn activation_slope(z: f32, act: Activation) -> f32 {
    match act {
        Activation::None => 1.0,
        Activation::GeluErf => {
            // d/dz z/2 (1 + erf(z / sqrt 2)) = (1 + erf(z / sqrt 2)) / 2 + z phi(z)
            const INV_SQRT_2PI: f32 = 0.398_942_3;
            0.5 * (1.0 + erf(z * std::f32::consts::FRAC_1_SQRT_2))
                + z * INV_SQRT_2PI * exp(-0.5 * z * z)
        }
        Activation::QuickGelu => {
            let s = 1.0 / (1.0 + exp(-1.702 * z));
            s + 1.702 * z * s * (1.0 - s)
        }
    }
}

#[inline(always)]
fn activation_grad_impl(z: &[f32], grad: &mut [f32], act: Activation) {
    match act {
        Activation::None => {}
        Activation::GeluErf => grad
            .iter_mut()
            .zip(z)
            .for_each(|(g, z)| *g *= activation_slope(*z, Activation::GeluErf)),
        Activation::QuickGelu => grad
            .iter_mut()
            .zip(z)
            .for_each(|(g, z)| *g *= activation_slope(*z, Activation::QuickGelu)),
    }
}

multiversion! {
    /// The backward pass of `act`: multiplies each gradient of `act(z)` by the slope at `z`.
    pub fn activation_grad(z: &[f32], grad: &mut [f32], act: Activation) => activation_grad_impl
}

#[inline(always)]
fn softmax_grad_impl(y: &[f32], grad: &mut [f32], width: usize) {
    for (y, g) in y.chunks_exact(width).zip(grad.chunks_exact_mut(width)) {
        let dot: f32 = y.iter().zip(g.iter()).map(|(y, g)| y * g).sum();
        g.iter_mut().zip(y).for_each(|(g, y)| *g = y * (*g - dot));
    }
}

multiversion! {
    /// The backward pass of a softmax over rows of `width`: `grad <- y (grad - sum(grad y))`
    /// for the softmax's output `y`.
    pub fn softmax_grad(y: &[f32], grad: &mut [f32], width: usize) => softmax_grad_impl
}

#[inline(always)]
fn epilogue_impl(
    rows: &mut [f32],
    width: usize,
    bias: Option<&[f32]>,
    act: Activation,
    residual: Option<&[f32]>,
) {
    for (r, row) in rows.chunks_exact_mut(width).enumerate() {
        let res = residual.map(|res| &res[r * width..(r + 1) * width]);
        match act {
            Activation::None => epilogue_row::<0>(row, bias, res),
            Activation::GeluErf => epilogue_row::<1>(row, bias, res),
            Activation::QuickGelu => epilogue_row::<2>(row, bias, res),
        }
    }
}

/// One row of [`epilogue`] in one pass: `act(y + bias) + residual` per cell, the activation
/// chosen by `ACT` (0 none, 1 GELU, 2 QuickGELU) so that each combination is its own loop.
#[inline(always)]
fn epilogue_row<const ACT: u8>(row: &mut [f32], bias: Option<&[f32]>, res: Option<&[f32]>) {
    let act = |v: f32| match ACT {
        0 => v,
        1 => activate(v, Activation::GeluErf),
        _ => activate(v, Activation::QuickGelu),
    };
    match (bias, res) {
        (Some(b), Some(r)) => row
            .iter_mut()
            .zip(b)
            .zip(r)
            .for_each(|((y, b), r)| *y = act(*y + *b) + *r),
        (Some(b), None) => row.iter_mut().zip(b).for_each(|(y, b)| *y = act(*y + *b)),
        (None, Some(r)) => row.iter_mut().zip(r).for_each(|(y, r)| *y = act(*y) + *r),
        (None, None) => row.iter_mut().for_each(|y| *y = act(*y)),
    }
}

multiversion! {
    /// What follows a matrix product, in one pass over each row of `width`: `act(y + bias) +
    /// residual` (`residual` holds the same rows as `rows`).
    pub fn epilogue(rows: &mut [f32], width: usize, bias: Option<&[f32]>, act: Activation, residual: Option<&[f32]>) => epilogue_impl
}

#[inline(always)]
fn layer_norm_rows_impl(x: &[f32], y: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let width = gamma.len();
    for (y, x) in y.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
        let mean = sum_of(x) / width as f32;
        let mut acc = [0f32; LANES];
        let body = width / LANES * LANES;
        for c in x[..body].chunks_exact(LANES) {
            for j in 0..LANES {
                let d = c[j] - mean;
                acc[j] += d * d;
            }
        }
        let var = acc
            .iter()
            .copied()
            .chain(x[body..].iter().map(|v| (v - mean) * (v - mean)))
            .sum::<f32>()
            / width as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((y, x), g), b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
            *y = (x - mean) * rstd * g + b;
        }
    }
}

multiversion! {
    /// LayerNorm of each row of `x` (rows as wide as `gamma`) into `y`: `(x - mean) / sqrt(var +
    /// eps) * gamma + beta`, the variance over the deviations from the mean (two passes, as
    /// PyTorch computes it), the sums in `LANES` partial sums.
    ///
    /// Why by hand: candle's CPU LayerNorm sums each row in one sequential chain (a dependent
    /// add per element), 1-2 % of the visual tower's time.
    pub fn layer_norm_rows(x: &[f32], y: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) => layer_norm_rows_impl
}

/// Maximum with `LANES` independent partial maxima (a sequential fold does not vectorize).
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let body = x.len() / LANES * LANES;
    for c in x[..body].chunks_exact(LANES) {
        for j in 0..LANES {
            acc[j] = acc[j].max(c[j]);
        }
    }
    let mut m = f32::NEG_INFINITY;
    for v in acc.iter().chain(&x[body..]) {
        m = m.max(*v);
    }
    m
}

/// Sum with `LANES` independent partial sums.
#[inline(always)]
fn sum_of(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let body = x.len() / LANES * LANES;
    for c in x[..body].chunks_exact(LANES) {
        for j in 0..LANES {
            acc[j] += c[j];
        }
    }
    acc.iter().chain(&x[body..]).sum()
}

#[inline(always)]
fn softmax_rows_impl(
    scores: &mut [f32],
    width: usize,
    scale: f32,
    mask: &dyn Fn(usize) -> Option<(*const f32, isize)>,
) {
    for (r, row) in scores.chunks_exact_mut(width).enumerate() {
        match mask(r) {
            Some((ptr, 1)) => {
                // SAFETY: the caller gives a row of `width` readable values.
                let m = unsafe { std::slice::from_raw_parts(ptr, width) };
                row.iter_mut()
                    .zip(m)
                    .for_each(|(s, m)| *s = *s * scale + *m);
            }
            Some((ptr, 0)) => {
                // SAFETY: one value broadcast over the row.
                let m = unsafe { *ptr };
                row.iter_mut().for_each(|s| *s = *s * scale + m);
            }
            Some((ptr, stride)) => {
                for (c, s) in row.iter_mut().enumerate() {
                    // SAFETY: as above, with the given stride.
                    *s = *s * scale + unsafe { *ptr.offset(c as isize * stride) };
                }
            }
            None => row.iter_mut().for_each(|s| *s *= scale),
        }
        let max = max_of(row);
        row.iter_mut().for_each(|s| *s = exp(*s - max));
        let inv = 1.0 / sum_of(row);
        row.iter_mut().for_each(|s| *s *= inv);
    }
}

multiversion! {
    /// For each row of `width` scores: scale, add the row's mask (pointer and stride, `None`
    /// for none), softmax in place.
    pub fn softmax_rows(scores: &mut [f32], width: usize, scale: f32, mask: &dyn Fn(usize) -> Option<(*const f32, isize)>) => softmax_rows_impl
}

/// An element of a weight matrix as the few-row kernel reads it: f32, or bf16 kept as its bits
/// (a bf16 is the top half of an f32, so widening it is a shift that vectorizes).
pub trait WeightElem: Copy + Send + Sync {
    /// The value as f32.
    fn widen(self) -> f32;
}

impl WeightElem for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

/// bf16 bits.
impl WeightElem for u16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits((self as u32) << 16)
    }
}

/// Columns of one tile of the few-row kernel: four AVX-512 registers per row of `x`.
const TILE: usize = 64;
/// Rows of the weight matrix read together, as four sequential streams.
const DEPTH: usize = 4;
/// How far ahead in a weight row [`tile`] prefetches, in elements (eight tiles of f32).
const PREFETCH: usize = 512;

/// How far ahead of a weight tile [`tile`] asks for memory, in elements: the same columns of the
/// next group of `DEPTH` rows (the tile read one pass over the row group later), which for
/// rows of a few thousand columns is tens of kilobytes ahead, inside L2; for longer rows (the
/// vocabulary head) `PREFETCH` further along the same row.
#[inline(always)]
fn prefetch_distance(n: usize) -> usize {
    if DEPTH * n <= 64 * 1024 {
        DEPTH * n
    } else {
        PREFETCH
    }
}

/// `y[r][j0..j0 + W] += sum over i in is of x[r][i] * w[i][j0..j0 + W]` for `R` rows, with the
/// accumulators in registers (`R * W / 16` of them), each weight row's part `PREFETCH` elements
/// ahead asked for from memory (the hardware prefetcher alone left the loads waiting).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<const R: usize, const W: usize, const FMA: bool, E: WeightElem>(
    x: &[f32],
    k: usize,
    w: &[E],
    n: usize,
    is: std::ops::Range<usize>,
    j0: usize,
    y: &mut [f32],
) {
    let mut acc = [[0f32; W]; R];
    for (r, a) in acc.iter_mut().enumerate() {
        a.copy_from_slice(&y[r * n + j0..r * n + j0 + W]);
    }
    for i in is {
        let row = &w[i * n + j0..i * n + j0 + W];
        #[cfg(target_arch = "x86_64")]
        {
            let ahead = row.as_ptr().wrapping_add(prefetch_distance(n)) as *const i8;
            for line in (0..W * std::mem::size_of::<E>()).step_by(64) {
                // SAFETY: SSE is part of x86-64's baseline, and a prefetch of any address is
                // harmless (the pointer is never dereferenced).
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        ahead.wrapping_add(line),
                    )
                };
            }
        }
        // Widened once for all rows (for bf16 the widening, redone per row, made the kernel
        // compute-bound: 14 GB/s of bf16 bits against 22 of f32).
        let wide: [f32; W] = std::array::from_fn(|j| row[j].widen());
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = x[r * k + i];
            for (a, v) in a.iter_mut().zip(&wide) {
                *a = if FMA {
                    xv.mul_add(*v, *a)
                } else {
                    *a + xv * *v
                };
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        y[r * n + j0..r * n + j0 + W].copy_from_slice(a);
    }
}

/// As [`tile`] for a last tile narrower than [`TILE`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_tail<const R: usize, E: WeightElem>(
    x: &[f32],
    k: usize,
    w: &[E],
    n: usize,
    is: std::ops::Range<usize>,
    j0: usize,
    y: &mut [f32],
) {
    let width = n - j0;
    for i in is {
        let row = &w[i * n + j0..i * n + n];
        for r in 0..R {
            let xv = x[r * k + i];
            let out = &mut y[r * n + j0..r * n + n];
            for (o, v) in out.iter_mut().zip(row).take(width) {
                *o += xv * v.widen();
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate_group<const R: usize, const FMA: bool, E: WeightElem>(
    x: &[f32],
    k: usize,
    w: &[E],
    n: usize,
    i0: usize,
    i1: usize,
    y: &mut [f32],
) {
    let mut i = i0;
    while i < i1 {
        let is = i..(i + DEPTH).min(i1);
        let mut j0 = 0;
        while j0 + TILE <= n {
            tile::<R, TILE, FMA, E>(x, k, w, n, is.clone(), j0, y);
            j0 += TILE;
        }
        if j0 < n {
            tile_tail::<R, E>(x, k, w, n, is, j0, y);
        }
        i += DEPTH;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate_rows_impl<const FMA: bool, E: WeightElem>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[E],
    n: usize,
    i0: usize,
    i1: usize,
    y: &mut [f32],
) {
    // Groups of up to eight rows of `x`, each reading its slice of `w` once.
    let mut r0 = 0;
    while r0 < m {
        let g = (m - r0).min(8);
        let (xs, ys) = (&x[r0 * k..], &mut y[r0 * n..]);
        match g {
            1 => accumulate_group::<1, FMA, E>(xs, k, w, n, i0, i1, ys),
            2 => accumulate_group::<2, FMA, E>(xs, k, w, n, i0, i1, ys),
            3 => accumulate_group::<3, FMA, E>(xs, k, w, n, i0, i1, ys),
            4 => accumulate_group::<4, FMA, E>(xs, k, w, n, i0, i1, ys),
            5 => accumulate_group::<5, FMA, E>(xs, k, w, n, i0, i1, ys),
            6 => accumulate_group::<6, FMA, E>(xs, k, w, n, i0, i1, ys),
            7 => accumulate_group::<7, FMA, E>(xs, k, w, n, i0, i1, ys),
            _ => accumulate_group::<8, FMA, E>(xs, k, w, n, i0, i1, ys),
        }
        r0 += g;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate_rows_f32_impl<const FMA: bool>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    i0: usize,
    i1: usize,
    y: &mut [f32],
) {
    accumulate_rows_impl::<FMA, _>(x, m, k, w, n, i0, i1, y)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate_rows_bf16_impl<const FMA: bool>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u16],
    n: usize,
    i0: usize,
    i1: usize,
    y: &mut [f32],
) {
    accumulate_rows_impl::<FMA, _>(x, m, k, w, n, i0, i1, y)
}

multiversion! {
    /// The few-row product of decoding (a handful of beams through a large weight matrix):
    /// `y (m, n) += x[:, i0..i1] @ w[i0..i1, :]` for `x (m, k)` and `w (k, n)` row-major.
    ///
    /// Why by hand: at five rows the product is bound by reading `w` from memory, and `gemm`
    /// packs and walks it in blocks meant for large products (9.4 GB/s over a decoder's 400 MB
    /// of weights, two threads, `examples/kernel_speed.rs`). This loop reads `DEPTH`
    /// consecutive rows of `w` as sequential streams with software prefetch and fused
    /// multiply-adds, and keeps each tile of `y` in registers (15.8 GB/s, the same example):
    /// callers split `i0..i1` across threads, so each thread streams its own contiguous part.
    #[allow(clippy::too_many_arguments)]
    pub fn accumulate_rows(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, i0: usize, i1: usize, y: &mut [f32]) => accumulate_rows_f32_impl::<FMA>
}

multiversion! {
    /// [`accumulate_rows`] with weights held as bf16 bits (half the bytes to read).
    #[allow(clippy::too_many_arguments)]
    pub fn accumulate_rows_bf16(x: &[f32], m: usize, k: usize, w: &[u16], n: usize, i0: usize, i1: usize, y: &mut [f32]) => accumulate_rows_bf16_impl::<FMA>
}

/// `out (R, W) = x (R, k) @ panel (k, W)` with the `R x W` sums in registers over all `k`
/// inputs, taken in order (see [`super::panels`]).
#[inline(always)]
fn panel_rows<const R: usize, const W: usize, const FMA: bool>(
    x: &[f32],
    k: usize,
    weights: impl Fn(usize) -> [f32; W],
    out: &mut [f32],
) {
    let xs: [&[f32]; R] = std::array::from_fn(|r| &x[r * k..(r + 1) * k]);
    let mut acc = [[0f32; W]; R];
    for i in 0..k {
        let wide = weights(i);
        for (a, xr) in acc.iter_mut().zip(&xs) {
            let xv = xr[i];
            for (a, v) in a.iter_mut().zip(&wide) {
                *a = if FMA {
                    xv.mul_add(*v, *a)
                } else {
                    *a + xv * *v
                };
            }
        }
    }
    for (o, a) in out.chunks_exact_mut(W).zip(&acc) {
        o.copy_from_slice(a);
    }
}

const PANEL: usize = super::panels::WIDTH;

#[inline(always)]
fn panel_tile_impl<const FMA: bool>(
    x: &[f32],
    k: usize,
    rows: usize,
    weights: impl Fn(usize) -> [f32; PANEL],
    out: &mut [f32],
) {
    match rows {
        1 => panel_rows::<1, PANEL, FMA>(x, k, weights, out),
        2 => panel_rows::<2, PANEL, FMA>(x, k, weights, out),
        3 => panel_rows::<3, PANEL, FMA>(x, k, weights, out),
        4 => panel_rows::<4, PANEL, FMA>(x, k, weights, out),
        5 => panel_rows::<5, PANEL, FMA>(x, k, weights, out),
        _ => panel_rows::<6, PANEL, FMA>(x, k, weights, out),
    }
}

#[inline(always)]
fn panel_tile_f32_impl<const FMA: bool>(
    x: &[f32],
    k: usize,
    rows: usize,
    panel: &[f32],
    out: &mut [f32],
) {
    let panel = &panel[..k * PANEL];
    panel_tile_impl::<FMA>(
        x,
        k,
        rows,
        |i| std::array::from_fn(|j| panel[i * PANEL + j]),
        out,
    )
}

#[inline(always)]
fn panel_tile_bf16_impl<const FMA: bool>(
    x: &[f32],
    k: usize,
    rows: usize,
    panel: &[u16],
    out: &mut [f32],
) {
    let panel = &panel[..k.div_ceil(2) * PANEL * 2];
    let weights = |i: usize| {
        let pair = &panel[i / 2 * PANEL * 2..(i / 2 + 1) * PANEL * 2];
        std::array::from_fn(|j| pair[2 * j + i % 2].widen())
    };
    panel_tile_impl::<FMA>(x, k, rows, weights, out)
}

multiversion! {
    /// One panel of [`super::panels`] times up to [`super::panels::GROUP`] rows:
    /// `out (rows, WIDTH) = x (rows, k) @ panel (k, WIDTH)`.
    pub fn panel_tile(x: &[f32], k: usize, rows: usize, panel: &[f32], out: &mut [f32]) => panel_tile_f32_impl::<FMA>
}

multiversion! {
    /// [`panel_tile`] with a compact panel: bf16 bits in pairs of inputs, `(k / 2, WIDTH, 2)`.
    pub fn panel_tile_bf16(x: &[f32], k: usize, rows: usize, panel: &[u16], out: &mut [f32]) => panel_tile_bf16_impl::<FMA>
}

#[inline(always)]
fn widen_bf16_impl(bits: &[u16], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bits) {
        *o = b.widen();
    }
}

multiversion! {
    /// bf16 bits to f32 (`out` as long as `bits`).
    pub fn widen_bf16(bits: &[u16], out: &mut [f32]) => widen_bf16_impl
}

/// The scalars of one AdamW update (see `train::optim`), in f32 as candle applies them.
#[derive(Debug, Clone, Copy)]
pub struct AdamWScalars {
    /// `1 - lr * weight_decay`, or `None` for a parameter without decay.
    pub decay: Option<f32>,
    /// `1 - beta1`.
    pub one_minus_beta1: f32,
    /// `1 - beta2`.
    pub one_minus_beta2: f32,
    /// `beta1`.
    pub beta1: f32,
    /// `beta2`.
    pub beta2: f32,
    /// `1 / sqrt(1 - beta2^t)`.
    pub inv_bias2_sqrt: f32,
    /// Adam's epsilon.
    pub eps: f32,
    /// `lr / (1 - beta1^t)`.
    pub step: f32,
}

impl AdamWScalars {
    /// One element: `(theta, m, v)` after the update. Each operation is the one candle's
    /// composed update performs, in the same order and type (`x * a + b` for a scalar, the
    /// `+ 0.0` included: it turns -0 into +0), so both give the same bits.
    #[inline(always)]
    pub fn apply(&self, theta: f32, g: f32, m: f32, v: f32, first: bool) -> (f32, f32, f32) {
        let theta = match self.decay {
            Some(d) => theta * d + 0.0,
            None => theta,
        };
        let g_m = g * self.one_minus_beta1 + 0.0;
        let g_v = (g * g) * self.one_minus_beta2 + 0.0;
        let (m, v) = if first {
            (g_m, g_v)
        } else {
            ((m * self.beta1 + 0.0) + g_m, (v * self.beta2 + 0.0) + g_v)
        };
        let denom = (v.sqrt() * self.inv_bias2_sqrt + 0.0) * 1.0 + self.eps;
        let update = (m / denom) * self.step + 0.0;
        (theta - update, m, v)
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn adamw_impl(
    c: &AdamWScalars,
    theta: &[f32],
    g: &[f32],
    m: Option<(&[f32], &[f32])>,
    out_theta: &mut [f32],
    out_m: &mut [f32],
    out_v: &mut [f32],
) {
    let outs = out_theta
        .iter_mut()
        .zip(out_m.iter_mut())
        .zip(out_v.iter_mut());
    match m {
        Some((m, v)) => {
            for ((((ot, om), ov), (t, g)), (m, v)) in
                outs.zip(theta.iter().zip(g)).zip(m.iter().zip(v))
            {
                (*ot, *om, *ov) = c.apply(*t, *g, *m, *v, false);
            }
        }
        None => {
            for (((ot, om), ov), (t, g)) in outs.zip(theta.iter().zip(g)) {
                (*ot, *om, *ov) = c.apply(*t, *g, 0.0, 0.0, true);
            }
        }
    }
}

#[inline(always)]
fn adamw_in_place_impl(
    c: &AdamWScalars,
    theta: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    for (((t, g), m), v) in theta.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        (*t, *m, *v) = c.apply(*t, *g, *m, *v, false);
    }
}

multiversion! {
    /// AdamW over a run of elements after the first step, writing the parameters `theta` and
    /// moments `m`, `v` where they are (the same values as [`adamw`] with moments).
    pub fn adamw_in_place(c: &AdamWScalars, theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) => adamw_in_place_impl
}

multiversion! {
    /// AdamW over a run of elements: parameters `theta`, gradients `g`, moments `m` (`None` on
    /// the first step) into the three outputs.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(c: &AdamWScalars, theta: &[f32], g: &[f32], m: Option<(&[f32], &[f32])>, out_theta: &mut [f32], out_m: &mut [f32], out_v: &mut [f32]) => adamw_impl
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination of bias, activation and residual gives, cell by cell, the bits of
    /// `act(y + bias) + residual` computed one value at a time, on rows with a tail past the
    /// vector lanes. Fails if a combination skips, repeats or reorders a step, or reads the
    /// wrong row of the residual.
    #[test]
    fn epilogue_is_bias_then_activation_then_residual() {
        let (rows, width) = (3, 37);
        let y: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 5.0)
            .collect();
        let bias: Vec<f32> = (0..width).map(|j| (j % 7) as f32 / 4.0 - 0.7).collect();
        let res: Vec<f32> = (0..rows * width).map(|i| (i % 11) as f32 - 5.0).collect();
        for act in [Activation::None, Activation::GeluErf, Activation::QuickGelu] {
            for b in [None, Some(bias.as_slice())] {
                for r in [None, Some(res.as_slice())] {
                    let mut got = y.clone();
                    epilogue(&mut got, width, b, act, r);
                    for (i, got) in got.iter().enumerate() {
                        let mut want = y[i];
                        if let Some(b) = b {
                            want += b[i % width];
                        }
                        want = activate(want, act);
                        if let Some(r) = r {
                            want += r[i];
                        }
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{act:?} bias {} residual {} at {i}",
                            b.is_some(),
                            r.is_some()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn exp_matches_the_standard_library() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        // Far below the range: the smallest normal value's order, as good as 0 in a softmax.
        assert!(exp(-200.0) < 1e-37 && exp(-200.0) >= 0.0);
    }

    #[test]
    fn erf_is_within_its_bound() {
        // Reference values of erf from a table (Abramowitz and Stegun, table 7.1).
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.1, 0.112_462_92),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (-1.0, -0.842_700_8),
            (4.0, 0.999_999_98),
        ] {
            assert!(
                (erf(x) - want).abs() < 3e-7,
                "erf({x}) = {} want {want}",
                erf(x)
            );
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_mask() {
        let mut s = vec![1.0f32, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5];
        let mask = [0.0f32, 0.0, -10000.0, 0.0];
        softmax_rows(&mut s, 4, 2.0, &|r| (r == 1).then_some((mask.as_ptr(), 1)));
        let e: Vec<f32> = [2.0f32, 4.0, 6.0, 8.0]
            .iter()
            .map(|v| (v - 8.0).exp())
            .collect();
        let z: f32 = e.iter().sum();
        for c in 0..4 {
            assert!((s[c] - e[c] / z).abs() < 1e-6);
        }
        assert!((s[4] - 1.0 / 3.0).abs() < 1e-6 && s[6] < 1e-30);
    }
}
