//! Sampling from a trained denoiser: DiT's ancestral DDPM and DDIM over respaced timesteps, and the few-step ODE/SDE
//! solvers that diffusers and k-diffusion users pick (DPM-Solver++ 2M and its SDE variant, UniPC, Euler and Heun
//! on Karras σ), one file each. Every solver sees the network through [`Network`]: classifier-free guidance from one
//! doubled batch, ε- or v-prediction turned into x̂0, learned-Σ channels dropped, x̂0 clipped or thresholded. Cost
//! is counted in network evaluations (NFE), not steps: Heun's N steps cost 2N − 1.
pub mod schedule;

mod ancestral;
mod dpm_solver;
mod karras;
mod unipc;

use super::GaussianDiffusion;
use crate::config::Prediction;
use crate::error::{check_integer, check_range, Error};
use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};
pub use schedule::Spacing;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A denoiser as the samplers see it: (x_t, model timesteps, labels) → model output.
pub trait Denoiser {
    fn denoise(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor>;
}

impl Denoiser for crate::model::dit::DiT {
    fn denoise(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        self.forward(x, t, y)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampler {
    /// DiT's ancestral sampler, with the learned variance when the model has one.
    Ddpm,
    /// DDIM with stochasticity η.
    Ddim,
    /// DPM-Solver++ 2M: second-order multistep in the data prediction, first order at the first and last step.
    DpmPp2m,
    /// Its SDE variant (SDE-DPM-Solver++ 2M), fresh noise every step.
    DpmPp2mSde,
    /// Euler steps of the probability-flow ODE in σ (Karras et al.'s Algorithm 2 without churn).
    Euler,
    /// Heun's second-order steps in σ, Euler at the last step to σ = 0.
    Heun,
    /// UniPC: DPM-Solver++ 2M's predictor with a corrector that reuses the next evaluation (diffusers' bh2).
    UniPc,
}

pub const SAMPLERS: [&str; 7] = ["ddpm", "ddim", "dpm++2m", "dpm++2m-sde", "euler", "heun", "unipc"];

impl Sampler {
    pub fn parse(name: &str) -> crate::error::Result<Self> {
        Ok(match name {
            "ddpm" => Self::Ddpm,
            "ddim" => Self::Ddim,
            "dpm++2m" => Self::DpmPp2m,
            "dpm++2m-sde" => Self::DpmPp2mSde,
            "euler" => Self::Euler,
            "heun" => Self::Heun,
            "unipc" => Self::UniPc,
            s => return Err(Error::Input(format!("unknown sampler '{s}': use one of {}", SAMPLERS.join(", ")))),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ddpm => "ddpm",
            Self::Ddim => "ddim",
            Self::DpmPp2m => "dpm++2m",
            Self::DpmPp2mSde => "dpm++2m-sde",
            Self::Euler => "euler",
            Self::Heun => "heun",
            Self::UniPc => "unipc",
        }
    }

    /// Karras σ for the σ-space solvers, evenly spaced timesteps for the rest (as their references default).
    pub fn default_spacing(self) -> Spacing {
        match self {
            Self::Euler | Self::Heun => Spacing::Karras,
            _ => Spacing::Linspace,
        }
    }

    /// Network evaluations of `steps` steps (a guided evaluation is one doubled batch).
    pub fn evaluations(self, steps: usize) -> usize {
        match self {
            Self::Heun => (2 * steps).saturating_sub(1),
            _ => steps,
        }
    }
}

/// Imagen's dynamic thresholding of x̂0 (diffusers' `thresholding`): per sample, s = the `ratio` quantile of |x̂0|,
/// clamped to [1, `max_value`]; x̂0 is clipped to [−s, s] and divided by s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DynamicThreshold {
    pub ratio: f64,
    pub max_value: f64,
}

#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub sampler: Sampler,
    pub steps: usize,
    /// The timestep spacing; None: the sampler's default ([`Sampler::default_spacing`]).
    pub spacing: Option<Spacing>,
    pub cfg_scale: f64,
    /// DDIM's η (0 = deterministic); must be 0 for the other samplers.
    pub eta: f64,
    /// Clip x̂0 to [−1, 1] at each evaluation (pixel models).
    pub clip_denoised: bool,
    /// Threshold x̂0 dynamically instead of clipping it.
    pub dynamic_threshold: Option<DynamicThreshold>,
    pub seed: u64,
    /// Guide only the first this many channels, the rest taken from the conditional half (None: all). DiT's
    /// `sample.py` guides 3 of its 4 latent channels (`model_out[:, :3]`, "for exact reproducibility"), so its
    /// published samples need `Some(3)`.
    pub guidance_channels: Option<usize>,
    /// Counts the network evaluations done, so another thread can show a sampling's progress (a DiT-XL/2 image
    /// takes minutes on a CPU); shared by clones.
    pub progress: Option<Arc<AtomicUsize>>,
}

impl SampleOptions {
    /// Options with the defaults of the TS API for everything but the sampler and steps.
    pub fn new(sampler: Sampler, steps: usize) -> Self {
        Self { sampler, steps, spacing: None, cfg_scale: 1.0, eta: 0.0, clip_denoised: true, dynamic_threshold: None, seed: 0, guidance_channels: None, progress: None }
    }

