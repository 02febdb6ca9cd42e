//! Training data: turning users' images into the pixels DiT's pipeline would give it (design §6).
pub mod composite;
pub mod decode;
pub mod decode_jpeg;
pub mod decode_png;
pub mod preprocess;
pub mod resample;
