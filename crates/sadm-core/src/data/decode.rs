//! Image files decoded in Rust for the common cases, so that a folder of PNGs or JPEGs does not pay sharp's
//! per-file pipeline: PNG (every colour type and bit depth) and Huffman-coded JPEG (grey or YCbCr, baseline or
//! progressive), with transparency composited onto the background as Pillow does ([`super::composite`]).
//!
//! Where the general decoder (sharp: libvips) would show a file differently, this one does not try: files with an
//! ICC profile or an EXIF orientation, CMYK JPEGs and every other format come back [`Decoded::Unhandled`] and go
//! to sharp. Otherwise the two agree byte for byte on opaque images (the same JPEG code, a lossless PNG), and on
//! transparent ones this path is Pillow's exactly where libvips' flatten differs from Pillow by up to a level. A
//! file of a handled format that does not decode is an error naming what is wrong, not a fallback: sharp would
//! fail on it too, and the cache lists it as bad.
use super::preprocess::{preprocess, Preprocess};
use super::resample::Image;
use super::{decode_jpeg, decode_png};
use crate::Result;

/// sharp's `limitInputPixels` default (0x3FFF²): anything larger is left to sharp, which refuses it in its words.
pub const MAX_PIXELS: usize = 0x3FFF * 0x3FFF;

