//! Gaussian diffusion as in DiT/improved-DDPM: β schedules, the forward process, the ε-loss with the learned-Σ
//! variational term, the one-step reconstruction x̂0, and the reverse steps of respaced processes. The samplers
//! that run them (and the few-step solvers) are in [`samplers`].
pub mod samplers;

use crate::config::{BetaSchedule, DiffusionConfig, LossWeighting, Prediction};
use candle_core::{DType, Device, Result, Tensor};
pub use samplers::schedule::space_timesteps;
pub use samplers::{guided_output, sample, Denoiser, DynamicThreshold, SampleOptions, Sampler, Spacing};

pub fn betas(cfg: &DiffusionConfig) -> Vec<f64> {
    let t = cfg.num_timesteps;
    match cfg.schedule {
        BetaSchedule::Linear => {
            // Scaled so that any T gives the same curve as T = 1000 with 1e-4 .. 0.02.
            let scale = 1000.0 / t as f64;
            let (lo, hi) = (scale * 1e-4, scale * 0.02);
            (0..t).map(|i| lo + (hi - lo) * i as f64 / (t - 1) as f64).collect()
        }
        BetaSchedule::Cosine => {
            let ab = |s: f64| ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
            (0..t).map(|i| (1.0 - ab((i + 1) as f64 / t as f64) / ab(i as f64 / t as f64)).min(0.999)).collect()
        }
    }
}

/// Per-timestep constants of one (possibly respaced) process, in f64.
#[derive(Clone, Debug)]
pub struct GaussianDiffusion {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    posterior_log_variance_clipped: Vec<f64>,
    posterior_mean_coef1: Vec<f64>,
    posterior_mean_coef2: Vec<f64>,
    /// The original timestep the model sees for each index of this process.
    pub timestep_map: Vec<usize>,
    prediction: Prediction,
    weighting: LossWeighting,
    min_snr_gamma: f64,
}

impl GaussianDiffusion {
    pub fn new(cfg: &DiffusionConfig) -> Self {
        let b = betas(cfg);
        let map = (0..b.len()).collect();
        Self { prediction: cfg.prediction, weighting: cfg.loss_weighting, min_snr_gamma: cfg.min_snr_gamma, ..Self::from_betas(b, map) }
    }

    fn from_betas(betas: Vec<f64>, timestep_map: Vec<usize>) -> Self {
        let mut ac = Vec::with_capacity(betas.len());
        let mut prod = 1.0;
        for b in &betas {
            prod *= 1.0 - b;
            ac.push(prod);
        }
        let acp: Vec<f64> = std::iter::once(1.0).chain(ac[..ac.len() - 1].iter().copied()).collect();
        let post_var: Vec<f64> = (0..betas.len()).map(|i| betas[i] * (1.0 - acp[i]) / (1.0 - ac[i])).collect();
        // The posterior variance is 0 at t = 0; the reference clips the log by repeating the next value.
        let post_log: Vec<f64> =
            (0..betas.len()).map(|i| if i == 0 { post_var.get(1).copied().unwrap_or(betas[0]) } else { post_var[i] }.ln()).collect();
        let coef1 = (0..betas.len()).map(|i| betas[i] * acp[i].sqrt() / (1.0 - ac[i])).collect();
        let coef2 = (0..betas.len()).map(|i| (1.0 - acp[i]) * (1.0 - betas[i]).sqrt() / (1.0 - ac[i])).collect();
        Self {
            betas,
            alphas_cumprod: ac,
            alphas_cumprod_prev: acp,
            posterior_log_variance_clipped: post_log,
            posterior_mean_coef1: coef1,
            posterior_mean_coef2: coef2,
            timestep_map,
            prediction: Prediction::Epsilon,
            weighting: LossWeighting::Uniform,
            min_snr_gamma: 5.0,
        }
    }

    pub fn num_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// The process restricted to `steps` evenly spaced timesteps (DiT's `SpacedDiffusion`).
    pub fn respaced(&self, steps: usize) -> Self {
        self.respaced_at(&space_timesteps(self.num_timesteps(), steps.clamp(1, self.num_timesteps())))
    }

