//! UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
//! Models") as diffusers' `UniPCMultistepScheduler` runs it by default: order 2, B(h) = e^h − 1 ("bh2"), in the data
//! prediction, lower order at the start and the last step, final σ = 0. Each step first corrects the sample the
//! previous step predicted, with the network's x̂0 at it (UniC: no extra evaluation), then predicts the next
//! (UniP-2, which is DPM-Solver++ 2M's update).
use super::schedule::SigmaSteps;
use super::{alpha_bar_of, combine, dpm_solver, Denoiser, Network};
use candle_core::{Result, Tensor};

/// α_t, σ_t and λ_t = log(α_t/σ_t) of the VP process at noise level σ > 0.
fn vp(sigma: f64) -> (f64, f64, f64) {
    let alpha = alpha_bar_of(sigma).sqrt();
    (alpha, sigma * alpha, -sigma.ln())
}

/// UniC's weights ρ for `order` 1 or 2, `r1` the previous step's log-SNR offset over h, at hh = −h: diffusers'
/// `rhos_c` from its φ recursion.
fn corrector_rhos(order: usize, r1: f64, hh: f64) -> Vec<f64> {
    if order == 1 {
        return vec![0.5];
    }
    let b_h = hh.exp_m1();
    let phi2 = hh.exp_m1() / hh - 1.0;
    let phi3 = phi2 / hh - 0.5;
    let (b1, b2) = (phi2 / b_h, phi3 * 2.0 / b_h);
    // [[1, 1], [r1, 1]] · ρ = b
    let rho0 = (b1 - b2) / (1.0 - r1);
    vec![rho0, b1 - rho0]
}

pub fn sample<D: Denoiser>(net: &Network<D>, mut x: Tensor, steps: &SigmaSteps) -> Result<Tensor> {
    let (n, sig) = (steps.timesteps.len(), &steps.sigmas);
    // x̂0 of the last steps, newest last; the sample before the last predictor and that predictor's order.
    let mut history: Vec<Tensor> = Vec::with_capacity(3);
    let mut last: Option<(Tensor, usize)> = None;
    for i in 0..n {
        let model_t = net.x0(&x, steps.timesteps[i], alpha_bar_of(sig[i]))?;
        if let Some((x_prev, order)) = &last {
            // UniC: from x_{i−1} (σ_{i−1}) to σ_i again, with x̂0 at the predicted x_i.
            let (alpha_t, sigma_t, lambda_t) = vp(sig[i]);
            let (_, sigma_s0, lambda_s0) = vp(sig[i - 1]);
            let h = lambda_t - lambda_s0;
            let hh = -h;
            let m0 = &history[history.len() - 1];
            let r1 = if *order == 2 { (vp(sig[i - 2]).2 - lambda_s0) / h } else { 0.0 };
            let rhos = corrector_rhos(*order, r1, hh);
            let c = -alpha_t * hh.exp_m1();
            let d1_t = (&model_t - m0)?;
            let mut terms = vec![(x_prev, sigma_t / sigma_s0), (m0, c), (&d1_t, c * rhos[rhos.len() - 1])];
            let d1;
            if *order == 2 {
                d1 = ((&history[history.len() - 2] - m0)? / r1)?;
                terms.push((&d1, c * rhos[0]));
            }
            x = combine(&terms)?;
        }
        history.push(model_t);
        if history.len() > 2 {
            history.remove(0);
        }
        let order = 2.min(n - i).min(i + 1);
        last = Some((x.clone(), order));
        // UniP: x_{i+1} from x_i; order 2 is DPM-Solver++ 2M's midpoint update.
        let prev = (order == 2).then(|| (&history[history.len() - 2], sig[i - 1]));
        x = dpm_solver::ode_step(&x, &history[history.len() - 1], prev, sig[i], sig[i + 1])?;
    }
    Ok(x)
}
