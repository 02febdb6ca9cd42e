//! Fused CPU kernels, with backward, for the element-wise and row-wise ops that dominate a small DiT step on
//! the CPU: tanh-GELU (candle's backward for it is a chain of a dozen tensor ops with libm `powf`/`tanhf`),
//! LayerNorm without affine (candle's fused version has no backward), multi-head attention; and in-place AdamW
//! and EMA updates.
//! Other devices take the basic-op compositions in `nn`, which candle differentiates itself.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, InplaceOp2, InplaceOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const K0: f32 = 0.797_884_6; // sqrt(2/π)
const K1: f32 = 0.044_715;

/// Rows processed per rayon task: enough work to amortise scheduling on small tensors.
const MIN_PAR: usize = 16 * 1024;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{op}: only f32 is supported") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// eˣ in f32 without a branch or a call, so that loops over it vectorise: glibc's scalar `expf` was the largest
/// non-GEMM cost of the attention softmax and GELU. eˣ = 2ᵏ·eʳ with k = round(x/ln 2) and |r| ≤ ln 2 / 2, eʳ from
/// Cephes' `expf` polynomial (within 2 ulp). Inputs are clamped to where 2ᵏ is a normal float (eˣ saturates
/// to 1.2e-38 and 2.1e38 there); comparisons that are false for NaN keep a NaN a NaN.
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
    const LO: f32 = -87.33;
    const HI: f32 = 88.3;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer in float arithmetic, which vectorises.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < LO { LO } else { x };
    let x = if x > HI { HI } else { x };
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    // k as an integer straight from the rounded float's bits: Rust's saturating `as i32` does not vectorise.
    let ki = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = x - k * 0.693_359_4 - k * -2.121_944_4e-4;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((ki + 127) << 23) as u32)
}

/// Runs `f` compiled for AVX2 and FMA when the CPU has them, for baseline x86-64 otherwise: the element-wise
/// loops inlined into it then run eight floats per instruction instead of four. (The GEMM dispatches itself.)
/// Mark the closure `#[inline(always)]`: a closure LLVM leaves out of line keeps the baseline code.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has both features.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[inline(always)]
fn tanh_fast(u: f32) -> f32 {
    // 1 - 2/(e^{2u}+1): one exp instead of glibc's tanhf→expm1f, exact at the ±1 limits.
    1.0 - 2.0 / (exp_fast(2.0 * u) + 1.0)
}

fn map_rows(row: usize, out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows_per_task = (MIN_PAR / row.max(1)).max(1);
    out.par_chunks_mut(row * rows_per_task).enumerate().for_each(|(k, chunk)| {
        // Both closures inlined into `simd`'s AVX2 copy, or the loop would be compiled for baseline x86-64.
        simd(#[inline(always)] || {
            for (j, r) in chunk.chunks_mut(row).enumerate() {
                f(k * rows_per_task + j, r);
            }
        })
    });
}

struct Gelu;
struct GeluGrad;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "sadm-gelu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(MIN_PAR).zip(x.par_chunks(MIN_PAR)).for_each(|(y, x)| {
            simd(#[inline(always)] || {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = 0.5 * x * (1.0 + tanh_fast(K0 * (x + K1 * x * x * x)));
                }
            })
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "sadm-gelu-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(MIN_PAR).zip(x.par_chunks(MIN_PAR).zip(g.par_chunks(MIN_PAR))).for_each(|(d, (x, g))| {
            simd(#[inline(always)] || {
                for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                    let t = tanh_fast(K0 * (x + K1 * x * x * x));
                    let dt = K0 * (1.0 + 3.0 * K1 * x * x);
                    *d = g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dt);
                }
            })
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

struct LayerNorm(f32);
struct LayerNormGrad(f32);

#[inline(always)]
fn ln_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum8(x) / n;
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(s, v)| *s += (v - mean) * (v - mean));
    }
    let var = (acc.iter().sum::<f32>() + chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Σ g·(x − mean), vectorised as [`sum8`] (mean 0: the plain dot product). Centred before the product:
/// Σ g·x − mean·Σ g cancels catastrophically when |mean| ≫ std.
#[inline(always)]
fn centered_dot8(g: &[f32], x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; 8];
    let (mut cx, mut cg) = (x.chunks_exact(8), g.chunks_exact(8));
    for (x, g) in (&mut cx).zip(&mut cg) {
        acc.iter_mut().zip(x.iter().zip(g)).for_each(|(s, (x, g))| *s += g * (x - mean));
    }
    acc.iter().sum::<f32>() + cx.remainder().iter().zip(cg.remainder()).map(|(x, g)| g * (x - mean)).sum::<f32>()
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "sadm-layer-norm"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let d = l.dims()[l.dims().len() - 1];
        let mut y = vec![0f32; x.len()];
        map_rows(d, &mut y, #[inline(always)] |i, yr| {
            let xr = &x[i * d..(i + 1) * d];
            let (mean, r) = ln_stats(xr, self.0);
            for (y, &x) in yr.iter_mut().zip(xr) {
                *y = (x - mean) * r;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &LayerNormGrad(self.0))?))
    }
}