    /// The process restricted to the ascending timesteps `used`: each kept step's β makes ᾱ equal the original's
    /// there.
    pub fn respaced_at(&self, used: &[usize]) -> Self {
        let mut last = 1.0;
        let mut betas = Vec::with_capacity(used.len());
        for &i in used {
            betas.push(1.0 - self.alphas_cumprod[i] / last);
            last = self.alphas_cumprod[i];
        }
        let map = used.iter().map(|&i| self.timestep_map[i]).collect();
        Self { prediction: self.prediction, weighting: self.weighting, min_snr_gamma: self.min_snr_gamma, ..Self::from_betas(betas, map) }
    }

    /// What the network predicts (ε or v).
    pub fn prediction(&self) -> Prediction {
        self.prediction
    }

    /// `v[t_b]` for each sample, shaped [B, 1, 1, 1] to broadcast over images.
    fn per_sample(&self, v: impl Fn(usize) -> f64, t: &[usize], dev: &Device) -> Result<Tensor> {
        let data: Vec<f32> = t.iter().map(|&i| v(i) as f32).collect();
        Tensor::from_vec(data, (t.len(), 1, 1, 1), dev)
    }

    /// x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε
    pub fn q_sample(&self, x0: &Tensor, t: &[usize], noise: &Tensor) -> Result<Tensor> {
        let a = self.per_sample(|i| self.alphas_cumprod[i].sqrt(), t, x0.device())?;
        let s = self.per_sample(|i| (1.0 - self.alphas_cumprod[i]).sqrt(), t, x0.device())?;
        x0.broadcast_mul(&a)? + noise.broadcast_mul(&s)?
    }

    /// ε̂ from the network's prediction channels: ε directly, or ε = sqrt(ᾱ)·v + sqrt(1−ᾱ)·x_t.
    pub fn eps_from_prediction(&self, pred: &Tensor, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        match self.prediction {
            Prediction::Epsilon => Ok(pred.clone()),
            Prediction::V => {
                let a = self.per_sample(|i| self.alphas_cumprod[i].sqrt(), t, x_t.device())?;
                let s = self.per_sample(|i| (1.0 - self.alphas_cumprod[i]).sqrt(), t, x_t.device())?;
                pred.broadcast_mul(&a)? + x_t.broadcast_mul(&s)?
            }
        }
    }

    /// x̂0 = (x_t - sqrt(1-ᾱ_t)·ε̂) / sqrt(ᾱ_t)
    pub fn predict_x0(&self, x_t: &Tensor, t: &[usize], eps: &Tensor) -> Result<Tensor> {
        let a = self.per_sample(|i| (1.0 / self.alphas_cumprod[i]).sqrt(), t, x_t.device())?;
        let b = self.per_sample(|i| (1.0 / self.alphas_cumprod[i] - 1.0).sqrt(), t, x_t.device())?;
        x_t.broadcast_mul(&a)? - eps.broadcast_mul(&b)?
    }

    fn posterior_mean(&self, x0: &Tensor, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        let c1 = self.per_sample(|i| self.posterior_mean_coef1[i], t, x_t.device())?;
        let c2 = self.per_sample(|i| self.posterior_mean_coef2[i], t, x_t.device())?;
        x0.broadcast_mul(&c1)? + x_t.broadcast_mul(&c2)?
    }

    /// log Σ from the model's interpolation channels v ∈ [-1, 1] (learned range), or the fixed large variance.
    fn model_log_variance(&self, v: Option<&Tensor>, t: &[usize], dev: &Device) -> Result<Tensor> {
        let min_log = self.per_sample(|i| self.posterior_log_variance_clipped[i], t, dev)?;
        match v {
            Some(v) => {
                let max_log = self.per_sample(|i| self.betas[i].ln(), t, dev)?;
                let frac = ((v + 1.0)? / 2.0)?;
                frac.broadcast_mul(&max_log)? + (1.0 - frac)?.broadcast_mul(&min_log)?
            }
            None => self.per_sample(
                |i| if i == 0 { self.posterior_log_variance_clipped[0] } else { self.betas[i].ln() },
                t,
                dev,
            ),
        }
    }

