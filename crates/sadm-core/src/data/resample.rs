//! Pillow's convolution resampler for 8-bit images, so that `resize(size, resample=BOX | BICUBIC)` gives the same
//! bytes here as in Python.
//!
//! Ported from Pillow 13.0.0, `src/libImaging/Resample.c` (`precompute_coeffs`, `normalize_coeffs_8bpc`, the 8-bit
//! horizontal and vertical passes and the pass order of `ImagingResampleInner`). Pillow is licensed under the
//! MIT-CMU (HPND) licence: the Python Imaging Library is Copyright © 1997-2011 by Secret Labs AB and Copyright ©
//! 1995-2011 by Fredrik Lundh and contributors; Pillow is Copyright © 2010 by Jeffrey 'Alex' Clark and
//! contributors. Permission to use, copy, modify and distribute this software and its documentation for any
//! purpose and without fee is hereby granted, provided that the above copyright notice appears in all copies, and
//! that both that copyright notice and this permission notice appear in supporting documentation.
//!
//! What the port keeps exactly, because each changes output bytes: the coefficients in f64 from an f32 box, their
//! rounding to 22-bit fixed point (ties away from zero, truncating casts), the integer accumulation that starts at
//! one half, the 8-bit rounding and clipping between the two passes, and Pillow 13's choice of which pass runs
//! first: vertical first when the height shrinks by more than twice what the width does. Older Pillow differs
//! here: 12.2 and 12.3 ran vertical first only for images over 100 times taller than wide that shrink in height
//! (in `Image.resize`), earlier versions never. The order matters because of the clip between the passes: on the
//! reference images, Pillow 12.3 and 13.0 differ in 36 of 335 outputs, by up to 11 grey levels (this port with
//! 12.3's rule matches 12.3 exactly). Only the whole-image box is supported (what `resize` does without `box=`),
//! and `reducing_gap` is None, Pillow's default, so there is no `reduce` step.
//!
//! [`resize_region`] computes any window of the resized image alone, with the same bytes as cropping the full
//! result: each output pixel reads only its own taps, so the crop of `center_crop_arr` costs what its output does,
//! however elongated the image.
use crate::{Error, Result};
use std::ops::Range;

/// The resampling filters sadm's preprocessing uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BOX`: each output pixel averages the input pixels its footprint covers.
    Box,
    /// `Image.BICUBIC`: Keys' cubic convolution with a = -0.5.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// An 8-bit image: `height` rows of `width` pixels, each `channels` (1 or 3) interleaved samples (HWC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Image {
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::Input(format!("an image needs at least one pixel (got {width}×{height})")));
        }
        if channels != 1 && channels != 3 {
            return Err(Error::Input(format!("an image has 1 (grey) or 3 (RGB) channels (got {channels})")));
        }
        let want = width.checked_mul(height).and_then(|n| n.checked_mul(channels));
        if want != Some(data.len()) {
            return Err(Error::Input(format!(
                "a {width}×{height} image with {channels} channel(s) has {} bytes, not {}",
                want.map_or("more than usize::MAX".to_string(), |n| n.to_string()),
                data.len()
            )));
        }
        Ok(Self { width, height, channels, data })
    }

    fn row(&self, y: usize) -> &[u8] {
        let n = self.width * self.channels;
        &self.data[y * n..(y + 1) * n]
    }
}