impl CustomOp2 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "sadm-layer-norm-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let d = l1.dims()[l1.dims().len() - 1];
        let mut dx = vec![0f32; x.len()];
        // dx = r·(g − mean(g) − ŷ·mean(g·ŷ))
        map_rows(d, &mut dx, #[inline(always)] |i, dr| {
            let (xr, gr) = (&x[i * d..(i + 1) * d], &g[i * d..(i + 1) * d]);
            let (mean, r) = ln_stats(xr, self.0);
            let mg = sum8(gr) / d as f32;
            let mgy = r * centered_dot8(gr, xr, mean) / d as f32;
            for ((o, &x), &g) in dr.iter_mut().zip(xr).zip(gr) {
                *o = r * (g - mg - (x - mean) * r * mgy);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Σ over the rows of a [rows, d] layout of what `add_row(i, acc)` adds for row i → [d], rows split across
/// threads. Each fixed block of rows sums into its own partial, and the partials are added in block order, so the
/// result is the same bytes whatever the threads do (rayon's `reduce` pairs partials as work stealing happens to
/// split the range, a different association of the f32 sums from run to run). The blocks depend only on the
/// shape: any thread count gives the single-threaded sum.
fn column_reduce(rows: usize, d: usize, add_row: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let per = (MIN_PAR / d).max(1);
    let mut partial = vec![0f32; rows.div_ceil(per) * d];
    partial.par_chunks_mut(d).enumerate().for_each(|(c, acc)| {
        for i in c * per..rows.min((c + 1) * per) {
            add_row(i, acc);
        }
    });
    let mut out = vec![0f32; d];
    // Column blocks in parallel, each adding the partials in block order.
    const COLS: usize = 256;
    out.par_chunks_mut(COLS).enumerate().for_each(|(j, o)| {
        for p in partial.chunks(d) {
            o.iter_mut().zip(&p[j * COLS..]).for_each(|(o, v)| *o += v);
        }
    });
    out
}

/// Σ over rows of a [rows, d] slice → [d].
fn column_sum(g: &[f32], d: usize) -> Vec<f32> {
    column_reduce(g.len() / d, d, |i, acc| acc.iter_mut().zip(&g[i * d..(i + 1) * d]).for_each(|(a, v)| *a += v))
}

/// y + b with b broadcast over every row: a linear layer's bias. Its backward sums rows in one pass; candle's
/// broadcast backward goes through a strided reduction that costs more than the matmul on small layers.
struct BiasAdd;
struct ColumnSum;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "sadm-bias-add"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, b) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let d = b.len();
        let mut out = y.to_vec();
        map_rows(d, &mut out, #[inline(always)] |_, r| r.iter_mut().zip(b).for_each(|(o, b)| *o += b));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(&self, _y: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(grad.contiguous()?.apply_op1_no_bwd(&ColumnSum)?)))
    }
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "sadm-column-sum"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = slice(s, l, self.name())?;
        let d = l.dims()[l.dims().len() - 1];
        Ok((CpuStorage::F32(column_sum(g, d)), Shape::from(d)))
    }
}

/// x·Wᵀ + b for x [rows, k], W [out, k], b [out]: one GEMM that accumulates onto rows pre-set to the bias. The
/// composition (matmul, then bias add) keeps the product before the bias alive until the backward, one
/// [rows, out] tensor per layer that nothing needs (about 1.3 GB for DiT-S/2 at batch 32), and adds a pass.
struct LinearBias;

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "sadm-linear"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let ((rows, k), (out, k2)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if k2 != k || b.len() != out {
            candle_core::bail!("linear: x [{rows}, {k}], weight [{out}, {k2}] and bias [{}] do not fit", b.len())
        }
        let mut y = Vec::with_capacity(rows * out);
        for _ in 0..rows {
            y.extend_from_slice(b);
        }
        let threads = candle_core::utils::get_num_threads();
        let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        // SAFETY: y is [rows, out], x [rows, k] and W [out, k], all row-major and checked above; Wᵀ is read
        // through strides (row step 1, column step k).
        unsafe {
            gemm::gemm(
                rows, out, k, y.as_mut_ptr(), 1, out as isize, true, x.as_ptr(), 1, k as isize, w.as_ptr(), k as isize,
                1, 1.0, 1.0, false, false, false, par,
            )
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = grad.matmul(&w.detach())?;
        let dw = grad.t()?.matmul(&x.detach())?;
        let db = grad.apply_op1_no_bwd(&ColumnSum)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// x·w with w [d] broadcast over every row: a LayerNorm's gain. Its backward is g·w for x and Σ_rows g·x for w,
/// each one pass, where candle's broadcast backward adds a multiply and a strided reduction.
struct ColumnScale;
struct ColumnDot;

impl CustomOp2 for ColumnScale {
    fn name(&self) -> &'static str {
        "sadm-column-scale"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let d = w.len();
        let mut out = x.to_vec();
        map_rows(d, &mut out, #[inline(always)] |_, r| r.iter_mut().zip(w).for_each(|(o, w)| *o *= w));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        Ok((Some(grad.apply_op2_no_bwd(w, &ColumnScale)?), Some(grad.apply_op2_no_bwd(x, &ColumnDot)?)))
    }
}

impl CustomOp2 for ColumnDot {
    fn name(&self) -> &'static str {
        "sadm-column-dot"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, x) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let d = l1.dims()[l1.dims().len() - 1];
        let out = column_reduce(g.len() / d, d, |i, acc| {
            let (gr, xr) = (&g[i * d..(i + 1) * d], &x[i * d..(i + 1) * d]);
            acc.iter_mut().zip(gr.iter().zip(xr)).for_each(|(a, (g, x))| *a += g * x);
        });
        Ok((CpuStorage::F32(out), Shape::from(d)))
    }
}