    pub fn spacing(&self) -> Spacing {
        self.spacing.unwrap_or(self.sampler.default_spacing())
    }

    /// Steps in [1, T] for a model of T timesteps, and the guidance scale and η in the ranges the TS config allows
    /// (ts/config.ts: [0, 100] and [0, 10]); combinations no solver can run are refused by name.
    pub fn validate(&self, num_timesteps: usize) -> crate::error::Result<()> {
        if self.steps == 0 || self.steps > num_timesteps {
            check_integer("sample: steps", self.steps as f64, 1, num_timesteps as u64)?;
        }
        check_range("sample: cfgScale", self.cfg_scale, 0.0, 100.0)?;
        check_range("sample: eta", self.eta, 0.0, 10.0)?;
        let name = self.sampler.name();
        if self.eta != 0.0 && self.sampler != Sampler::Ddim {
            return Err(Error::Input(format!("sample: eta is DDIM's stochasticity; {name} has none: leave eta at 0 or use ddim")));
        }
        if self.sampler == Sampler::Heun && self.steps < 2 {
            return Err(Error::Input("sample: heun with 1 step is a single Euler step to σ = 0: use euler, or 2 or more steps".into()));
        }
        if matches!(self.sampler, Sampler::Ddpm | Sampler::Ddim) && self.spacing() == Spacing::Karras {
            return Err(Error::Input(format!("sample: the karras spacing is a σ schedule, which {name} does not step through: use dpm++2m, dpm++2m-sde, unipc, euler or heun, or another spacing")));
        }
        if let Some(t) = self.dynamic_threshold {
            check_range("sample: dynamicThreshold.ratio", t.ratio, 0.0, 1.0)?;
            check_range("sample: dynamicThreshold.maxValue", t.max_value, 1.0, 1e6)?;
        }
        Ok(())
    }
}

/// Classifier-free guided model output: ε = ε_∅ + s·(ε_c − ε_∅) from one doubled batch, on the first `guided`
/// channels (all of x's when None); the other channels (and the variance channels) come from the conditional
/// half. With s = 1 (or no labels) this is the plain conditional call, bit for bit.
pub fn guided_output(
    model: &impl Denoiser,
    x: &Tensor,
    t: &Tensor,
    y: Option<&Tensor>,
    null_y: Option<&Tensor>,
    scale: f64,
    guided: Option<usize>,
) -> Result<Tensor> {
    match (y, null_y) {
        (Some(y), Some(null_y)) if scale != 1.0 => {
            let b = x.dim(0)?;
            let c = guided.unwrap_or(x.dim(1)?).min(x.dim(1)?);
            let out = model.denoise(&Tensor::cat(&[x, x], 0)?, &Tensor::cat(&[t, t], 0)?, Some(&Tensor::cat(&[y, null_y], 0)?))?;
            let (cond, uncond) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
            let (eps_c, eps_u) = (cond.narrow(1, 0, c)?, uncond.narrow(1, 0, c)?);
            let eps = (&eps_u + ((eps_c - &eps_u)? * scale)?)?;
            if cond.dim(1)? > c {
                Tensor::cat(&[&eps, &cond.narrow(1, c, cond.dim(1)? - c)?], 1)
            } else {
                Ok(eps)
            }
        }
        _ => model.denoise(x, t, y),
    }
}

/// The network as every solver sees it, for one batch: guided outputs at a (possibly fractional) timestep, and
/// x̂0 from them.
pub struct Network<'a, D: Denoiser> {
    model: &'a D,
    y: Option<Tensor>,
    null_y: Option<Tensor>,
    cfg_scale: f64,
    guided: Option<usize>,
    prediction: Prediction,
    clip: bool,
    threshold: Option<DynamicThreshold>,
    progress: Option<Arc<AtomicUsize>>,
}

impl<'a, D: Denoiser> Network<'a, D> {
    /// `labels` are class indices (None for an unconditional model); `num_classes` is the null class of guidance.
    pub fn new(model: &'a D, prediction: Prediction, labels: Option<&[u32]>, num_classes: usize, opts: &SampleOptions, device: &Device) -> Result<Self> {
        Ok(Self {
            model,
            y: labels.map(|l| Tensor::new(l, device)).transpose()?,
            null_y: labels.map(|l| Tensor::new(vec![num_classes as u32; l.len()], device)).transpose()?,
            cfg_scale: opts.cfg_scale,
            guided: opts.guidance_channels,
            prediction,
            clip: opts.clip_denoised,
            threshold: opts.dynamic_threshold,
            progress: opts.progress.clone(),
        })
    }

