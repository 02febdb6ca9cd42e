//! JPEG files with libjpeg-turbo's decoder as MozJPEG ships it: the library sharp's libvips decodes with, and the
//! code of Pillow's libjpeg-turbo (the integer IDCT, fancy upsampling, fixed-point YCbCr → RGB), so the pixels are
//! theirs bit for bit. The pure-Rust decoders are not: on photo-sized JPEGs zune-jpeg 0.5 differs from Pillow in a
//! quarter of the bytes, by up to 32 levels (4:2:2), and still by up to 4 levels after ADM's crop to 64²;
//! jpeg-decoder 0.3 by up to 4 levels.
//!
//! Baseline, extended and progressive Huffman-coded JPEGs in grey or YCbCr. A file that libvips would turn into
//! other pixels (an ICC profile, an EXIF orientation, CMYK/YCCK, an Adobe marker) or that this build cannot read
//! (arithmetic coding, lossless, 12-bit) is left to it. libjpeg's warnings (corrupt or missing data, which it
//! papers over with grey) are errors, as sharp makes them with `failOn: "warning"`.
use super::decode::{exif_orientation, Decoded, MAX_PIXELS};
use super::resample::Image;
use crate::{Error, Result};
use mozjpeg::{ColorSpace, Decompress};
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error};
use std::os::raw::c_int;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

pub const SIGNATURE: &[u8] = &[0xFF, 0xD8, 0xFF];

/// What the markers before the first scan say about a file.
#[derive(Default)]
struct Header {
    /// The start-of-frame marker and its sample precision.
    frame: Option<(u8, u8)>,
    icc: bool,
    adobe: bool,
    /// An EXIF block gives another orientation than upright, or cannot be read.
    rotated: bool,
}

/// Walks the marker segments up to the first scan. A malformed stream ends the walk: libjpeg reports it.
fn header(bytes: &[u8]) -> Header {
    let mut h = Header::default();
    let mut i = 2;
    while i + 4 <= bytes.len() && bytes[i] == 0xFF {
        let marker = bytes[i + 1];
        match marker {
            0xFF => i += 1, // fill byte
            0x01 | 0xD0..=0xD7 => i += 2,
            0xD9 | 0xDA => break,
            _ => {
                let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
                let Some(seg) = bytes.get(i + 4..i + 2 + len.max(2)) else { break };
                match marker {
                    0xE1 if seg.starts_with(b"Exif\0\0") => {
                        h.rotated |= !matches!(exif_orientation(&seg[6..]), Ok(None | Some(1)));
                    }
                    0xE2 if seg.starts_with(b"ICC_PROFILE\0") => h.icc = true,
                    0xEE if seg.starts_with(b"Adobe") => h.adobe = true,
                    // SOF0-15 less DHT (C4), JPG (C8) and DAC (CC).
                    0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                        h.frame = h.frame.or(Some((marker, seg.first().copied().unwrap_or(0))));
                    }
                    _ => {}
                }
                i += 2 + len;
            }
        }
    }
    h
}

impl Header {
    fn unhandled(&self) -> Option<&'static str> {
        if self.icc {
            return Some("a JPEG with an ICC profile (converted to sRGB by the general decoder)");
        }
        if self.rotated {
            return Some("a JPEG with an EXIF orientation");
        }
        if self.adobe {
            return Some("a JPEG with an Adobe marker");
        }
        match self.frame {
            // Baseline, extended sequential, progressive: Huffman-coded, 8-bit.
            Some((0xC0..=0xC2, 8)) => None,
            Some((0xC0..=0xC2, _)) => Some("a JPEG of other than 8-bit samples"),
            Some(_) => Some("an arithmetic-coded, lossless or hierarchical JPEG"),
            None => None,
        }
    }
}

/// A libjpeg error or warning, carried out of its callbacks by unwinding (the C code is built to unwind through).
struct LibjpegError(String);

fn message(cinfo: &mut jpeg_common_struct) -> String {
    let mut buffer = [0u8; 80];
    unsafe {
        let err = &*cinfo.err;
        if let Some(format) = err.format_message {
            // libjpeg writes into the buffer; the binding types it as a shared reference.
            let format: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8) = std::mem::transmute(format);
            format(cinfo, buffer.as_mut_ptr());
        }
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    resume_unwind(Box::new(LibjpegError(message(cinfo))));
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    // Level -1 is a warning; higher levels are trace messages.
    if level < 0 {
        resume_unwind(Box::new(LibjpegError(message(cinfo))));
    }
}

fn error_mgr() -> jpeg_error_mgr {
    unsafe {
        let mut err: jpeg_error_mgr = std::mem::zeroed();
        jpeg_std_error(&mut err);
        err.error_exit = Some(error_exit);
        err.emit_message = Some(emit_message);
        err
    }
}

fn io_error(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::Input("truncated JPEG: the file ends inside the image".into()),
        _ => Error::Input(format!("corrupt JPEG: {e}")),
    }
}

/// The image of a JPEG file: 1 channel for grey, else RGB.
pub fn decode(bytes: &[u8]) -> Result<Decoded> {
    if let Some(why) = header(bytes).unhandled() {
        return Ok(Decoded::Unhandled(why));
    }
    match catch_unwind(AssertUnwindSafe(|| read(bytes))) {
        Ok(r) => r,
        Err(payload) => match payload.downcast::<LibjpegError>() {
            Ok(e) => Err(Error::Input(format!("corrupt JPEG: {}", e.0))),
            Err(other) => resume_unwind(other),
        },
    }
}

fn read(bytes: &[u8]) -> Result<Decoded> {
    let jpeg = Decompress::builder().with_err(error_mgr()).from_mem(bytes).map_err(io_error)?;
    let (width, height) = jpeg.size();
    if width * height > MAX_PIXELS {
        return Ok(Decoded::Unhandled("an image of more pixels than sharp's limit"));
    }
    // libjpeg's reading of the markers and component ids, which libvips shares.
    let (mut scan, channels) = match jpeg.color_space() {
        ColorSpace::JCS_GRAYSCALE => (jpeg.grayscale().map_err(io_error)?, 1),
        ColorSpace::JCS_YCbCr => (jpeg.rgb().map_err(io_error)?, 3),
        _ => return Ok(Decoded::Unhandled("a JPEG in RGB, CMYK or YCCK")),
    };
    let pixels: Vec<u8> = scan.read_scanlines().map_err(io_error)?;
    scan.finish().map_err(io_error)?;
    Ok(Decoded::Image(Image::new(width, height, channels, pixels)?))
}