    /// The denoising loss terms for a model output `out` ([B, C or 2C, H, W]) at x_t = q_sample(x0, t, noise):
    /// the ε mean squared error and, with learned Σ, the variational bound in bits per dimension with the mean
    /// prediction detached, so it trains Σ only. Also returns x̂0 from ε̂, carrying gradient.
    pub fn training_losses(&self, out: &Tensor, x0: &Tensor, x_t: &Tensor, t: &[usize], noise: &Tensor) -> Result<Losses> {
        let c = x0.dim(1)?;
        let learn_sigma = out.dim(1)? == 2 * c;
        let pred = out.narrow(1, 0, c)?;
        let target = match self.prediction {
            Prediction::Epsilon => noise.clone(),
            Prediction::V => {
                let a = self.per_sample(|i| self.alphas_cumprod[i].sqrt(), t, x0.device())?;
                let s = self.per_sample(|i| (1.0 - self.alphas_cumprod[i]).sqrt(), t, x0.device())?;
                (noise.broadcast_mul(&a)? - x0.broadcast_mul(&s)?)?
            }
        };
        let sq = (&pred - target)?.sqr()?;
        let mse = sq.mean_all()?;
        let eps_loss = match self.weighting {
            LossWeighting::Uniform => mse.clone(),
            LossWeighting::MinSnr => {
                let w = self.per_sample(|i| self.min_snr_weight(i), t, x0.device())?;
                sq.broadcast_mul(&w)?.mean_all()?
            }
        };
        let eps = self.eps_from_prediction(&pred, x_t, t)?;
        let x0_hat = self.predict_x0(x_t, t, &eps)?;
        let vb = if learn_sigma {
            let v = out.narrow(1, c, c)?;
            self.vb_terms(x0, x_t, t, &eps.detach(), &v)?.mean_all()?
        } else {
            Tensor::zeros((), DType::F32, x0.device())?
        };
        Ok(Losses { mse, eps_loss, vb, x0_hat })
    }

    /// min(SNR_t, γ)/SNR_t for ε-prediction, min(SNR_t, γ)/(SNR_t + 1) for v-prediction.
    pub fn min_snr_weight(&self, t: usize) -> f64 {
        let ab = self.alphas_cumprod[t];
        let snr = ab / (1.0 - ab);
        match self.prediction {
            Prediction::Epsilon => snr.min(self.min_snr_gamma) / snr,
            Prediction::V => snr.min(self.min_snr_gamma) / (snr + 1.0),
        }
    }

    /// Per-sample variational bound terms [B] in bits/dim: KL(q(x_{t-1}|x_t,x0) ‖ p(x_{t-1}|x_t)) for t > 0 and the
    /// discretised decoder NLL at t = 0.
    fn vb_terms(&self, x0: &Tensor, x_t: &Tensor, t: &[usize], eps: &Tensor, v: &Tensor) -> Result<Tensor> {
        let dev = x0.device();
        let true_mean = self.posterior_mean(x0, x_t, t)?;
        let true_logvar = self.per_sample(|i| self.posterior_log_variance_clipped[i], t, dev)?;
        let model_mean = self.posterior_mean(&self.predict_x0(x_t, t, eps)?, x_t, t)?;
        let model_logvar = self.model_log_variance(Some(v), t, dev)?;
        let ln2 = std::f64::consts::LN_2;
        let kl = (normal_kl(&true_mean, &true_logvar, &model_mean, &model_logvar)?.flatten_from(1)?.mean(1)? / ln2)?;
        if !t.contains(&0) {
            return Ok(kl);
        }
        let log_scales = (&model_logvar * 0.5)?;
        let nll = (discretized_gaussian_log_likelihood(x0, &model_mean, &log_scales)?.flatten_from(1)?.mean(1)? / -ln2)?;
        let is_zero: Vec<u8> = t.iter().map(|&i| (i == 0) as u8).collect();
        Tensor::from_vec(is_zero, t.len(), dev)?.where_cond(&nll, &kl)
    }