/// `x + gate·h` with a per-sample (dim 0) gate [B, d] applied to every token of [B, N, d]. Backward sums over
/// tokens per sample.
struct GatedResidual;

fn per_sample_rows(l: &Layout) -> (usize, usize, usize) {
    let d = l.dims();
    (d[0], d[1..d.len() - 1].iter().product(), d[d.len() - 1])
}

/// Σ over tokens of f(token index within sample) per sample → [B, d].
fn token_sum(b: usize, n: usize, d: usize, f: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; b * d];
    out.par_chunks_mut(d).enumerate().for_each(|(bi, o)| {
        for t in 0..n {
            let base = (bi * n + t) * d;
            for (k, o) in o.iter_mut().enumerate() {
                *o += f(base + k);
            }
        }
    });
    out
}

/// adaLN: `LayerNorm(x)·(1+scale) + shift` in one op, [B, N, d] with per-sample [B, d] shift and scale. The
/// pair of ops keeps the normalised tensor alive until the backward (two [B, N, d] tensors per DiT block); this
/// keeps only x and recomputes the row statistics in the backward.
struct AdaLayerNorm(f32);
/// dx of [`AdaLayerNorm`], from (x, scale, g).
struct AdaLayerNormDx(f32);
/// Σ over tokens of g·LayerNorm(x) per sample → [B, d]: d(scale) of [`AdaLayerNorm`], from (x, g).
struct NormTokenDot(f32);

impl CustomOp3 for AdaLayerNorm {
    fn name(&self) -> &'static str {
        "sadm-ada-layer-norm"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, shift, scale) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let (_, n, d) = per_sample_rows(l1);
        let mut y = vec![0f32; x.len()];
        map_rows(d, &mut y, #[inline(always)] |row, yr| {
            let p = (row / n) * d;
            let xr = &x[row * d..(row + 1) * d];
            let (mean, r) = ln_stats(xr, self.0);
            for k in 0..d {
                yr[k] = (xr[k] - mean) * r * (1.0 + scale[p + k]) + shift[p + k];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _shift: &Tensor, scale: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = x.apply_op3_no_bwd(&scale.contiguous()?, &g, &AdaLayerNormDx(self.0))?;
        let dshift = g.apply_op1_no_bwd(&TokenSum)?;
        let dscale = x.apply_op2_no_bwd(&g, &NormTokenDot(self.0))?;
        Ok((Some(dx), Some(dshift), Some(dscale)))
    }
}

impl CustomOp3 for AdaLayerNormDx {
    fn name(&self) -> &'static str {
        "sadm-ada-layer-norm-dx"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, scale, g) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let (_, n, d) = per_sample_rows(l1);
        let mut dx = vec![0f32; x.len()];
        // With ĝ = g·(1+scale) the gradient at the normalised x̂: dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)).
        map_rows(d, &mut dx, #[inline(always)] |row, dr| {
            let p = (row / n) * d;
            let (xr, gr) = (&x[row * d..(row + 1) * d], &g[row * d..(row + 1) * d]);
            let (mean, r) = ln_stats(xr, self.0);
            for k in 0..d {
                dr[k] = gr[k] * (1.0 + scale[p + k]); // ĝ, for now
            }
            let mg = sum8(dr) / d as f32;
            let mgy = r * centered_dot8(dr, xr, mean) / d as f32;
            for (o, &x) in dr.iter_mut().zip(xr) {
                *o = r * (*o - mg - (x - mean) * r * mgy);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

impl CustomOp2 for NormTokenDot {
    fn name(&self) -> &'static str {
        "sadm-norm-token-dot"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let (b, n, d) = per_sample_rows(l1);
        let mut out = vec![0f32; b * d];
        out.par_chunks_mut(d).enumerate().for_each(|(bi, o)| {
            simd(#[inline(always)] || {
                for t in 0..n {
                    let base = (bi * n + t) * d;
                    let (xr, gr) = (&x[base..base + d], &g[base..base + d]);
                    let (mean, r) = ln_stats(xr, self.0);
                    for k in 0..d {
                        o[k] += gr[k] * (xr[k] - mean) * r;
                    }
                }
            })
        });
        Ok((CpuStorage::F32(out), Shape::from((b, d))))
    }
}

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "sadm-gated-residual"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, h, gate) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let (_, n, d) = per_sample_rows(l1);
        let mut y = vec![0f32; x.len()];
        map_rows(d, &mut y, #[inline(always)] |row, yr| {
            let p = (row / n) * d;
            for k in 0..d {
                yr[k] = x[row * d + k] + gate[p + k] * h[row * d + k];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, h: &Tensor, gate: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dh = g.broadcast_mul(&gate.unsqueeze(1)?)?;
        let dgate = g.apply_op2_no_bwd(&h.contiguous()?, &TokenDot)?;
        Ok((Some(g), Some(dh), Some(dgate)))
    }
}

