//! The fused SADM training step (design §1.2): DiT forward and denoising loss, discriminator update(s) on the
//! detached reconstructions, denoiser update on `L_den + λ·D` with φ fixed, EMA. One call, one step.
use crate::config::{glob_match, CoreConfig};
use crate::diffusion::{self, GaussianDiffusion, SampleOptions};
use crate::model::discriminator;
use crate::model::dit::{self, DiT};
use crate::error::{check_range, Error, Result};
use crate::nn::sorted_vars;
use crate::optim::{AdamW, Snapshot};
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use crate::io::checkpoint::check_shapes;
use std::collections::HashMap;
use std::path::Path;

/// RNG streams: the training stream's state is checkpointed; initialisation uses its own streams so that
/// changing one network's size does not shift the other's weights.
const STREAM_TRAIN: u64 = 0;
const STREAM_INIT_DIT: u64 = 1;
const STREAM_INIT_DISC: u64 = 2;

/// What the schedule (owned by the caller) decides for one step.
#[derive(Clone, Debug)]
pub struct StepParams {
    pub lambda: f64,
    pub lr: f64,
    pub disc_lr: f64,
    pub ema_decay: f64,
    /// Run the discriminator update this step (false for plain DiT training).
    pub update_disc: bool,
}

impl StepParams {
    /// Every number finite and in the range the TS config allows (ts/config.ts): λ in [0, 10], both learning rates
    /// and the EMA decay in [0, 1]. A NaN learning rate would write NaN into every weight, and every later step
    /// would then be skipped.
    pub fn validate(&self) -> Result<()> {
        check_range("step: lambda", self.lambda, 0.0, 10.0)?;
        check_range("step: lr", self.lr, 0.0, 1.0)?;
        check_range("step: discLr", self.disc_lr, 0.0, 1.0)?;
        check_range("step: emaDecay", self.ema_decay, 0.0, 1.0)?;
        Ok(())
    }
}

#[derive(Clone, Debug, Default)]
pub struct StepStats {
    pub step: u64,
    /// L_den + λ·D, what the denoiser minimised.
    pub loss: f64,
    pub mse: f64,
    pub vb: f64,
    pub structure: Option<f64>,
    pub disc_loss: Option<f64>,
    pub grad_norm_dit: f64,
    pub grad_norm_disc: Option<f64>,
    /// Set when the step was skipped for a non-finite loss or gradient norm: what was not finite. A skipped
    /// step changes no parameter, EMA or optimizer state; it consumes its batch and randomness and counts.
    pub skipped: Option<String>,
}

pub struct Trainer {
    pub(crate) cfg: CoreConfig,
    pub(crate) device: Device,
    diffusion: GaussianDiffusion,
    dit: DiT,
    pub(crate) dit_vars: Vec<(String, Var)>,
    pub(crate) ema: Vec<Tensor>,
    pub(crate) disc_vars: Vec<(String, Var)>,
    pub(crate) opt_dit: AdamW,
    pub(crate) opt_disc: AdamW,
    pub(crate) rng: Rng,
    pub(crate) step: u64,
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

impl Trainer {
    /// A fresh trainer with the reference initialisation drawn from `cfg.seed`.
    pub fn new(cfg: CoreConfig, device: &Device) -> Result<Self> {
        Self::build(cfg, device, true)
    }

    /// Builds the networks; with `init = false` the weights are left for a checkpoint to fill.
    pub(crate) fn build(cfg: CoreConfig, device: &Device, init: bool) -> Result<Self> {
        cfg.validate()?;
        let m = &cfg.model;
        let (mut dit, dit_map, disc_map) = if init {
            let (dit, dm) = dit::new_trainable(m, &mut Rng::derive(cfg.seed, STREAM_INIT_DIT), device)?;
            (dit, dm, Self::new_disc_vars(&cfg, device)?)
        } else {
            let dm = VarMap::new();
            let dit = DiT::new(m, VarBuilder::from_varmap(&dm, DType::F32, device))?;
            (dit, dm, discriminator::empty_vars(&cfg.discriminator, m.in_channels, m.input_size, device)?)
        };
        dit.set_precision(cfg.precision);
        let dit_vars = sorted_vars(&dit_map);
        let disc_vars = sorted_vars(&disc_map);
        let ema = dit_vars.iter().map(|(_, v)| v.as_tensor().detach().copy()).collect::<candle_core::Result<_>>()?;
        // Frozen parameters are simply not handed to the optimizer: they still get gradients (candle computes
        // them for every variable on the path), but nothing ever applies them.
        let trainable: Vec<(String, Var)> = dit_vars
            .iter()
            .filter(|(n, _)| cfg.trainable.iter().any(|p| glob_match(p, n)))
            .cloned()
            .collect();
        if trainable.is_empty() {
            return Err(Error::Config(format!(
                "trainable {:?} matches no DiT parameter (names look like blocks.0.attn.qkv.weight)",
                cfg.trainable
            )));
        }
        Ok(Self {
            diffusion: GaussianDiffusion::new(&cfg.diffusion),
            opt_dit: AdamW::new(trainable, cfg.dit_optim.clone())?,
            opt_disc: Self::disc_optimizer(&disc_vars, &cfg)?,
            rng: Rng::derive(cfg.seed, STREAM_TRAIN),
            step: 0,
            device: device.clone(),
            dit,
            dit_vars,
            ema,
            disc_vars,
            cfg,
        })
    }

