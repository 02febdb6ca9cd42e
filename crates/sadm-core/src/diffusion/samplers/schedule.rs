//! Where a sampler evaluates the network: timestep spacings over the training steps, and the noise levels
//! σ = √((1 − ᾱ)/ᾱ) of the σ-space solvers, each defined as the reference that introduced it computes it
//! (diffusers' schedulers, k-diffusion), rounding included.
use crate::error::{Error, Result};

/// How the sampling timesteps are spread over the training steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    /// Evenly from the last step to the first (DiT's `space_timesteps` for DDPM/DDIM; diffusers' "linspace").
    Linspace,
    /// Multiples of ⌊T/N⌋ from 0 (diffusers' "leading", Stable Diffusion's DDIM).
    Leading,
    /// Steps counted back from the last, T − 1, T − 1 − T/N, … (diffusers' "trailing").
    Trailing,
    /// Karras et al.'s σ schedule, ρ = 7, between the training schedule's σ_min and σ_max (σ-space solvers only).
    Karras,
}

impl Spacing {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "linspace" => Self::Linspace,
            "leading" => Self::Leading,
            "trailing" => Self::Trailing,
            "karras" => Self::Karras,
            s => return Err(Error::Input(format!("unknown spacing '{s}': use \"linspace\", \"leading\", \"trailing\" or \"karras\""))),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Linspace => "linspace",
            Self::Leading => "leading",
            Self::Trailing => "trailing",
            Self::Karras => "karras",
        }
    }
}

/// numpy's `round`: halves to even. Rust's `round` takes halves away from zero, which moves a timestep by one
/// where i·(T − 1)/N is a half (T = 1000, N = 6: 166.5 and 832.5).
fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// DiT's `space_timesteps` for a single section: `n` evenly spaced steps of `0..t`, ascending (= diffusers' DDIM
/// "linspace").
pub fn space_timesteps(t: usize, n: usize) -> Vec<usize> {
    if n <= 1 {
        return vec![0];
    }
    let stride = (t - 1) as f64 / (n - 1) as f64;
    let mut out: Vec<usize> = (0..n).map(|i| np_round(i as f64 * stride) as usize).collect();
    out.dedup();
    out
}

