//! Fast CPU kernels for inference in f32, under the model's layers.
//!
//! The model code calls candle's operations everywhere; where every input is an f32 CPU
//! tensor that needs no gradient (a loaded checkpoint at inference), [`super::ops`] and
//! [`super::attention`] send the hot operations here instead: linear layers with their bias,
//! activation and residual applied in one pass ([`linear`]), and fused multi-head attention
//! reading the projections in place ([`attention`]). Layers built with reduced-precision
//! weights multiply in [`bf16_dots`] (compact bf16 weights) or [`int8_dots`] (int8 weights).
//! Training, other dtypes and other devices keep candle's differentiable operations, which
//! compute the same values up to rounding.
//!
//! Setting `MPLUG_CANDLE_OPS=1` turns these kernels off (to compare, or to profile candle's
//! path); the results agree within the golden tolerances either way.

pub mod attention;
pub mod bf16_dots;
pub mod grad;
pub mod int8_dots;
pub mod matmul;
pub mod panels;
pub mod simd;

pub use simd::Activation;

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use half::slice::HalfFloatSliceExt;
use std::sync::OnceLock;

/// Makes the C allocator keep and reuse freed memory up to glibc's largest threshold (32 MiB
/// blocks) instead of returning each large buffer to the system and taking fresh, zeroed pages
/// for the next: every layer's output is such a buffer, and the page faults of fresh ones cost
/// as much as the elementwise work on them. Process-wide, so the library never calls it: the
/// `mplug` binary does at start, and so may any program that runs the model. A no-op outside
/// glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before heavy allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Runs `f` on a thread of rayon's global pool (the pool candle's and these kernels' parallel
/// loops run on) while the calling thread sleeps; on a pool thread already, runs it in place.
/// Inference entry points ([`crate::Pipeline`]'s methods, beam search) go through it.
///
/// Why: a parallel loop called from a thread outside the pool hands its work to the pool's
/// threads and waits, and between loops those threads spin, looking for work, beside the
/// caller's own serial work: one thread more than there are cores, all busy. From a pool
/// thread the caller is one of the loop's workers and nothing spins beside it. A decoding
/// step of the base decoder (five beams) took 26.0-26.9 ms on the pool against 30.5-31.9 from
/// outside, in turns in one process on this project's 2-core machine; the base tower 0.400-0.408
/// s against 0.413-0.414.
///
/// Only for work that waits on nothing but the pool: a closure that blocks on another thread
/// which itself needs the pool would wait forever when the pool has one thread.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // From outside the pool, `join` queues both halves on a pool thread and sleeps until
    // they are done.
    rayon::join(f, || ()).0
}

/// Makes the current thread, and every thread it creates afterwards (threads inherit the
/// floating-point environment on Linux), treat denormal floats (magnitudes below 1.2e-38) as
/// zero, inputs and results alike (x86's FTZ and DAZ bits, aarch64's FZ), as TensorFlow does
/// by default. Process-wide, so the library never calls it: the `mplug` binary does at start,
/// before any other thread exists (rayon's pool, candle's, the trainer's), so that every
/// thread computes alike: a result must not depend on which thread, or how many, computed it
/// (data-parallel training makes the serial update's bits).
///
/// Why: each arithmetic operation on a denormal takes a microcode assist of about a hundred
/// cycles. A caption fine-tuning step of a base model with random weights carries gradients
/// that small through the decoder, and its backward pass took 2.1 s instead of 0.8 s. A value
/// that small changes no result the golden tolerances can see.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads the SSE control register into a local and writes it back with the FTZ
    // (bit 15) and DAZ (bit 6) bits set; every x86-64 CPU has SSE2 and both bits.
    unsafe {
        let mut csr: u32 = 0;
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
        csr |= (1 << 15) | (1 << 6);
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: sets the FZ bit (24) of the floating-point control register.
    unsafe {
        let mut fpcr: u64;
        std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack));
        fpcr |= 1 << 24;
        std::arch::asm!("msr fpcr, {}", in(reg) fpcr, options(nomem, nostack));
    }
}