/// What [`decode`] made of a file.
#[derive(Debug)]
pub enum Decoded {
    /// 8-bit grey (1 channel) or RGB, upright, without alpha.
    Image(Image),
    /// The general decoder must read this file; why.
    Unhandled(&'static str),
}

/// The pixels of an image file's bytes, transparency composited onto `background`.
pub fn decode(bytes: &[u8], background: [u8; 3]) -> Result<Decoded> {
    if bytes.starts_with(decode_png::SIGNATURE) {
        decode_png::decode(bytes, background)
    } else if bytes.starts_with(decode_jpeg::SIGNATURE) {
        decode_jpeg::decode(bytes)
    } else {
        Ok(Decoded::Unhandled("not a PNG or JPEG file"))
    }
}

/// A file's bytes decoded and preprocessed: `opts.channels × resolution²` CHW bytes, or `None` when the general
/// decoder must read it.
pub fn decode_preprocessed(bytes: &[u8], background: [u8; 3], opts: &Preprocess) -> Result<Option<Vec<u8>>> {
    match decode(bytes, background)? {
        Decoded::Image(image) => Ok(Some(preprocess(image, opts)?)),
        Decoded::Unhandled(_) => Ok(None),
    }
}

/// The orientation (tag 0x0112) in the first IFD of EXIF data (a TIFF header and IFDs), `None` when it has none;
/// `Err` when the data cannot be read, so that the caller leaves the file to a decoder that can.
pub(crate) fn exif_orientation(tiff: &[u8]) -> std::result::Result<Option<u16>, ()> {
    let little = match tiff.get(..4) {
        Some(b"II\x2a\x00") => true,
        Some(b"MM\x00\x2a") => false,
        _ => return Err(()),
    };
    let u16_at = |i: usize| {
        let b: [u8; 2] = tiff.get(i..i + 2).ok_or(())?.try_into().unwrap();
        Ok::<_, ()>(if little { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    };
    let u32_at = |i: usize| {
        let b: [u8; 4] = tiff.get(i..i + 4).ok_or(())?.try_into().unwrap();
        Ok::<_, ()>(if little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    };
    let ifd = u32_at(4)? as usize;
    for k in 0..u16_at(ifd)? as usize {
        let entry = ifd + 2 + 12 * k;
        if u16_at(entry)? == 0x0112 {
            // One SHORT, stored in the first two bytes of the value field.
            return match (u16_at(entry + 2)?, u32_at(entry + 4)?) {
                (3, 1) => Ok(Some(u16_at(entry + 8)?)),
                _ => Err(()),
            };
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::checkpoint::load_tensors;
    use crate::data::composite::over;
    use crate::data::preprocess::Resize;
    use crate::Error;
    use candle_core::{Device, Tensor};
    use png::{BitDepth, ColorType};
    use std::collections::HashMap;
    use std::path::Path;

    fn reference() -> (HashMap<String, Tensor>, serde_json::Map<String, serde_json::Value>) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pillow_decode_reference.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        (load_tensors(&path, &Device::Cpu).unwrap(), header["__metadata__"].as_object().unwrap().clone())
    }

    fn u8s(t: &Tensor) -> Vec<u8> {
        t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
    }

    /// HWC RGB, grey spread to three channels.
    fn rgb(image: &Image) -> Vec<u8> {
        match image.channels {
            1 => image.data.iter().flat_map(|&v| [v; 3]).collect(),
            _ => image.data.clone(),
        }
    }

    fn decoded(bytes: &[u8], background: [u8; 3]) -> Image {
        match decode(bytes, background).unwrap() {
            Decoded::Image(image) => image,
            Decoded::Unhandled(why) => panic!("unhandled: {why}"),
        }
    }

    #[test]
    fn png_and_jpeg_files_decode_to_pillows_pixels() {
        let (tensors, meta) = reference();
        let unhandled: Vec<&str> = meta["unhandled"].as_str().unwrap().split(',').collect();
        let (mut files, mut jpeg_bytes, mut compared) = (0, 0, 0);
        for (key, file) in &tensors {
            let Some(name) = key.strip_prefix("file.") else { continue };
            let bytes = u8s(file);
            files += 1;
            if unhandled.contains(&name) {
                // The reason names what sharp does differently (Pillow's CMYK JPEGs carry an Adobe marker).
                let cause = [("exif", "EXIF orientation"), ("icc", "ICC profile"), ("cmyk", "Adobe marker")]
                    .into_iter()
                    .find_map(|(k, cause)| name.starts_with(k).then_some(cause))
                    .unwrap();
                match decode(&bytes, [255; 3]).unwrap() {
                    Decoded::Unhandled(why) => assert!(why.contains(cause), "{name}: {why}"),
                    Decoded::Image(_) => panic!("{name} should be left to sharp"),
                }
                continue;
            }
            let cases: Vec<(&str, [u8; 3])> = if tensors.contains_key(&format!("rgb.{name}")) {
                vec![("", [255, 255, 255]), ("", [0, 100, 201])]
            } else {
                vec![("white.", [255, 255, 255]), ("mixed.", [0, 100, 201])]
            };
            for (prefix, background) in cases {
                let want = u8s(&tensors[&format!("rgb.{prefix}{name}")]);
                let got = rgb(&decoded(&bytes, background));
                assert_eq!(got.len(), want.len(), "{name}");
                let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
                // The same libjpeg-turbo code, and lossless PNGs: no byte differs.
                assert_eq!(differ, 0, "{name} on {background:?}: {differ} of {} bytes differ", want.len());
                compared += want.len();
                if name.ends_with(".jpg") {
                    jpeg_bytes += want.len();
                }
            }
        }
        eprintln!("{files} files, {compared} bytes equal to Pillow's ({jpeg_bytes} of JPEGs)");
        assert!(files >= 30 && jpeg_bytes > 100_000, "{files} files, {jpeg_bytes} JPEG bytes");
    }

    type Encoder<'a> = png::Encoder<'a, &'a mut Vec<u8>>;

    /// A `w`×`h` PNG of `data` (rows as the format packs them), `f` setting its chunks.
    fn png_file(w: u32, h: u32, ct: ColorType, bd: BitDepth, data: &[u8], f: impl FnOnce(&mut Encoder)) -> Vec<u8> {
        let mut out = vec![];
        let mut e = png::Encoder::new(&mut out, w, h);
        e.set_color(ct);
        e.set_depth(bd);
        f(&mut e);
        e.write_header().unwrap().write_image_data(data).unwrap();
        out
    }

    /// Packs 1/2/4-bit samples (values below 2^bits) into PNG rows.
    fn pack(samples: &[u8], width: usize, bits: usize) -> Vec<u8> {
        samples
            .chunks(width)
            .flat_map(|row| row.chunks(8 / bits))
            .map(|c| c.iter().enumerate().fold(0u8, |acc, (i, &v)| acc | v << (8 - bits * (i + 1))))
            .collect()
    }

    #[test]
    fn pngs_of_every_colour_type_and_bit_depth_decode_losslessly() {
        let (w, h) = (13usize, 5usize);
        let n = w * h;
        let vals: Vec<u8> = (0..3 * n).map(|i| (i * 47 % 256) as u8).collect();
        let grey = &vals[..n];
        let png = |c, d, data: &[u8]| png_file(w as u32, h as u32, c, d, data, |_| {});
        assert_eq!(decoded(&png(ColorType::Grayscale, BitDepth::Eight, grey), [0; 3]).data, grey);
        assert_eq!(decoded(&png(ColorType::Rgb, BitDepth::Eight, &vals), [0; 3]).data, vals);
        // Low bit depths scaled to the full range: 1 bit → 0/255, 2 bits ×85, 4 bits ×17.
        for (bits, depth, scale) in [(1, BitDepth::One, 255u8), (2, BitDepth::Two, 85), (4, BitDepth::Four, 17)] {
            let small: Vec<u8> = grey.iter().map(|v| v >> (8 - bits)).collect();
            let image = decoded(&png(ColorType::Grayscale, depth, &pack(&small, w, bits)), [0; 3]);
            assert_eq!(image.data, small.iter().map(|v| v * scale).collect::<Vec<_>>(), "{bits}-bit grey");
        }
        // 16 bits: the high byte of each sample, as libvips takes it (not a rounding of v / 257).
        let wide: Vec<u8> = vals.iter().flat_map(|&v| [v, 0xFF - v]).collect();
        assert_eq!(decoded(&png(ColorType::Rgb, BitDepth::Sixteen, &wide), [0; 3]).data, vals);
        assert_eq!(decoded(&png(ColorType::Grayscale, BitDepth::Sixteen, &wide[..2 * n]), [0; 3]).data, grey);
        // A 4-bit palette with transparency: colours from the palette, composited with their alpha.
        let palette: Vec<u8> = (0..48).map(|i| (i * 5 + 1) as u8).collect();
        let alphas: Vec<u8> = (0..16).map(|i| (i * 17) as u8).collect();
        let index: Vec<u8> = (0..n).map(|i| (i % 16) as u8).collect();
        let file = png_file(w as u32, h as u32, ColorType::Indexed, BitDepth::Four, &pack(&index, w, 4), |e| {
            e.set_palette(palette.clone());
            e.set_trns(alphas.clone());
        });
        let bg = [9, 99, 199];
        let want: Vec<u8> = (0..3 * n)
            .map(|k| (index[k / 3] as usize, k % 3))
            .map(|(i, c)| over(palette[3 * i + c], alphas[i], bg[c]))
            .collect();
        assert_eq!(decoded(&file, bg).data, want);
        // Grey + alpha and RGBA, 8 and 16 bits (alpha also by its high byte).
        let ga: Vec<u8> = (0..n).flat_map(|i| [grey[i], vals[n + i]]).collect();
        let want: Vec<u8> = (0..n).flat_map(|i| [7, 8, 9].map(|b| over(grey[i], vals[n + i], b))).collect();
        assert_eq!(decoded(&png(ColorType::GrayscaleAlpha, BitDepth::Eight, &ga), [7, 8, 9]).data, want);
        let ga16: Vec<u8> = ga.iter().flat_map(|&v| [v, 0x80]).collect();
        assert_eq!(decoded(&png(ColorType::GrayscaleAlpha, BitDepth::Sixteen, &ga16), [7, 8, 9]).data, want);
        let rgba: Vec<u8> = (0..n).flat_map(|i| [vals[3 * i], vals[3 * i + 1], vals[3 * i + 2], grey[i]]).collect();
        let want: Vec<u8> = (0..3 * n).map(|k| over(vals[k], grey[k / 3], 255)).collect();
        assert_eq!(decoded(&png(ColorType::Rgba, BitDepth::Eight, &rgba), [255; 3]).data, want);
        let rgba16: Vec<u8> = rgba.iter().flat_map(|&v| [v, 0x7F]).collect();
        assert_eq!(decoded(&png(ColorType::Rgba, BitDepth::Sixteen, &rgba16), [255; 3]).data, want);
        // A 16-bit transparency key matches whole samples: 0x2A00 is transparent, 0x2A01 (same high byte) is not.
        let samples = [0x2A, 0x00, 0x2A, 0x01];
        let keyed = png_file(2, 1, ColorType::Grayscale, BitDepth::Sixteen, &samples, |e| e.set_trns(vec![0x2A, 0x00]));
        assert_eq!(decoded(&keyed, [200, 201, 202]).data, vec![200, 201, 202, 0x2A, 0x2A, 0x2A]);
    }

    #[test]
    fn broken_files_are_errors_and_other_formats_are_left_to_sharp() {
        let (tensors, _) = reference();
        let file = |name: &str| u8s(&tensors[&format!("file.{name}")]);
        let error = |bytes: &[u8]| match decode(bytes, [255; 3]) {
            Err(Error::Input(m)) => m,
            other => panic!("expected an error, got {other:?}"),
        };
        for name in ["rgb.png", "420.jpg", "420-progressive.jpg", "grey.jpg"] {
            let bytes = file(name);
            let kind = if name.ends_with(".png") { "PNG" } else { "JPEG" };
            for cut in [bytes.len() / 2, bytes.len() - 30] {
                let m = error(&bytes[..cut]);
                assert!(m.contains(kind) && !m.contains('\n'), "{name} cut at {cut}: {m}");
            }
            let mut flipped = bytes.clone();
            for i in (bytes.len() / 3..bytes.len() * 2 / 3).step_by(5) {
                flipped[i] ^= 0x5A;
            }
            assert!(error(&flipped).contains(kind), "{name} corrupted");
        }
        // The PNG cut just before IEND: its image data is whole, but the file is not.
        let png = file("rgb.png");
        assert!(error(&png[..png.len() - 12]).contains("PNG"));
        assert!(error(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16]).contains("JPEG"));
        for other in [&b""[..], b"GIF89a..", b"RIFF\0\0\0\0WEBPVP8L", b"not an image\n", b"\x89PN"] {
            let left = matches!(decode(other, [0; 3]).unwrap(), Decoded::Unhandled("not a PNG or JPEG file"));
            assert!(left, "{other:?}");
        }
        // What this build of libjpeg does not decode is sharp's to refuse or read, not an error here: arithmetic
        // coding (SOF9) and 12-bit samples, made by editing a baseline file's frame header.
        let jpeg = file("444.jpg");
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        let (mut arithmetic, mut twelve) = (jpeg.clone(), jpeg);
        arithmetic[sof + 1] = 0xC9;
        twelve[sof + 4] = 12;
        for (bytes, cause) in [(arithmetic, "arithmetic"), (twelve, "8-bit")] {
            match decode(&bytes, [0; 3]).unwrap() {
                Decoded::Unhandled(why) => assert!(why.contains(cause), "{why}"),
                Decoded::Image(_) => panic!("a {cause} JPEG decoded"),
            }
        }
    }

    /// A TIFF header and one IFD of (tag, type, count, value) entries, values stored as the type's width.
    fn tiff(big_endian: bool, entries: &[(u16, u16, u32, u32)]) -> Vec<u8> {
        let u16b = |v: u16| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        let u32b = |v: u32| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut t = if big_endian { b"MM\x00\x2a".to_vec() } else { b"II\x2a\x00".to_vec() };
        t.extend(u32b(8));
        t.extend(u16b(entries.len() as u16));
        for &(tag, kind, count, value) in entries {
            t.extend(u16b(tag));
            t.extend(u16b(kind));
            t.extend(u32b(count));
            match kind {
                3 => t.extend([&u16b(value as u16)[..], &[0, 0]].concat()),
                _ => t.extend(u32b(value)),
            }
        }
        t.extend(u32b(0));
        t
    }

    #[test]
    fn exif_orientation_is_read_from_either_byte_order() {
        assert_eq!(exif_orientation(&tiff(true, &[(0x0100, 3, 1, 64), (0x0112, 3, 1, 6)])), Ok(Some(6)));
        assert_eq!(exif_orientation(&tiff(false, &[(0x0112, 3, 1, 3)])), Ok(Some(3)));
        assert_eq!(exif_orientation(&tiff(false, &[(0x0110, 2, 4, 0x0063_6261)])), Ok(None));
        assert_eq!(exif_orientation(b"II\x2a\x00\xff\x00\x00\x00"), Err(()));
        assert_eq!(exif_orientation(b"XX\x2a\x00"), Err(()));
        let mut cut = tiff(true, &[(0x0112, 3, 1, 6)]);
        cut.truncate(16);
        assert_eq!(exif_orientation(&cut), Err(()));
        // As a LONG it is not what readers expect: left to sharp.
        assert_eq!(exif_orientation(&tiff(false, &[(0x0112, 4, 1, 1)])), Err(()));
    }

    #[test]
    fn decode_preprocessed_is_preprocess_of_what_decode_gives() {
        let (tensors, _) = reference();
        let opts = Preprocess { resolution: 16, resize: Resize::Crop, channels: 3 };
        for (name, handled) in [("420.jpg", true), ("la.png", true), ("cmyk.jpg", false), ("icc.png", false)] {
            let bytes = u8s(&tensors[&format!("file.{name}")]);
            let out = decode_preprocessed(&bytes, [1, 2, 3], &opts).unwrap();
            assert_eq!(out.is_some(), handled, "{name}");
            if let Some(out) = out {
                assert_eq!(out, preprocess(decoded(&bytes, [1, 2, 3]), &opts).unwrap(), "{name}");
            }
        }
    }
}
