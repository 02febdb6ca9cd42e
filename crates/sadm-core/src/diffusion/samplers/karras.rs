//! Euler and Heun steps of the probability-flow ODE dx/dσ = (x − D(x, σ))/σ in σ-space (Karras et al. 2022,
//! "Elucidating the Design Space of Diffusion-Based Generative Models", Algorithm 2 without churn), as
//! k-diffusion's `sample_euler` and `sample_heun` run them on a discrete DDPM model: x = x_t/√ᾱ, the network fed
//! x_t and the fractional timestep of σ (`sigma_to_t`). Heun's last step, to σ = 0, is an Euler step.
use super::schedule::SigmaSteps;
use super::{alpha_bar_of, Denoiser, Network};
use candle_core::{Result, Tensor};

/// The ODE's slope (x − D(x, σ))/σ at x (σ-space) and level σ, the network fed timestep `t`.
fn slope<D: Denoiser>(net: &Network<D>, x: &Tensor, sigma: f64, t: f64) -> Result<Tensor> {
    let alpha_bar = alpha_bar_of(sigma);
    let x0 = net.x0(&(x * alpha_bar.sqrt())?, t, alpha_bar)?;
    (x - x0)? / sigma
}

/// From unit noise `x`; returns x̂0 at σ = 0 (where σ-space and the VP process agree).
pub fn sample<D: Denoiser>(net: &Network<D>, x: Tensor, steps: &SigmaSteps, heun: bool) -> Result<Tensor> {
    let (sig, ts) = (&steps.sigmas, &steps.timesteps);
    let mut x = (x * sig[0])?;
    for i in 0..ts.len() {
        let d = slope(net, &x, sig[i], ts[i])?;
        let dt = sig[i + 1] - sig[i];
        x = if heun && sig[i + 1] > 0.0 {
            let x2 = (&x + (&d * dt)?)?;
            let d2 = slope(net, &x2, sig[i + 1], ts[i + 1])?;
            (&x + ((d + d2)? * (dt / 2.0))?)?
        } else {
            (&x + (d * dt)?)?
        };
    }
    Ok(x)
}
