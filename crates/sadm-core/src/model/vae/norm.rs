//! GroupNorm, optionally followed by SiLU, the normalisation of every VAE block. On the CPU (f32) it is one
//! kernel: statistics in f64 per (image, group), then one pass that writes `silu(x·a + b)` with the per-channel
//! a, b folding the statistics and the affine; candle-nn's composition takes about ten passes over (and as
//! many allocations of) tensors of up to 128 channels × 512². Other devices take that composition.
use crate::ops::{exp_fast, simd};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(weight: Tensor, bias: Tensor, groups: usize, eps: f64) -> Result<Self> {
        let c = weight.dim(0)?;
        if groups == 0 || c % groups != 0 {
            candle_core::bail!("GroupNorm: {groups} groups do not divide {c} channels");
        }
        Ok(Self { weight, bias, groups, eps })
    }

    /// `GroupNorm(x)`, then SiLU when `silu`, for x [B, C, H, W].
    pub fn forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            let op = Fused { groups: self.groups, eps: self.eps, silu };
            return x.contiguous()?.apply_op3_no_bwd(&self.weight.contiguous()?, &self.bias.contiguous()?, &op);
        }
        let c = self.weight.dim(0)?;
        let y = candle_nn::GroupNorm::new(self.weight.clone(), self.bias.clone(), c, self.groups, self.eps)?;
        let y = candle_core::Module::forward(&y, x)?;
        if silu { y.silu() } else { Ok(y) }
    }
}

struct Fused {
    groups: usize,
    eps: f64,
    silu: bool,
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("sadm-group-norm: only f32 is supported") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("sadm-group-norm: inputs must be contiguous"),
    }
}

/// Σ f(x) in f64, in 8 independent lanes so that it vectorises.
#[inline(always)]
fn sum(d: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = d.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v as f64)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v as f64);
        }
    }
    acc.iter().sum::<f64>() + tail
}

impl CustomOp3 for Fused {
    fn name(&self) -> &'static str {
        "sadm-group-norm"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (slice(xs, xl)?, slice(ws, wl)?, slice(bs, bl)?);
        let dims = xl.dims();
        let c = w.len();
        if dims.len() < 2 || dims[1] != c || b.len() != c {
            candle_core::bail!("sadm-group-norm: input {dims:?}, weight {:?}, bias {:?}", wl.dims(), bl.dims());
        }
        let plane: usize = dims[2..].iter().product();
        let group = c / self.groups * plane;
        let eps = self.eps;
        let stats: Vec<(f32, f32)> = x
            .par_chunks(group)
            .map(|d| {
                simd(#[inline(always)] || {
                    let mean = sum(d, |v| v) / d.len() as f64;
                    let var = sum(d, |v| (v - mean) * (v - mean)) / d.len() as f64;
                    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
                })
            })
            .collect();
        let mut y = vec![0f32; x.len()];
        let cg = c / self.groups;
        let silu = self.silu;
        y.par_chunks_mut(plane).zip(x.par_chunks(plane)).enumerate().for_each(|(i, (y, x))| {
            let ch = i % c;
            let (mean, rstd) = stats[i / c * self.groups + ch / cg];
            let a = rstd * w[ch];
            let shift = b[ch] - mean * a;
            simd(#[inline(always)] || {
                if silu {
                    for (y, &x) in y.iter_mut().zip(x) {
                        let v = x * a + shift;
                        *y = v / (1.0 + exp_fast(-v));
                    }
                } else {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = x * a + shift;
                    }
                }
            })
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::Device;

    #[test]
    fn equals_candle_nns_group_norm_and_silu() -> Result<()> {
        let mut rng = Rng::new(9);
        for (b, c, h, w, g) in [(2, 8, 5, 7, 4), (1, 6, 1, 1, 3), (3, 4, 9, 2, 1)] {
            // An offset and a spread, as activations have.
            let x = ((rng.randn(&[b, c, h, w], &Device::Cpu)? * 3.0)? + 2.0)?;
            let gamma = rng.randn(&[c], &Device::Cpu)?;
            let beta = rng.randn(&[c], &Device::Cpu)?;
            let norm = GroupNorm::new(gamma.clone(), beta.clone(), g, 1e-6)?;
            let reference = candle_core::Module::forward(&candle_nn::GroupNorm::new(gamma, beta, c, g, 1e-6)?, &x)?;
            for silu in [false, true] {
                let want = if silu { reference.silu()? } else { reference.clone() };
                let diff = (norm.forward(&x, silu)? - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(diff < 1e-5, "{b}×{c}×{h}×{w}, {g} groups, silu {silu}: {diff}");
            }
        }
        Ok(())
    }
}