/// Σ_tokens a per sample: [B, N, d] → [B, d].
struct TokenSum;
/// Σ_tokens a·b per sample: [B, N, d] × [B, N, d] → [B, d].
struct TokenDot;

impl CustomOp1 for TokenSum {
    fn name(&self) -> &'static str {
        "sadm-token-sum"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let a = slice(s, l, self.name())?;
        let (bs, n, d) = per_sample_rows(l);
        Ok((CpuStorage::F32(token_sum(bs, n, d, |i| a[i])), Shape::from((bs, d))))
    }
}

impl CustomOp2 for TokenDot {
    fn name(&self) -> &'static str {
        "sadm-token-dot"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let (bs, n, d) = per_sample_rows(l1);
        Ok((CpuStorage::F32(token_sum(bs, n, d, |i| a[i] * b[i])), Shape::from((bs, d))))
    }
}

fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// `y + b`, b broadcast over the last dimension (a linear layer's bias).
pub fn bias_add(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused(y) { y.contiguous()?.apply_op2(&b.contiguous()?, BiasAdd) } else { y.broadcast_add(b) }
}

/// `x·Wᵀ + b` for x [rows, k], W [out, k] (a linear layer on rows).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused(x) && fused(w) {
        x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, LinearBias)
    } else {
        bias_add(&x.matmul(&w.t()?)?, b)
    }
}

/// `x·w`, w broadcast over the last dimension (a LayerNorm's gain).
pub fn column_scale(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if fused(x) { x.contiguous()?.apply_op2(&w.contiguous()?, ColumnScale) } else { x.broadcast_mul(w) }
}

/// adaLN: `LayerNorm(x)·(1+scale) + shift` with [B, d] shift/scale, x [B, N, d] (DiT's `modulate(norm(x))`).
pub fn ada_layer_norm(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(x) {
        x.contiguous()?.apply_op3(&shift.contiguous()?, &scale.contiguous()?, AdaLayerNorm(eps as f32))
    } else {
        crate::nn::layer_norm_ref(x, eps)?.broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?.broadcast_add(&shift.unsqueeze(1)?)
    }
}

/// `x + gate·h`, with a [B, d] gate applied to every token of h [B, N, d].
pub fn gated_residual(x: &Tensor, h: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if fused(x) {
        x.contiguous()?.apply_op3(&h.contiguous()?, &gate.contiguous()?, GatedResidual)
    } else {
        x + h.broadcast_mul(&gate.unsqueeze(1)?)?
    }
}

/// k×k max pooling with stride k, whose backward is right. candle's `max_pool2d` backward scales the gradient by
/// the share of maxima in each window and never multiplies the window's size back in, so every gradient through
/// it comes out k² times too small (16× through a LeNet's two 2×2 pools); where a side is not a multiple of k it
/// also upsamples the mask onto the wrong pixels. Adam hides that from the weights of a
/// network trained alone, but not from a gradient that flows on into another network. A reshape and two max
/// reductions give the same values, and their backward routes the whole gradient to each window's maximum.
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ho, wo) = (h / k, w / k);
    // Floor odd sides, as candle does.
    let x = x.narrow(2, 0, ho * k)?.narrow(3, 0, wo * k)?;
    x.reshape((n, c, ho, k, wo, k))?.max(5)?.max(3)
}

/// tanh-approximated GELU.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused(x) { x.contiguous()?.apply_op1(Gelu) } else { x.gelu() }
}

/// LayerNorm over the last dimension, no affine parameters.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(x) { x.contiguous()?.apply_op1(LayerNorm(eps as f32)) } else { crate::nn::layer_norm_ref(x, eps) }
}

/// The attention core of a fused qkv projection [B, N, 3·C] → [B, N, C] (`nn::attention_ref`).
pub fn attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    if fused(qkv) { qkv.contiguous()?.apply_op1(Attention { heads }) } else { crate::nn::attention_ref(qkv, heads) }
}

