//! The Diffusion Transformer (Peebles & Xie, 2023), with the reference implementation's parameter names so that
//! converted DiT checkpoints load without renaming. The patch embedding is a linear layer over patches (the same
//! weights as the reference strided conv): candle's conv backward is slow on CUDA.
use crate::config::{ModelConfig, Precision};
use crate::nn::{self, ada_layer_norm, gated_residual, Attention, Init, Linear, Mlp, LN_EPS};
use crate::rng::Rng;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder, VarMap};

const FREQ_EMBED_SIZE: usize = 256;

/// Sinusoidal timestep features (cos then sin), [B] → [B, dim], max period 10000.
/// The class-embedding table's name (its row count is numClasses + 1, the last row the null class).
pub const CLASS_TABLE: &str = "y_embedder.embedding_table.weight";

pub fn timestep_embedding(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half).map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)
}

pub struct TimestepEmbedder {
    mlp0: Linear,
    mlp2: Linear,
}

impl TimestepEmbedder {
    fn new(hidden: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("mlp");
        Ok(Self { mlp0: nn::linear(FREQ_EMBED_SIZE, hidden, vb.pp("0"))?, mlp2: nn::linear(hidden, hidden, vb.pp("2"))? })
    }
    fn forward(&self, t: &Tensor) -> Result<Tensor> {
        self.mlp2.forward(&self.mlp0.forward(&timestep_embedding(t, FREQ_EMBED_SIZE)?)?.silu()?)
    }
}

pub struct DiTBlock {
    attn: Attention,
    mlp: Mlp,
    ada_ln_modulation: Linear,
}

impl DiTBlock {
    fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            attn: Attention::new(d, cfg.num_heads, vb.pp("attn"))?,
            mlp: Mlp::new(d, cfg.mlp_hidden(), vb.pp("mlp"))?,
            ada_ln_modulation: nn::linear(d, 6 * d, vb.pp("adaLN_modulation").pp("1"))?,
        })
    }

    fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let m = self.ada_ln_modulation.forward(&c.silu()?)?.chunk(6, D::Minus1)?;
        let (shift_msa, scale_msa, gate_msa) = (&m[0], &m[1], &m[2]);
        let (shift_mlp, scale_mlp, gate_mlp) = (&m[3], &m[4], &m[5]);
        let h = self.attn.forward(&ada_layer_norm(x, shift_msa, scale_msa, LN_EPS)?)?;
        let x = gated_residual(x, &h, gate_msa)?;
        let h = self.mlp.forward(&ada_layer_norm(&x, shift_mlp, scale_mlp, LN_EPS)?)?;
        gated_residual(&x, &h, gate_mlp)
    }
}

pub struct FinalLayer {
    ada_ln_modulation: Linear,
    linear: Linear,
}

impl FinalLayer {
    fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let out = cfg.patch_size * cfg.patch_size * cfg.out_channels();
        Ok(Self {
            ada_ln_modulation: nn::linear(d, 2 * d, vb.pp("adaLN_modulation").pp("1"))?,
            linear: nn::linear(d, out, vb.pp("linear"))?,
        })
    }

    fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let m = self.ada_ln_modulation.forward(&c.silu()?)?.chunk(2, D::Minus1)?;
        self.linear.forward(&ada_layer_norm(x, &m[0], &m[1], LN_EPS)?)
    }
}

pub struct DiT {
    cfg: ModelConfig,
    pos_embed: Tensor,
    x_embedder: Linear,
    t_embedder: TimestepEmbedder,
    y_embedder: Option<Embedding>,
    blocks: Vec<DiTBlock>,
    final_layer: FinalLayer,
}