/// Bytes of a huge page (x86-64's and aarch64's usual 2 MiB).
const HUGE_PAGE: usize = 2 << 20;

/// A weight `(n, k)` stored transposed for the matrix products: `(k, n)` contiguous in memory,
/// returned as its `(n, k)` view, in `dtype` (f32, or bf16 for compact weights).
///
/// The copy's pages are advised as huge pages before they are first written (Linux,
/// `MADV_HUGEPAGE`, over the whole huge pages inside the buffer; where transparent huge pages
/// are off, or the allocator hands back memory already used, the advice does nothing).
/// Decoding streams every weight from memory once per token: with 4 KiB pages every page
/// costs a TLB walk and the hardware prefetcher stops at each page boundary.
pub fn transposed_weight(weight: &Tensor, dtype: DType) -> Result<Tensor> {
    let (n, k) = weight.dims2()?;
    let values = weight.to_dtype(DType::F32)?.contiguous()?;
    // Zeroed by the allocator (calloc: fresh pages are not written), advised, then written.
    let out = match dtype {
        DType::F32 => {
            let mut buf = vec![0f32; n * k];
            advise_huge_pages(buf.as_ptr() as usize, buf.len() * 4);
            with_values(&values, |src| {
                transpose_into(&mut buf, src, n, k, |v| v);
                Ok(())
            })?;
            Tensor::from_vec(buf, (k, n), &Device::Cpu)?
        }
        DType::BF16 => {
            let mut bits = std::mem::ManuallyDrop::new(vec![0u16; n * k]);
            advise_huge_pages(bits.as_ptr() as usize, bits.len() * 2);
            with_values(&values, |src| {
                transpose_into(&mut bits, src, n, k, |v| half::bf16::from_f32(v).to_bits());
                Ok(())
            })?;
            // SAFETY: bf16 is a transparent wrapper of u16 (same size and alignment) and every
            // u16 is a valid bf16; ownership of the allocation moves to the new vector.
            let buf = unsafe {
                Vec::from_raw_parts(
                    bits.as_mut_ptr() as *mut half::bf16,
                    bits.len(),
                    bits.capacity(),
                )
            };
            Tensor::from_vec(buf, (k, n), &Device::Cpu)?
        }
        other => candle_core::bail!("transposed_weight: unsupported dtype {other:?}"),
    };
    out.t()
}

/// `dst (k, n) = convert(src (n, k))^T`, in 32 x 32 tiles so that both sides stay in cache,
/// bands of 32 rows of `dst` shared among the pool's threads (loading a model is mostly this
/// pass and the file's reading).
fn transpose_into<T: Send>(
    dst: &mut [T],
    src: &[f32],
    n: usize,
    k: usize,
    convert: impl Fn(f32) -> T + Sync,
) {
    use rayon::prelude::*;
    const TILE: usize = 32;
    if n == 0 {
        return;
    }
    dst.par_chunks_mut(TILE * n)
        .enumerate()
        .for_each(|(band, rows)| {
            let i0 = band * TILE;
            let height = rows.len() / n;
            for j0 in (0..n).step_by(TILE) {
                for j in j0..(j0 + TILE).min(n) {
                    let col = &src[j * k + i0..j * k + i0 + height];
                    for (r, &v) in col.iter().enumerate() {
                        rows[r * n + j] = convert(v);
                    }
                }
            }
        });
}

/// Advises the whole huge pages inside `bytes` bytes at `addr` as huge pages (Linux).
pub(crate) fn advise_huge_pages(addr: usize, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        let start = addr.next_multiple_of(HUGE_PAGE);
        let end = (addr + bytes) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: the range lies inside the caller's buffer; madvise only gives the
            // kernel advice about it.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (addr, bytes);
}

/// Whether the kernels are on (they are unless `MPLUG_CANDLE_OPS` is set to something other
/// than `0`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("MPLUG_CANDLE_OPS").map_or(true, |v| v == "0"))
}

