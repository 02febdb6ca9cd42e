//! AdamW (decoupled weight decay, as PyTorch's) with fp32 moments that can be saved and restored:
//! `candle_nn::AdamW` keeps its state private, so a resumed run could not continue it.
use crate::config::OptimConfig;
use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;

/// What [`AdamW::snapshot`] keeps.
pub struct Snapshot {
    vars: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
}

pub struct AdamW {
    cfg: OptimConfig,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, cfg: OptimConfig) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = vars.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<_>>()?;
        let v = vars.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<_>>()?;
        Ok(Self { cfg, vars, m, v, step: 0 })
    }

    pub fn var_names(&self) -> Vec<String> {
        self.vars.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The global L2 norm of the gradients of this optimizer's variables (a missing gradient counts as zero).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            }
        }
        Ok(sq.sqrt())
    }

    /// The factor that clips a gradient of norm `norm` to the configured maximum (1 when clipping is off).
    pub fn clip_factor(&self, norm: f64) -> f64 {
        if self.cfg.grad_clip > 0.0 && norm > self.cfg.grad_clip { self.cfg.grad_clip / (norm + 1e-6) } else { 1.0 }
    }

    /// One update with learning rate `lr`, gradients multiplied by `grad_scale` first.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            if crate::ops::fused_inplace(&[var.as_tensor(), g, &self.m[i], &self.v[i]]) {
                crate::ops::adamw_inplace(var.as_tensor(), g, &self.m[i], &self.v[i], c, lr, grad_scale, (bc1, bc2))?;
                continue;
            }
            // Detached: tensors kept across steps must not carry (and keep alive) this step's graph.
            let g = if grad_scale != 1.0 { (g.detach() * grad_scale)? } else { g.detach() };
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let p = var.as_tensor().detach();
            let decayed = if c.weight_decay > 0.0 { (p * (1.0 - lr * c.weight_decay))? } else { p };
            var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// A deep copy of the variables and of this optimizer's state, so that an update can be undone.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let copy = |t: &Tensor| t.copy();
        Ok(Snapshot {
            vars: self.vars.iter().map(|(_, v)| copy(v.as_tensor())).collect::<candle_core::Result<_>>()?,
            m: self.m.iter().map(copy).collect::<candle_core::Result<_>>()?,
            v: self.v.iter().map(copy).collect::<candle_core::Result<_>>()?,
            step: self.step,
        })
    }

    /// Puts the variables and the state back as they were at `snapshot`.
    pub fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        for ((_, var), t) in self.vars.iter().zip(&snapshot.vars) {
            var.set(t)?;
        }
        (self.m, self.v, self.step) = (snapshot.m, snapshot.v, snapshot.step);
        Ok(())
    }

    /// Moments as `{prefix}.m.{name}`, `{prefix}.v.{name}`, and the step count as `{prefix}.step`.
    pub fn state_tensors(&self, prefix: &str, out: &mut HashMap<String, Tensor>) -> Result<()> {
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("{prefix}.m.{name}"), self.m[i].clone());
            out.insert(format!("{prefix}.v.{name}"), self.v[i].clone());
        }
        out.insert(format!("{prefix}.step"), Tensor::new(&[self.step as i64], &Device::Cpu)?);
        Ok(())
    }

    pub fn load_state(&mut self, prefix: &str, map: &HashMap<String, Tensor>, path: &std::path::Path) -> Result<()> {
        let get = |key: String| map.get(&key).ok_or_else(|| Error::checkpoint(path, format!("missing optimizer tensor '{key}'")));
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{kind}.{name}");
                let t = get(key.clone())?;
                if t.dims() != var.dims() {
                    return Err(Error::checkpoint(
                        path,
                        format!("optimizer tensor '{key}' has shape {:?} but the model expects {:?}", t.dims(), var.dims()),
                    ));
                }
                *slot = t.to_dtype(DType::F32)?.to_device(var.device())?;
            }
        }
        let step = get(format!("{prefix}.step"))?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        self.step = *step.first().ok_or_else(|| Error::checkpoint(path, format!("empty '{prefix}.step'")))? as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_pytorch_adamw_by_hand() -> Result<()> {
        // One parameter, loss = p² (grad 2p), lr 0.1, wd 0.01: two steps computed by hand with PyTorch's formula.
        let p = Var::new(&[1.0f32], &Device::Cpu)?;
        let cfg = OptimConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, grad_clip: 0.0 };
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], cfg)?;
        let (mut pe, mut m, mut v) = (1.0f64, 0.0f64, 0.0f64);
        for t in 1..=2 {
            let grads = p.as_tensor().sqr()?.sum_all()?.backward()?;
            opt.step(&grads, 0.1, 1.0)?;
            let g = 2.0 * pe;
            pe *= 1.0 - 0.1 * 0.01;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let mh = m / (1.0 - 0.9f64.powi(t));
            let vh = v / (1.0 - 0.999f64.powi(t));
            pe -= 0.1 * mh / (vh.sqrt() + 1e-8);
        }
        let got = p.as_tensor().to_vec1::<f32>()?[0] as f64;
        assert!((got - pe).abs() < 1e-6, "{got} vs {pe}");
        Ok(())
    }

    #[test]
    fn fused_cpu_update_matches_the_tensor_formula() -> Result<()> {
        // The in-place kernels (CPU) against AdamW written in tensor ops, with clipping scale and weight decay;
        // 700×37 values so the kernels take their parallel path.
        let dev = Device::Cpu;
        let mut rng = crate::rng::Rng::new(5);
        let p0 = rng.randn(&[700, 37], &dev)?;
        let p = Var::from_tensor(&p0.copy()?)?;
        let cfg = OptimConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.05, grad_clip: 0.0 };
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], cfg.clone())?;
        let (lr, scale) = (0.01, 0.5);
        let (mut pr, mut m, mut v) = (p0.clone(), p0.zeros_like()?, p0.zeros_like()?);
        for t in 1..=3 {
            let g = rng.randn(&[700, 37], &dev)?;
            let grads = (p.as_tensor() * &g)?.sum_all()?.backward()?;
            opt.step(&grads, lr, scale)?;
            let g = (g * scale)?;
            m = ((&m * cfg.beta1)? + (&g * (1.0 - cfg.beta1))?)?;
            v = ((&v * cfg.beta2)? + (g.sqr()? * (1.0 - cfg.beta2))?)?;
            let (bc1, bc2) = (1.0 - cfg.beta1.powi(t), 1.0 - cfg.beta2.powi(t));
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + cfg.eps)?)?;
            pr = ((pr * (1.0 - lr * cfg.weight_decay))? - (update * lr)?)?;
        }
        let diff = (p.as_tensor() - &pr)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "fused AdamW differs by {diff}");
        let dm = (&opt.m[0] - &m)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(dm < 1e-7, "first moment differs by {dm}");
        Ok(())
    }

    #[test]
    fn clip_factor_scales_to_max() {
        let cfg = OptimConfig { grad_clip: 1.0, ..OptimConfig::default() };
        let opt = AdamW { cfg, vars: vec![], m: vec![], v: vec![], step: 0 };
        assert!((opt.clip_factor(4.0) - 0.25).abs() < 1e-6);
        assert_eq!(opt.clip_factor(0.5), 1.0);
    }
}
