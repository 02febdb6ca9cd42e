//! The networks: the DiT denoiser and the structure discriminator.
pub mod discriminator;
pub mod dit;
