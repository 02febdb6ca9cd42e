//! DiT's samplers: ancestral DDPM (with the learned variance when the model has one) and DDIM, stepping through a
//! respaced process (`GaussianDiffusion::respaced_at`) from its last index to 0.
use super::{Denoiser, Network};
use crate::diffusion::GaussianDiffusion;
use candle_core::{Result, Tensor};

/// DDPM when `eta` is None, DDIM with stochasticity η otherwise. Noise is drawn at every step, used or not, so a
/// seed gives the same stream whatever η is.
pub fn sample<D: Denoiser>(
    process: &GaussianDiffusion,
    net: &Network<D>,
    mut x: Tensor,
    eta: Option<f64>,
    noise: &mut dyn FnMut() -> Result<Tensor>,
) -> Result<Tensor> {
    let denoised = |x0: Tensor| net.denoised(x0);
    for i in (0..process.num_timesteps()).rev() {
        let out = net.output(&x, process.timestep_map[i] as f64)?;
        let z = noise()?;
        x = match eta {
            None => process.p_sample(&out, &x, i, &denoised, &z)?,
            Some(eta) => process.ddim_sample(&out, &x, i, &denoised, eta, &z)?,
        };
    }
    Ok(x)
}