    /// The guided output at x_t for model timestep `t`: every channel, the learned-Σ ones included.
    pub fn output(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let t = Tensor::new(vec![t as f32; x.dim(0)?], x.device())?;
        let out = guided_output(self.model, x, &t, self.y.as_ref(), self.null_y.as_ref(), self.cfg_scale, self.guided)?;
        if let Some(p) = &self.progress {
            p.fetch_add(1, Ordering::Relaxed);
        }
        Ok(out)
    }

    /// x̂0 from an output at x_t on the VP process at ᾱ: ε or v from the first C channels (the learned-Σ ones are
    /// dropped: C is x_t's, where diffusers keeps `[:, :3]`), then clipped or thresholded.
    pub fn data_prediction(&self, out: &Tensor, x_t: &Tensor, alpha_bar: f64) -> Result<Tensor> {
        let pred = out.narrow(1, 0, x_t.dim(1)?)?;
        let (a, s) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
        let x0 = match self.prediction {
            Prediction::Epsilon => ((x_t - (pred * s)?)? / a)?,
            Prediction::V => ((x_t * a)? - (pred * s)?)?,
        };
        self.denoised(x0)
    }

    /// The network's x̂0 at x_t, fed timestep `t`, converted at ᾱ (which a σ schedule may place between steps).
    pub fn x0(&self, x_t: &Tensor, t: f64, alpha_bar: f64) -> Result<Tensor> {
        self.data_prediction(&self.output(x_t, t)?, x_t, alpha_bar)
    }

