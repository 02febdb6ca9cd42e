//! Building blocks shared by the DiT and the structure discriminator, written from basic candle ops: candle's
//! fused `softmax_last_dim` and `layer_norm` have no backward, and gradients would silently stop there.
use crate::rng::Rng;
use candle_core::{DType, Device, Module, Result, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};

pub const LN_EPS: f64 = 1e-6;

/// LayerNorm over the last dimension without affine parameters (fused on the CPU).
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    crate::ops::layer_norm(x, eps)
}

/// LayerNorm from basic ops, which candle differentiates: the path for non-CPU devices and the reference the
/// fused kernel is tested against.
pub fn layer_norm_ref(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// LayerNorm with a learnt gain and bias (the discriminator's pre-norm blocks).
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")?, bias: vb.get(dim, "bias")? })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::bias_add(&crate::ops::column_scale(&layer_norm(x, 1e-5)?, &self.weight)?, &self.bias)
    }
}

pub use crate::ops::{ada_layer_norm, gated_residual};

/// `x·Wᵀ + b` over the last dimension, with the fused bias of [`crate::ops::bias_add`]. With a compute dtype
/// other than the weight's (bf16 mixed precision), the product runs in it on casts of `x` and `W`, and is cast
/// back before the bias: the weight's gradient flows back through the cast to the f32 master weight.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    compute: DType,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        let compute = weight.dtype();
        Self { weight, bias, compute }
    }

    pub fn set_compute_dtype(&mut self, dtype: DType) {
        self.compute = dtype;
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, k))?;
        let y = match (&self.bias, self.compute == x.dtype()) {
            (Some(b), true) => crate::ops::linear(&x2, &self.weight, b)?,
            (None, true) => x2.matmul(&self.weight.t()?)?,
            (bias, false) => {
                let w = self.weight.to_dtype(self.compute)?;
                let y = x2.to_dtype(self.compute)?.matmul(&w.t()?)?.to_dtype(x.dtype())?;
                match bias {
                    Some(b) => crate::ops::bias_add(&y, b)?,
                    None => y,
                }
            }
        };
        let mut out = dims;
        *out.last_mut().unwrap() = self.weight.dim(0)?;
        y.reshape(out)
    }
}

pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear::new(vb.get((out_dim, in_dim), "weight")?, Some(vb.get(out_dim, "bias")?)))
}

/// Multi-head self-attention with a fused qkv projection (timm's `Attention`, as DiT uses it).
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
}

impl Attention {
    pub fn new(dim: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { qkv: linear(dim, 3 * dim, vb.pp("qkv"))?, proj: linear(dim, dim, vb.pp("proj"))?, num_heads })
    }

    pub fn set_compute_dtype(&mut self, dtype: DType) {
        self.qkv.set_compute_dtype(dtype);
        self.proj.set_compute_dtype(dtype);
    }
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(&crate::ops::attention(&self.qkv.forward(x)?, self.num_heads)?)
    }
}

/// softmax(q·kᵀ/√d)·v for every head, from the fused projection [B, N, 3·C] laid out (q, k, v) × heads × d as
/// timm's, to [B, N, C] with the heads concatenated: the composition candle differentiates itself, for non-CPU
/// devices and as the reference the fused kernel is tested against.
pub fn attention_ref(qkv: &Tensor, num_heads: usize) -> Result<Tensor> {
    let (b, n, c3) = qkv.dims3()?;
    let c = c3 / 3;
    let hd = c / num_heads;
    let qkv = qkv.reshape((b, n, 3, num_heads, hd))?.permute((2, 0, 3, 1, 4))?;
    let q = (qkv.get(0)? * (hd as f64).powf(-0.5))?.contiguous()?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    let attn = candle_nn::ops::softmax(&q.matmul(&k.t()?)?, D::Minus1)?;
    attn.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))
}

/// Two linears with a tanh-approximated GELU between them.
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { fc1: linear(dim, hidden, vb.pp("fc1"))?, fc2: linear(hidden, dim, vb.pp("fc2"))? })
    }

    pub fn set_compute_dtype(&mut self, dtype: DType) {
        self.fc1.set_compute_dtype(dtype);
        self.fc2.set_compute_dtype(dtype);
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&crate::ops::gelu(&self.fc1.forward(x)?)?)
    }
}

/// Patches of side `p` as rows: [B, C, H, W] → [B, (H/p)·(W/p), C·p·p], each row in (c, i, j) order so that a
/// linear layer with the conv's weight reshaped to [d, C·p·p] equals the reference strided conv.
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (gh, gw) = (h / p, w / p);
    x.reshape((b, c, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b, gh * gw, c * p * p))
}

/// Fixed 2-D sin-cos position embedding, [grid², dim], laid out as the reference `get_2d_sincos_pos_embed`.
pub fn sincos_pos_embed(dim: usize, grid: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let quarter = half / 2;
    let omega: Vec<f64> = (0..quarter).map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64)).collect();
    let emb_1d = |pos: f64, out: &mut Vec<f32>| {
        out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
        out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
    };
    let mut data = Vec::with_capacity(grid * grid * dim);
    for i in 0..grid {
        for j in 0..grid {
            // The reference meshgrid puts the column index first.
            emb_1d(j as f64, &mut data);
            emb_1d(i as f64, &mut data);
        }
    }
    Tensor::from_vec(data, (grid * grid, dim), device)
}