/// The timesteps DDPM and DDIM step through, ascending: `linspace` is DiT's; `leading` and `trailing` are
/// diffusers' `DDIMScheduler`'s.
pub fn ancestral_timesteps(spacing: Spacing, t: usize, n: usize) -> Result<Vec<usize>> {
    let mut out: Vec<usize> = match spacing {
        Spacing::Linspace => return Ok(space_timesteps(t, n)),
        Spacing::Leading => (0..n).map(|i| i * (t / n)).collect(),
        Spacing::Trailing => trailing(t, n),
        Spacing::Karras => return Err(Error::Input("the karras spacing is a σ schedule: use it with dpm++2m, dpm++2m-sde, unipc, euler or heun".into())),
    };
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `np.arange(T, 0, -T/N).round() - 1`, descending.
fn trailing(t: usize, n: usize) -> Vec<usize> {
    let ratio = t as f64 / n as f64;
    let len = (t as f64 / ratio).ceil() as usize;
    (0..len).map(|i| (np_round(t as f64 - i as f64 * ratio) as i64 - 1).max(0) as usize).collect()
}

/// The training schedule's σ_t = √((1 − ᾱ_t)/ᾱ_t), ascending in t.
pub fn training_sigmas(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
}

/// Karras et al.'s n noise levels from `sigma_max` down to `sigma_min`, ρ = 7 (k-diffusion's `get_sigmas_karras`
/// without the appended 0).
pub fn karras_sigmas(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let (lo, hi) = (sigma_min.powf(1.0 / RHO), sigma_max.powf(1.0 / RHO));
    (0..n)
        .map(|i| {
            let ramp = if n == 1 { 0.0 } else { i as f64 / (n - 1) as f64 };
            (hi + ramp * (lo - hi)).powf(RHO)
        })
        .collect()
}

/// The (fractional) training timestep of noise level σ: log σ interpolated linearly between the two neighbouring
/// steps, clamped to [0, T − 1] (k-diffusion's `sigma_to_t`, diffusers' `_sigma_to_t`).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // The last step whose log σ is at most this one's (0 below the first), and at most T − 2.
    let low = log_sigmas.partition_point(|&l| l <= log_sigma).saturating_sub(1).min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// The noise level at a fractional training timestep: log σ interpolated between its floor and ceiling
/// (k-diffusion's `t_to_sigma`).
pub fn t_to_sigma(t: f64, log_sigmas: &[f64]) -> f64 {
    let (lo, hi) = (t.floor() as usize, t.ceil() as usize);
    let w = t - t.floor();
    ((1.0 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()
}

/// Where a σ-space solver steps: the timestep fed to the network at each step and the noise level there, then the
/// final level 0.
#[derive(Clone, Debug, PartialEq)]
pub struct SigmaSteps {
    /// Per step, descending; fractional where the spacing falls between training steps.
    pub timesteps: Vec<f64>,
    /// `timesteps.len() + 1` levels, descending, ending at 0.
    pub sigmas: Vec<f64>,
}

/// DPM-Solver's steps as diffusers' `DPMSolverMultistepScheduler.set_timesteps` places them: integer timesteps
/// (`linspace` over N + 1 points without the last, `leading`, `trailing`; `karras` rounds its levels' timesteps)
/// and the final level 0 (`final_sigmas_type="zero"`).
pub fn dpm_solver_steps(spacing: Spacing, alphas_cumprod: &[f64], n: usize) -> SigmaSteps {
    let t = alphas_cumprod.len();
    let sig = training_sigmas(alphas_cumprod);
    let log_sigmas: Vec<f64> = sig.iter().map(|s| s.ln()).collect();
    let (timesteps, mut sigmas): (Vec<f64>, Vec<f64>) = match spacing {
        Spacing::Karras => {
            let levels = karras_sigmas(n, sig[0], sig[t - 1]);
            (levels.iter().map(|&s| np_round(sigma_to_t(s, &log_sigmas))).collect(), levels)
        }
        _ => {
            let ts: Vec<usize> = match spacing {
                Spacing::Linspace => (1..=n).rev().map(|j| np_round(j as f64 * ((t - 1) as f64 / n as f64)) as usize).collect(),
                Spacing::Leading => (1..=n).rev().map(|j| j * (t / (n + 1))).collect(),
                _ => trailing(t, n),
            };
            (ts.iter().map(|&i| i as f64).collect(), ts.iter().map(|&i| sig[i]).collect())
        }
    };
    sigmas.push(0.0);
    SigmaSteps { timesteps, sigmas }
}

/// Euler's and Heun's levels as k-diffusion builds them for a discrete DDPM model: `karras` between the training
/// σ_min and σ_max (`get_sigmas_karras`), `linspace` at n evenly spaced fractional timesteps (`get_sigmas`), and
/// `leading`/`trailing` at DPM-Solver's integer timesteps; then 0. The network sees `sigma_to_t` of each level.
pub fn karras_solver_steps(spacing: Spacing, alphas_cumprod: &[f64], n: usize) -> SigmaSteps {
    let t = alphas_cumprod.len();
    let sig = training_sigmas(alphas_cumprod);
    let log_sigmas: Vec<f64> = sig.iter().map(|s| s.ln()).collect();
    let mut sigmas = match spacing {
        Spacing::Karras => karras_sigmas(n, sig[0], sig[t - 1]),
        Spacing::Linspace => (0..n)
            .map(|i| {
                // torch.linspace(T − 1, 0, n) in float32, as k-diffusion computes it.
                let ti = if n == 1 { (t - 1) as f64 } else { (t - 1) as f64 - i as f64 * ((t - 1) as f64 / (n - 1) as f64) };
                t_to_sigma(ti as f32 as f64, &log_sigmas)
            })
            .collect(),
        _ => dpm_solver_steps(spacing, alphas_cumprod, n).timesteps.iter().map(|&ti| sig[ti as usize]).collect(),
    };
    let timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
    sigmas.push(0.0);
    SigmaSteps { timesteps, sigmas }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear_abar() -> Vec<f64> {
        let mut p = 1.0;
        (0..1000).map(|i| {
            p *= 1.0 - (1e-4 + (0.02 - 1e-4) * i as f64 / 999.0);
            p
        }).collect()
    }

    #[test]
    fn space_timesteps_matches_reference() {
        let s = space_timesteps(1000, 250);
        assert_eq!(s.len(), 250);
        assert_eq!((s[0], s[1], s[2], s[249]), (0, 4, 8, 999));
        // 10 steps of 1000: stride 111 exactly.
        assert_eq!(space_timesteps(1000, 10), vec![0, 111, 222, 333, 444, 555, 666, 777, 888, 999]);
    }

    #[test]
    fn spacings_round_halves_to_even_as_numpy_does() {
        let a = linear_abar();
        // linspace(0, 999, 7) = 0, 166.5, 333, 499.5, 666, 832.5, 999: numpy rounds to 166, 500 and 832.
        assert_eq!(dpm_solver_steps(Spacing::Linspace, &a, 6).timesteps, vec![999., 832., 666., 500., 333., 166.]);
        assert_eq!(dpm_solver_steps(Spacing::Leading, &a, 6).timesteps, vec![852., 710., 568., 426., 284., 142.]);
        assert_eq!(dpm_solver_steps(Spacing::Trailing, &a, 6).timesteps, vec![999., 832., 666., 499., 332., 166.]);
        // DDIM's: leading from 0, trailing ascending.
        assert_eq!(ancestral_timesteps(Spacing::Leading, 1000, 4).unwrap(), vec![0, 250, 500, 750]);
        assert_eq!(ancestral_timesteps(Spacing::Trailing, 1000, 4).unwrap(), vec![249, 499, 749, 999]);
        assert!(ancestral_timesteps(Spacing::Karras, 1000, 4).unwrap_err().to_string().contains("σ schedule"));
        let s = dpm_solver_steps(Spacing::Linspace, &a, 6);
        assert_eq!(s.sigmas.len(), 7);
        assert_eq!(*s.sigmas.last().unwrap(), 0.0);
    }

    #[test]
    fn sigma_to_t_inverts_t_to_sigma_and_clamps() {
        let a = linear_abar();
        let ls: Vec<f64> = training_sigmas(&a).iter().map(|s| s.ln()).collect();
        for t in [0.0, 0.25, 1.0, 17.5, 500.0, 843.3554, 998.9, 999.0] {
            let back = sigma_to_t(t_to_sigma(t, &ls), &ls);
            assert!((back - t).abs() < 1e-9, "{t} → {back}");
        }
        assert_eq!(sigma_to_t(1e-6, &ls), 0.0);
        assert_eq!(sigma_to_t(1e6, &ls), 999.0);
    }

    #[test]
    fn karras_levels_span_the_training_range() {
        let k = karras_sigmas(5, 0.01, 150.0);
        assert!((k[0] - 150.0).abs() < 1e-9 && (k[4] - 0.01).abs() < 1e-12);
        assert!(k.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(karras_sigmas(1, 0.01, 150.0).len(), 1);
    }
}
