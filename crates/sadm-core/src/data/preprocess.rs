//! Image files to training pixels the way DiT's PyTorch pipeline makes them: ADM's `center_crop_arr` (halve with
//! Pillow's box filter while the short side is at least twice the target, bicubic to the target short side with
//! Python's round-half-to-even sizes, floor-centred crop), and two alternatives built from the same steps.
//!
//! The caller decodes the file (EXIF rotation, colour management, palette, alpha) and hands over 8-bit grey or
//! RGB pixels. Conversion to the output mode comes first, as `Image.open(path).convert("RGB" | "L")` does in the
//! reference pipeline; the output is CHW. testdata/pillow_preprocess_reference.py computes the same with Pillow.
use super::resample::{resize, resize_region, Filter, Image, Region};
use crate::{Error, Result};

/// The largest output side: far beyond any diffusion model's resolution, small enough that an output fits in
/// memory.
pub const MAX_RESOLUTION: usize = 8192;
/// The largest input side (a million pixels): anything longer is not a photograph.
pub const MAX_SIDE: usize = 1 << 20;

/// How an image of any aspect ratio becomes a square.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// ADM's `center_crop_arr`, what DiT trains on: the short side scaled to the target, the long side cropped
    /// about its centre (offsets rounded down).
    Crop,
    /// The long side scaled to the target (box halving while it is at least twice the target and the short side
    /// has two pixels to halve, then bicubic; no side below one pixel), centred on a square of `background`
    /// (offsets rounded down). The fill of a grey output is the colour's luma.
    Pad { background: [u8; 3] },
    /// Bicubic straight to target × target, ignoring the aspect ratio.
    Stretch,
}

/// What [`preprocess`] makes: `channels` (1 or 3) planes of `resolution` × `resolution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preprocess {
    pub resolution: usize,
    pub resize: Resize,
    pub channels: usize,
}

/// `image` (HWC) converted, resized and laid out as `opts` says: CHW bytes, `channels × resolution²` of them.
pub fn preprocess(image: Image, opts: &Preprocess) -> Result<Vec<u8>> {
    let t = opts.resolution;
    if !(1..=MAX_RESOLUTION).contains(&t) {
        return Err(Error::Input(format!("the resolution must be between 1 and {MAX_RESOLUTION} pixels (got {t})")));
    }
    if opts.channels != 1 && opts.channels != 3 {
        return Err(Error::Input(format!("the output has 1 (grey) or 3 (RGB) channels (got {})", opts.channels)));
    }
    if image.width > MAX_SIDE || image.height > MAX_SIDE {
        return Err(Error::Input(format!(
            "a {}×{} image is too large: sides are at most {MAX_SIDE} pixels",
            image.width, image.height
        )));
    }
    let image = if opts.channels == 1 && image.channels == 3 { to_luma(&image) } else { image };
    let t2 = 2 * t;
    match opts.resize {
        Resize::Crop => {
            let image = halve_while(image, |w, h| w.min(h) >= t2)?;
            let (w, h) = bicubic_size(&image, t as f64 / image.width.min(image.height) as f64)?;
            let crop = Region { x: (w - t) / 2, y: (h - t) / 2, width: t, height: t };
            Ok(planes(&resize_region(&image, w, h, Filter::Bicubic, crop)?, opts, [0; 3]))
        }
        Resize::Pad { background } => {
            let image = halve_while(image, |w, h| w.max(h) >= t2 && w.min(h) >= 2)?;
            let (w, h) = bicubic_size(&image, t as f64 / image.width.max(image.height) as f64)?;
            let (w, h) = (w.max(1), h.max(1));
            let fill = if opts.channels == 1 { [luma(background); 3] } else { background };
            Ok(planes(&resize(&image, w, h, Filter::Bicubic)?, opts, fill))
        }
        Resize::Stretch => Ok(planes(&resize(&image, t, t, Filter::Bicubic)?, opts, [0; 3])),
    }
}

/// Pillow's `convert("L")` of an RGB image: ITU-R 601-2 luma in 16-bit fixed point (Convert.c's `L24`).
pub fn to_luma(image: &Image) -> Image {
    let data = image.data.chunks_exact(3).map(|p| luma([p[0], p[1], p[2]])).collect();
    Image { width: image.width, height: image.height, channels: 1, data }
}

