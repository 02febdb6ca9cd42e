//! DPM-Solver++ 2M (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
//! Models") and its SDE variant, as diffusers' `DPMSolverMultistepScheduler` runs them (`algorithm_type`
//! "dpmsolver++"/"sde-dpmsolver++", `solver_order=2`, `solver_type="midpoint"`, `final_sigmas_type="zero"`).
//! With λ = −log σ and h = λ_t − λ_s, each step is exact for the linear part of the ODE in the data prediction
//! x̂0; the second-order steps add the divided difference of the last two x̂0. The first step has no history and
//! the last goes to σ = 0, where h is infinite and a second-order term is NaN: both are first order.
use super::schedule::SigmaSteps;
use super::{alpha_bar_of, combine, Denoiser, Network};
use candle_core::{Result, Tensor};

/// α_t and σ_t of the VP process at noise level σ (x_t = α_t·x0 + σ_t·ε).
fn vp(sigma: f64) -> (f64, f64) {
    let alpha = alpha_bar_of(sigma).sqrt();
    (alpha, sigma * alpha)
}

pub fn sample<D: Denoiser>(net: &Network<D>, x: Tensor, steps: &SigmaSteps, sde: bool, noise: &mut dyn FnMut() -> Result<Tensor>) -> Result<Tensor> {
    sample_order(net, x, steps, sde, 2, noise)
}

/// The divided difference D1 = (x̂0_s0 − x̂0_s1)/r0 of a second-order step from σ_s0 to σ_t, r0 = h_0/h.
fn divided_difference(d0: &Tensor, m1: &Tensor, s1: f64, s0: f64, t: f64) -> Result<Tensor> {
    let (h, h0) = ((s0 / t).ln(), (s1 / s0).ln());
    (d0 - m1)? * (h / h0)
}

/// One DPM-Solver++ step of the ODE from x at σ_s0 to σ_t with x̂0 `d0`: first order, or second order (midpoint)
/// when `prev` gives the previous step's x̂0 and level. UniPC's predictor is this update.
pub(super) fn ode_step(x: &Tensor, d0: &Tensor, prev: Option<(&Tensor, f64)>, s0: f64, t: f64) -> Result<Tensor> {
    let (alpha_t, sigma_t) = vp(t);
    let (_, sigma_s0) = vp(s0);
    // e^{−h} = σ_t/σ_s, exactly 0 at the final σ = 0.
    let c = alpha_t * (1.0 - t / s0);
    let d1 = prev.map(|(m1, s1)| divided_difference(d0, m1, s1, s0, t)).transpose()?;
    let mut terms = vec![(x, sigma_t / sigma_s0), (d0, c)];
    if let Some(d1) = &d1 {
        terms.push((d1, 0.5 * c));
    }
    combine(&terms)
}

/// With `order` 1, every step is first order (DDIM's, for the ODE).
pub(super) fn sample_order<D: Denoiser>(
    net: &Network<D>,
    mut x: Tensor,
    steps: &SigmaSteps,
    sde: bool,
    order: usize,
    noise: &mut dyn FnMut() -> Result<Tensor>,
) -> Result<Tensor> {
    let n = steps.timesteps.len();
    // The previous step's x̂0 and its noise level.
    let mut last: Option<(Tensor, f64)> = None;
    for i in 0..n {
        let (s0, t) = (steps.sigmas[i], steps.sigmas[i + 1]);
        let d0 = net.x0(&x, steps.timesteps[i], alpha_bar_of(s0))?;
        let prev = last.as_ref().filter(|_| order == 2 && i + 1 < n).map(|(m1, s1)| (m1, *s1));
        x = if sde {
            let (alpha_t, sigma_t) = vp(t);
            let (_, sigma_s0) = vp(s0);
            // e^{−h} = σ_t/σ_s, exactly 0 at the final σ = 0.
            let e = t / s0;
            let z = noise()?;
            let c = alpha_t * (1.0 - e * e);
            let d1 = prev.map(|(m1, s1)| divided_difference(&d0, m1, s1, s0, t)).transpose()?;
            let mut terms = vec![(&x, sigma_t / sigma_s0 * e), (&d0, c), (&z, sigma_t * (1.0 - e * e).sqrt())];
            if let Some(d1) = &d1 {
                terms.push((d1, 0.5 * c));
            }
            combine(&terms)?
        } else {
            ode_step(&x, &d0, prev, s0, t)?
        };
        last = Some((d0, s0));
    }
    Ok(x)
}