/// Whether every tensor is an untracked f32 CPU tensor and the kernels are on.
pub fn applies(ts: &[&Tensor]) -> bool {
    enabled()
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op())
}

/// Whether [`linear`] reads `w` as a weight: an untracked CPU tensor in f32, or in bf16 (a
/// compact weight, see [`super::ops::with_compact_weights`]), with the kernels on.
pub fn applies_weight(w: &Tensor) -> bool {
    enabled()
        && w.device().is_cpu()
        && matches!(w.dtype(), DType::F32 | DType::BF16)
        && !w.track_op()
}

fn f32s(s: &Storage) -> Result<&[f32]> {
    match s {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(v.as_slice()),
        _ => candle_core::bail!("kernels: expected an f32 CPU tensor"),
    }
}

/// The contiguous values of `t` (an f32 CPU tensor) as a slice, viewed through `f`.
pub(crate) fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let all = f32s(&storage)?;
    let start = layout.start_offset();
    f(&all[start..start + t.elem_count()])
}

/// Runs `f` on the elements of `t` (a contiguous f32 CPU tensor) for writing, in place: every
/// tensor that shares the storage (a `Var` and the model's view of it) sees the new values.
/// Errs for any other tensor. Used where a fresh output would cost more than the work itself
/// (the optimizer's update of large parameters: fresh pages are zeroed by the kernel).
pub(crate) fn with_values_mut(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    struct InPlace<F>(std::cell::RefCell<Option<F>>);
    impl<F: FnOnce(&mut [f32]) -> Result<()>> candle_core::InplaceOp1 for InPlace<F> {
        fn name(&self) -> &'static str {
            "in-place f32 update"
        }
        fn cpu_fwd(&self, s: &mut CpuStorage, layout: &candle_core::Layout) -> Result<()> {
            let CpuStorage::F32(v) = s else {
                candle_core::bail!("in-place update: expected an f32 CPU tensor");
            };
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("in-place update: the tensor is not contiguous");
            };
            let f = self.0.borrow_mut().take().expect("applied once");
            f(&mut v[start..end])
        }
    }
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        candle_core::bail!("in-place update: expected an f32 CPU tensor");
    }
    t.inplace_op1(&InPlace(std::cell::RefCell::new(Some(f))))
}

/// [`with_values`] of an optional tensor.
fn with_optional<R>(t: Option<&Tensor>, f: impl FnOnce(Option<&[f32]>) -> Result<R>) -> Result<R> {
    match t {
        Some(t) => with_values(t, |v| f(Some(v))),
        None => f(None),
    }
}

/// `act(x W^T + b) + residual` for `x (..., in)`, `weight (out, in)`, `bias (out,)`, `residual`
/// of the output's shape: the fused form of a linear layer and what follows it.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, k) = weight.dims2()?;
    // A weight stored transposed at load ((k, n) contiguous, viewed as (n, k)) is read as is.
    let transposed = weight.t()?;
    let cols = transposed.is_contiguous() && !weight.is_contiguous();
    let values = if cols { transposed } else { weight.clone() };
    // The layout is checked after the shapes (`run_linear`).
    let product = |xs: &[f32], m, bs: Option<&[f32]>, rs: Option<&[f32]>| -> Result<Vec<f32>> {
        if values.dtype() == DType::BF16 && !cols {
            candle_core::bail!("linear: a bf16 weight must be stored transposed (see ops::Linear)");
        }
        if values.dtype() == DType::BF16 {
            let (storage, layout) = values.storage_and_layout();
            let Storage::Cpu(CpuStorage::BF16(all)) = &*storage else {
                candle_core::bail!("linear: expected a bf16 CPU weight");
            };
            let start = layout.start_offset();
            let bits: &[u16] = all[start..start + k * n].reinterpret_cast();
            return Ok(matmul::linear_bf16(xs, m, k, bits, n, bs, act, rs));
        }
        with_values(&values, |ws| {
            let ws = if cols {
                matmul::Weight::Cols(ws)
            } else {
                matmul::Weight::Rows(ws)
            };
            Ok(matmul::linear(xs, m, k, ws, n, bs, act, rs))
        })
    };
    run_linear(x, n, k, bias, residual, product)
}