impl DiT {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.in_channels);
        let proj = vb.pp("x_embedder").pp("proj");
        let x_embedder = Linear::new(proj.get((d, c, p, p), "weight")?.reshape((d, c * p * p))?, Some(proj.get(d, "bias")?));
        // Row `num_classes` is the null class used for classifier-free guidance.
        let y_embedder = (cfg.num_classes > 0)
            .then(|| candle_nn::embedding(cfg.num_classes + 1, d, vb.pp("y_embedder").pp("embedding_table")))
            .transpose()?;
        let blocks = (0..cfg.depth).map(|i| DiTBlock::new(cfg, vb.pp("blocks").pp(i))).collect::<Result<_>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            pos_embed: sincos_pos_embed_for(cfg, vb.device())?,
            x_embedder,
            t_embedder: TimestepEmbedder::new(d, vb.pp("t_embedder"))?,
            y_embedder,
            blocks,
            final_layer: FinalLayer::new(cfg, vb.pp("final_layer"))?,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Runs every linear layer's product in `precision` (the embeddings, norms and attention stay in f32).
    pub fn set_precision(&mut self, precision: Precision) {
        let dt = precision.compute_dtype();
        self.x_embedder.set_compute_dtype(dt);
        self.t_embedder.mlp0.set_compute_dtype(dt);
        self.t_embedder.mlp2.set_compute_dtype(dt);
        for b in &mut self.blocks {
            b.attn.set_compute_dtype(dt);
            b.mlp.set_compute_dtype(dt);
            b.ada_ln_modulation.set_compute_dtype(dt);
        }
        self.final_layer.ada_ln_modulation.set_compute_dtype(dt);
        self.final_layer.linear.set_compute_dtype(dt);
    }

    /// x: [B, C, H, W]; t: [B] timesteps (any dtype); y: [B] u32 labels in [0, numClasses] (numClasses = null),
    /// ignored for an unconditional model. Returns [B, outChannels, H, W].
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        let x = self.x_embedder.forward(&nn::patchify(x, self.cfg.patch_size)?)?.broadcast_add(&self.pos_embed)?;
        let mut c = self.t_embedder.forward(t)?;
        if let (Some(emb), Some(y)) = (&self.y_embedder, y) {
            c = (c + emb.forward(y)?)?;
        }
        let mut x = x;
        for block in &self.blocks {
            x = block.forward(&x, &c)?;
        }
        self.unpatchify(&self.final_layer.forward(&x, &c)?)
    }

    /// [B, N, p·p·C_out] → [B, C_out, H, W], inverting the reference's `nhwpqc → nchpwq` layout.
    fn unpatchify(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, _) = x.dims3()?;
        let (p, g, c) = (self.cfg.patch_size, self.cfg.grid(), self.cfg.out_channels());
        x.reshape((b, g, g, p, p, c))?.permute((0, 5, 1, 3, 2, 4))?.reshape((b, c, g * p, g * p))
    }
}

fn sincos_pos_embed_for(cfg: &ModelConfig, device: &Device) -> Result<Tensor> {
    nn::sincos_pos_embed(cfg.hidden_size, cfg.grid(), device)?.unsqueeze(0)
}

/// The reference initialisation: Xavier-uniform linears with zero bias (the patch embedding viewed as a
/// matrix), N(0, 0.02) for the label table and the timestep MLP, and adaLN-Zero: every modulation and the final
/// linear start at zero, so a fresh DiT outputs exactly zero.
pub fn reference_init(name: &str) -> Init {
    if name.contains("adaLN_modulation") || name.starts_with("final_layer.linear") {
        Init::Zeros
    } else if name.starts_with("y_embedder") || (name.starts_with("t_embedder") && name.ends_with("weight")) {
        Init::Normal(0.02)
    } else if name.ends_with("bias") {
        Init::Zeros
    } else {
        Init::XavierUniform
    }
}

