//! PNG files with the `png` crate: every colour type and bit depth, palettes and `tRNS` expanded to colour and
//! alpha, Adam7 interlacing undone. What libvips (sharp's decoder, the general path) does to the same file, checked
//! on real files: it ignores `gAMA`, `cHRM` and `sRGB` (so does Pillow), scales 16-bit samples to 8 by their high
//! byte (Pillow reads RGB and RGBA that way too), converts an `iCCP` profile to sRGB and applies an `eXIf`
//! orientation. The last two are left to it.
use super::composite::composite;
use super::decode::{exif_orientation, Decoded, MAX_PIXELS};
use super::resample::Image;
use crate::{Error, Result};
use png::{BitDepth, DecodingError, Info, Limits, Transformations};
use std::io::Cursor;

pub const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Why the general decoder must read a file with this metadata, if it must.
fn unhandled(info: &Info) -> Option<&'static str> {
    if info.icc_profile.is_some() {
        return Some("a PNG with an ICC profile (converted to sRGB by the general decoder)");
    }
    if let Some(exif) = &info.exif_metadata {
        // Some writers keep the JPEG segment's prefix.
        let tiff = exif.strip_prefix(b"Exif\0\0".as_slice()).unwrap_or(exif);
        if !matches!(exif_orientation(tiff), Ok(None | Some(1))) {
            return Some("a PNG with an EXIF orientation");
        }
    }
    None
}

fn corrupt(e: DecodingError) -> Error {
    match e {
        DecodingError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::Input("truncated PNG: the file ends inside the image".into())
        }
        e => Error::Input(format!("corrupt PNG: {e}")),
    }
}

/// The image of a PNG file (its first frame), transparency composited onto `background`.
pub fn decode(bytes: &[u8], background: [u8; 3]) -> Result<Decoded> {
    // The size is bounded below (as sharp bounds it), not by the crate's default 64 MiB.
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), Limits { bytes: usize::MAX });
    decoder.set_transformations(Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(corrupt)?;
    if let Some(why) = unhandled(reader.info()) {
        return Ok(Decoded::Unhandled(why));
    }
    let (width, height) = (reader.info().width as usize, reader.info().height as usize);
    if width * height > MAX_PIXELS {
        return Ok(Decoded::Unhandled("an image of more pixels than sharp's limit"));
    }
    let size = reader.output_buffer_size().ok_or_else(|| Error::Input("a PNG too large to decode".into()))?;
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf).map_err(corrupt)?;
    // Up to IEND: a file cut after its image data is as broken as one cut inside it.
    reader.finish().map_err(corrupt)?;
    if let Some(why) = unhandled(reader.info()) {
        return Ok(Decoded::Unhandled(why));
    }
    buf.truncate(frame.buffer_size());
    let samples = match frame.bit_depth {
        BitDepth::Sixteen => buf.chunks_exact(2).map(|s| s[0]).collect(),
        _ => buf,
    };
    let image = match frame.color_type.samples() {
        c @ (1 | 3) => Image::new(width, height, c, samples)?,
        c => composite(width, height, c, &samples, background)?,
    };
    Ok(Decoded::Image(image))
}
