//! The networks: the DiT denoiser, the structure discriminator and Stable Diffusion's VAE.
pub mod discriminator;
pub mod dit;
pub mod vae;