/// The checks and plumbing of a fused linear layer with `n` outputs and `k` inputs: the shapes
/// of `x (..., k)`, `bias (n,)` and `residual` (the output's shape), then `product(x, m, bias,
/// residual)` on their values (`m` rows of `x`), shaped as `x` with `n` last.
fn run_linear(
    x: &Tensor,
    n: usize,
    k: usize,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    product: impl FnOnce(&[f32], usize, Option<&[f32]>, Option<&[f32]>) -> Result<Vec<f32>>,
) -> Result<Tensor> {
    let dims = x.dims();
    if dims.last() != Some(&k) {
        candle_core::bail!("linear: input {:?} for a weight of shape ({n}, {k})", dims);
    }
    let m = x.elem_count() / k.max(1);
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("non-empty") = n;
    if let Some(r) = residual {
        if r.dims() != out_dims.as_slice() {
            candle_core::bail!("linear: residual {:?}, output {:?}", r.dims(), out_dims);
        }
    }
    if let Some(b) = bias {
        if b.elem_count() != n {
            candle_core::bail!("linear: bias of {} for {n} outputs", b.elem_count());
        }
    }
    let y = with_values(x, |xs| {
        with_optional(bias, |bs| {
            with_optional(residual, |rs| product(xs, m, bs, rs))
        })
    })?;
    Tensor::from_vec(y, out_dims, &Device::Cpu)
}

/// LayerNorm over the last dimension of `x` with `gamma` and `beta` ([`simd::layer_norm_rows`],
/// rows split among the pool's threads); `None` when the operands are not untracked f32 CPU
/// tensors of matching widths (or the kernels are off).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let width = gamma.elem_count();
    if !applies(&[x, gamma, beta])
        || width == 0
        || x.dims().last() != Some(&width)
        || gamma.rank() != 1
        || beta.dims() != gamma.dims()
    {
        return Ok(None);
    }
    use rayon::prelude::*;
    let mut y = vec![0f32; x.elem_count()];
    with_values(x, |xs| {
        with_values(gamma, |g| {
            with_values(beta, |b| {
                let rows = (xs.len() / width / (matmul::threads() * 4)).max(1);
                y.par_chunks_mut(rows * width)
                    .zip(xs.par_chunks(rows * width))
                    .for_each(|(y, x)| simd::layer_norm_rows(x, y, g, b, eps as f32));
                Ok(())
            })
        })
    })?;
    Tensor::from_vec(y, x.dims(), &Device::Cpu).map(Some)
}

/// A linear layer's `(n, k)` weight as stored transposed at load ([`transposed_weight`]): its
/// contiguous `(k, n)` view with `k` and `n`; `None` for a weight of another rank or layout.
fn stored_transposed(weight: &Tensor) -> Result<Option<(Tensor, usize, usize)>> {
    if weight.rank() != 2 || weight.is_contiguous() {
        return Ok(None);
    }
    let (n, k) = weight.dims2()?;
    let transposed = weight.t()?;
    Ok(transposed.is_contiguous().then_some((transposed, k, n)))
}

/// The weight of a linear layer (`(n, k)`, stored transposed at load, f32 or compact bf16: see
/// [`super::ops::Linear::new`]) packed in [`panels::Panels`] for products of few rows; `None`
/// for any other weight (a trainable one, one on another device, the kernels off).
pub fn panels_of(weight: &Tensor) -> Result<Option<panels::Panels>> {
    if !applies_weight(weight) {
        return Ok(None);
    }
    let Some((transposed, k, n)) = stored_transposed(weight)? else {
        return Ok(None);
    };
    let (storage, layout) = transposed.storage_and_layout();
    let start = layout.start_offset();
    Ok(match &*storage {
        Storage::Cpu(CpuStorage::F32(all)) => {
            Some(panels::Panels::from_f32(&all[start..start + k * n], k, n))
        }
        Storage::Cpu(CpuStorage::BF16(all)) => {
            let bits: &[u16] = all[start..start + k * n].reinterpret_cast();
            Some(panels::Panels::from_bf16_bits(bits, k, n))
        }
        _ => None,
    })
}