    /// One reverse step from index `i` of this process. `out` is the model output at x_t; `denoised` post-processes
    /// x̂0 (clipping); returns x_{t-1}.
    pub fn p_sample(&self, out: &Tensor, x_t: &Tensor, i: usize, denoised: &dyn Fn(Tensor) -> Result<Tensor>, noise: &Tensor) -> Result<Tensor> {
        let c = x_t.dim(1)?;
        let b = x_t.dim(0)?;
        let t = vec![i; b];
        let eps = self.eps_from_prediction(&out.narrow(1, 0, c)?, x_t, &t)?;
        let v = (out.dim(1)? == 2 * c).then(|| out.narrow(1, c, c)).transpose()?;
        let x0 = denoised(self.predict_x0(x_t, &t, &eps)?)?;
        let mean = self.posterior_mean(&x0, x_t, &t)?;
        if i == 0 {
            return Ok(mean);
        }
        let logvar = self.model_log_variance(v.as_ref(), &t, x_t.device())?;
        mean + (logvar * 0.5)?.exp()?.broadcast_mul(noise)?
    }

    /// One DDIM step from index `i` with stochasticity `eta` (0 = deterministic).
    pub fn ddim_sample(&self, out: &Tensor, x_t: &Tensor, i: usize, denoised: &dyn Fn(Tensor) -> Result<Tensor>, eta: f64, noise: &Tensor) -> Result<Tensor> {
        let c = x_t.dim(1)?;
        let ab = self.alphas_cumprod[i];
        let ab_prev = self.alphas_cumprod_prev[i];
        let eps = self.eps_from_prediction(&out.narrow(1, 0, c)?, x_t, &vec![i; x_t.dim(0)?])?;
        let x0 = denoised(((x_t * (1.0 / ab).sqrt())? - (eps * (1.0 / ab - 1.0).sqrt())?)?)?;
        // ε re-derived from the (clipped) x0, as the reference does.
        let eps = (((x_t * (1.0 / ab).sqrt())? - &x0)? / (1.0 / ab - 1.0).sqrt())?;
        let sigma = eta * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).sqrt();
        let mean = ((x0 * ab_prev.sqrt())? + (eps * (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt())?)?;
        if i == 0 || sigma == 0.0 {
            return Ok(mean);
        }
        mean + (noise * sigma)?
    }
}

pub struct Losses {
    /// The plain ε mean squared error (reported).
    pub mse: Tensor,
    /// The ε-loss the denoiser minimises: `mse`, or its per-timestep weighted form.
    pub eps_loss: Tensor,
    pub vb: Tensor,
    pub x0_hat: Tensor,
}

/// KL divergence between two diagonal Gaussians given by mean and log-variance (elementwise).
pub fn normal_kl(mean1: &Tensor, logvar1: &Tensor, mean2: &Tensor, logvar2: &Tensor) -> Result<Tensor> {
    let d = logvar1.broadcast_sub(logvar2)?;
    let sq = (mean1 - mean2)?.sqr()?.mul(&logvar2.neg()?.exp()?)?;
    (((d.exp()? - d)? + sq)? - 1.0)? * 0.5
}

fn approx_standard_normal_cdf(x: &Tensor) -> Result<Tensor> {
    let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * (2.0 / std::f64::consts::PI).sqrt())?;
    (inner.tanh()? + 1.0)? * 0.5
}