/// How a variable is initialised; see [`init_vars`].
#[derive(Clone, Copy, Debug)]
pub enum Init {
    Zeros,
    Ones,
    Normal(f64),
    /// Xavier-uniform over the weight viewed as [fan_out, everything else].
    XavierUniform,
}

/// Initialise every variable of `varmap` from our seeded generator, in sorted name order so the result does
/// not depend on hash-map order. `rule` maps a variable name to its initialisation.
pub fn init_vars(varmap: &VarMap, rng: &mut Rng, rule: impl Fn(&str) -> Init) -> Result<()> {
    let vars = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var: &Var = &vars[name];
        let shape = var.dims().to_vec();
        let dev = var.device();
        let value = match rule(name) {
            Init::Zeros => Tensor::zeros(shape.as_slice(), DType::F32, dev)?,
            Init::Ones => Tensor::ones(shape.as_slice(), DType::F32, dev)?,
            Init::Normal(std) => (rng.randn(&shape, dev)? * std)?,
            Init::XavierUniform => {
                let fan_out = shape[0];
                let fan_in: usize = shape[1..].iter().product();
                let a = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
                rng.uniform_tensor(&shape, -a, a, dev)?
            }
        };
        var.set(&value)?;
    }
    Ok(())
}

/// Variables of a var map as a name-sorted list.
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let vars = varmap.data().lock().unwrap();
    let mut v: Vec<(String, Var)> = vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_matches_definition() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2., 3., 4.], [2., 2., 2., 6.]], &Device::Cpu)?;
        let y = layer_norm(&x, 0.0)?.to_vec2::<f32>()?;
        for (row, out) in [[1f32, 2., 3., 4.], [2., 2., 2., 6.]].iter().zip(y) {
            let m = row.iter().sum::<f32>() / 4.0;
            let s = (row.iter().map(|v| (v - m).powi(2)).sum::<f32>() / 4.0).sqrt();
            for (a, b) in row.iter().zip(out) {
                assert!(((a - m) / s - b).abs() < 1e-5);
            }
        }
        Ok(())
    }

    #[test]
    fn patchify_matches_strided_conv_order() -> Result<()> {
        // 1×2×4×4 input with distinct values; patch 2 → 4 patches of 8 values in (c, i, j) order.
        let x = Tensor::arange(0f32, 32., &Device::Cpu)?.reshape((1, 2, 4, 4))?;
        let p = patchify(&x, 2)?;
        assert_eq!(p.dims(), &[1, 4, 8]);
        let v = p.to_vec3::<f32>()?;
        // Patch (row 0, col 1): channel 0 rows 0-1 cols 2-3, then channel 1 likewise.
        assert_eq!(v[0][1], vec![2., 3., 6., 7., 18., 19., 22., 23.]);
        Ok(())
    }

    #[test]
    fn pos_embed_known_values() -> Result<()> {
        let pe = sincos_pos_embed(8, 3, &Device::Cpu)?.to_vec2::<f32>()?;
        // Position 0 is (i=0, j=0): sin(0)=0, cos(0)=1 in both halves.
        assert_eq!(pe[0], vec![0., 0., 1., 1., 0., 0., 1., 1.]);
        // Position 1 is (i=0, j=1): first half encodes j=1 with omega = [1, 0.01].
        assert!((pe[1][0] - 1f32.sin()).abs() < 1e-6 && (pe[1][1] - 0.01f32.sin()).abs() < 1e-6);
        assert_eq!(&pe[1][4..], &[0., 0., 1., 1.]);
        Ok(())
    }
}

/// Finite-difference gradient check for tests: compares d f / d var (from backward) with central differences
/// at `probes` coordinates. f32 arithmetic, so the step and the tolerance are sized for single precision.
#[cfg(test)]
pub fn check_grad(f: &dyn Fn() -> Result<Tensor>, var: &Var, probes: &[usize]) -> Result<()> {
    let grads = f()?.backward()?;
    let analytic = grads.get(var.as_tensor()).expect("no gradient").flatten_all()?.to_vec1::<f32>()?;
    let base = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    let shape = var.dims().to_vec();
    let h = 1e-2f32;
    for &i in probes {
        let eval = |delta: f32| -> Result<f64> {
            let mut v = base.clone();
            v[i] += delta;
            var.set(&Tensor::from_vec(v, shape.as_slice(), var.device())?)?;
            Ok(f()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
        };
        let fd = (eval(h)? - eval(-h)?) / (2.0 * h as f64);
        var.set(&Tensor::from_vec(base.clone(), shape.as_slice(), var.device())?)?;
        let a = analytic[i] as f64;
        assert!((fd - a).abs() <= 2e-3 + 2e-2 * a.abs().max(fd.abs()), "coordinate {i}: analytic {a}, finite difference {fd}");
    }
    Ok(())
}