fn luma([r, g, b]: [u8; 3]) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `image.resize((w // 2, h // 2), Image.BOX)` for as long as `more(w, h)` holds.
fn halve_while(mut image: Image, more: impl Fn(usize, usize) -> bool) -> Result<Image> {
    while more(image.width, image.height) {
        image = resize(&image, image.width / 2, image.height / 2, Filter::Box)?;
    }
    Ok(image)
}

/// `tuple(round(x * scale) for x in image.size)`: Python's `round` takes halves to even.
fn bicubic_size(image: &Image, scale: f64) -> Result<(usize, usize)> {
    let side = |x: usize| {
        let s = (x as f64 * scale).round_ties_even();
        // Pillow's sizes are C ints; a longer side is an image no one trains on.
        if s > i32::MAX as f64 {
            return Err(Error::Input(format!(
                "a {}×{} image is too elongated to scale its short side to the resolution",
                image.width, image.height
            )));
        }
        Ok(s as usize)
    };
    Ok((side(image.width)?, side(image.height)?))
}

/// CHW output planes with `image` pasted at the centre (offsets rounded down) of a square of `fill`; a grey image
/// fills every plane.
fn planes(image: &Image, opts: &Preprocess, fill: [u8; 3]) -> Vec<u8> {
    let t = opts.resolution;
    let (x0, y0) = ((t - image.width) / 2, (t - image.height) / 2);
    let mut out = vec![0u8; opts.channels * t * t];
    for (c, plane) in out.chunks_exact_mut(t * t).enumerate() {
        if image.width < t || image.height < t {
            plane.fill(fill[c]);
        }
        let src_c = if image.channels == 1 { 0 } else { c };
        for (y, row) in image.data.chunks_exact(image.width * image.channels).enumerate() {
            let dst = &mut plane[(y0 + y) * t + x0..][..image.width];
            for (d, px) in dst.iter_mut().zip(row.chunks_exact(image.channels)) {
                *d = px[src_c];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::checkpoint::load_tensors;
    use candle_core::Device;
    use std::path::Path;

    fn rgb(width: usize, height: usize, f: impl Fn(usize, usize) -> [u8; 3]) -> Image {
        let data = (0..height).flat_map(|y| (0..width).map(move |x| (x, y))).flat_map(|(x, y)| f(x, y)).collect();
        Image::new(width, height, 3, data).unwrap()
    }

    fn opts(resolution: usize, resize: Resize, channels: usize) -> Preprocess {
        Preprocess { resolution, resize, channels }
    }

    /// The `__metadata__` of a safetensors file.
    fn metadata(path: &Path) -> serde_json::Map<String, serde_json::Value> {
        let bytes = std::fs::read(path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        header["__metadata__"].as_object().unwrap().clone()
    }

    #[test]
    fn matches_pillow_on_every_reference_image_mode_and_size() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pillow_preprocess_reference.safetensors");
        let meta = metadata(&path);
        let bg: Vec<u8> = meta["pad_background"].as_str().unwrap().split(',').map(|v| v.parse().unwrap()).collect();
        let background = [bg[0], bg[1], bg[2]];
        let tensors = load_tensors(&path, &Device::Cpu).unwrap();
        let bytes = |name: &str| tensors[name].flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let input = |name: &str| {
            let (h, w, c) = tensors[&format!("in.{name}")].dims3().unwrap();
            Image::new(w, h, c, bytes(&format!("in.{name}"))).unwrap()
        };
        let (mut outputs, mut pixels, mut differing, mut worst) = (0, 0, 0, 0);
        for (key, want) in &tensors {
            let want = want.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            let got = if let Some(name) = key.strip_prefix("luma.") {
                to_luma(&input(name)).data
            } else if let Some(rest) = key.strip_prefix("out.") {
                let [name, mode, t, c] = rest.split('.').collect::<Vec<_>>()[..] else { panic!("bad name {key}") };
                let resize = match mode {
                    "crop" => Resize::Crop,
                    "pad" => Resize::Pad { background },
                    "stretch" => Resize::Stretch,
                    _ => panic!("unknown mode in {key}"),
                };
                preprocess(input(name), &opts(t.parse().unwrap(), resize, c.parse().unwrap())).unwrap()
            } else {
                continue;
            };
            assert_eq!(got.len(), want.len(), "{key}");
            let diff: Vec<u8> = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).collect();
            let d = diff.iter().filter(|&&d| d > 0).count();
            if d > 0 {
                eprintln!("{key}: {d} of {} bytes differ, by up to {}", want.len(), diff.iter().max().unwrap());
            }
            outputs += 1;
            pixels += want.len();
            differing += d;
            worst = worst.max(*diff.iter().max().unwrap());
        }
        eprintln!(
            "Pillow {}: {outputs} outputs, {pixels} bytes, {differing} differ, max |Δ| {worst}",
            meta["pillow"].as_str().unwrap()
        );
        assert!(outputs >= 300, "only {outputs} reference outputs were read");
        assert!(worst <= 1, "a byte is {worst} grey levels off Pillow's");
        // The port is exact: every integer step is Pillow's, and the f64 steps are the same operations in the
        // same order.
        assert_eq!(differing, 0, "{differing} bytes differ from Pillow's");
    }

    #[test]
    fn sizes_round_halves_to_even_as_python_does() {
        // 38 · 24/32 = 28.5 → 28, where rounding halves up would give a 29-wide image and shift the crop.
        let wide = rgb(38, 32, |x, y| [(x * 6) as u8, (y * 7) as u8, 0]);
        assert_eq!(bicubic_size(&wide, 24.0 / 32.0).unwrap(), (28, 24));
        // 11 · 1.5 = 16.5 → 16, growing.
        assert_eq!(bicubic_size(&rgb(11, 8, |_, _| [0; 3]), 1.5).unwrap(), (16, 12));
        assert_eq!(bicubic_size(&rgb(13, 8, |_, _| [0; 3]), 1.5).unwrap(), (20, 12));
        // The crop is columns 2..26 of the 28-wide resize; of a 29-wide one (halves up) it would hold other bytes.
        let got = preprocess(wide.clone(), &opts(24, Resize::Crop, 3)).unwrap();
        let crop_of = |w: usize| {
            let full = resize(&wide, w, 24, Filter::Bicubic).unwrap();
            let mut chw = vec![];
            for c in 0..3 {
                for y in 0..24 {
                    chw.extend((2..26).map(|x| full.data[(y * w + x) * 3 + c]));
                }
            }
            chw
        };
        assert_eq!(got, crop_of(28));
        assert_ne!(got, crop_of(29));
    }

    #[test]
    fn luma_is_pillows_fixed_point_and_grey_replicates_into_rgb() {
        let px = rgb(4, 1, |x, _| [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]][x]);
        assert_eq!(to_luma(&px).data, vec![76, 150, 29, 255]);
        let grey = Image::new(2, 2, 1, vec![1, 2, 3, 4]).unwrap();
        let out = preprocess(grey, &opts(2, Resize::Crop, 3)).unwrap();
        assert_eq!(out, vec![1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]);
    }

    #[test]
    fn pad_centres_with_offsets_rounded_down_on_the_background() {
        let img = rgb(4, 1, |x, _| [x as u8, 10, 20]);
        let out = preprocess(img.clone(), &opts(4, Resize::Pad { background: [7, 8, 9] }, 3)).unwrap();
        // 4×1 in a 4×4 square: row (4 - 1) / 2 = 1.
        assert_eq!(&out[..16], &[7, 7, 7, 7, 0, 1, 2, 3, 7, 7, 7, 7, 7, 7, 7, 7]);
        assert_eq!(&out[16..20], &[8; 4]);
        assert_eq!(&out[36..40], &[20; 4]);
        let grey = preprocess(img, &opts(4, Resize::Pad { background: [255, 0, 0] }, 1)).unwrap();
        assert_eq!(grey[0], 76);
    }

    #[test]
    fn bad_requests_are_input_errors_naming_the_problem() {
        let img = || rgb(3, 2, |_, _| [0; 3]);
        let msg = |o: Preprocess, i: Image| preprocess(i, &o).unwrap_err().to_string();
        assert!(msg(opts(0, Resize::Crop, 3), img()).contains("between 1 and 8192 pixels (got 0)"));
        assert!(msg(opts(9000, Resize::Crop, 3), img()).contains("(got 9000)"));
        assert!(msg(opts(8, Resize::Stretch, 2), img()).contains("1 (grey) or 3 (RGB) channels (got 2)"));
        let long = Image::new(MAX_SIDE + 1, 1, 1, vec![0; MAX_SIDE + 1]).unwrap();
        assert!(msg(opts(8, Resize::Crop, 1), long).contains("too large"));
        let thin = Image::new(1, MAX_SIDE, 1, vec![0; MAX_SIDE]).unwrap();
        assert!(msg(opts(MAX_RESOLUTION, Resize::Crop, 1), thin).contains("too elongated"));
        assert!(matches!(preprocess(img(), &opts(0, Resize::Crop, 3)), Err(Error::Input(_))));
    }
}
