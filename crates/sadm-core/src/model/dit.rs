//! The Diffusion Transformer (Peebles & Xie, 2023), with the reference implementation's parameter names so that
//! converted DiT checkpoints load without renaming. The patch embedding is a linear layer over patches (the same
//! weights as the reference strided conv): candle's conv backward is slow on CUDA.
use crate::config::{ModelConfig, Precision};
use crate::nn::{self, ada_layer_norm, gated_residual, Attention, Init, Linear, Mlp, LN_EPS};
use crate::rng::Rng;
use crate::error::Error;
use candle_core::{DType, Device, Module, Result, Shape, Tensor, D};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Embedding, VarBuilder, VarMap};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

const FREQ_EMBED_SIZE: usize = 256;

/// The class-embedding table's name (its row count is numClasses + 1, the last row the null class).
pub const CLASS_TABLE: &str = "y_embedder.embedding_table.weight";

/// Sinusoidal timestep features (cos then sin), [B] → [B, dim], max period 10000.
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

/// Records the names and shapes a model asks for and hands out zero-stride views, so that a model is described
/// without allocating it.
struct ShapeRecorder<'a>(&'a Mutex<Vec<(String, Vec<usize>)>>);

impl SimpleBackend for ShapeRecorder<'_> {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("{name}: a parameter without a shape")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// The names and shapes of the parameters of a DiT of `cfg`, sorted by name: what its weights must hold. Nothing
/// is allocated (DiT-XL/2 has 675 M parameters).
pub fn parameter_shapes(cfg: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
    let shapes = Mutex::new(vec![]);
    DiT::new(cfg, VarBuilder::from_backend(Box::new(ShapeRecorder(&shapes)), DType::F32, Device::Cpu))?;
    let mut shapes = shapes.into_inner().unwrap_or_else(|e| e.into_inner());
    shapes.sort();
    Ok(shapes)
}

/// The head counts of the reference presets (DiT-S, B, L, XL) by hidden size: weights do not record them.
fn reference_heads(hidden_size: usize) -> Option<usize> {
    match hidden_size {
        384 => Some(6),
        768 => Some(12),
        1024 => Some(16),
        1152 => Some(16),
        _ => None,
    }
}

/// What [`infer_config`] cannot read from the weights: the latent side when they have no `pos_embed`, and the
/// head count of a hidden size that is not a reference preset's. A hint the weights contradict is an error.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConfigHints {
    pub input_size: Option<usize>,
    pub num_heads: Option<usize>,
}