/// [`linear`] with a weight in panels ([`panels_of`]).
pub fn linear_panels(
    x: &Tensor,
    weight: &panels::Panels,
    bias: Option<&Tensor>,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, k) = (weight.outputs(), weight.inputs());
    run_linear(x, n, k, bias, residual, |xs, m, bs, rs| {
        Ok(panels::product(
            xs,
            m,
            weight,
            bs,
            act,
            rs,
            matmul::threads(),
        ))
    })
}

/// [`linear`] with an int8 weight ([`int8_dots::Int8Weight`]).
pub fn linear_int8(
    x: &Tensor,
    weight: &int8_dots::Int8Weight,
    bias: Option<&Tensor>,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, k) = (weight.outputs(), weight.inputs());
    run_linear(x, n, k, bias, residual, |xs, m, bs, rs| {
        Ok(weight.product(xs, m, bs, act, rs, matmul::threads()))
    })
}

/// The weight of a linear layer (`(n, k)`, stored transposed at load: see
/// [`super::ops::Linear::new`]) quantized to int8 ([`int8_dots::Int8Weight::quantize`]);
/// `None` for any other weight, and for one with more inputs than 32-bit sums can hold
/// ([`int8_dots::MAX_INPUTS`], far beyond any released model's), which stays f32.
pub fn int8_of(weight: &Tensor) -> Result<Option<int8_dots::Int8Weight>> {
    if !applies(&[weight]) {
        return Ok(None);
    }
    let Some((transposed, k, n)) = stored_transposed(weight)? else {
        return Ok(None);
    };
    if k > int8_dots::MAX_INPUTS {
        return Ok(None);
    }
    with_values(&transposed, |w| {
        Ok(Some(int8_dots::Int8Weight::quantize(w, k, n)))
    })
}

/// How many query rows share each key row: `bq / bk`, an error unless it divides evenly.
pub fn group_size(bq: usize, bk: usize) -> Result<usize> {
    if bk == 0 || !bq.is_multiple_of(bk) {
        candle_core::bail!("attention: {bq} query rows cannot share {bk} key rows");
    }
    Ok(bq / bk)
}

/// A `(B, L, W)` operand of heads `d` wide, or a `(B, L, H, d)` one (keys and values stored
/// head after head, see [`crate::model::LayerKv::head_major`]), as [`attention::Rows`]: its last
/// dimension must be contiguous.
fn rows_of<'a>(s: &'a Storage, t: &Tensor, d: usize) -> Result<attention::Rows<'a>> {
    let l = t.layout();
    let (batch, row, head) = match l.stride() {
        [b, r, 1] => (*b, *r, d),
        [b, r, h, 1] => (*b, *r, *h),
        st => candle_core::bail!("attention: operand with strides {st:?}"),
    };
    Ok(attention::Rows {
        data: f32s(s)?,
        offset: l.start_offset(),
        batch,
        row,
        head,
    })
}

/// `(B, L, H*d)` of keys or values given as `(B, L, H*d)` or `(B, L, H, d)` (with `heads`
/// heads).
fn key_dims(t: &Tensor, heads: usize) -> Result<(usize, usize, usize)> {
    match *t.dims() {
        [b, l, w] => Ok((b, l, w)),
        [b, l, h, d] if h == heads => Ok((b, l, h * d)),
        _ => candle_core::bail!("attention: keys or values {:?} for {heads} heads", t.dims()),
    }
}

/// A 4-dimensional mask tensor (broadcast views allowed) whose storage is `s`, as
/// [`attention::Mask`].
fn mask_view<'a>(s: &'a Storage, m: &Tensor) -> Result<attention::Mask<'a>> {
    let st = m.layout().stride();
    if st.len() != 4 {
        candle_core::bail!("attention: a mask of {} dimensions", st.len());
    }
    Ok(attention::Mask {
        data: f32s(s)?,
        offset: m.layout().start_offset(),
        strides: [st[0], st[1], st[2], st[3]],
    })
}

