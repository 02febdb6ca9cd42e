//! The structure discriminator (design §1.2): an encoder f_φ that maps samples to a low-dimensional unit sphere,
//! and ([`structure`]) the distance between the pairwise-relation matrices of a real batch and its reconstructions.
//!
//! The encoder is a body, a mean pool and a 2-layer MLP projector. Bodies: the DiT's own ops (linear patch
//! embedding, pre-norm transformer blocks; the default), a small stride-2 conv net, or a frozen pretrained feature
//! network (a shipped LeNet) under the learned projector. Options: spectral normalisation of every learned weight
//! matrix ([`spectral`]), and a timestep embedding added to the pooled features.
//!
//! The encoder is rebuilt for every forward from a map of weights ([`weights`]): the tracked variables for the
//! discriminator's update, detached copies for the denoiser's, spectrally normalised in both when configured. The
//! modules are thin views of those tensors, so this costs nothing next to the forward itself.
pub mod spectral;
pub mod structure;

pub use structure::{sample_weights, structure_distance};

use crate::classifier::{self, Arch, LeNet};
use crate::config::{DiscriminatorConfig, EncoderKind};
use crate::error::{Error, Result};
use crate::model::dit::timestep_embedding;
use crate::nn::{self, Attention, Init, LayerNorm, Linear, Mlp};
use crate::rng::Rng;
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder, VarMap};
use std::collections::HashMap;
use std::path::Path;

/// Where the frozen feature network's tensors live (`features.conv1.weight`, …): saved with the discriminator,
/// never optimised or normalised, and detached in every forward (so no weight gradient is ever computed for them).
pub const FROZEN: &str = "features";

/// Sinusoidal frequencies of the timestep embedding (the DiT's uses 256 for a much wider network).
const T_FREQUENCIES: usize = 64;

pub fn is_frozen(name: &str) -> bool {
    name.strip_prefix(FROZEN).is_some_and(|rest| rest.starts_with('.'))
}

struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(cfg: &DiscriminatorConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let w = cfg.width;
        Ok(Self {
            norm1: LayerNorm::new(w, vb.pp("norm1"))?,
            attn: Attention::new(w, cfg.num_heads, vb.pp("attn"))?,
            norm2: LayerNorm::new(w, vb.pp("norm2"))?,
            mlp: Mlp::new(w, 4 * w, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }
}

enum Body {
    Transformer { patch: usize, patch_embed: Linear, pos_embed: Tensor, blocks: Vec<Block>, norm: LayerNorm },
    Conv(Vec<Conv2d>),
    Features(LeNet),
}

/// Output channels of the conv body's stages: doubling up to `width` in the last, at least 8.
fn conv_channels(cfg: &DiscriminatorConfig) -> Vec<usize> {
    (0..cfg.depth).map(|i| cfg.width.checked_shr((cfg.depth - 1 - i) as u32).unwrap_or(0).max(8)).collect()
}

pub struct Encoder {
    body: Body,
    t_embed: Option<(Linear, Linear)>,
    head0: Linear,
    head2: Linear,
}

impl Encoder {
    pub fn new(cfg: &DiscriminatorConfig, in_channels: usize, input_size: usize, vb: VarBuilder) -> Result<Self> {
        let (p, w) = (cfg.patch_size, cfg.width);
        let (body, pooled) = match cfg.encoder {
            EncoderKind::Transformer => (
                Body::Transformer {
                    patch: p,
                    patch_embed: nn::linear(in_channels * p * p, w, vb.pp("patch_embed"))?,
                    pos_embed: nn::sincos_pos_embed(w, input_size / p, vb.device())?.unsqueeze(0)?,
                    blocks: (0..cfg.depth).map(|i| Block::new(cfg, vb.pp("blocks").pp(i))).collect::<candle_core::Result<_>>()?,
                    norm: LayerNorm::new(w, vb.pp("norm"))?,
                },
                w,
            ),
            EncoderKind::Conv => {
                let stride2 = Conv2dConfig { padding: 1, stride: 2, ..Default::default() };
                let chans = conv_channels(cfg);
                let mut convs = Vec::with_capacity(chans.len());
                let mut c_in = in_channels;
                for (i, &c) in chans.iter().enumerate() {
                    convs.push(candle_nn::conv2d(c_in, c, 3, stride2, vb.pp("convs").pp(i))?);
                    c_in = c;
                }
                (Body::Conv(convs), c_in)
            }
            EncoderKind::Features => {
                let net = cfg.feature_net.as_ref().ok_or_else(|| Error::Config("encoder 'features' needs featureNet".into()))?;
                let spec = Arch::parse(&net.arch)?
                    .lenet()
                    .ok_or_else(|| Error::Config(format!("featureNet {} is not a LeNet", net.arch)))?;
                (Body::Features(LeNet::new(spec, vb.pp(FROZEN))?), LeNet::FEATURES)
            }
        };
        let t_embed = if cfg.time_conditioned {
            let tv = vb.pp("t_embed");
            Some((nn::linear(T_FREQUENCIES, pooled, tv.pp("0"))?, nn::linear(pooled, pooled, tv.pp("2"))?))
        } else {
            None
        };
        Ok(Self {
            body,
            t_embed,
            head0: nn::linear(pooled, w, vb.pp("head").pp("0"))?,
            head2: nn::linear(w, cfg.proj_dim, vb.pp("head").pp("2"))?,
        })
    }

    /// [B, C, H, W] images and their timesteps [B] (read only by a time-conditioned encoder) → unit vectors [B, k].
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let pooled = match &self.body {
            Body::Transformer { patch, patch_embed, pos_embed, blocks, norm } => {
                let mut h = patch_embed.forward(&nn::patchify(x, *patch)?)?.broadcast_add(pos_embed)?;
                for block in blocks {
                    h = block.forward(&h)?;
                }
                norm.forward(&h)?.mean(1)?
            }
            Body::Conv(convs) => {
                let mut h = x.clone();
                for conv in convs {
                    h = crate::ops::gelu(&conv.forward(&h)?)?;
                }
                h.flatten_from(2)?.mean(2)?
            }
            Body::Features(net) => net.features(x)?,
        };
        let pooled = match &self.t_embed {
            Some((l0, l2)) => (pooled + l2.forward(&l0.forward(&timestep_embedding(t, T_FREQUENCIES)?)?.silu()?)?)?,
            None => pooled,
        };
        let z = self.head2.forward(&crate::ops::gelu(&self.head0.forward(&pooled)?)?)?;
        let norm = (z.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
        Ok(z.broadcast_div(&norm)?)
    }
}

pub fn encoder_init(name: &str) -> Init {
    let is_norm = name.contains("norm");
    match (is_norm, name.ends_with("weight")) {
        (true, true) => Init::Ones,
        (_, false) => Init::Zeros,
        (false, true) => Init::XavierUniform,
    }
}

/// The encoder's variables, uninitialised (a checkpoint fills them).
pub fn empty_vars(cfg: &DiscriminatorConfig, in_channels: usize, input_size: usize, device: &Device) -> Result<VarMap> {
    let varmap = VarMap::new();
    Encoder::new(cfg, in_channels, input_size, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    Ok(varmap)
}

/// The encoder's variables with the reference initialisation from `rng`, and for `encoder: features` the frozen
/// network's weights read from `featureNet.weights`.
pub fn new_vars(cfg: &DiscriminatorConfig, in_channels: usize, input_size: usize, rng: &mut Rng, device: &Device) -> Result<VarMap> {
    let varmap = empty_vars(cfg, in_channels, input_size, device)?;
    nn::init_vars(&varmap, rng, encoder_init)?;
    if let (EncoderKind::Features, Some(net)) = (cfg.encoder, &cfg.feature_net) {
        let path = Path::new(&net.weights);
        let loaded = crate::io::checkpoint::load_tensors(path, device).map_err(|e| {
            Error::Input(format!("discriminator.featureNet: cannot read {}: {e}", path.display()))
        })?;
        let tensors = classifier::checked_tensors(Arch::parse(&net.arch)?, &loaded, path, device)?;
        let vars = varmap.data().lock().map_err(|_| Error::Input("discriminator variables are poisoned".into()))?;
        for (name, t) in tensors {
            if let Some(var) = vars.get(&format!("{FROZEN}.{name}")) {
                var.set(&t)?;
            }
        }
    }
    Ok(varmap)
}

/// The tensors an encoder computes with: the variables themselves (`track`, for the discriminator's own update)
/// or detached views of the same storage (for the denoiser's update, where φ is fixed); the frozen network always
/// detached; each learned weight matrix divided by its largest singular value under `spectralNorm`.
pub fn weights(cfg: &DiscriminatorConfig, vars: &[(String, Var)], track: bool) -> Result<HashMap<String, Tensor>> {
    vars.iter()
        .map(|(name, var)| {
            let frozen = is_frozen(name);
            let t = if track && !frozen { var.as_tensor().clone() } else { var.as_tensor().detach() };
            let matrix = name.ends_with("weight") && t.rank() >= 2;
            let t = if cfg.spectral_norm && matrix && !frozen { spectral::normalize(&t)? } else { t };
            Ok((name.clone(), t))
        })
        .collect()
}

/// An encoder on `weights` (see [`weights`]).
pub fn build(cfg: &DiscriminatorConfig, in_channels: usize, input_size: usize, weights: HashMap<String, Tensor>, device: &Device) -> Result<Encoder> {
    Encoder::new(cfg, in_channels, input_size, VarBuilder::from_tensors(weights, DType::F32, device))
}

/// The architecture-defining fields: a change of any of them needs a new encoder (new variables).
pub fn architecture(cfg: &DiscriminatorConfig) -> String {
    let body = match cfg.encoder {
        EncoderKind::Transformer => format!("transformer patch {} depth {} heads {}", cfg.patch_size, cfg.depth, cfg.num_heads),
        EncoderKind::Conv => format!("conv depth {}", cfg.depth),
        EncoderKind::Features => format!("features {}", cfg.feature_net.as_ref().map_or("?", |f| f.arch.as_str())),
    };
    format!("{body}, width {}, projDim {}{}", cfg.width, cfg.proj_dim, if cfg.time_conditioned { ", time-conditioned" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CoreConfig, FeatureNet};
    use crate::nn::sorted_vars;

    /// A LeNet weight file with random weights, in a temp folder of its own.
    fn lenet_file(tag: &str) -> Result<String> {
        let dir = std::env::temp_dir().join(format!("sadm-disc-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::Input(e.to_string()))?;
        let varmap = VarMap::new();
        LeNet::new(Arch::LeNetMnist.lenet().unwrap(), VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
        nn::init_vars(&varmap, &mut Rng::new(9), |n| if n.ends_with("bias") { Init::Normal(0.1) } else { Init::XavierUniform })?;
        let path = dir.join("lenet.safetensors");
        crate::io::checkpoint::save_tensors(&path, &sorted_vars(&varmap).into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect())?;
        Ok(path.to_string_lossy().into_owned())
    }

    /// Every encoder option the study compares, on 1×28×28 digits.
    fn variants(lenet: &str) -> Vec<(&'static str, DiscriminatorConfig)> {
        let base = CoreConfig::tiny_mnist().discriminator;
        let with = |f: &dyn Fn(&mut DiscriminatorConfig)| {
            let mut c = base.clone();
            c.patch_size = 7;
            c.width = 16;
            c.depth = 2;
            c.num_heads = 2;
            c.proj_dim = 8;
            f(&mut c);
            c
        };
        let features = FeatureNet { arch: "lenet-mnist".into(), weights: lenet.into() };
        vec![
            ("transformer", with(&|_| {})),
            ("transformer + spectral norm + t", with(&|c| {
                c.spectral_norm = true;
                c.time_conditioned = true;
            })),
            ("conv", with(&|c| c.encoder = EncoderKind::Conv)),
            ("conv + spectral norm", with(&|c| {
                c.encoder = EncoderKind::Conv;
                c.spectral_norm = true;
            })),
            ("features + t", with(&|c| {
                c.encoder = EncoderKind::Features;
                c.feature_net = Some(features.clone());
                c.time_conditioned = true;
            })),
        ]
    }

    fn tracked(cfg: &DiscriminatorConfig, vars: &[(String, Var)]) -> Result<Encoder> {
        build(cfg, 1, 28, weights(cfg, vars, true)?, &Device::Cpu)
    }

    #[test]
    fn every_encoder_outputs_unit_vectors() -> Result<()> {
        let lenet = lenet_file("unit")?;
        let dev = Device::Cpu;
        let x = Rng::new(1).randn(&[5, 1, 28, 28], &dev)?;
        let t = Tensor::new(&[0f32, 10., 200., 500., 999.], &dev)?;
        for (what, cfg) in variants(&lenet) {
            let vars = sorted_vars(&new_vars(&cfg, 1, 28, &mut Rng::new(0), &dev)?);
            let z = tracked(&cfg, &vars)?.forward(&x, &t)?;
            assert_eq!(z.dims(), &[5, cfg.proj_dim], "{what}");
            for n in z.sqr()?.sum(1)?.to_vec1::<f32>()? {
                assert!((n - 1.0).abs() < 1e-5, "{what}: |z|² = {n}");
            }
            // Time conditioning changes the embedding of the same image at another t; without it, t is ignored.
            let z_later = tracked(&cfg, &vars)?.forward(&x, &(&t + 1.0)?)?;
            let moved = (&z - z_later)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(moved > 1e-6, cfg.time_conditioned, "{what}: t moved z by {moved}");
        }
        Ok(())
    }

    #[test]
    fn conv_channels_double_up_to_the_width() {
        let mut cfg = CoreConfig::tiny_mnist().discriminator;
        cfg.width = 64;
        cfg.depth = 3;
        assert_eq!(conv_channels(&cfg), vec![16, 32, 64]);
        cfg.depth = 5;
        assert_eq!(conv_channels(&cfg), vec![8, 8, 16, 32, 64]);
    }

    #[test]
    fn encoder_gradients_match_finite_differences() -> Result<()> {
        // A fixed projection of z, w.r.t. the input images (the path that trains the DiT) and w.r.t. one learned
        // weight (the discriminator's own update), for every body and option, spectral normalisation included.
        // The input check is a directional derivative along a random direction over all pixels: the LeNet's ReLUs
        // and max-pools have kinks a single-pixel difference can straddle, which a whole direction averages out
        // (a gradient off by a constant factor, as candle's max-pool backward is, still fails it).
        let lenet = lenet_file("grad")?;
        let dev = Device::Cpu;
        let mut rng = Rng::new(4);
        let x = Var::from_tensor(&(rng.randn(&[3, 1, 28, 28], &dev)? * 0.5)?)?;
        let dir = rng.randn(&[3, 1, 28, 28], &dev)?;
        let t = Tensor::new(&[5f32, 300., 800.], &dev)?;
        for (what, cfg) in variants(&lenet) {
            let vars = sorted_vars(&new_vars(&cfg, 1, 28, &mut Rng::new(2), &dev)?);
            let probe = rng.randn(&[3, cfg.proj_dim], &dev)?;
            let at = |x: &Tensor| -> Result<Tensor> { Ok((tracked(&cfg, &vars)?.forward(x, &t)? * &probe)?.sum_all()?) };
            let grad = at(x.as_tensor())?.backward()?;
            let analytic = (grad.get(x.as_tensor()).unwrap() * &dir)?.sum_all()?.to_scalar::<f32>()? as f64;
            let h = 1e-2;
            let value = |s: f64| -> Result<f64> { Ok(at(&(x.as_tensor() + (&dir * s)?)?)?.to_scalar::<f32>()? as f64) };
            let fd = (value(h)? - value(-h)?) / (2.0 * h);
            assert!((fd - analytic).abs() <= 2e-3 + 2e-2 * fd.abs(), "{what}: along a direction, analytic {analytic}, finite difference {fd}");
            let f = || -> candle_core::Result<Tensor> { at(x.as_tensor()).map_err(|e| candle_core::Error::Msg(e.to_string())) };
            eprintln!("gradient check: {what}");
            let var = &vars.iter().find(|(n, _)| n == "head.0.weight").unwrap().1;
            nn::check_grad(&f, var, &[0, 7, 30])?;
        }
        Ok(())
    }

    #[test]
    fn the_feature_network_is_loaded_and_frozen() -> Result<()> {
        let lenet = lenet_file("frozen")?;
        let cfg = variants(&lenet).pop().unwrap().1;
        let dev = Device::Cpu;
        let vars = sorted_vars(&new_vars(&cfg, 1, 28, &mut Rng::new(0), &dev)?);
        let file = crate::io::checkpoint::load_tensors(Path::new(&lenet), &dev)?;
        let conv1 = &vars.iter().find(|(n, _)| n == "features.conv1.weight").unwrap().1;
        assert_eq!(conv1.as_tensor().flatten_all()?.to_vec1::<f32>()?, file["conv1.weight"].flatten_all()?.to_vec1::<f32>()?);
        // The backward of D reaches the projector but not the frozen network.
        let x = Rng::new(1).randn(&[4, 1, 28, 28], &dev)?;
        let z = tracked(&cfg, &vars)?.forward(&x, &Tensor::zeros(4, DType::F32, &dev)?)?;
        let grads = z.sum_all()?.backward()?;
        for (name, var) in &vars {
            assert_eq!(grads.get(var.as_tensor()).is_some(), !is_frozen(name), "{name}");
        }
        // A missing or foreign weight file is named.
        let mut bad = cfg.clone();
        bad.feature_net = Some(FeatureNet { arch: "lenet-mnist".into(), weights: "/nonexistent/lenet.safetensors".into() });
        let e = new_vars(&bad, 1, 28, &mut Rng::new(0), &dev).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/lenet.safetensors"), "{e}");
        Ok(())
    }

    #[test]
    fn spectral_norm_bounds_every_learned_matrix() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = variants("").swap_remove(1).1;
        let vars = sorted_vars(&new_vars(&cfg, 1, 28, &mut Rng::new(0), &dev)?);
        // Blow the weights up: the normalised ones keep σ = 1, biases and norms are left alone.
        for (_, v) in &vars {
            v.set(&(v.as_tensor() * 7.0)?)?;
        }
        let w = weights(&cfg, &vars, false)?;
        let mut matrices = 0;
        for (name, var) in &vars {
            let got = &w[name];
            if name.ends_with("weight") && var.rank() >= 2 {
                // The estimate is never above σ1, so σ of the normalised matrix is ≥ 1 (within ITERATIONS' accuracy).
                let s = spectral::sigma(got, 2000)?.to_scalar::<f32>()?;
                assert!((0.9999..1.04).contains(&s), "{name}: σ = {s}");
                matrices += 1;
            } else {
                assert_eq!(got.flatten_all()?.to_vec1::<f32>()?, var.as_tensor().flatten_all()?.to_vec1::<f32>()?, "{name}");
            }
        }
        // patch embedding, 2 × (qkv, proj, fc1, fc2), 2 timestep layers, 2 head layers.
        assert_eq!(matrices, 13);
        Ok(())
    }
}