    /// The discriminator's variables with their initialisation from `cfg.seed` (its own stream, so the DiT and the
    /// training draws are the same whatever the discriminator is).
    fn new_disc_vars(cfg: &CoreConfig, device: &Device) -> Result<VarMap> {
        let m = &cfg.model;
        let mut rng = Rng::derive(cfg.seed, STREAM_INIT_DISC);
        discriminator::new_vars(&cfg.discriminator, m.in_channels, m.input_size, &mut rng, device)
    }

    /// The discriminator's AdamW over its learned variables (a frozen feature network is not among them).
    fn disc_optimizer(disc_vars: &[(String, Var)], cfg: &CoreConfig) -> Result<AdamW> {
        let learned = disc_vars.iter().filter(|(n, _)| !discriminator::is_frozen(n)).cloned().collect();
        AdamW::new(learned, cfg.disc_optim.clone())
    }

    /// A fresh trainer (new discriminator, optimizers and RNG from `cfg.seed`) whose DiT starts from `weights`
    /// (reference parameter names, e.g. another run's EMA or converted DiT weights); the EMA starts equal to
    /// them. A class-embedding table of another size (a new label set) keeps its fresh initialisation; every
    /// other tensor must match `cfg.model`. Returns the notes on what was not taken over.
    pub fn from_pretrained(cfg: CoreConfig, weights: &HashMap<String, Tensor>, source: &Path, device: &Device) -> Result<(Self, Vec<String>)> {
        let mut tr = Self::new(cfg, device)?;
        let mut notes = vec![];
        let mut expected: Vec<(String, Vec<usize>)> = vec![];
        for (name, var) in &tr.dit_vars {
            let fresh = name == dit::CLASS_TABLE && weights.get(name).is_none_or(|w| w.dims() != var.dims());
            if fresh {
                let source_classes = match weights.get(name) {
                    Some(w) => format!("{} classes", w.dim(0)? - 1),
                    None => "no class embeddings".into(),
                };
                notes.push(format!(
                    "{name}: the source has {source_classes} and this model {} classes; the class embeddings start fresh",
                    var.dim(0)? - 1
                ));
            } else {
                expected.push((name.clone(), var.dims().to_vec()));
            }
        }
        check_shapes(source, &expected, weights, &["pos_embed", dit::CLASS_TABLE])?;
        for (name, var) in &tr.dit_vars {
            if expected.iter().any(|(n, _)| n == name) {
                var.set(&weights[name].to_dtype(DType::F32)?.to_device(device)?)?;
            }
        }
        tr.ema = tr.dit_vars.iter().map(|(_, v)| v.as_tensor().detach().copy()).collect::<candle_core::Result<_>>()?;
        Ok((tr, notes))
    }

    /// Replaces the discriminator's settings. The structure loss (kernel, τ, distance, Huber δ, pairs, pair
    /// weighting, tMax, discriminator steps) and spectral normalisation change in place: a second stage may use
    /// another loss than the run it continues. A new architecture (body, sizes, time conditioning) means a new
    /// encoder: it starts from its initialisation with a fresh optimizer, and the returned note says so.
    pub fn set_discriminator(&mut self, d: crate::config::DiscriminatorConfig) -> Result<Option<String>> {
        let mut cfg = self.cfg.clone();
        cfg.discriminator = d;
        cfg.validate()?;
        let (old, new) = (discriminator::architecture(&self.cfg.discriminator), discriminator::architecture(&cfg.discriminator));
        let note = if old != new {
            let vars = sorted_vars(&Self::new_disc_vars(&cfg, &self.device)?);
            self.opt_disc = Self::disc_optimizer(&vars, &cfg)?;
            self.disc_vars = vars;
            Some(format!("the discriminator changes from ({old}) to ({new}): it starts fresh, with a new optimizer"))
        } else {
            None
        };
        self.cfg = cfg;
        Ok(note)
    }