    /// x̂0 as the options want it: dynamically thresholded, clipped to [−1, 1], or as it is.
    pub fn denoised(&self, x0: Tensor) -> Result<Tensor> {
        match (self.threshold, self.clip) {
            (Some(t), _) => dynamic_threshold(&x0, t),
            (None, true) => x0.clamp(-1f32, 1f32),
            (None, false) => Ok(x0),
        }
    }
}

/// [`DynamicThreshold`] per sample, with torch.quantile's linear interpolation.
fn dynamic_threshold(x0: &Tensor, t: DynamicThreshold) -> Result<Tensor> {
    let b = x0.dim(0)?;
    let flat = x0.flatten_from(1)?;
    let rows = flat.abs()?.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
    let s: Vec<f32> = rows
        .into_iter()
        .map(|mut r| {
            r.sort_unstable_by(|a, b| a.total_cmp(b));
            let pos = t.ratio * (r.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            let q = r[lo] as f64 + (r[hi] as f64 - r[lo] as f64) * (pos - lo as f64);
            q.clamp(1.0, t.max_value) as f32
        })
        .collect();
    let s = Tensor::from_vec(s, (b, 1), x0.device())?;
    flat.broadcast_minimum(&s)?.broadcast_maximum(&s.neg()?)?.broadcast_div(&s)?.reshape(x0.shape())
}

/// Runs the sampler from pure noise (sadm's seeded stream: the start, then each step's noise). `labels` are class
/// indices (None for an unconditional model); `num_classes` is the null-class index used for guidance. Returns
/// [n, C, H, W].
pub fn sample(
    diffusion: &GaussianDiffusion,
    model: &impl Denoiser,
    shape: (usize, usize, usize, usize),
    labels: Option<&[u32]>,
    num_classes: usize,
    opts: &SampleOptions,
    device: &Device,
) -> Result<Tensor> {
    let (n, c, h, w) = shape;
    let mut rng = Rng::new(opts.seed);
    let x = rng.randn(&[n, c, h, w], device)?;
    let net = Network::new(model, diffusion.prediction(), labels, num_classes, opts, device)?;
    solve(diffusion, &net, x, opts, &mut || rng.randn(&[n, c, h, w], device))
}

/// Runs the sampler from unit noise `x` with the network `net`; `noise` gives each step's fresh noise where the
/// sampler needs it.
pub fn solve<D: Denoiser>(
    diffusion: &GaussianDiffusion,
    net: &Network<D>,
    x: Tensor,
    opts: &SampleOptions,
    noise: &mut dyn FnMut() -> Result<Tensor>,
) -> Result<Tensor> {
    let t = diffusion.num_timesteps();
    let spacing = opts.spacing();
    match opts.sampler {
        Sampler::Ddpm | Sampler::Ddim => {
            let used = schedule::ancestral_timesteps(spacing, t, opts.steps.clamp(1, t)).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let process = diffusion.respaced_at(&used);
            let eta = if opts.sampler == Sampler::Ddpm { None } else { Some(opts.eta) };
            ancestral::sample(&process, net, x, eta, noise)
        }
        Sampler::DpmPp2m | Sampler::DpmPp2mSde => {
            let steps = schedule::dpm_solver_steps(spacing, &diffusion.alphas_cumprod, opts.steps);
            dpm_solver::sample(net, x, &steps, opts.sampler == Sampler::DpmPp2mSde, noise)
        }
        Sampler::UniPc => unipc::sample(net, x, &schedule::dpm_solver_steps(spacing, &diffusion.alphas_cumprod, opts.steps)),
        Sampler::Euler | Sampler::Heun => {
            let steps = schedule::karras_solver_steps(spacing, &diffusion.alphas_cumprod, opts.steps);
            karras::sample(net, x, &steps, opts.sampler == Sampler::Heun)
        }
    }
}

/// ᾱ of noise level σ: 1/(1 + σ²).
fn alpha_bar_of(sigma: f64) -> f64 {
    1.0 / (1.0 + sigma * sigma)
}

/// Σ_k c_k·x_k, skipping zero coefficients.
fn combine(terms: &[(&Tensor, f64)]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for &(x, c) in terms {
        if c == 0.0 {
            continue;
        }
        let term = (x * c)?;
        acc = Some(match acc {
            Some(a) => (a + term)?,
            None => term,
        });
    }
    match acc {
        Some(a) => Ok(a),
        None => terms[0].0.zeros_like(),
    }
}

#[cfg(test)]
mod tests;