/// A rectangle of output pixels: columns `x..x + width`, rows `y..y + height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// Bits after the point of the fixed-point coefficients: 8 bits of result and 2 of headroom (a filter's negative
/// lobes let partial sums leave 0..=255) in an i32.
const PRECISION_BITS: u32 = 32 - 8 - 2;
const HALF: i32 = 1 << (PRECISION_BITS - 1);

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The fixed-point taps of one axis for a range of output indices: output `i` reads `len` input samples from
/// `start` with the weights `weights[i * ksize..][..len]`.
struct Taps {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

impl Taps {
    /// `precompute_coeffs` then `normalize_coeffs_8bpc`, for the output indices `outs` of a resize of `in_size`
    /// samples to `out_size`.
    fn new(in_size: usize, out_size: usize, outs: Range<usize>, filter: Filter) -> Self {
        // Pillow's box is floats, (0, 0, width, height) by default: the scale is an f32 difference widened.
        let (in0, in1) = (0f32, in_size as f32);
        let scale = (in1 - in0) as f64 / out_size as f64;
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(outs.len());
        let mut weights = vec![0i32; outs.len() * ksize];
        let mut k = vec![0f64; ksize];
        for (i, xx) in outs.enumerate() {
            let center = in0 as f64 + (xx as f64 + 0.5) * scale;
            // Truncating casts, as C's (int): the + 0.5 rounds the non-negative ends.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (xmax - xmin).max(0) as usize;
            let mut ww = 0.0;
            for (x, kx) in k[..n].iter_mut().enumerate() {
                *kx = filter.weight(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
                ww += *kx;
            }
            for (kx, w) in k[..n].iter().zip(&mut weights[i * ksize..]) {
                let kx = if ww != 0.0 { kx / ww } else { *kx };
                let fixed = kx * (1i32 << PRECISION_BITS) as f64;
                *w = if kx < 0.0 { (-0.5 + fixed) as i32 } else { (0.5 + fixed) as i32 };
            }
            bounds.push((xmin as usize, n));
        }
        Self { ksize, bounds, weights }
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[i];
        (start, &self.weights[i * self.ksize..][..n])
    }

    /// The input samples the taps read, first to last.
    fn span(&self) -> Range<usize> {
        let first = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let last = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
        first..last.max(first)
    }
}

/// Resizes `src` to `width`×`height` as Pillow's `Image.resize((width, height), filter)` does.
pub fn resize(src: &Image, width: usize, height: usize, filter: Filter) -> Result<Image> {
    resize_region(src, width, height, filter, Region { x: 0, y: 0, width, height })
}

/// The `region` of `src` resized to `width`×`height`: the same bytes as [`resize`] followed by a crop, computed
/// without the pixels outside the region.
pub fn resize_region(src: &Image, width: usize, height: usize, filter: Filter, region: Region) -> Result<Image> {
    if width == 0 || height == 0 {
        return Err(Error::Input(format!("cannot resize to {width}×{height}: both sides must be at least 1")));
    }
    if region.width == 0 || region.height == 0 || region.x + region.width > width || region.y + region.height > height
    {
        return Err(Error::Internal(
            "resize_region".into(),
            format!("region {region:?} is empty or not inside the {width}×{height} output"),
        ));
    }
    let cols = region.x..region.x + region.width;
    let rows = region.y..region.y + region.height;
    let need_h = width != src.width;
    let need_v = height != src.height;
    let htaps = need_h.then(|| Taps::new(src.width, width, cols.clone(), filter));
    let vtaps = need_v.then(|| Taps::new(src.height, height, rows.clone(), filter));
    // ImagingResampleInner's order (Pillow ≥ 13), in its int arithmetic: a negative width shrink is a growth.
    let (dh, dw) = (src.height as i64 - height as i64, src.width as i64 - width as i64);
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    Ok(if horizontal_first {
        let src_rows = vtaps.as_ref().map_or(rows, Taps::span);
        let tmp = match &htaps {
            Some(t) => horizontal(src, src_rows.clone(), t),
            None => crop(src, cols, src_rows.clone()),
        };
        match &vtaps {
            Some(t) => vertical(&tmp, src_rows.start, 0..tmp.width, t),
            None => tmp,
        }
    } else {
        let src_cols = htaps.as_ref().map_or(cols, Taps::span);
        let tmp = match &vtaps {
            Some(t) => vertical(src, 0, src_cols.clone(), t),
            None => crop(src, src_cols.clone(), rows),
        };
        match &htaps {
            Some(t) => horizontal_from(&tmp, src_cols.start, 0..tmp.height, t),
            None => tmp,
        }
    })
}

fn crop(src: &Image, cols: Range<usize>, rows: Range<usize>) -> Image {
    let c = src.channels;
    let mut data = Vec::with_capacity(cols.len() * rows.len() * c);
    for y in rows.clone() {
        data.extend_from_slice(&src.row(y)[cols.start * c..cols.end * c]);
    }
    Image { width: cols.len(), height: rows.len(), channels: c, data }
}

/// The horizontal pass over the rows `rows` of `src`.
fn horizontal(src: &Image, rows: Range<usize>, taps: &Taps) -> Image {
    horizontal_from(src, 0, rows, taps)
}

/// The horizontal pass over `rows` of `src`, whose column 0 is column `col0` of the image the taps index.
fn horizontal_from(src: &Image, col0: usize, rows: Range<usize>, taps: &Taps) -> Image {
    let out_w = taps.bounds.len();
    let mut data = vec![0u8; out_w * rows.len() * src.channels];
    let out_rows = data.chunks_exact_mut(out_w * src.channels);
    for (y, out) in rows.clone().zip(out_rows) {
        match src.channels {
            1 => horizontal_row::<1>(src.row(y), col0, taps, out),
            _ => horizontal_row::<3>(src.row(y), col0, taps, out),
        }
    }
    Image { width: out_w, height: rows.len(), channels: src.channels, data }
}

fn horizontal_row<const C: usize>(line: &[u8], col0: usize, taps: &Taps, out: &mut [u8]) {
    for (i, px_out) in out.chunks_exact_mut(C).enumerate() {
        let (start, k) = taps.taps(i);
        let px = &line[(start - col0) * C..][..k.len() * C];
        let mut acc = [HALF; C];
        for (&w, p) in k.iter().zip(px.chunks_exact(C)) {
            for c in 0..C {
                acc[c] += p[c] as i32 * w;
            }
        }
        for c in 0..C {
            px_out[c] = clip8(acc[c]);
        }
    }
}

/// The vertical pass over the columns `cols` of `src`, whose row 0 is row `row0` of the image the taps index.
/// Integer sums do not depend on their order, so whole rows accumulate at once (Pillow goes pixel by pixel).
fn vertical(src: &Image, row0: usize, cols: Range<usize>, taps: &Taps) -> Image {
    let c = src.channels;
    let n = cols.len() * c;
    let out_h = taps.bounds.len();
    let mut data = vec![0u8; n * out_h];
    let mut acc = vec![0i32; n];
    for (i, out) in data.chunks_exact_mut(n).enumerate() {
        let (start, k) = taps.taps(i);
        acc.fill(HALF);
        for (t, &w) in k.iter().enumerate() {
            let line = &src.row(start - row0 + t)[cols.start * c..cols.end * c];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a += p as i32 * w;
            }
        }
        for (o, &a) in out.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    Image { width: cols.len(), height: out_h, channels: c, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(width: usize, height: usize, f: impl Fn(usize, usize) -> u8) -> Image {
        let data = (0..height).flat_map(|y| (0..width).map(move |x| (x, y))).map(|(x, y)| f(x, y)).collect();
        Image::new(width, height, 1, data).unwrap()
    }

    #[test]
    fn bicubic_kernel_has_keys_values_and_box_is_half_open() {
        let b = Filter::Bicubic;
        assert_eq!(b.weight(0.0), 1.0);
        assert_eq!(b.weight(1.0), 0.0);
        assert_eq!(b.weight(2.0), 0.0);
        // a = -0.5: f(0.5) = 1.5/8 - 2.5/4 + 1, f(1.5) = -0.5 · (3.375 - 11.25 + 12 - 4).
        assert_eq!(b.weight(0.5), 0.5625);
        assert_eq!(b.weight(-1.5), -0.0625);
        assert_eq!(Filter::Box.weight(0.5), 1.0);
        assert_eq!(Filter::Box.weight(-0.5), 0.0);
    }

    #[test]
    fn halving_with_the_box_filter_averages_pairs_rounding_after_each_pass() {
        let t = Taps::new(6, 3, 0..3, Filter::Box);
        assert_eq!(t.ksize, 3);
        assert_eq!(t.bounds, vec![(0, 2), (2, 2), (4, 2)]);
        assert_eq!(t.taps(1).1, &[1 << 21, 1 << 21]);
        let src = grey(4, 2, |x, y| [[10, 13, 200, 201], [0, 255, 7, 7]][y][x]);
        let out = resize(&src, 2, 1, Filter::Box).unwrap();
        // Rows first, each rounded to 8 bits: (12, 201) over (128, 7), then (12 + 128) / 2 and (201 + 7) / 2.
        assert_eq!(out.data, vec![70, 104]);
    }

    #[test]
    fn same_size_copies_and_constant_images_stay_constant() {
        let src = grey(7, 5, |x, y| (x * 31 + y * 17) as u8);
        assert_eq!(resize(&src, 7, 5, Filter::Bicubic).unwrap(), src);
        let flat = grey(13, 9, |_, _| 201);
        for (w, h) in [(5, 4), (29, 3), (1, 1), (40, 40)] {
            let out = resize(&flat, w, h, Filter::Bicubic).unwrap();
            assert!(out.data.iter().all(|&v| v == 201), "{w}×{h}: {:?}", out.data);
        }
    }

    #[test]
    fn bicubic_overshoot_is_clipped_to_the_8_bit_range() {
        let step = grey(8, 1, |x, _| if x < 4 { 0 } else { 255 });
        let out = resize(&step, 11, 1, Filter::Bicubic).unwrap();
        assert_eq!(out.data.first(), Some(&0));
        assert_eq!(out.data.last(), Some(&255));
        assert!(out.data.windows(2).all(|w| w[0] <= w[1]), "{:?}", out.data);
    }

    #[test]
    fn a_region_is_the_crop_of_the_full_resize_in_either_pass_order() {
        let src = grey(23, 61, |x, y| ((x * 37) ^ (y * 11)) as u8);
        // 61 → 20 rows shrinks more than twice 23 → 30 columns (vertical first); 61 → 50 does not.
        for (w, h) in [(30, 20), (9, 50), (23, 17), (40, 61)] {
            let full = resize(&src, w, h, Filter::Bicubic).unwrap();
            let r = Region { x: w / 3, y: h / 4, width: w - w / 3 - 1, height: h / 2 };
            let part = resize_region(&src, w, h, Filter::Bicubic, r).unwrap();
            assert_eq!(part, crop(&full, r.x..r.x + r.width, r.y..r.y + r.height), "{w}×{h}");
        }
    }

    #[test]
    fn bad_images_and_sizes_are_input_errors() {
        assert!(Image::new(0, 3, 1, vec![]).unwrap_err().to_string().contains("at least one pixel"));
        assert!(Image::new(2, 2, 4, vec![0; 16]).unwrap_err().to_string().contains("1 (grey) or 3 (RGB)"));
        assert!(Image::new(2, 2, 3, vec![0; 11]).unwrap_err().to_string().contains("has 12 bytes, not 11"));
        assert!(Image::new(usize::MAX, 2, 3, vec![]).unwrap_err().to_string().contains("more than usize::MAX"));
        let src = grey(3, 3, |_, _| 0);
        assert!(matches!(resize(&src, 0, 3, Filter::Box), Err(Error::Input(_))));
    }
}