    /// Names of the DiT parameters the optimizer updates.
    pub fn trainable_names(&self) -> Vec<String> {
        self.opt_dit.var_names()
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }
    pub fn step_count(&self) -> u64 {
        self.step
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn num_params(&self) -> (usize, usize) {
        let count = |vs: &[(String, Var)]| vs.iter().map(|(_, v)| v.elem_count()).sum();
        (count(&self.dit_vars), count(&self.disc_vars))
    }
    pub(crate) fn ema_tensors(&self) -> HashMap<String, Tensor> {
        self.dit_vars.iter().zip(&self.ema).map(|((n, _), t)| (n.clone(), t.clone())).collect()
    }
    pub(crate) fn var_tensors(vars: &[(String, Var)]) -> HashMap<String, Tensor> {
        // Detached, so inference on them records no graph.
        vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect()
    }

    /// Checks a batch against the model: sizes, label range and finite values.
    fn check_batch(&self, x0: &[f32], labels: &[i32]) -> Result<usize> {
        let m = &self.cfg.model;
        let per = m.in_channels * m.input_size * m.input_size;
        let b = labels.len();
        if b == 0 {
            return Err(Error::Input("empty batch: labels has length 0".into()));
        }
        if x0.len() != b * per {
            return Err(Error::Input(format!(
                "batch has {} values but {} labels × {}×{}×{} needs {}",
                x0.len(), b, m.in_channels, m.input_size, m.input_size, b * per
            )));
        }
        if m.num_classes > 0 {
            if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l < 0 || l as usize >= m.num_classes) {
                return Err(Error::Input(format!("label {l} at index {i} is outside [0, {})", m.num_classes)));
            }
        }
        if let Some(i) = x0.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!("batch value at index {i} is not finite")));
        }
        Ok(b)
    }

    /// D(φ) on (x0, x̂0) for the discriminator's update. The real and reconstructed batches go through the
    /// encoder as one batch of 2B: every encoder op works per image, and on these small tensors one pass at twice
    /// the batch costs far less than two passes.
    fn disc_structure(&self, x0: &Tensor, x0_hat: &Tensor, t: &[usize]) -> Result<Tensor> {
        let b = x0.dim(0)?;
        let tt = self.timesteps(t)?;
        let z = self.encoder(true)?.forward(&Tensor::cat(&[x0, x0_hat], 0)?, &Tensor::cat(&[&tt, &tt], 0)?)?;
        self.distance(&z.narrow(0, 0, b)?, &z.narrow(0, b, b)?, t)
    }

    /// D on (x0, x̂0) with φ fixed, for the denoiser's update: an encoder on detached copies of the weights (the
    /// same storage), so the backward computes x̂0's gradient and no weight gradient, and the real embeddings
    /// carry no graph at all.
    fn denoiser_structure(&self, x0: &Tensor, x0_hat: &Tensor, t: &[usize]) -> Result<Tensor> {
        let enc = self.encoder(false)?;
        let tt = self.timesteps(t)?;
        self.distance(&enc.forward(x0, &tt)?, &enc.forward(x0_hat, &tt)?, t)
    }

    /// The encoder on the current weights: tracked (the discriminator's update) or detached (φ fixed).
    fn encoder(&self, track: bool) -> Result<discriminator::Encoder> {
        let (d, m) = (&self.cfg.discriminator, &self.cfg.model);
        let weights = discriminator::weights(d, &self.disc_vars, track)?;
        discriminator::build(d, m.in_channels, m.input_size, weights, &self.device)
    }

    fn timesteps(&self, t: &[usize]) -> Result<Tensor> {
        Ok(Tensor::new(t.iter().map(|&v| v as f32).collect::<Vec<_>>(), &self.device)?)
    }

    /// The structural distance between the real embeddings z and the reconstructions' ẑ, with the pair weights.
    fn distance(&self, z: &Tensor, z_hat: &Tensor, t: &[usize]) -> Result<Tensor> {
        let w = discriminator::sample_weights(&self.cfg.discriminator, t, &self.diffusion.alphas_cumprod);
        Ok(discriminator::structure_distance(z, z_hat, &w, &self.cfg.discriminator)?)
    }

    /// One SADM step on a batch (NCHW floats in [-1, 1], labels in [0, numClasses)).
    pub fn step(&mut self, x0: &[f32], labels: &[i32], p: &StepParams) -> Result<StepStats> {
        p.validate()?;
        crate::device::on_pool(|| self.step_here(x0, labels, p))
    }

    fn step_here(&mut self, x0: &[f32], labels: &[i32], p: &StepParams) -> Result<StepStats> {
        let b = self.check_batch(x0, labels)?;
        let adversarial = p.lambda > 0.0 || p.update_disc;
        if adversarial && b < 2 {
            return Err(Error::Input("the structure loss compares pairs: use a batch of at least 2".into()));
        }
        let m = &self.cfg.model;
        let (c, s) = (m.in_channels, m.input_size);
        let dev = self.device.clone();
        let x0 = Tensor::from_slice(x0, (b, c, s, s), &dev)?;

        // Randomness in a fixed order, whatever λ is, so λ = 0 and λ > 0 runs see the same draws.
        let t: Vec<usize> = (0..b).map(|_| self.rng.below(self.cfg.diffusion.num_timesteps as u32) as usize).collect();
        let noise = self.rng.randn(&[b, c, s, s], &dev)?;
        let y: Vec<u32> = labels
            .iter()
            .map(|&l| {
                let drop = self.rng.uniform() < m.class_dropout_prob as f32;
                if drop { m.num_classes as u32 } else { l as u32 }
            })
            .collect();
        let y = (m.num_classes > 0).then(|| Tensor::new(y, &dev)).transpose()?;

        // 1. DiT forward, denoising loss, x̂0.
        let x_t = self.diffusion.q_sample(&x0, &t, &noise)?;
        let t_model = Tensor::new(t.iter().map(|&v| v as f32).collect::<Vec<_>>(), &dev)?;
        let out = self.dit.forward(&x_t, &t_model, y.as_ref())?;
        let losses = self.diffusion.training_losses(&out, &x0, &x_t, &t, &noise)?;
        let mut stats = StepStats { mse: scalar(&losses.mse)?, vb: scalar(&losses.vb)?, ..Default::default() };

        if !stats.mse.is_finite() || !stats.vb.is_finite() {
            let what = format!("denoising loss (mse {}, vb {})", stats.mse, stats.vb);
            return self.skip(stats, what, None);
        }

        // 2. Discriminator: maximise D with x̂0 detached. Its state is kept until the denoiser's update has proved
        // finite, so that a skipped step leaves both networks as they were.
        let mut disc_before = None;
        if p.update_disc {
            let x0_hat = losses.x0_hat.detach();
            for k in 0..self.cfg.discriminator.steps {
                let d = self.disc_structure(&x0, &x0_hat, &t)?;
                let grads = d.neg()?.backward()?;
                let norm = self.opt_disc.grad_norm(&grads)?;
                let d_val = scalar(&d)?;
                if !d_val.is_finite() || !norm.is_finite() {
                    return self.skip(stats, format!("discriminator loss {d_val} / gradient norm {norm}"), disc_before);
                }
                if k == 0 {
                    disc_before = Some(self.opt_disc.snapshot()?);
                    stats.disc_loss = Some(-d_val);
                    stats.structure = Some(d_val);
                    stats.grad_norm_disc = Some(norm);
                }
                self.opt_disc.step(&grads, p.disc_lr, self.opt_disc.clip_factor(norm))?;
            }
        }

        // 3. Denoiser: L_den + λ·D with φ fixed; A is a constant for θ, only Â carries gradient.
        let mut total = (&losses.eps_loss + &losses.vb)?;
        if p.lambda > 0.0 {
            let d = self.denoiser_structure(&x0, &losses.x0_hat, &t)?;
            stats.structure = Some(scalar(&d)?);
            total = (total + (d * p.lambda)?)?;
        }
        stats.loss = scalar(&total)?;
        let grads = total.backward()?;
        let norm = self.opt_dit.grad_norm(&grads)?;
        if !stats.loss.is_finite() || !norm.is_finite() {
            let what = format!("denoiser loss {} / gradient norm {norm}", stats.loss);
            return self.skip(stats, what, disc_before);
        }
        self.opt_dit.step(&grads, p.lr, self.opt_dit.clip_factor(norm))?;
        stats.grad_norm_dit = norm;

        // 4. EMA of θ.
        for (e, (_, v)) in self.ema.iter_mut().zip(&self.dit_vars) {
            if crate::ops::fused_inplace(&[e, v.as_tensor()]) {
                crate::ops::ema_inplace(e, v.as_tensor(), p.ema_decay)?;
            } else {
                *e = ((&*e * p.ema_decay)? + (v.as_tensor().detach() * (1.0 - p.ema_decay))?)?;
            }
        }
        self.step += 1;
        stats.step = self.step;
        Ok(stats)
    }

    /// Counts a step that changes nothing, and says why: the discriminator's update made earlier in the step, if
    /// any, is undone from `disc_before`.
    fn skip(&mut self, mut stats: StepStats, what: String, disc_before: Option<Snapshot>) -> Result<StepStats> {
        if let Some(s) = disc_before {
            self.opt_disc.restore(s)?;
        }
        self.step += 1;
        stats.step = self.step;
        stats.skipped = Some(format!("{what} is not finite"));
        Ok(stats)
    }

    /// Samples from the EMA weights (or the raw weights with `use_ema = false`).
    pub fn sample(&self, labels: &[i32], opts: &SampleOptions, use_ema: bool) -> Result<Tensor> {
        let weights = if use_ema { self.ema_tensors() } else { Self::var_tensors(&self.dit_vars) };
        crate::device::on_pool(|| sample_with(&self.cfg, weights, &self.device, labels, opts))
    }
}