/// A raw output pointer that parallel tasks write disjoint parts of.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// `dst (m×n, row stride dst_rs) = beta · lhs (m×k) · rhs (k×n)`, strides in elements (row, column), on the
/// calling thread: attention runs one head per task, which is parallel enough.
///
/// # Safety
/// The pointers must address matrices of those shapes and strides, and `dst` must not overlap the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_into(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
) {
    gemm::gemm(
        m, n, k, dst, 1, dst_rs as isize, false, lhs, lhs_cs as isize, lhs_rs as isize, rhs, rhs_cs as isize,
        rhs_rs as isize, 0.0, beta, false, false, false, gemm::Parallelism::None,
    )
}

/// Fused multi-head attention core: [B, N, 3·C] → [B, N, C] (see `nn::attention_ref`), one (image, head) per task.
/// It reads q, k, v in place from the projection and writes each head into its columns of the output, so the
/// five reshape/transpose copies of the composition disappear, and nothing N×N outlives the task: the backward
/// recomputes the probabilities (one extra N×N×d product) instead of keeping B·H·N² floats alive per layer.
struct Attention {
    heads: usize,
}
struct AttentionGrad {
    heads: usize,
}

/// Shapes of an attention call: (batch, tokens, C, head dim, 1/√d).
fn attention_dims(l: &Layout, heads: usize) -> Result<(usize, usize, usize, usize, f32)> {
    let (b, n, c3) = l.shape().dims3()?;
    if c3 % 3 != 0 || (c3 / 3) % heads != 0 {
        candle_core::bail!("attention: last dimension {c3} is not 3 × heads ({heads}) × head dim")
    }
    let d = c3 / 3 / heads;
    Ok((b, n, c3 / 3, d, 1.0 / (d as f32).sqrt()))
}

/// Σ a, over eight running sums so that the reduction vectorises (f32 addition is not reassociated otherwise).
#[inline(always)]
fn sum8(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = a.chunks_exact(8);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(s, v)| *s += v);
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Row-wise softmax of an n×n block, in place.
fn softmax_rows(p: &mut [f32], n: usize) {
    simd(#[inline(always)] || softmax_rows_here(p, n))
}

#[inline(always)]
fn softmax_rows_here(p: &mut [f32], n: usize) {
    for row in p.chunks_mut(n) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        row.iter_mut().for_each(|v| *v = exp_fast(*v - max));
        let inv = 1.0 / sum8(row);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

impl Attention {
    /// P = softmax(q·kᵀ/√d) of head `h` of image `bi` into `p` (n×n).
    fn probabilities(x: &[f32], (bi, h): (usize, usize), (n, c, d, scale): (usize, usize, usize, f32), p: &mut [f32]) {
        let base = bi * n * 3 * c + h * d;
        // SAFETY: q and k rows of this head lie inside x (base + 2c·… < x.len()); p is n×n and separate.
        unsafe {
            let (q, k) = (x.as_ptr().add(base), x.as_ptr().add(base + c));
            matmul_into((n, n, d), p.as_mut_ptr(), n, q, (3 * c, 1), k, (1, 3 * c), scale);
        }
        softmax_rows(p, n);
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "sadm-attention"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let (b, n, c, d, scale) = attention_dims(l, self.heads)?;
        let mut out = vec![0f32; b * n * c];
        let dst = SharedOut(out.as_mut_ptr());
        (0..b * self.heads).into_par_iter().for_each_init(
            || vec![0f32; n * n],
            |p, bh| {
                let (bi, h) = (bh / self.heads, bh % self.heads);
                Attention::probabilities(x, (bi, h), (n, c, d, scale), p);
                let dst = dst;
                // SAFETY: task (bi, h) alone writes columns h·d..(h+1)·d of image bi's rows; v lies inside x.
                unsafe {
                    let v = x.as_ptr().add(bi * n * 3 * c + 2 * c + h * d);
                    matmul_into((n, d, n), dst.0.add(bi * n * c + h * d), c, p.as_ptr(), (n, 1), v, (3 * c, 1), 1.0);
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((b, n, c))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &AttentionGrad { heads: self.heads })?))
    }
}

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "sadm-attention-grad"
    }
    /// d(qkv) from dO: with P recomputed, dV = Pᵀ·dO, dP = dO·vᵀ, dS = P ⊙ (dP − rowsum(P ⊙ dP)),
    /// dq = dS·k/√d, dk = dSᵀ·q/√d.
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let (b, n, c, d, scale) = attention_dims(l1, self.heads)?;
        let mut dx = vec![0f32; x.len()];
        let dst = SharedOut(dx.as_mut_ptr());
        (0..b * self.heads).into_par_iter().for_each_init(
            || (vec![0f32; n * n], vec![0f32; n * n]),
            |(p, dp), bh| {
                let (bi, h) = (bh / self.heads, bh % self.heads);
                Attention::probabilities(x, (bi, h), (n, c, d, scale), p);
                let base = bi * n * 3 * c + h * d;
                let dst = dst;
                // SAFETY: all reads lie inside x and g; task (bi, h) alone writes head h's q, k, v columns of
                // image bi in dx; p and dp are this task's n×n scratch.
                unsafe {
                    let (q, k, v) = (x.as_ptr().add(base), x.as_ptr().add(base + c), x.as_ptr().add(base + 2 * c));
                    let go = g.as_ptr().add(bi * n * c + h * d);
                    let (dq, dk, dv) = (dst.0.add(base), dst.0.add(base + c), dst.0.add(base + 2 * c));
                    matmul_into((n, d, n), dv, 3 * c, p.as_ptr(), (1, n), go, (c, 1), 1.0);
                    matmul_into((n, n, d), dp.as_mut_ptr(), n, go, (c, 1), v, (1, 3 * c), 1.0);
                    simd(#[inline(always)] || {
                        for (pr, dr) in p.chunks(n).zip(dp.chunks_mut(n)) {
                            let dot = centered_dot8(dr, pr, 0.0);
                            dr.iter_mut().zip(pr).for_each(|(d, &p)| *d = p * (*d - dot));
                        }
                    });
                    matmul_into((n, d, n), dq, 3 * c, dp.as_ptr(), (n, 1), k, (3 * c, 1), scale);
                    matmul_into((n, d, n), dk, 3 * c, dp.as_ptr(), (1, n), q, (3 * c, 1), scale);
                }
            },
        );
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{op}: only f32 is supported") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// In place, the moving average `acc ← β·acc + (1−β)·f(s·x)`, f the identity (Adam's first moment, the EMA of the
/// weights) or the square (Adam's second moment).
struct MovingAverage {
    beta: f32,
    one_minus_beta: f32,
    scale: f32,
    square: bool,
}

