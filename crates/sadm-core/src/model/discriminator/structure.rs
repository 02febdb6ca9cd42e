//! The structural distance between the pairwise-relation matrices of a real batch and its reconstructions
//! (design §1.2), and the per-sample pair weights.
use crate::config::{DiscriminatorConfig, Distance, Kernel, Pairs, Weighting};
use candle_core::{DType, Result, Tensor};

/// Pairwise relations between the rows of `a` and `b` (unit vectors): the affinity matrix under `kernel`.
fn affinity(a: &Tensor, b: &Tensor, cfg: &DiscriminatorConfig, offdiag: &Tensor) -> Result<Tensor> {
    let gram = a.matmul(&b.t()?)?;
    match cfg.kernel {
        Kernel::Cosine => Ok(gram),
        Kernel::Gaussian | Kernel::Euclidean => {
            // |a-b|² = 2 - 2a·b for unit vectors; clamp the rounding below zero.
            let d2 = (2.0 - (gram * 2.0)?)?.relu()?;
            if cfg.kernel == Kernel::Gaussian {
                (d2 / -cfg.tau)?.exp()
            } else {
                // Keep sqrt's gradient finite on the diagonal (masked out anyway).
                let d = (d2 + 1e-12)?.sqrt()?;
                let mean = ((&d * offdiag)?.sum_all()? / offdiag.sum_all()?)?;
                d.broadcast_div(&mean)
            }
        }
    }
}

/// Per-sample pair weights from timesteps (design §1.2): w_i = snr/(1+snr) = ᾱ_i, uniform, or a cut-off.
pub fn sample_weights(cfg: &DiscriminatorConfig, t: &[usize], alphas_cumprod: &[f64]) -> Vec<f32> {
    t.iter()
        .map(|&ti| match cfg.weighting {
            Weighting::Snr => alphas_cumprod[ti] as f32,
            Weighting::Uniform => 1.0,
            Weighting::Cutoff => (ti < cfg.t_max) as u8 as f32,
        })
        .collect()
}

