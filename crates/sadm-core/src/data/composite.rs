//! Transparency composited onto the background exactly as Pillow does it:
//! `Image.alpha_composite(Image.new("RGBA", im.size, background), im.convert("RGBA")).convert("RGB")`.
//!
//! Ported from Pillow 13.0.0, `src/libImaging/AlphaComposite.c` (`ImagingAlphaComposite`), under the MIT-CMU
//! (HPND) licence quoted in `resample.rs`. The integer steps are Pillow's: 7 extra bits of precision, a truncating
//! division for the source's weight, and the `(((v >> 8) + v) >> 8)` approximation of dividing by 255 with the
//! rounding offset added first. The destination here is always opaque (the background has no alpha).
use super::resample::Image;
use crate::Result;

const PRECISION_BITS: u32 = 7;

fn shift_for_div255(a: u32) -> u32 {
    ((a >> 8) + a) >> 8
}

/// One channel of `src` with alpha `alpha` over an opaque `dst`.
pub fn over(src: u8, alpha: u8, dst: u8) -> u8 {
    if alpha == 0 {
        return dst;
    }
    let (src, alpha, dst, dst_alpha) = (src as u32, alpha as u32, dst as u32, 255u32);
    let blend = dst_alpha * (255 - alpha);
    let outa255 = alpha * 255 + blend;
    let coef1 = alpha * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = src * coef1 + dst * coef2;
    (shift_for_div255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
}

/// Interleaved grey + alpha (`channels` 2) or RGBA (`channels` 4) pixels composited onto `background`: an RGB
/// image. Grey is spread to the three channels first, as `convert("RGBA")` does.
pub fn composite(width: usize, height: usize, channels: usize, pixels: &[u8], background: [u8; 3]) -> Result<Image> {
    debug_assert!(channels == 2 || channels == 4);
    let mut rgb = Vec::with_capacity(width * height * 3);
    for px in pixels.chunks_exact(channels) {
        let alpha = px[channels - 1];
        let colour = if channels == 2 { [px[0]; 3] } else { [px[0], px[1], px[2]] };
        rgb.extend((0..3).map(|c| over(colour[c], alpha, background[c])));
    }
    Image::new(width, height, 3, rgb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::checkpoint::load_tensors;
    use candle_core::Device;
    use std::path::Path;

    /// testdata/pillow_decode_reference.py's table: pixel (x, y) is (x, 255 - x, (37x + 11y) mod 256, alpha y).
    fn alpha_table() -> Vec<u8> {
        let px = |x: usize, y: usize| [x, 255 - x, (37 * x + 11 * y) % 256, y].map(|v| v as u8);
        (0..256).flat_map(|y| (0..256).flat_map(move |x| px(x, y))).collect()
    }

    #[test]
    fn matches_pillow_for_every_colour_and_alpha() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pillow_decode_reference.safetensors");
        let tensors = load_tensors(&path, &Device::Cpu).unwrap();
        let want = tensors["alpha"].flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let src = alpha_table();
        // Red: every colour and alpha over 255; green: over 0; blue: every alpha over 100.
        let background = [255, 0, 100];
        let got = composite(256, 256, 4, &src, background).unwrap();
        assert_eq!(got.data.len(), want.len());
        for (i, (g, w)) in got.data.iter().zip(&want).enumerate() {
            let (px, c) = (i / 3, i % 3);
            assert_eq!(g, w, "colour {} alpha {} over {}", src[px * 4 + c], src[px * 4 + 3], background[c]);
        }
    }

    #[test]
    fn over_an_opaque_background_is_the_mix_rounded_to_nearest() {
        // What Pillow's steps amount to when the destination is opaque (the weight is then exactly 128·α; 255 is
        // odd, so there are no ties): every colour, alpha and background.
        for a in 0..=255u32 {
            for s in 0..=255u32 {
                for d in 0..=255u32 {
                    let want = ((s * a + d * (255 - a)) as f64 / 255.0).round() as u8;
                    assert_eq!(over(s as u8, a as u8, d as u8), want, "{s} alpha {a} over {d}");
                }
            }
        }
    }

    #[test]
    fn opaque_is_the_colour_and_transparent_the_background() {
        for v in 0..=255u8 {
            assert_eq!(over(v, 255, 17), v);
            assert_eq!(over(v, 0, 17), 17);
        }
        let la = composite(2, 1, 2, &[90, 255, 90, 0], [1, 2, 3]).unwrap();
        assert_eq!(la.data, vec![90, 90, 90, 1, 2, 3]);
    }
}