/// The architecture of DiT weights in the reference names (a published or converted checkpoint, e.g. the
/// `DiT-XL-2-256x256.pt` state dict is DiT-XL/2 on 32² × 4 latents, 1,000 classes, learned Σ), read from their
/// shapes; every tensor is then checked against that architecture, and a `pos_embed` against sadm's fixed sin-cos
/// table ([`check_pos_embed`]). The class-dropout probability is not in the weights: DiT's 0.1.
pub fn infer_config(tensors: &HashMap<String, Tensor>, path: &Path, hints: ConfigHints) -> crate::Result<ModelConfig> {
    let err = |msg: String| Error::checkpoint(path, msg);
    let dims = |name: &str| {
        let missing = || err(format!("tensor '{name}' is missing: these are not DiT weights in the reference names"));
        tensors.get(name).map(|t| t.dims()).ok_or_else(missing)
    };
    // A malformed tensor's 0 is refused below or by the shape check, never indexed.
    let rows = |name: &str| dims(name).map(|d| d.first().copied().unwrap_or(0));
    let (hidden_size, in_channels, patch_size) = match *dims("x_embedder.proj.weight")? {
        [d, c, p, q] if p == q && d > 0 && c > 0 && p > 0 => (d, c, p),
        ref other => {
            return Err(err(format!(
                "tensor 'x_embedder.proj.weight' has shape {other:?}, not a patch embedding's [hidden, channels, patch, patch]"
            )))
        }
    };
    dims("blocks.0.attn.qkv.weight")?;
    let depth = (0..).take_while(|i| tensors.contains_key(&format!("blocks.{i}.attn.qkv.weight"))).count();
    let mlp_hidden = rows("blocks.0.mlp.fc1.weight")?;
    let num_classes = match tensors.get(CLASS_TABLE).map(|t| t.dims()) {
        Some(&[rows, _]) if rows > 0 => rows - 1,
        Some(other) => return Err(err(format!("tensor '{CLASS_TABLE}' has shape {other:?}, not [classes + 1, hidden]"))),
        None => 0,
    };
    let per_channel = patch_size * patch_size * in_channels;
    let learn_sigma = match rows("final_layer.linear.weight")? {
        o if o == 2 * per_channel => true,
        o if o == per_channel => false,
        o => {
            return Err(err(format!(
                "tensor 'final_layer.linear.weight' has {o} outputs, neither patch² × channels ({per_channel}) nor twice \
                 that (a learned Σ): not a DiT's final layer"
            )))
        }
    };
    let input_size = match (tensors.get("pos_embed"), hints.input_size) {
        (Some(pe), hint) => {
            let size = pos_embed_grid(pe, hidden_size, path)? * patch_size;
            if let Some(h) = hint.filter(|&h| h != size) {
                return Err(err(format!("its pos_embed is for latents of side {size}, not the {h} asked for")));
            }
            size
        }
        (None, Some(h)) => h,
        (None, None) => {
            return Err(err(
                "has no pos_embed to tell the latent size: give the input size (the latent side, e.g. 32 for 256×256 images)".into(),
            ))
        }
    };
    let num_heads = hints.num_heads.or(reference_heads(hidden_size)).ok_or_else(|| {
        err(format!(
            "its hidden size {hidden_size} is not a reference DiT's (384, 768, 1024 or 1152), so its head count is \
             unknown: give the number of heads"
        ))
    })?;
    if num_heads == 0 || hidden_size % num_heads != 0 || hidden_size % 4 != 0 || input_size % patch_size != 0 {
        return Err(err(format!(
            "hidden size {hidden_size}, {num_heads} heads, patch {patch_size} and latent side {input_size} do not make a \
             DiT (the heads and 4 must divide the hidden size, the patch the side)"
        )));
    }
    let cfg = ModelConfig {
        input_size,
        in_channels,
        patch_size,
        hidden_size,
        depth,
        num_heads,
        mlp_ratio: mlp_hidden as f64 / hidden_size as f64,
        num_classes,
        learn_sigma,
        class_dropout_prob: 0.1,
    };
    crate::io::checkpoint::check_shapes(path, &parameter_shapes(&cfg)?, tensors, &["pos_embed"])?;
    check_pos_embed(tensors, path)?;
    Ok(cfg)
}

/// The side of the token grid of a `pos_embed` [1, grid², hidden].
fn pos_embed_grid(pe: &Tensor, hidden_size: usize, path: &Path) -> crate::Result<usize> {
    match *pe.dims() {
        [1, n, d] if d == hidden_size && n.isqrt() * n.isqrt() == n && n > 0 => Ok(n.isqrt()),
        ref other => Err(Error::checkpoint(path, format!("tensor 'pos_embed' has shape {other:?}, not [1, grid², {hidden_size}]"))),
    }
}