/// D = Σ_{i≠j} w_ij·ρ(A_ij − Â_ij) / Σ_{i≠j} w_ij, with w_ij = min(w_i, w_j) and ρ the configured distance.
/// `z` embeds the real batch, `z_hat` the reconstructions. Returns a scalar; 0 when every weight is 0.
pub fn structure_distance(z: &Tensor, z_hat: &Tensor, w: &[f32], cfg: &DiscriminatorConfig) -> Result<Tensor> {
    let n = z.dim(0)?;
    let dev = z.device();
    let mut pair_w = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            if i != j {
                pair_w[i * n + j] = w[i].min(w[j]);
            }
        }
    }
    let total: f32 = pair_w.iter().sum();
    let offdiag = Tensor::from_vec((0..n * n).map(|k| (k / n != k % n) as u8 as f32).collect::<Vec<_>>(), (n, n), dev)?;
    if total <= 0.0 {
        return Tensor::zeros((), DType::F32, dev);
    }
    let pair_w = (Tensor::from_vec(pair_w, (n, n), dev)? / total as f64)?;
    let a = affinity(z, z, cfg, &offdiag)?;
    let a_hat = match cfg.pairs {
        Pairs::Within => affinity(z_hat, z_hat, cfg, &offdiag)?,
        Pairs::Cross => affinity(z, z_hat, cfg, &offdiag)?,
    };
    let diff = (a - a_hat)?;
    let rho = match cfg.distance {
        Distance::L1 => diff.abs()?,
        Distance::Squared => diff.sqr()?,
        Distance::Huber => {
            // δ-Huber: ½x² inside |x| ≤ δ, δ(|x| − ½δ) outside; min/relu keep both branches differentiable.
            let a = diff.abs()?;
            let quad = a.clamp(0f32, cfg.huber_delta as f32)?;
            let lin = (&a - &quad)?;
            ((quad.sqr()? * 0.5)? + (lin * cfg.huber_delta)?)?
        }
    };
    (rho * pair_w)?.sum_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CoreConfig;
    use crate::rng::Rng;
    use candle_core::Device;

    fn unit(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap();
        let n = t.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
        t.broadcast_div(&n).unwrap()
    }

    #[test]
    fn identical_structure_has_zero_distance() -> Result<()> {
        let mut cfg = CoreConfig::tiny_mnist().discriminator;
        let z = unit(&[[1., 0.], [0.6, 0.8], [0., 1.]]);
        for kernel in [Kernel::Cosine, Kernel::Euclidean, Kernel::Gaussian] {
            cfg.kernel = kernel;
            let d = structure_distance(&z, &z, &[1., 1., 1.], &cfg)?.to_scalar::<f32>()?;
            assert!(d.abs() < 1e-6, "{kernel:?}: {d}");
        }
        Ok(())
    }

    #[test]
    fn cosine_l1_known_value() -> Result<()> {
        let cfg = CoreConfig::tiny_mnist().discriminator;
        // Real: orthogonal pair (A_01 = 0); generated: identical pair (Â_01 = 1): |0 - 1| on both off-diagonals.
        let z = unit(&[[1., 0.], [0., 1.]]);
        let zh = unit(&[[1., 0.], [1., 0.]]);
        let d = structure_distance(&z, &zh, &[1., 1.], &cfg)?.to_scalar::<f32>()?;
        assert!((d - 1.0).abs() < 1e-6);
        // Squared and Huber (δ = 0.1): 1 and 0.1·(1 − 0.05).
        let mut c2 = cfg.clone();
        c2.distance = Distance::Huber;
        let d = structure_distance(&z, &zh, &[1., 1.], &c2)?.to_scalar::<f32>()?;
        assert!((d - 0.095).abs() < 1e-6, "{d}");
        Ok(())
    }

    #[test]
    fn weights_are_normalised_and_min_paired() -> Result<()> {
        let cfg = CoreConfig::tiny_mnist().discriminator;
        let z = unit(&[[1., 0.], [0., 1.], [1., 0.]]);
        let zh = unit(&[[1., 0.], [1., 0.], [1., 0.]]);
        // |A−Â| = 1 on pairs (0,1),(1,2) and 0 on (0,2). Weights w = [1, 0.5, 1] → w01 = w12 = 0.5, w02 = 1.
        // D = (2·0.5·1 + 2·0.5·1 + 2·1·0) / (2·0.5 + 2·0.5 + 2·1) = 2 / 4.
        let d = structure_distance(&z, &zh, &[1., 0.5, 1.], &cfg)?.to_scalar::<f32>()?;
        assert!((d - 0.5).abs() < 1e-6, "{d}");
        assert_eq!(structure_distance(&z, &zh, &[0., 0., 0.], &cfg)?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn cross_pairs_use_real_against_generated() -> Result<()> {
        let mut cfg = CoreConfig::tiny_mnist().discriminator;
        cfg.pairs = Pairs::Cross;
        let z = unit(&[[1., 0.], [0., 1.]]);
        // Â_01 = z_0·ẑ_1 = 1 (ẑ_1 = e0) and Â_10 = z_1·ẑ_0 = 0 (ẑ_0 = e0): D = (|0−1| + |0−0|)/2.
        let zh = unit(&[[1., 0.], [1., 0.]]);
        let d = structure_distance(&z, &zh, &[1., 1.], &cfg)?.to_scalar::<f32>()?;
        assert!((d - 0.5).abs() < 1e-6, "{d}");
        Ok(())
    }

    #[test]
    fn structure_gradients_match_finite_differences() -> Result<()> {
        // Through the encoder's L2 normalisation and every kernel/distance/pair option, w.r.t. the generated
        // inputs (the path that trains the DiT).
        let dev = Device::Cpu;
        let mut rng = Rng::new(11);
        let mut cfg = CoreConfig::tiny_mnist().discriminator;
        cfg.proj_dim = 8;
        let raw = rng.randn(&[5, 8], &dev)?;
        let raw_hat = candle_core::Var::from_tensor(&rng.randn(&[5, 8], &dev)?)?;
        let w = [1.0f32, 0.3, 0.8, 0.5, 0.9];
        let norm = |t: &Tensor| -> Result<Tensor> { t.broadcast_div(&t.sqr()?.sum_keepdim(1)?.sqrt()?) };
        for (kernel, distance, pairs) in [
            (Kernel::Cosine, Distance::L1, Pairs::Within),
            (Kernel::Cosine, Distance::Squared, Pairs::Cross),
            (Kernel::Gaussian, Distance::Huber, Pairs::Within),
            (Kernel::Euclidean, Distance::Squared, Pairs::Within),
        ] {
            cfg.kernel = kernel;
            cfg.distance = distance;
            cfg.pairs = pairs;
            cfg.huber_delta = 0.05;
            let f = || structure_distance(&norm(&raw)?, &norm(raw_hat.as_tensor())?, &w, &cfg);
            crate::nn::check_grad(&f, &raw_hat, &[0, 9, 17, 26, 39])?;
        }
        Ok(())
    }

    #[test]
    fn snr_weights_equal_alpha_bar() {
        let cfg = CoreConfig::tiny_mnist().discriminator;
        let ac = [0.9, 0.5, 0.1];
        assert_eq!(sample_weights(&cfg, &[0, 2], &ac), vec![0.9f32, 0.1]);
        let mut c = cfg.clone();
        c.weighting = Weighting::Cutoff;
        c.t_max = 2;
        assert_eq!(sample_weights(&c, &[0, 1, 2], &ac), vec![1., 1., 0.]);
    }
}
