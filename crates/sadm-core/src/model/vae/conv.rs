//! The VAE's convolutions. On the CPU (f32), candle's conv2d spent most of a decode building its im2col one
//! element at a time (52 % of the time, against 22 % in the GEMM); here the im2col is built a band of output
//! rows at a time from contiguous row copies, in the weight's own (c_in, k_h, k_w) order, and one GEMM per band
//! writes the NCHW output in place, on top of the bias. The band bounds the im2col buffer (at most
//! [`BAND_FLOATS`]), so a 3×3 conv at 512×512 never holds the 9× copy of its input. Other devices take candle's
//! conv2d.
use candle_core::{CpuStorage, CustomOp3, Layout, Module, Result, Shape, Tensor};
use rayon::prelude::*;

/// The im2col buffer of one band, in floats (16 MiB): large enough for GEMMs of a few hundred columns at the
/// widest layers, small enough to stay out of the way of the activations.
const BAND_FLOATS: usize = 4 << 20;

pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Tensor, stride: usize, padding: usize) -> Self {
        Self { weight, bias, stride, padding }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            let op = Im2colGemm { stride: self.stride, padding: self.padding };
            x.contiguous()?.apply_op3_no_bwd(&self.weight.contiguous()?, &self.bias.contiguous()?, &op)
        } else {
            let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
            y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
        }
    }
}

struct Im2colGemm {
    stride: usize,
    padding: usize,
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("sadm-conv2d: only f32 is supported") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("sadm-conv2d: inputs must be contiguous"),
    }
}

/// A raw output pointer the GEMM writes disjoint bands of.
#[derive(Clone, Copy)]
struct Out(*mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl CustomOp3 for Im2colGemm {
    fn name(&self) -> &'static str {
        "sadm-conv2d"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w, bias) = (slice(xs, xl)?, slice(ws, wl)?, slice(bs, bl)?);
        let (batch, cin, h, wd) = xl.shape().dims4()?;
        let (cout, wcin, kh, kw) = wl.shape().dims4()?;
        let (s, p) = (self.stride, self.padding);
        if wcin != cin || bias.len() != cout || h + 2 * p < kh || wd + 2 * p < kw {
            candle_core::bail!("sadm-conv2d: input {:?}, weight {:?}, bias {:?}, padding {p}", xl.dims(), wl.dims(), bl.dims());
        }
        let (ho, wo) = ((h + 2 * p - kh) / s + 1, (wd + 2 * p - kw) / s + 1);
        let plane = ho * wo;
        let mut out = vec![0f32; batch * cout * plane];
        out.par_chunks_mut(plane).enumerate().for_each(|(i, o)| o.fill(bias[i % cout]));
        let k = cin * kh * kw;
        // A 1×1 conv is the GEMM on the input itself.
        let direct = kh == 1 && kw == 1 && s == 1 && p == 0;
        let band = if direct { ho } else { (BAND_FLOATS / (k * wo)).clamp(1, ho) };
        let mut col = if direct { vec![] } else { vec![0f32; k * band * wo] };
        let threads = rayon::current_num_threads();
        let dst = Out(out.as_mut_ptr());
        for img in 0..batch {
            let xi = &x[img * cin * h * wd..(img + 1) * cin * h * wd];
            for oh0 in (0..ho).step_by(band) {
                let rows = band.min(ho - oh0);
                let n = rows * wo;
                let rhs = if direct {
                    xi.as_ptr()
                } else {
                    col[..k * n].par_chunks_mut(n).enumerate().for_each(|(r, row)| {
                        let (ci, ikh, ikw) = (r / (kh * kw), (r / kw) % kh, r % kw);
                        im2col_row(row, &xi[ci * h * wd..(ci + 1) * h * wd], (h, wd), (ikh, ikw), (oh0, wo), s, p);
                    });
                    col.as_ptr()
                };
                // SAFETY: dst addresses this image's [cout, plane] output, of which the band's columns
                // [oh0·wo, oh0·wo + n) are written, with row stride `plane`; lhs is the [cout, k] weight and rhs
                // the [k, n] im2col (or the [cin, h·w] input), row-major; neither overlaps dst.
                unsafe {
                    gemm::gemm(
                        cout, n, k,
                        dst.0.add(img * cout * plane + oh0 * wo), 1, plane as isize, true,
                        w.as_ptr(), 1, k as isize,
                        rhs, 1, n as isize,
                        1.0, 1.0, false, false, false,
                        gemm::Parallelism::Rayon(threads),
                    );
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, cout, ho, wo))))
    }
}

/// One im2col row of a band: input channel plane `src` [h, w] at kernel offset (ikh, ikw), for output rows
/// oh0.. of width `wo`, zero where the window leaves the (zero-padded) input.
fn im2col_row(row: &mut [f32], src: &[f32], (h, w): (usize, usize), (ikh, ikw): (usize, usize), (oh0, wo): (usize, usize), s: usize, p: usize) {
    for (t, seg) in row.chunks_mut(wo).enumerate() {
        let ih = ((oh0 + t) * s + ikh) as isize - p as isize;
        if ih < 0 || ih >= h as isize {
            seg.fill(0.0);
            continue;
        }
        let line = &src[ih as usize * w..(ih as usize + 1) * w];
        if s == 1 {
            // iw = ow + ikw - p is inside [0, w) for ow in [lo, hi).
            let lo = p.saturating_sub(ikw).min(wo);
            let hi = (w + p).saturating_sub(ikw).clamp(lo, wo);
            seg[..lo].fill(0.0);
            seg[lo..hi].copy_from_slice(&line[lo + ikw - p..hi + ikw - p]);
            seg[hi..].fill(0.0);
        } else {
            for (ow, v) in seg.iter_mut().enumerate() {
                let iw = (ow * s + ikw) as isize - p as isize;
                *v = if iw >= 0 && iw < w as isize { line[iw as usize] } else { 0.0 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::Device;

    #[test]
    fn equals_candles_conv2d() -> Result<()> {
        let mut rng = Rng::new(5);
        // Odd sizes, every kernel/stride/padding the VAE uses and more, batch 2, and a band split (BAND_FLOATS
        // over k·wo is below ho for the last case).
        for (cin, cout, k, s, p, h, w) in [(3, 8, 3, 1, 1, 9, 13), (8, 5, 1, 1, 0, 7, 6), (6, 6, 3, 2, 0, 10, 7), (4, 3, 3, 2, 1, 8, 8), (5, 4, 1, 2, 0, 9, 9), (4, 7, 3, 1, 1, 5, 1), (512, 4, 3, 1, 1, 1100, 3)] {
            let x = rng.randn(&[2, cin, h, w], &Device::Cpu)?;
            let wt = rng.randn(&[cout, cin, k, k], &Device::Cpu)?;
            let b = rng.randn(&[cout], &Device::Cpu)?;
            let got = Conv2d::new(wt.clone(), b.clone(), s, p).forward(&x)?;
            let want = x.conv2d(&wt, p, s, 1, 1)?.broadcast_add(&b.reshape((1, cout, 1, 1))?)?;
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-3, "cin {cin} cout {cout} k {k} s {s} p {p} {h}×{w}: {diff}");
        }
        Ok(())
    }
}
