//! Training data: turning users' images into the pixels DiT's pipeline would give it (design §6).
pub mod preprocess;
pub mod resample;