/// Log-likelihood of data in [-1, 1] discretised to 8 bits under a Gaussian (improved-DDPM).
pub fn discretized_gaussian_log_likelihood(x: &Tensor, means: &Tensor, log_scales: &Tensor) -> Result<Tensor> {
    let centered = (x - means)?;
    let inv_stdv = log_scales.neg()?.exp()?;
    let cdf_plus = approx_standard_normal_cdf(&(&centered + 1.0 / 255.0)?.mul(&inv_stdv)?)?;
    let cdf_min = approx_standard_normal_cdf(&(&centered - 1.0 / 255.0)?.mul(&inv_stdv)?)?;
    let log_cdf_plus = cdf_plus.clamp(1e-12f32, f32::MAX)?.log()?;
    let log_one_minus_cdf_min = (1.0 - &cdf_min)?.clamp(1e-12f32, f32::MAX)?.log()?;
    let log_cdf_delta = (cdf_plus - cdf_min)?.clamp(1e-12f32, f32::MAX)?.log()?;
    let low = x.lt(-0.999f64)?;
    let high = x.gt(0.999f64)?;
    low.where_cond(&log_cdf_plus, &high.where_cond(&log_one_minus_cdf_min, &log_cdf_delta)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::config::BetaSchedule;

    fn linear() -> GaussianDiffusion {
        GaussianDiffusion::new(&DiffusionConfig { num_timesteps: 1000, schedule: BetaSchedule::Linear, prediction: Prediction::Epsilon, loss_weighting: LossWeighting::Uniform, min_snr_gamma: 5.0 })
    }

    #[test]
    fn linear_schedule_known_values() {
        let d = linear();
        assert!((d.betas[0] - 1e-4).abs() < 1e-12 && (d.betas[999] - 0.02).abs() < 1e-12);
        // ᾱ_999 for the DiT linear schedule is about 4.04e-5.
        assert!((d.alphas_cumprod[999] - 4.0358e-5).abs() < 1e-8, "{}", d.alphas_cumprod[999]);
    }

    #[test]
    fn min_snr_weights() {
        let mut cfg = DiffusionConfig { num_timesteps: 1000, schedule: BetaSchedule::Linear, prediction: Prediction::Epsilon, loss_weighting: LossWeighting::MinSnr, min_snr_gamma: 5.0 };
        let d = GaussianDiffusion::new(&cfg);
        // Low noise (SNR ≫ γ): γ/SNR; high noise (SNR < γ): 1.
        let ab = d.alphas_cumprod[0];
        assert!((d.min_snr_weight(0) - 5.0 / (ab / (1.0 - ab))).abs() < 1e-12);
        assert_eq!(d.min_snr_weight(900), 1.0);
        cfg.loss_weighting = LossWeighting::Uniform;
        let dev = Device::Cpu;
        let out = Tensor::ones((2, 1, 2, 2), DType::F32, &dev).unwrap();
        let zeros = out.zeros_like().unwrap();
        let l = GaussianDiffusion::new(&cfg).training_losses(&out, &zeros, &zeros, &[0, 900], &zeros).unwrap();
        assert_eq!(l.eps_loss.to_scalar::<f32>().unwrap(), 1.0);
        let l = d.training_losses(&out, &zeros, &zeros, &[0, 900], &zeros).unwrap();
        let expect = (d.min_snr_weight(0) + 1.0) / 2.0;
        assert!((l.eps_loss.to_scalar::<f32>().unwrap() as f64 - expect).abs() < 1e-6);
        assert_eq!(l.mse.to_scalar::<f32>().unwrap(), 1.0);
    }

    #[test]
    fn cosine_schedule_is_monotone_and_capped() {
        let b = betas(&DiffusionConfig { num_timesteps: 1000, schedule: BetaSchedule::Cosine, prediction: Prediction::Epsilon, loss_weighting: LossWeighting::Uniform, min_snr_gamma: 5.0 });
        assert!(b.windows(2).all(|w| w[0] <= w[1] + 1e-12));
        assert!(b.iter().all(|&x| x > 0.0 && x <= 0.999));
    }

    #[test]
    fn respacing_keeps_alphas_cumprod() {
        let d = linear();
        let r = d.respaced(50);
        for (k, &t) in r.timestep_map.iter().enumerate() {
            assert!((r.alphas_cumprod[k] - d.alphas_cumprod[t]).abs() < 1e-12);
        }
        // Respacing to all steps is the identity.
        assert_eq!(d.respaced(1000).betas.len(), 1000);
        assert!((d.respaced(1000).betas[500] - d.betas[500]).abs() < 1e-12);
    }

    #[test]
    fn x0_reconstruction_inverts_q_sample() -> Result<()> {
        let d = linear();
        let dev = Device::Cpu;
        let mut rng = Rng::new(3);
        let x0 = rng.randn(&[4, 1, 4, 4], &dev)?;
        let noise = rng.randn(&[4, 1, 4, 4], &dev)?;
        let t = [0, 10, 300, 700];
        let xt = d.q_sample(&x0, &t, &noise)?;
        let back = d.predict_x0(&xt, &t, &noise)?;
        assert!((back - x0)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-3);
        Ok(())
    }

    #[test]
    fn kl_of_equal_gaussians_is_zero_and_known_value() -> Result<()> {
        let dev = Device::Cpu;
        let m = Tensor::new(&[0.3f32, -1.0], &dev)?;
        let lv = Tensor::new(&[0.1f32, -2.0], &dev)?;
        assert!(normal_kl(&m, &lv, &m, &lv)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-6);
        // KL(N(0,1) || N(1, e)) = 0.5 * (-1 + 1 - 0 + e^-1 + e^-1) = e^-1
        let kl = normal_kl(&Tensor::new(&[0f32], &dev)?, &Tensor::new(&[0f32], &dev)?, &Tensor::new(&[1f32], &dev)?, &Tensor::new(&[1f32], &dev)?)?;
        assert!((kl.to_vec1::<f32>()?[0] - (-1f32).exp()).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn discretized_likelihood_sums_to_one_over_bins() -> Result<()> {
        // The 256 bins of an 8-bit value tile the line, so their probabilities sum to 1.
        let dev = Device::Cpu;
        let xs: Vec<f32> = (0..256).map(|k| k as f32 / 127.5 - 1.0).collect();
        let x = Tensor::new(xs.as_slice(), &dev)?;
        let mean = Tensor::full(0.1f32, 256, &dev)?;
        let ls = Tensor::full(-1.0f32, 256, &dev)?;
        let total: f32 = discretized_gaussian_log_likelihood(&x, &mean, &ls)?.exp()?.sum_all()?.to_scalar()?;
        assert!((total - 1.0).abs() < 2e-3, "{total}");
        Ok(())
    }

    #[test]
    fn v_prediction_round_trips_eps_and_x0() -> Result<()> {
        let cfg = DiffusionConfig { num_timesteps: 1000, schedule: BetaSchedule::Linear, prediction: Prediction::V, loss_weighting: LossWeighting::Uniform, min_snr_gamma: 5.0 };
        let d = GaussianDiffusion::new(&cfg);
        let dev = Device::Cpu;
        let mut rng = Rng::new(4);
        let x0 = rng.randn(&[3, 1, 4, 4], &dev)?;
        let noise = rng.randn(&[3, 1, 4, 4], &dev)?;
        let t = [5, 400, 990];
        let xt = d.q_sample(&x0, &t, &noise)?;
        // The exact v makes the loss zero and recovers ε and x0.
        let a = d.per_sample(|i| d.alphas_cumprod[i].sqrt(), &t, &dev)?;
        let s = d.per_sample(|i| (1.0 - d.alphas_cumprod[i]).sqrt(), &t, &dev)?;
        let v = (noise.broadcast_mul(&a)? - x0.broadcast_mul(&s)?)?;
        let l = d.training_losses(&v, &x0, &xt, &t, &noise)?;
        assert!(l.mse.to_scalar::<f32>()? < 1e-12);
        assert!((l.x0_hat - &x0)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-2);
        assert!((d.eps_from_prediction(&v, &xt, &t)? - &noise)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-4);
        Ok(())
    }
}