/// Samples n = labels.len() images from a DiT given by its weights.
pub fn sample_with(
    cfg: &CoreConfig,
    weights: HashMap<String, Tensor>,
    device: &Device,
    labels: &[i32],
    opts: &SampleOptions,
) -> Result<Tensor> {
    let m = &cfg.model;
    if labels.is_empty() {
        return Err(Error::Input("nothing to sample: labels is empty".into()));
    }
    opts.validate(cfg.diffusion.num_timesteps)?;
    let ys: Option<Vec<u32>> = if m.num_classes > 0 {
        if let Some(l) = labels.iter().find(|&&l| l < 0 || l as usize >= m.num_classes) {
            return Err(Error::Input(format!("class {l} is outside [0, {})", m.num_classes)));
        }
        Some(labels.iter().map(|&l| l as u32).collect())
    } else {
        None
    };
    let mut dit = DiT::new(m, VarBuilder::from_tensors(weights, DType::F32, device))?;
    // A run trained in bf16 samples in bf16 on a GPU; the CPU has no bf16 product, and f32 is exact there.
    if !device.is_cpu() {
        dit.set_precision(cfg.precision);
    }
    let diffusion = GaussianDiffusion::new(&cfg.diffusion);
    let shape = (labels.len(), m.in_channels, m.input_size, m.input_size);
    Ok(diffusion::sample(&diffusion, &dit, shape, ys.as_deref(), m.num_classes, opts, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CoreConfig;

    pub(crate) fn batch(b: usize, seed: u64) -> (Vec<f32>, Vec<i32>) {
        let mut rng = Rng::new(seed);
        let x: Vec<f32> = rng.normal_vec(b * 784).into_iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        let y = (0..b).map(|i| (i % 10) as i32).collect();
        (x, y)
    }

    pub(crate) fn params(lambda: f64) -> StepParams {
        StepParams { lambda, lr: 1e-3, disc_lr: 1e-3, ema_decay: 0.9, update_disc: true }
    }

    /// A tiny-MNIST trainer after `k` SADM steps (λ = 0.1) on a fixed batch of `b` images, and that batch.
    fn stepped(b: usize, k: usize) -> Result<(Trainer, Vec<f32>, Vec<i32>)> {
        let mut tr = Trainer::new(CoreConfig::tiny_mnist(), &Device::Cpu)?;
        let (x, y) = batch(b, 1);
        for _ in 0..k {
            tr.step(&x, &y, &params(0.1))?;
        }
        Ok((tr, x, y))
    }

    fn weights(vars: &[(String, Var)]) -> Vec<Vec<f32>> {
        vars.iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect()
    }

    #[test]
    fn every_trainable_variable_gets_a_gradient() -> Result<()> {
        // After one step every weight of both networks must have a non-zero gradient. adaLN-Zero makes most DiT
        // gradients zero at init, so take a few steps first to move the zero-initialised layers.
        let (tr, x, _) = stepped(8, 3)?;
        let x0 = Tensor::from_slice(&x, (8, 1, 28, 28), &Device::Cpu)?;
        let t = vec![10usize, 100, 200, 300, 400, 500, 600, 50];
        let noise = Rng::new(9).randn(&[8, 1, 28, 28], &Device::Cpu)?;
        let x_t = tr.diffusion.q_sample(&x0, &t, &noise)?;
        let tt = Tensor::new(t.iter().map(|&v| v as f32).collect::<Vec<_>>(), &Device::Cpu)?;
        let yy = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 10, 7], &Device::Cpu)?;
        let out = tr.dit.forward(&x_t, &tt, Some(&yy))?;
        let l = tr.diffusion.training_losses(&out, &x0, &x_t, &t, &noise)?;
        let d = tr.disc_structure(&x0, &l.x0_hat, &t)?;
        let grads = ((l.eps_loss + l.vb)? + d)?.backward()?;
        for (name, var) in tr.dit_vars.iter().chain(&tr.disc_vars) {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            // Check q, k and v separately: a softmax without backward would leave only v's rows trained.
            let parts = if name.contains("attn.qkv") { g.chunk(3, 0)? } else { vec![g.clone()] };
            for (k, part) in parts.iter().enumerate() {
                let n = part.abs()?.sum_all()?.to_scalar::<f32>()?;
                assert!(n > 0.0, "zero gradient for {name} (part {k})");
            }
        }
        Ok(())
    }

    #[test]
    fn batched_and_frozen_structure_passes_match_two_plain_passes() -> Result<()> {
        let dev = Device::Cpu;
        let (tr, x, _) = stepped(8, 2)?; // the encoder moved off its initialisation
        let x0 = Tensor::from_slice(&x, (8, 1, 28, 28), &dev)?;
        let x0_hat = Var::from_tensor(&(Rng::new(3).randn(&[8, 1, 28, 28], &dev)? * 0.5)?)?;
        let t = vec![10usize, 100, 200, 300, 400, 500, 600, 50];
        let (enc, tt) = (tr.encoder(true)?, tr.timesteps(&t)?);
        let plain = tr.distance(&enc.forward(&x0, &tt)?, &enc.forward(x0_hat.as_tensor(), &tt)?, &t)?;
        let batched = tr.disc_structure(&x0, x0_hat.as_tensor(), &t)?;
        let frozen = tr.denoiser_structure(&x0, x0_hat.as_tensor(), &t)?;
        let v = scalar(&plain)?;
        assert!(v.abs() > 1e-4, "a degenerate distance {v} would hide differences");
        assert!((scalar(&batched)? - v).abs() < 1e-6 * v.abs().max(1.0));
        assert!((scalar(&frozen)? - v).abs() < 1e-6 * v.abs().max(1.0));
        let (gp, gb, gf) = (plain.backward()?, batched.backward()?, frozen.backward()?);
        let close = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? / a.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-12))
        };
        let xg = gp.get(x0_hat.as_tensor()).expect("x̂0 gradient");
        assert!(close(xg, gb.get(x0_hat.as_tensor()).unwrap())? < 1e-5);
        assert!(close(xg, gf.get(x0_hat.as_tensor()).unwrap())? < 1e-5);
        for (name, var) in &tr.disc_vars {
            let g = gp.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            assert!(close(g, gb.get(var.as_tensor()).unwrap())? < 1e-4, "{name}");
            assert!(gf.get(var.as_tensor()).is_none(), "{name}: φ is fixed in the denoiser's pass");
        }
        Ok(())
    }

    /// Every number a step can change: both networks, the EMA, both optimizers' moments and step counts.
    fn full_state(tr: &Trainer) -> Result<Vec<(String, Vec<u32>)>> {
        let bits = |t: &Tensor| -> Result<Vec<u32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect()) };
        let mut out = vec![];
        for (n, v) in tr.dit_vars.iter().chain(&tr.disc_vars) {
            out.push((n.clone(), bits(v.as_tensor())?));
        }
        for (i, e) in tr.ema.iter().enumerate() {
            out.push((format!("ema.{i}"), bits(e)?));
        }
        let mut opt = HashMap::new();
        tr.opt_dit.state_tensors("dit", &mut opt)?;
        tr.opt_disc.state_tensors("disc", &mut opt)?;
        let mut names: Vec<_> = opt.keys().cloned().collect();
        names.sort();
        for n in names {
            out.push((n.clone(), bits(&opt[&n].to_dtype(DType::F32)?)?));
        }
        Ok(out)
    }

    /// The `mnist-tiny` run preset's networks (ts/config.ts): big enough that every fused kernel and GEMM splits
    /// its work across threads, which the tiny test nets are not.
    fn mnist_tiny_preset() -> CoreConfig {
        let mut cfg = CoreConfig::tiny_mnist();
        let m = &mut cfg.model;
        (m.patch_size, m.hidden_size, m.depth, m.num_heads, m.learn_sigma) = (4, 128, 4, 4, false);
        cfg.diffusion.prediction = crate::config::Prediction::V;
        let d = &mut cfg.discriminator;
        (d.patch_size, d.width, d.depth, d.num_heads, d.proj_dim) = (7, 64, 2, 4, 64);
        cfg.dit_optim.grad_clip = 1.0;
        cfg
    }

    #[test]
    fn training_is_deterministic_for_a_thread_count() -> Result<()> {
        // Two threads, and two trainings at once on them: work stealing then splits and joins every parallel
        // loop differently from run to run. Any reduction whose association follows the split shows up here.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a 2-thread pool");
        let (x, y) = batch(64, 4);
        let run = || -> Result<Vec<(String, Vec<u32>)>> {
            pool.install(|| {
                let mut tr = Trainer::new(mnist_tiny_preset(), &Device::Cpu)?;
                for _ in 0..3 {
                    let s = tr.step(&x, &y, &StepParams { lambda: 0.01, lr: 2e-3, ..params(0.01) })?;
                    assert!(s.skipped.is_none() && s.structure.is_some(), "{s:?}");
                }
                full_state(&tr)
            })
        };
        let alone = run()?;
        let (a, b) = std::thread::scope(|s| {
            let (a, b) = (s.spawn(run), s.spawn(run));
            (a.join().expect("run a"), b.join().expect("run b"))
        });
        for other in [a?, b?] {
            for ((name, want), (_, got)) in alone.iter().zip(&other) {
                assert!(want == got, "{name} differs between two identical runs");
            }
        }
        Ok(())
    }

    #[test]
    fn a_non_finite_step_is_skipped_and_changes_nothing() -> Result<()> {
        let (mut tr, x, y) = stepped(8, 2)?;
        // A NaN weight in the DiT: the denoising loss is NaN, caught before any update.
        let bias = tr.dit_vars.iter().find(|(n, _)| n == "final_layer.linear.bias").unwrap().1.clone();
        let good = bias.as_tensor().copy()?;
        bias.set(&(good.ones_like()? * f64::NAN)?)?;
        let before = full_state(&tr)?;
        let s = tr.step(&x, &y, &params(0.1))?;
        assert!(s.skipped.as_deref().unwrap_or("").contains("denoising loss"), "{:?}", s.skipped);
        assert_eq!(s.step, 3, "a skipped step still counts");
        assert!(full_state(&tr)? == before, "a skipped step changed the state");
        bias.set(&good)?;

        // A discriminator learning rate that blows φ up: the discriminator's own update is finite, the
        // denoiser's structure term through the new φ is not. The discriminator's update must be undone. (The
        // public `step` refuses such a rate; a φ that diverges over many steps gets here the slow way.)
        let before = full_state(&tr)?;
        let blow_up = StepParams { disc_lr: 1e35, ..params(0.1) };
        let s = tr.step_here(&x, &y, &blow_up)?;
        assert!(s.skipped.as_deref().unwrap_or("").contains("denoiser loss"), "{:?}", s.skipped);
        assert!(full_state(&tr)? == before, "the discriminator's update was not undone");

        let s = tr.step(&x, &y, &params(0.1))?;
        assert!(s.skipped.is_none() && s.loss.is_finite() && s.step == 5);
        assert!(full_state(&tr)? != before);
        Ok(())
    }

    #[test]
    fn lambda_zero_is_plain_dit_training() -> Result<()> {
        // λ = 0 with the discriminator training beside it must leave the DiT exactly as plain training does.
        let cfg = CoreConfig::tiny_mnist();
        let mut sadm = Trainer::new(cfg.clone(), &Device::Cpu)?;
        let mut plain = Trainer::new(cfg, &Device::Cpu)?;
        let (x, y) = batch(6, 2);
        for _ in 0..3 {
            sadm.step(&x, &y, &params(0.0))?;
            plain.step(&x, &y, &StepParams { update_disc: false, ..params(0.0) })?;
        }
        assert_eq!(weights(&sadm.dit_vars), weights(&plain.dit_vars));
        assert_ne!(weights(&sadm.disc_vars), weights(&plain.disc_vars), "the discriminator should have trained");
        // And λ > 0 must change the DiT update.
        let mut adv = Trainer::new(CoreConfig::tiny_mnist(), &Device::Cpu)?;
        for _ in 0..3 {
            adv.step(&x, &y, &params(1.0))?;
        }
        assert_ne!(weights(&adv.dit_vars), weights(&plain.dit_vars));
        Ok(())
    }

    #[test]
    fn state_kept_across_steps_holds_no_graph() -> Result<()> {
        // A tensor that records its op keeps the whole previous step alive: memory would grow every step.
        let (tr, _, _) = stepped(4, 2)?;
        assert!(tr.ema.iter().all(|t| !t.track_op()), "EMA tensors record a graph");
        let mut opt = HashMap::new();
        tr.opt_dit.state_tensors("dit", &mut opt)?;
        tr.opt_disc.state_tensors("disc", &mut opt)?;
        assert!(opt.values().all(|t| !t.track_op()), "optimizer moments record a graph");
        assert!(Trainer::var_tensors(&tr.dit_vars).values().all(|t| !t.track_op()));
        Ok(())
    }

    #[test]
    fn same_seed_same_step() -> Result<()> {
        let (x, y) = batch(4, 3);
        let run = |seed: u64| -> Result<(StepStats, Vec<Vec<f32>>)> {
            let mut cfg = CoreConfig::tiny_mnist();
            cfg.seed = seed;
            let mut tr = Trainer::new(cfg, &Device::Cpu)?;
            let s = tr.step(&x, &y, &params(0.1))?;
            Ok((s, weights(&tr.dit_vars)))
        };
        let (a, wa) = run(5)?;
        let (b, wb) = run(5)?;
        let (c, _) = run(6)?;
        assert_eq!((a.loss, a.structure), (b.loss, b.structure));
        assert_eq!(wa, wb);
        assert_ne!(a.loss, c.loss);
        Ok(())
    }

    #[test]
    fn loss_goes_down_on_a_fixed_batch() -> Result<()> {
        for prediction in [crate::config::Prediction::Epsilon, crate::config::Prediction::V] {
            let mut cfg = CoreConfig::tiny_mnist();
            cfg.diffusion.prediction = prediction;
            let mut tr = Trainer::new(cfg, &Device::Cpu)?;
            // Learnable images (a class-dependent block pattern): the v target at high noise is −x0, which
            // random images would make unlearnable.
            let y: Vec<i32> = (0..16).map(|i| i % 4).collect();
            let x: Vec<f32> = y
                .iter()
                .flat_map(|&l| (0..784).map(move |p| if ((p / 28) / 7 + (p % 28) / 7) % 4 == l as usize { 1.0 } else { -1.0 }))
                .collect();
            let mut losses = vec![];
            for _ in 0..40 {
                losses.push(tr.step(&x, &y, &StepParams { lr: 2e-3, ..params(0.1) })?.mse);
            }
            let first: f64 = losses[..10].iter().sum::<f64>() / 10.0;
            let last: f64 = losses[30..].iter().sum::<f64>() / 10.0;
            assert!(last < 0.9 * first, "{prediction:?}: mse {first} → {last}");
        }
        Ok(())
    }

    #[test]
    fn the_structure_loss_changes_in_place_and_a_new_encoder_starts_fresh() -> Result<()> {
        let mut tr = Trainer::new(CoreConfig::tiny_mnist(), &Device::Cpu)?;
        let (x, y) = batch(4, 1);
        let cosine = tr.step(&x, &y, &params(0.1))?.structure.unwrap();
        let trained = weights(&tr.disc_vars);
        let mut d = tr.config().discriminator.clone();
        d.kernel = crate::config::Kernel::Gaussian;
        d.pairs = crate::config::Pairs::Cross;
        d.spectral_norm = true;
        assert_eq!(tr.set_discriminator(d.clone())?, None);
        assert_eq!(tr.config().discriminator, d);
        assert!(weights(&tr.disc_vars) == trained, "a loss change must keep the trained encoder");
        let gaussian = tr.step(&x, &y, &params(0.1))?.structure.unwrap();
        assert_ne!(cosine, gaussian);
        // A conv encoder with time conditioning: new variables from the seed's discriminator stream, and a
        // trainer built with that discriminator from the start is the same one.
        d.encoder = crate::config::EncoderKind::Conv;
        d.time_conditioned = true;
        let note = tr.set_discriminator(d.clone())?.expect("a note");
        assert!(note.contains("conv depth 2") && note.contains("starts fresh"), "{note}");
        let mut cfg = tr.config().clone();
        cfg.discriminator = d.clone();
        let fresh = Trainer::new(cfg, &Device::Cpu)?;
        assert!(weights(&tr.disc_vars) == weights(&fresh.disc_vars));
        assert!(tr.step(&x, &y, &params(0.1))?.structure.unwrap().is_finite());
        d.num_heads = 3;
        d.encoder = crate::config::EncoderKind::Transformer;
        assert!(tr.set_discriminator(d).unwrap_err().to_string().contains("numHeads"));
        Ok(())
    }

    #[test]
    fn every_discriminator_option_trains_in_a_full_step() -> Result<()> {
        // Spectral norm, the conv body, time conditioning and the shipped LeNet as a frozen feature network: each
        // takes SADM steps with a finite structure term, its learned variables move and the frozen ones do not.
        use crate::config::{EncoderKind, FeatureNet};
        let lenet = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/lenet-mnist.safetensors");
        let (x, y) = batch(4, 1);
        for (encoder, sn, tc) in [(EncoderKind::Transformer, true, true), (EncoderKind::Conv, true, false), (EncoderKind::Features, false, true)] {
            let mut cfg = CoreConfig::tiny_mnist();
            let d = &mut cfg.discriminator;
            (d.encoder, d.spectral_norm, d.time_conditioned) = (encoder, sn, tc);
            d.feature_net = (encoder == EncoderKind::Features).then(|| FeatureNet { arch: "lenet-mnist".into(), weights: lenet.into() });
            let mut tr = Trainer::new(cfg, &Device::Cpu)?;
            let before = weights(&tr.disc_vars);
            for _ in 0..2 {
                let s = tr.step(&x, &y, &params(0.1))?;
                assert!(s.skipped.is_none() && s.structure.is_some_and(f64::is_finite), "{encoder:?}: {s:?}");
            }
            for ((name, var), old) in tr.disc_vars.iter().zip(before) {
                let moved = var.as_tensor().flatten_all()?.to_vec1::<f32>()? != old;
                assert_eq!(moved, !discriminator::is_frozen(name), "{encoder:?}: {name}");
            }
        }
        Ok(())
    }

    #[test]
    fn bad_batches_are_rejected() -> Result<()> {
        let mut tr = Trainer::new(CoreConfig::tiny_mnist(), &Device::Cpu)?;
        let (x, y) = batch(4, 1);
        let err = |r: Result<StepStats>| r.unwrap_err().to_string();
        assert!(err(tr.step(&x[..100], &y, &params(0.1))).contains("needs 3136"));
        assert!(err(tr.step(&x, &[0, 1, 2, 10], &params(0.1))).contains("label 10 at index 3"));
        let mut nan = x.clone();
        nan[7] = f32::NAN;
        assert!(err(tr.step(&nan, &y, &params(0.1))).contains("index 7"));
        assert!(err(tr.step(&x[..784], &y[..1], &params(0.1))).contains("at least 2"));
        assert_eq!(tr.step_count(), 0);
        Ok(())
    }

    #[test]
    fn out_of_range_step_and_sampling_numbers_are_refused_before_anything_changes() -> Result<()> {
        let (mut tr, x, y) = stepped(4, 1)?;
        let before = full_state(&tr)?;
        let err = |r: Result<StepStats>| r.unwrap_err().to_string();
        for (p, want) in [
            (StepParams { lr: f64::NAN, ..params(0.1) }, "step: lr must be a finite number between 0 and 1 (got NaN)"),
            (StepParams { lr: 2.0, ..params(0.1) }, "step: lr must be a finite number between 0 and 1 (got 2)"),
            (StepParams { disc_lr: -1e-4, ..params(0.1) }, "step: discLr must be a finite number between 0 and 1 (got -0.0001)"),
            (StepParams { lambda: f64::INFINITY, ..params(0.1) }, "step: lambda must be a finite number between 0 and 10 (got Infinity)"),
            (StepParams { lambda: 11.0, ..params(0.1) }, "step: lambda must be a finite number between 0 and 10 (got 11)"),
            (StepParams { ema_decay: f64::NAN, ..params(0.1) }, "step: emaDecay must be a finite number between 0 and 1 (got NaN)"),
            (StepParams { ema_decay: 1.5, ..params(0.1) }, "step: emaDecay must be a finite number between 0 and 1 (got 1.5)"),
        ] {
            assert_eq!(err(tr.step(&x, &y, &p)), format!("invalid input: {want}"));
        }
        assert_eq!(tr.step_count(), 1);
        assert!(full_state(&tr)? == before, "a refused step changed the state");
        // The ends of the ranges are accepted.
        let edge = StepParams { lambda: 10.0, lr: 0.0, disc_lr: 0.0, ema_decay: 1.0, update_disc: true };
        assert!(tr.step(&x, &y, &edge)?.skipped.is_none());

        let opts = SampleOptions { cfg_scale: 2.0, ..SampleOptions::new(diffusion::Sampler::Ddim, 2) };
        let err = |o: SampleOptions| tr.sample(&[1], &o, true).unwrap_err().to_string();
        for (o, want) in [
            (SampleOptions { cfg_scale: f64::NAN, ..opts.clone() }, "sample: cfgScale must be a finite number between 0 and 100 (got NaN)"),
            (SampleOptions { cfg_scale: -1.0, ..opts.clone() }, "sample: cfgScale must be a finite number between 0 and 100 (got -1)"),
            (SampleOptions { eta: f64::NAN, ..opts.clone() }, "sample: eta must be a finite number between 0 and 10 (got NaN)"),
            (SampleOptions { steps: 0, ..opts.clone() }, "sample: steps must be an integer between 1 and 1000 (got 0)"),
            (SampleOptions { steps: 1001, ..opts.clone() }, "sample: steps must be an integer between 1 and 1000 (got 1001)"),
        ] {
            assert_eq!(err(o), format!("invalid input: {want}"));
        }
        let edge = SampleOptions { steps: 1, cfg_scale: 100.0, eta: 10.0, ..opts };
        assert!(tr.sample(&[1], &edge, true)?.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite()));
        Ok(())
    }

    #[test]
    fn sampling_shapes_and_guidance_identity() -> Result<()> {
        let mut tr = Trainer::new(CoreConfig::tiny_mnist(), &Device::Cpu)?;
        let (x, y) = batch(4, 1);
        for _ in 0..2 {
            tr.step(&x, &y, &StepParams { ema_decay: 0.0, ..params(0.0) })?;
        }
        let opts = SampleOptions { seed: 3, ..SampleOptions::new(diffusion::Sampler::Ddpm, 5) };
        let a = tr.sample(&[1, 2, 3], &opts, true)?;
        assert_eq!(a.dims(), &[3, 1, 28, 28]);
        let b = tr.sample(&[1, 2, 3], &opts, true)?;
        assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
        let g = tr.sample(&[1, 2, 3], &SampleOptions { cfg_scale: 4.0, ..opts.clone() }, true)?;
        assert_ne!(a.flatten_all()?.to_vec1::<f32>()?, g.flatten_all()?.to_vec1::<f32>()?);
        assert!(tr.sample(&[11], &opts, true).unwrap_err().to_string().contains("class 11"));
        Ok(())
    }
}