/// A freshly initialised DiT whose variables live in a new [`VarMap`].
pub fn new_trainable(cfg: &ModelConfig, rng: &mut Rng, device: &Device) -> Result<(DiT, VarMap)> {
    let varmap = VarMap::new();
    let model = DiT::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    nn::init_vars(&varmap, rng, reference_init)?;
    Ok((model, varmap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CoreConfig;

    fn cfg() -> ModelConfig {
        CoreConfig::tiny_mnist().model
    }

    #[test]
    fn output_shape_and_adaln_zero() -> Result<()> {
        let dev = Device::Cpu;
        let (dit, _) = new_trainable(&cfg(), &mut Rng::new(0), &dev)?;
        let x = Rng::new(1).randn(&[3, 1, 28, 28], &dev)?;
        let t = Tensor::new(&[0u32, 500, 999], &dev)?;
        let y = Tensor::new(&[1u32, 10, 3], &dev)?;
        let out = dit.forward(&x, &t, Some(&y))?;
        assert_eq!(out.dims(), &[3, 2, 28, 28]);
        assert_eq!(out.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn reference_names() -> Result<()> {
        let (_, vm) = new_trainable(&cfg(), &mut Rng::new(0), &Device::Cpu)?;
        let names: Vec<String> = nn::sorted_vars(&vm).into_iter().map(|(n, _)| n).collect();
        for n in [
            "x_embedder.proj.weight",
            "t_embedder.mlp.0.weight",
            "t_embedder.mlp.2.bias",
            "y_embedder.embedding_table.weight",
            "blocks.0.attn.qkv.weight",
            "blocks.1.attn.proj.bias",
            "blocks.0.mlp.fc1.weight",
            "blocks.0.mlp.fc2.weight",
            "blocks.1.adaLN_modulation.1.weight",
            "final_layer.adaLN_modulation.1.bias",
            "final_layer.linear.weight",
        ] {
            assert!(names.iter().any(|x| x == n), "missing {n}");
        }
        let table = vm.data().lock().unwrap()["y_embedder.embedding_table.weight"].dims().to_vec();
        assert_eq!(table, vec![11, 64]);
        let pe = vm.data().lock().unwrap()["x_embedder.proj.weight"].dims().to_vec();
        assert_eq!(pe, vec![64, 1, 4, 4]);
        Ok(())
    }

    #[test]
    fn unpatchify_inverts_patchify() -> Result<()> {
        let mut c = cfg();
        c.learn_sigma = false;
        c.in_channels = 3;
        c.input_size = 8;
        c.patch_size = 2;
        let (dit, _) = new_trainable(&c, &mut Rng::new(0), &Device::Cpu)?;
        let x = Rng::new(2).randn(&[2, 3, 8, 8], &Device::Cpu)?;
        // The reference's final linear emits (p, q, c) per token; patchify emits (c, p, q): reorder to compare.
        let tokens = nn::patchify(&x, 2)?.reshape((2, 16, 3, 2, 2))?.permute((0, 1, 3, 4, 2))?.reshape((2, 16, 12))?;
        let back = dit.unpatchify(&tokens)?;
        assert_eq!((back - &x)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn block_gradients_match_finite_differences() -> Result<()> {
        // A block with every weight random (not adaLN-Zero, which would hide the attention and MLP paths).
        let dev = Device::Cpu;
        let mut c = cfg();
        c.hidden_size = 16;
        c.num_heads = 2;
        let vm = VarMap::new();
        let block = DiTBlock::new(&c, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        nn::init_vars(&vm, &mut Rng::new(4), |_| Init::Normal(0.3))?;
        let mut rng = Rng::new(5);
        let x = candle_core::Var::from_tensor(&rng.randn(&[2, 5, 16], &dev)?)?;
        let cond = rng.randn(&[2, 16], &dev)?;
        let r = rng.randn(&[2, 5, 16], &dev)?;
        let f = || (block.forward(x.as_tensor(), &cond)? * &r)?.sum_all();
        nn::check_grad(&f, &x, &[0, 7, 33, 101, 159])?;
        let vars = vm.data().lock().unwrap().clone();
        for name in ["attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.bias", "adaLN_modulation.1.weight"] {
            let n = vars[name].elem_count();
            // Probe the q and k thirds of qkv too: they only get gradient through the softmax.
            nn::check_grad(&f, &vars[name], &[0, n / 6, n / 2, n - 1])?;
        }
        Ok(())
    }

    #[test]
    fn bf16_mixed_precision_tracks_fp32_and_trains_the_f32_weights() -> Result<()> {
        // Random weights everywhere (adaLN-Zero would make every layer after the embeddings invisible).
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let mut dit = DiT::new(&cfg(), VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        nn::init_vars(&vm, &mut Rng::new(3), |_| Init::Normal(0.05))?;
        let mut rng = Rng::new(4);
        let x = rng.randn(&[2, 1, 28, 28], &dev)?;
        let r = rng.randn(&[2, 2, 28, 28], &dev)?;
        let (t, y) = (Tensor::new(&[10u32, 900], &dev)?, Tensor::new(&[3u32, 10], &dev)?);
        let run = |dit: &DiT| -> Result<(Tensor, candle_core::backprop::GradStore)> {
            let out = dit.forward(&x, &t, Some(&y))?;
            let grads = (&out * &r)?.sum_all()?.backward()?;
            Ok((out, grads))
        };
        let (out32, g32) = run(&dit)?;
        dit.set_precision(Precision::Bf16);
        let (out16, g16) = run(&dit)?;
        assert_eq!(out16.dtype(), DType::F32);
        let scale = out32.abs()?.max_all()?.to_scalar::<f32>()?;
        let err = (&out16 - &out32)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
        // bf16 keeps 8 significant bits: a real bf16 product is off by ~1e-3 of the scale, never by 0.
        assert!(err > 1e-5 && err < 3e-2, "relative error {err}");
        for (name, var) in nn::sorted_vars(&vm) {
            let (a, b) = (g32.get(var.as_tensor()), g16.get(var.as_tensor()));
            let (a, b) = (a.unwrap_or_else(|| panic!("{name}: no fp32 grad")), b.unwrap_or_else(|| panic!("{name}: no bf16 grad")));
            assert_eq!(b.dtype(), DType::F32, "{name}");
            let cos = (a * b)?.sum_all()?.to_scalar::<f32>()?
                / ((a.sqr()?.sum_all()?.sqrt()? * b.sqr()?.sum_all()?.sqrt()?)?.to_scalar::<f32>()? + 1e-12);
            assert!(cos > 0.99, "{name}: gradient cosine {cos} between bf16 and fp32");
        }
        Ok(())
    }

    #[test]
    fn timestep_embedding_cos_then_sin() -> Result<()> {
        let e = timestep_embedding(&Tensor::new(&[0f32, 1.], &Device::Cpu)?, 4)?.to_vec2::<f32>()?;
        assert_eq!(e[0], vec![1., 1., 0., 0.]);
        // freqs = [1, 0.01]
        assert!((e[1][0] - 1f32.cos()).abs() < 1e-6 && (e[1][3] - 0.01f32.sin()).abs() < 1e-6);
        Ok(())
    }
}