/// A `pos_embed` in the weights must be the fixed 2-D sin-cos table sadm computes instead of loading (to 1e-5, or
/// to the rounding of the format it was saved in): another table (learned, or laid out otherwise) would make sadm
/// run a different model than the checkpoint's.
pub fn check_pos_embed(tensors: &HashMap<String, Tensor>, path: &Path) -> crate::Result<()> {
    let Some(pe) = tensors.get("pos_embed") else { return Ok(()) };
    let hidden_size = pe.dims().last().copied().unwrap_or(0);
    let grid = pos_embed_grid(pe, hidden_size, path)?;
    if hidden_size % 4 != 0 {
        let msg = format!("tensor 'pos_embed' has width {hidden_size}, not a multiple of 4 as a 2-D sin-cos table's");
        return Err(Error::checkpoint(path, msg));
    }
    let ours = nn::sincos_pos_embed(hidden_size, grid, &Device::Cpu)?;
    let theirs = pe.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.squeeze(0)?;
    let diff = (theirs - ours)?.abs()?.max_all()?.to_scalar::<f32>()?;
    // About four times the largest rounding error of values in [-1, 1] in each narrow format.
    let tolerance = match pe.dtype() {
        DType::F16 => 1e-3,
        DType::BF16 => 8e-3,
        DType::F8E4M3 => 0.13,
        _ => 1e-5,
    };
    if diff.is_nan() || diff > tolerance {
        let msg = format!(
            "tensor 'pos_embed' is not DiT's fixed sin-cos embedding (it differs by up to {diff}), which sadm computes \
             instead of loading: sadm would run this model wrongly"
        );
        return Err(Error::checkpoint(path, msg));
    }
    Ok(())
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

    /// Weights of `shapes` that take no memory (zero-stride zeros), with the sin-cos `pos_embed` for `cfg`.
    fn fake_weights(shapes: &[(String, Vec<usize>)], cfg: &ModelConfig) -> HashMap<String, Tensor> {
        let zero = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
        let mut w: HashMap<String, Tensor> = shapes.iter().map(|(n, s)| (n.clone(), zero.broadcast_as(s.as_slice()).unwrap())).collect();
        w.insert("pos_embed".into(), sincos_pos_embed_for(cfg, &Device::Cpu).unwrap());
        w
    }

    fn testdata(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
    }

    #[test]
    fn the_published_dit_xl2_layouts_are_recognised() -> crate::Result<()> {
        // The reference models.py's state dicts of DiT-XL/2 at 256² and 512² (pth_reference.py).
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(testdata("dit_xl2_state_dict_shapes.json")).unwrap()).unwrap();
        for (file, latent) in [("DiT-XL-2-256x256", 32), ("DiT-XL-2-512x512", 64)] {
            let mut reference: Vec<(String, Vec<usize>)> = json[file]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e[0].as_str().unwrap().to_string(), e[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()))
                .collect();
            reference.sort();
            let preset = ModelConfig::preset("DiT-XL/2", latent, 4, 1000)?;
            let grid = latent / 2;
            let (pos, ours): (Vec<_>, Vec<_>) = reference.iter().cloned().partition(|(n, _)| n == "pos_embed");
            assert_eq!(pos, [("pos_embed".to_string(), vec![1, grid * grid, 1152])]);
            assert_eq!(ours, parameter_shapes(&preset)?, "{file}: sadm's DiT-XL/2 is not the reference's");
            let mut w = fake_weights(&ours, &preset);
            let path = Path::new(file);
            assert_eq!(infer_config(&w, path, ConfigHints::default())?, preset);
            // A hint the weights contradict, a missing or extra tensor, another position table: each named.
            let e = |w: &HashMap<String, Tensor>, hints| infer_config(w, path, hints).unwrap_err().to_string();
            let wrong = ConfigHints { input_size: Some(2 * latent), ..Default::default() };
            assert!(e(&w, wrong).ends_with(&format!("its pos_embed is for latents of side {latent}, not the {} asked for", 2 * latent)));
            let table = w.remove("blocks.3.mlp.fc2.bias").unwrap();
            assert_eq!(e(&w, ConfigHints::default()), format!("checkpoint {file}: tensor 'blocks.3.mlp.fc2.bias' is missing"));
            w.insert("blocks.3.mlp.fc2.bias".into(), table);
            w.insert("blocks.28.attn.proj.bias".into(), Tensor::zeros(1152, DType::F32, &Device::Cpu)?);
            assert!(e(&w, ConfigHints::default()).contains("unexpected tensor 'blocks.28.attn.proj.bias': the checkpoint is of another architecture"));
            w.remove("blocks.28.attn.proj.bias");
            let pe = w["pos_embed"].clone();
            w.insert("pos_embed".into(), (&pe * 1.001)?);
            assert!(e(&w, ConfigHints::default()).contains("tensor 'pos_embed' is not DiT's fixed sin-cos embedding"));
            // In half precision, its rounding is not a difference.
            w.insert("pos_embed".into(), pe.to_dtype(DType::BF16)?);
            assert_eq!(infer_config(&w, path, ConfigHints::default())?, preset);
            w.remove("pos_embed");
            assert!(e(&w, ConfigHints::default()).contains("has no pos_embed to tell the latent size: give the input size"));
            assert_eq!(infer_config(&w, path, ConfigHints { input_size: Some(latent), num_heads: None })?, preset);
        }
        Ok(())
    }

    #[test]
    fn configs_are_read_back_from_their_weights() -> crate::Result<()> {
        let mut uncond = ModelConfig::preset("DiT-B/4", 16, 3, 0)?;
        uncond.learn_sigma = false;
        let mut narrow = ModelConfig::preset("DiT-S/8", 64, 4, 5)?;
        narrow.mlp_ratio = 2.0;
        let mut custom = CoreConfig::tiny_mnist().model;
        custom.class_dropout_prob = 0.1;
        for cfg in [ModelConfig::preset("DiT-L/2", 32, 4, 1000)?, uncond, narrow, custom.clone()] {
            let w = fake_weights(&parameter_shapes(&cfg)?, &cfg);
            let hints = ConfigHints { num_heads: reference_heads(cfg.hidden_size).is_none().then_some(cfg.num_heads), ..Default::default() };
            assert_eq!(infer_config(&w, Path::new("w"), hints)?, cfg);
        }
        let w = fake_weights(&parameter_shapes(&custom)?, &custom);
        let e = infer_config(&w, Path::new("w"), ConfigHints::default()).unwrap_err().to_string();
        assert!(e.contains("its hidden size 64 is not a reference DiT's (384, 768, 1024 or 1152), so its head count is unknown"), "{e}");
        let mut other = w.clone();
        other.insert("final_layer.linear.weight".into(), Tensor::zeros((48, 64), DType::F32, &Device::Cpu)?);
        let e = infer_config(&other, Path::new("w"), ConfigHints::default()).unwrap_err().to_string();
        assert!(e.contains("tensor 'final_layer.linear.weight' has 48 outputs, neither patch² × channels (16) nor twice that"), "{e}");
        let mut other = w.clone();
        other.remove("x_embedder.proj.weight");
        let e = infer_config(&other, Path::new("w"), ConfigHints::default()).unwrap_err().to_string();
        assert_eq!(e, "checkpoint w: tensor 'x_embedder.proj.weight' is missing: these are not DiT weights in the reference names");
        Ok(())
    }

    #[test]
    fn the_reference_dit_runs_the_same_from_its_pt_file() -> crate::Result<()> {
        // DiT's models.py at depth 2, hidden 64, 4 heads, patch 2, 8² × 4 latents, 10 classes, learned Σ, with
        // every layer random; its torch.save(model.state_dict()) and its float64 output (pth_reference.py).
        let path = testdata("pth_dit_small.pt");
        let w = crate::io::pth::load_pth(&path, None, &Device::Cpu)?;
        assert!(w.key.is_none() && w.tensors.contains_key("pos_embed"));
        let e = infer_config(&w.tensors, &path, ConfigHints::default()).unwrap_err().to_string();
        assert!(e.contains("give the number of heads"), "{e}");
        let cfg = infer_config(&w.tensors, &path, ConfigHints { num_heads: Some(4), input_size: None })?;
        let mut want = ModelConfig::preset("DiT-S/2", 8, 4, 10)?;
        (want.hidden_size, want.depth, want.num_heads) = (64, 2, 4);
        assert_eq!(cfg, want);
        let dit = DiT::new(&cfg, VarBuilder::from_tensors(w.tensors, DType::F32, &Device::Cpu))?;
        let r = candle_core::safetensors::load(testdata("pth_dit_small_reference.safetensors"), &Device::Cpu)?;
        let y = r["y"].to_dtype(DType::U32)?;
        let out = dit.forward(&r["x"], &r["t"], Some(&y))?;
        let scale = r["out"].abs()?.max_all()?.to_scalar::<f32>()?;
        let err = (&out - &r["out"])?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
        assert!(scale > 0.5, "a trivial reference (max |out| = {scale})");
        assert!(err <= 1e-5, "max |sadm - reference| / max |reference| = {err}");
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