impl InplaceOp2 for MovingAverage {
    fn name(&self) -> &'static str {
        "sadm-moving-average"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (acc, g) = (slice_mut(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        acc.par_chunks_mut(MIN_PAR).zip(g.par_chunks(MIN_PAR)).for_each(|(acc, g)| {
            for (a, &g) in acc.iter_mut().zip(g) {
                let g = g * self.scale;
                let g = if self.square { g * g } else { g };
                *a = *a * self.beta + g * self.one_minus_beta;
            }
        });
        Ok(())
    }
}

/// In place, AdamW's parameter update `p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + ε)` from the updated moments.
struct AdamWApply {
    lr: f32,
    decay: f32,
    inv_bc1: f32,
    inv_bc2: f32,
    eps: f32,
}

impl InplaceOp3 for AdamWApply {
    fn name(&self) -> &'static str {
        "sadm-adamw-apply"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<()> {
        let p = slice_mut(s1, l1, self.name())?;
        let (m, v) = (slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        p.par_chunks_mut(MIN_PAR).zip(m.par_chunks(MIN_PAR).zip(v.par_chunks(MIN_PAR))).for_each(|(p, (m, v))| {
            for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                *p = *p * self.decay - (m * self.inv_bc1) / ((v * self.inv_bc2).sqrt() + self.eps) * self.lr;
            }
        });
        Ok(())
    }
}

/// Whether the in-place optimizer kernels apply: contiguous f32 tensors on the CPU.
pub fn fused_inplace(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| fused(t) && t.is_contiguous())
}

/// One AdamW update of `p` in place with gradient `g` (times `scale`), moments `m` and `v` updated in place: three
/// passes over memory and no allocation, where the tensor-op form takes a dozen of each. Callers check
/// [`fused_inplace`]; `bc1`, `bc2` are the bias corrections 1 − βᵗ.
#[allow(clippy::too_many_arguments)]
pub fn adamw_inplace(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    cfg: &crate::config::OptimConfig,
    lr: f64,
    scale: f64,
    (bc1, bc2): (f64, f64),
) -> Result<()> {
    let g = g.contiguous()?;
    let moment = |beta: f64, square| MovingAverage { beta: beta as f32, one_minus_beta: (1.0 - beta) as f32, scale: scale as f32, square };
    m.inplace_op2(&g, &moment(cfg.beta1, false))?;
    v.inplace_op2(&g, &moment(cfg.beta2, true))?;
    let apply = AdamWApply {
        lr: lr as f32,
        decay: (1.0 - lr * cfg.weight_decay) as f32,
        inv_bc1: (1.0 / bc1) as f32,
        inv_bc2: (1.0 / bc2) as f32,
        eps: cfg.eps as f32,
    };
    p.inplace_op3(m, v, &apply)
}