/// Multi-head attention `softmax(q k^T / sqrt(d) + mask) v` of `q (Bq, Lq, H*d)` over `k`, `v
/// (Bk, Lk, H*d)`, `Bq = Bk * G` (see [`super::attention::attend`] for the sharing and the
/// mask's shape): `(Bq, Lq, H*d)`. Operands may be views (such as the parts of a packed
/// projection) whose last dimension is contiguous.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    attention_with(q, k, v, heads, mask, attention::attention)
}

/// [`attention`] in bf16 dot products where the CPU has them ([`attention::attention_bf16`]),
/// for models with compact weights.
pub fn attention_bf16(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    attention_with(q, k, v, heads, mask, attention::attention_bf16)
}

type AttentionKernel = fn(
    attention::Rows,
    attention::Rows,
    attention::Rows,
    Option<attention::Mask>,
    attention::Dims,
) -> Vec<f32>;

fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    let (bq, lq, w) = q.dims3()?;
    let (bk, lk, kw) = key_dims(k, heads)?;
    // The kernel reads through raw offsets: every shape is checked before it runs.
    if v.dims() != k.dims() || kw != w || heads == 0 || !w.is_multiple_of(heads) {
        candle_core::bail!(
            "attention: queries {:?}, keys {:?}, values {:?} for {heads} heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let g = group_size(bq, bk)?;
    // A query batch must be evenly spaced rows; a view with a row stride whose batches are
    // not back to back is copied.
    let q = if q.layout().stride()[0] == lq * q.layout().stride()[1] && q.layout().stride()[2] == 1
    {
        q.clone()
    } else {
        q.contiguous()?
    };
    let fix = |t: &Tensor| -> Result<Tensor> {
        if t.layout().stride().last() == Some(&1) {
            Ok(t.clone())
        } else {
            t.contiguous()
        }
    };
    let (k, v) = (fix(k)?, fix(v)?);
    let mask = mask
        .map(|m| m.broadcast_as((bk, heads, g * lq, lk)))
        .transpose()?;
    let (qs, _) = q.storage_and_layout();
    let (ks, _) = k.storage_and_layout();
    let (vs, _) = v.storage_and_layout();
    let ms = mask.as_ref().map(|m| m.storage_and_layout());
    let mask_view = match (&ms, &mask) {
        (Some((s, _)), Some(m)) => Some(mask_view(s, m)?),
        _ => None,
    };
    let dims = attention::Dims {
        bq,
        bk,
        lq,
        lk,
        heads,
        d: w / heads,
    };
    let out = kernel(
        rows_of(&qs, &q, dims.d)?,
        rows_of(&ks, &k, dims.d)?,
        rows_of(&vs, &v, dims.d)?,
        mask_view,
        dims,
    );
    drop((qs, ks, vs, ms));
    Tensor::from_vec(out, (bq, lq, w), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weights are quantized up to the input count 32-bit sums can hold, and kept f32 past it
    /// (instead of a panic at load).
    #[test]
    fn int8_keeps_f32_past_the_sums_range() {
        for (k, quantized) in [(64, true), (int8_dots::MAX_INPUTS + 1, false)] {
            let w = Tensor::ones((3, k), DType::F32, &Device::Cpu).unwrap();
            let w = transposed_weight(&w, DType::F32).unwrap();
            assert_eq!(int8_of(&w).unwrap().is_some(), quantized, "{k} inputs");
        }
    }

    /// The LayerNorm kernel against LayerNorm in f64 (two passes), for rows as wide as the
    /// towers' and with a tail past the vector lanes, rows of very different scales and a large
    /// common offset (where a one-pass variance loses its digits); operands it does not take
    /// are left to candle. Fails if a row, the tail, the mean, the variance, gamma or beta is
    /// wrong.
    #[test]
    fn layer_norm_matches_a_two_pass_layer_norm_in_f64() {
        let dev = Device::Cpu;
        for (rows, width) in [(7, 768), (3, 770), (5, 5), (40, 16)] {
            let x: Vec<f32> = (0..rows * width)
                .map(|i| {
                    let r = i / width;
                    1000.0 * (r % 2) as f32
                        + (1 + r) as f32 * (((i * 37) % 101) as f32 / 50.0 - 1.0)
                })
                .collect();
            let g: Vec<f32> = (0..width).map(|i| 0.5 + (i % 7) as f32 / 7.0).collect();
            let b: Vec<f32> = (0..width).map(|i| (i % 5) as f32 / 5.0 - 0.4).collect();
            let t = |v: &[f32], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape, &dev).unwrap();
            let y = layer_norm(
                &t(&x, &[rows, width]),
                &t(&g, &[width]),
                &t(&b, &[width]),
                1e-5,
            )
            .unwrap()
            .expect("f32 CPU operands")
            .to_vec2::<f32>()
            .unwrap();
            for (r, got) in y.iter().enumerate() {
                let row: Vec<f64> = x[r * width..(r + 1) * width]
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let mean = row.iter().sum::<f64>() / width as f64;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / width as f64;
                for (c, got) in got.iter().enumerate() {
                    let want = (row[c] - mean) / (var + 1e-5).sqrt() * g[c] as f64 + b[c] as f64;
                    assert!(
                        (*got as f64 - want).abs() < 1e-4,
                        "({rows}, {width}) at ({r}, {c}): {got} against {want}"
                    );
                }
            }
            let tracked = candle_core::Var::from_tensor(&t(&x, &[rows, width])).unwrap();
            let (g, b) = (t(&g, &[width]), t(&b, &[width]));
            assert!(layer_norm(tracked.as_tensor(), &g, &b, 1e-5)
                .unwrap()
                .is_none());
            assert!(layer_norm(&t(&x, &[rows * width, 1]), &g, &b, 1e-5)
                .unwrap()
                .is_none());
        }
    }

    /// From outside the pool the work runs on a pool thread (and its result comes back); from
    /// a pool thread it runs in place. Fails if `on_pool` ran everything on the caller.
    #[test]
    fn on_pool_runs_on_a_pool_thread() {
        assert_eq!(rayon::current_thread_index(), None);
        let (inside, nested) = on_pool(|| {
            let me = rayon::current_thread_index();
            (
                me,
                on_pool(|| (rayon::current_thread_index(), std::thread::current().id())),
            )
        });
        assert!(inside.is_some(), "ran on the calling thread");
        assert_eq!(nested.0, inside, "a nested call moved to another thread");
        assert_ne!(nested.1, std::thread::current().id());
    }

    #[test]
    fn mismatched_shapes_are_errors_not_reads_out_of_bounds() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((2, 3, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 4, 8), DType::F32, &dev).unwrap();
        let narrow_v = Tensor::zeros((1, 4, 6), DType::F32, &dev).unwrap();
        assert!(attention(&q, &k, &narrow_v, 2, None).is_err());
        assert!(attention(&q, &k, &k, 3, None).is_err());
        let k3 = Tensor::zeros((3, 4, 8), DType::F32, &dev).unwrap();
        assert!(attention(&q, &k3, &k3, 2, None).is_err());
        assert!(attention(&q, &k, &k, 2, None).is_ok());
        let bias = Tensor::zeros(5, DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 8), DType::F32, &dev).unwrap();
        assert!(linear(&q, &w, Some(&bias), Activation::None, None).is_err());
    }

    /// A model with compact (bf16) linear weights computes what the f32 model computes on the
    /// same bf16-rounded weights: up to summation order on the few-row path (a short text) and,
    /// without AVX512-BF16, on the widening path (many rows, the tower); with it, the tower's
    /// products also round their inputs to bf16 (`bf16_dots`), within bf16's precision.
    #[test]
    fn compact_weights_compute_in_f32_on_rounded_weights() {
        use crate::{Mplug, MplugConfig, Task};
        use candle_nn::VarBuilder;
        let dev = Device::Cpu;
        let cfg = MplugConfig::tiny();
        let rounded = crate::model::random_tensors(&cfg, Task::Pretrain, DType::BF16).unwrap();
        let wide: std::collections::HashMap<String, Tensor> = rounded
            .iter()
            .map(|(k, v)| (k.clone(), v.to_dtype(DType::F32).unwrap()))
            .collect();
        let full = Mplug::new(
            &cfg,
            Task::Pretrain,
            VarBuilder::from_tensors(wide, DType::F32, &dev),
        )
        .unwrap();
        let compact = Mplug::new(
            &cfg,
            Task::Pretrain,
            VarBuilder::from_tensors(rounded, DType::BF16, &dev),
        )
        .unwrap();
        assert_eq!(compact.dtype(), DType::F32);
        let head = &compact.heads().unwrap().itm_head;
        assert_eq!(
            head.format(),
            crate::model::ops::WeightFormat::Bf16,
            "linear weights are kept in bf16"
        );
        let r = cfg.image_res;
        let images = Tensor::randn(0f32, 1f32, (2, 3, r, r), &dev).unwrap();
        let ids = Tensor::new(&[[101u32, 104, 105, 106, 107, 102]], &dev).unwrap();
        let mask = Tensor::ones((1, 6), DType::U32, &dev).unwrap();
        let close = |a: &Tensor, b: &Tensor, tolerance: f32, what: &str| {
            let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
            let max = d.max(0).unwrap().to_scalar::<f32>().unwrap();
            let scale = a.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let scale = scale.to_scalar::<f32>().unwrap();
            assert!(
                max <= tolerance * scale.max(1.0),
                "{what}: {max} (scale {scale})"
            );
        };
        // bf16 keeps 8 significant bits: each product's inputs move by up to 2^-9 of their
        // size, and the tiny tower's layers carry that on; 2^-7 of the largest value bounds it
        // (measured: 2.9e-3 of it), while a wrong or misplaced weight moves values by their
        // own size.
        let tower = if bf16_dots::available() {
            1.0 / 128.0
        } else {
            1e-4
        };
        close(
            &full.encode_image(&images).unwrap(),
            &compact.encode_image(&images).unwrap(),
            tower,
            "visual tokens",
        );
        close(
            &full.encode_text(&ids, &mask).unwrap(),
            &compact.encode_text(&ids, &mask).unwrap(),
            1e-4,
            "text states",
        );
    }

    /// On a thread that flushes denormals, a product below f32's smallest normal value is 0
    /// (elsewhere it is the denormal); run on a thread of its own so no other test sees it.
    #[test]
    fn flushed_threads_turn_denormal_results_into_zero() {
        let product = || std::hint::black_box(1e-30f32) * std::hint::black_box(1e-10f32);
        assert!(product() > 0.0, "denormals exist before flushing");
        let flushed = std::thread::spawn(move || {
            flush_denormals();
            product()
        })
        .join()
        .unwrap();
        assert_eq!(flushed, 0.0);
        assert!(product() > 0.0, "other threads keep their setting");
    }

    /// The transposed copy holds the weight's values (f32 exactly, bf16 as candle rounds them)
    /// as an `(n, k)` view of `(k, n)` memory, for shapes of several huge pages and of none.
    #[test]
    fn transposed_weights_keep_their_values() {
        let dev = Device::Cpu;
        for (n, k) in [(3, 5), (1100, 700)] {
            let w = Tensor::randn(0f32, 1f32, (n, k), &dev).unwrap();
            for dtype in [DType::F32, DType::BF16] {
                let t = transposed_weight(&w, dtype).unwrap();
                assert_eq!(t.dims(), &[n, k]);
                assert_eq!(t.dtype(), dtype);
                assert!(t.t().unwrap().is_contiguous(), "stored as (k, n)");
                let want = w.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                let got = t.to_dtype(DType::F32).unwrap();
                let diff = crate::model::max_abs_diff(&want, &got);
                assert_eq!(diff, 0.0, "{n}x{k} {dtype:?}");
            }
        }
    }
}
