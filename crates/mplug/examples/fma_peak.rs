//! The machine's f32 peak: independent AVX-512 fused multiply-adds (24 accumulators, enough to
//! hide their latency) on each of 1 and `RAYON_NUM_THREADS` (default 2) threads, in GFLOP/s.
//! The ceiling the matrix kernels' figures (`examples/kernel_speed`) are read against. Then the
//! same for bf16 dot products and, for int8 weights, AVX512-VNNI byte dot products (integer
//! operations counted as FLOPs are: a multiply and an add each).
//! `cargo run --release -p mplug --example fma_peak`.

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fmas(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 24];
    let (a, b) = (_mm512_set1_ps(1.000_000_1), _mm512_set1_ps(0.999_999_9));
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let mut sum = _mm512_set1_ps(0.0);
    for x in acc {
        sum = _mm512_add_ps(sum, x);
    }
    _mm512_reduce_add_ps(sum)
}

/// The same with bf16 pair dot products (`vdpbf16ps`: per lane two bf16 products added to an f32
/// accumulator, 64 FLOPs an instruction against the FMA's 32).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn bf16_dots(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 24];
    let a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1.0), _mm512_set1_ps(0.5));
    let b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-9), _mm512_set1_ps(-1e-9));
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_dpbf16_ps(*x, a, b);
        }
    }
    let mut sum = _mm512_set1_ps(0.0);
    for x in acc {
        sum = _mm512_add_ps(sum, x);
    }
    _mm512_reduce_add_ps(sum)
}

/// The same with byte dot products (`vpdpbusd`: per lane four u8 x s8 products added to an i32
/// accumulator, 128 operations an instruction).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
fn byte_dots(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_si512(); 24];
    let (a, b) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-1));
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_dpbusd_epi32(*x, a, b);
        }
    }
    let mut sum = _mm512_setzero_si512();
    for x in acc {
        sum = _mm512_add_epi32(sum, x);
    }
    _mm512_reduce_add_epi32(sum) as f32
}

#[cfg(target_arch = "x86_64")]
fn main() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        println!("this CPU has no AVX-512");
        return;
    }
    let most: usize = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    // SAFETY: AVX-512F is present (checked above).
    peak(most, "f32 FMA", 16.0 * 2.0, || unsafe { fmas(ITERS) });
    if !std::arch::is_x86_feature_detected!("avx512bf16") {
        println!("this CPU has no AVX-512 bf16 dot products");
        return;
    }
    // SAFETY: AVX-512F and AVX512-BF16 are present (checked above).
    peak(most, "bf16 dot products", 32.0 * 2.0, || unsafe {
        bf16_dots(ITERS)
    });
    if !std::arch::is_x86_feature_detected!("avx512vnni") {
        println!("this CPU has no AVX512-VNNI byte dot products");
        return;
    }
    // SAFETY: AVX-512F and AVX512-VNNI are present (checked above).
    peak(most, "int8 dot products", 64.0 * 2.0, || unsafe {
        byte_dots(ITERS)
    });
}

/// Iterations of each thread's loop of 24 instructions.
#[cfg(target_arch = "x86_64")]
const ITERS: u64 = 100_000_000;

/// Runs `kernel` on 1 and on `most` threads at once and prints GFLOP/s, counting 24 instructions
/// of `flops` each per iteration.
#[cfg(target_arch = "x86_64")]
fn peak(most: usize, what: &str, flops: f64, kernel: fn() -> f32) {
    for threads in [1, most] {
        let start = std::time::Instant::now();
        let runs: Vec<_> = (0..threads).map(|_| std::thread::spawn(kernel)).collect();
        let total: f32 = runs.into_iter().map(|r| r.join().expect("thread")).sum();
        let all = ITERS as f64 * 24.0 * flops * threads as f64;
        println!(
            "{threads} thread(s): {:.1} GFLOP/s of {what} (checksum {total:e})",
            all / start.elapsed().as_secs_f64() / 1e9
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("fma_peak measures AVX-512 on x86-64 only");
}