/// `e ← d·e + (1−d)·x` in place; callers check [`fused_inplace`].
pub fn ema_inplace(e: &Tensor, x: &Tensor, d: f64) -> Result<()> {
    e.inplace_op2(x, &MovingAverage { beta: d as f32, one_minus_beta: (1.0 - d) as f32, scale: 1.0, square: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn max_pool_matches_candle_forward_and_finite_differences_backward() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(12);
        // Odd sides (floored) and a 3×3 window; Gaussian values have no ties.
        for (shape, k) in [([2usize, 3, 8, 8], 2usize), ([1, 2, 9, 7], 2), ([1, 2, 9, 9], 3)] {
            let x = Var::from_tensor(&rng.randn(&shape, &dev)?)?;
            assert_eq!(max_diff(&max_pool2d(&x, k)?, &x.as_tensor().max_pool2d(k)?), 0.0);
            let probe = rng.randn(max_pool2d(&x, k)?.dims(), &dev)?;
            let f = || (max_pool2d(x.as_tensor(), k)? * &probe)?.sum_all();
            crate::nn::check_grad(&f, &x, &[0, 5, 17, 40, shape.iter().product::<usize>() - 1])?;
            if shape[2] % k != 0 || shape[3] % k != 0 {
                continue;
            }
            // candle's own backward is k² times smaller: the reason this op exists. If candle fixes it, this
            // fails and the workaround can go.
            let ours = f()?.backward()?.get(x.as_tensor()).unwrap().sum_all()?.to_scalar::<f32>()?;
            let theirs = (x.as_tensor().max_pool2d(k)? * &probe)?.sum_all()?.backward()?;
            let theirs = theirs.get(x.as_tensor()).unwrap().sum_all()?.to_scalar::<f32>()?;
            assert!((ours - theirs * (k * k) as f32).abs() < 1e-4 * ours.abs().max(1.0), "{ours} vs {theirs}·{}", k * k);
        }
        Ok(())
    }

    /// Forward and backward of a fused op against candle's own differentiation of the reference composition.
    fn same_as_reference(fused: impl Fn(&Tensor) -> Result<Tensor>, reference: impl Fn(&Tensor) -> Result<Tensor>, scale: f32) {
        let dev = Device::Cpu;
        let mut rng = Rng::new(8);
        // Rows of 37 so that row blocks straddle rayon chunks; 3 rows × 600 > MIN_PAR for the parallel path.
        let x = Var::from_tensor(&(rng.randn(&[600, 3, 37], &dev).unwrap() * scale as f64).unwrap()).unwrap();
        let w = rng.randn(&[600, 3, 37], &dev).unwrap();
        same_values_and_gradients(&x, &w, fused, reference, (1e-5, 1e-4));
    }

    /// `fused(x)` and `reference(x)` agree within `tol.0`, and so do the gradients of `Σ w·f(x)` w.r.t. x within
    /// `tol.1`.
    fn same_values_and_gradients(
        x: &Var,
        w: &Tensor,
        fused: impl Fn(&Tensor) -> Result<Tensor>,
        reference: impl Fn(&Tensor) -> Result<Tensor>,
        tol: (f32, f32),
    ) {
        let a = fused(x.as_tensor()).unwrap();
        let b = reference(x.as_tensor()).unwrap();
        assert!(max_diff(&a, &b) < tol.0, "forward {}", max_diff(&a, &b));
        let ga = (a * w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * w).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
        assert!(max_diff(ga, gb) < tol.1, "backward {}", max_diff(ga, gb));
    }

    #[test]
    fn linear_matches_matmul_plus_bias_forward_and_backward() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(12);
        // 301 rows × 37 → 53: odd sizes, no dimension a multiple of a GEMM tile.
        let x = Var::from_tensor(&rng.randn(&[301, 37], &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&rng.randn(&[53, 37], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&rng.randn(&[53], &dev).unwrap()).unwrap();
        let r = rng.randn(&[301, 53], &dev).unwrap();
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let fused = linear(xt, wt, bt).unwrap();
        let reference = xt.matmul(&wt.t().unwrap()).unwrap().broadcast_add(bt).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-4, "forward {}", max_diff(&fused, &reference));
        let gf = (fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (reference * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", xt), ("w", wt), ("b", bt)] {
            let (p, q) = (gf.get(v).unwrap(), gr.get(v).unwrap());
            assert_eq!(p.dims(), v.dims(), "{name}");
            assert!(max_diff(p, q) < 1e-3, "{name}: {}", max_diff(p, q));
        }
        let bad = linear(xt, &rng.randn(&[53, 36], &dev).unwrap(), bt).unwrap_err().to_string();
        assert!(bad.contains("do not fit"), "{bad}");
    }

    #[test]
    fn attention_matches_the_composition_forward_and_backward() {
        // 3 images × 37 tokens × 2 heads of 8: odd sizes, so no product is a multiple of a GEMM tile.
        let dev = Device::Cpu;
        let mut rng = Rng::new(4);
        for (b, n, heads, d) in [(3, 37, 2, 8), (2, 5, 1, 3)] {
            let qkv = Var::from_tensor(&rng.randn(&[b, n, 3 * heads * d], &dev).unwrap()).unwrap();
            let w = rng.randn(&[b, n, heads * d], &dev).unwrap();
            same_values_and_gradients(&qkv, &w, |x| attention(x, heads), |x| crate::nn::attention_ref(x, heads), (1e-5, 1e-5));
        }
    }

    #[test]
    fn ema_inplace_is_the_lerp_and_leaves_the_source_alone() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(3);
        let (e0, x) = (rng.randn(&[500, 41], &dev).unwrap(), rng.randn(&[500, 41], &dev).unwrap());
        let e = e0.copy().unwrap();
        ema_inplace(&e, &x, 0.9).unwrap();
        let want = ((&e0 * 0.9).unwrap() + (&x * 0.1).unwrap()).unwrap();
        assert!(max_diff(&e, &want) < 1e-6, "{}", max_diff(&e, &want));
        assert!(max_diff(&e0, &e) > 0.01, "updated a copy instead of in place");
    }

    #[test]
    fn per_sample_ops_match_broadcasting() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(9);
        let x = Var::from_tensor(&rng.randn(&[3, 50, 40], &dev).unwrap()).unwrap();
        let a = Var::from_tensor(&rng.randn(&[3, 40], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&rng.randn(&[3, 40], &dev).unwrap()).unwrap();
        let h = Var::from_tensor(&rng.randn(&[3, 50, 40], &dev).unwrap()).unwrap();
        let w = rng.randn(&[3, 50, 40], &dev).unwrap();
        let vars = [&x, &a, &b, &h];
        let check = |fused: Tensor, reference: Tensor| {
            assert!(max_diff(&fused, &reference) < 1e-5);
            let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (reference * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for v in vars {
                match (gf.get(v.as_tensor()), gr.get(v.as_tensor())) {
                    (Some(p), Some(q)) => assert!(max_diff(p, q) < 1e-4, "{}", max_diff(p, q)),
                    (None, None) => {}
                    _ => panic!("gradient present in only one of fused/reference"),
                }
            }
        };
        let (xt, at, bt, ht) = (x.as_tensor(), a.as_tensor(), b.as_tensor(), h.as_tensor());
        check(gated_residual(xt, ht, at).unwrap(), (xt + ht.broadcast_mul(&at.unsqueeze(1).unwrap()).unwrap()).unwrap());
        let normed = crate::nn::layer_norm_ref(xt, 1e-6).unwrap();
        check(
            ada_layer_norm(xt, at, bt, 1e-6).unwrap(),
            normed.broadcast_mul(&(bt.unsqueeze(1).unwrap() + 1.0).unwrap()).unwrap().broadcast_add(&at.unsqueeze(1).unwrap()).unwrap(),
        );
        let bias = Var::from_tensor(&rng.randn(&[40], &dev).unwrap()).unwrap();
        let y = bias_add(xt, bias.as_tensor()).unwrap();
        let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let expect = w.sum((0, 1)).unwrap();
        assert!(max_diff(g.get(bias.as_tensor()).unwrap(), &expect) < 1e-4);
        assert!(max_diff(g.get(xt).unwrap(), &w) == 0.0);
        let gain = Var::from_tensor(&rng.randn(&[40], &dev).unwrap()).unwrap();
        let (fused, reference) = (column_scale(xt, gain.as_tensor()).unwrap(), xt.broadcast_mul(gain.as_tensor()).unwrap());
        assert!(max_diff(&fused, &reference) < 1e-6);
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (reference * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [xt, gain.as_tensor()] {
            assert!(max_diff(gf.get(v).unwrap(), gr.get(v).unwrap()) < 1e-4);
        }
    }

    #[test]
    fn column_sums_over_many_row_blocks_are_the_sum_whatever_the_threads() {
        // 1000 rows of 300: 19 row blocks and two column blocks, each ending part-way.
        let (rows, d) = (1000, 300);
        let g = Rng::new(5).normal_vec(rows * d);
        let want: Vec<f64> = (0..d).map(|j| (0..rows).map(|i| g[i * d + j] as f64).sum()).collect();
        let on = |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| column_sum(&g, d));
        let got = on(2);
        for (j, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((*a as f64 - b).abs() < 1e-3, "column {j}: {a} vs {b}");
        }
        assert!(got == on(1) && got == on(3), "the sum depends on the thread count");
    }

    #[test]
    fn exp_fast_is_expf_to_a_few_ulp() {
        let mut worst = 0f32;
        for i in -200_000..=200_000 {
            let x = i as f32 * 4.35e-4; // −87 … 87, inside the clamps
            let (a, b) = (exp_fast(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 4.0 * f32::EPSILON, "relative error {worst}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert!(exp_fast(-1e4) >= 0.0 && exp_fast(-1e4) < 1.3e-38);
        assert!(exp_fast(f32::NAN).is_nan());
        assert!(exp_fast(1e4).is_finite());
    }

    #[test]
    fn gelu_matches_candle() {
        same_as_reference(gelu, |x| x.gelu(), 3.0);
    }

    #[test]
    fn layer_norm_matches_reference() {
        same_as_reference(|x| layer_norm(x, 1e-6), |x| crate::nn::layer_norm_ref(x, 1e-6), 2.0);
    }

}
