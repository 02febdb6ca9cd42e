//! The blocks of diffusers' `Encoder` and `Decoder` as `AutoencoderKL` builds them (no time embedding, GroupNorm
//! with ε = 1e-6 everywhere, SiLU, output scale 1), under diffusers' module names.
use super::conv::Conv2d;
use super::norm::GroupNorm;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

const EPS: f64 = 1e-6;

pub(super) fn conv2d(cin: usize, cout: usize, kernel: usize, padding: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    Ok(Conv2d::new(vb.get((cout, cin, kernel, kernel), "weight")?, vb.get(cout, "bias")?, stride, padding))
}

pub(super) fn group_norm(groups: usize, channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    GroupNorm::new(vb.get(channels, "weight")?, vb.get(channels, "bias")?, groups, EPS)
}

fn linear(dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear::new(vb.get((dim, dim), "weight")?, Some(vb.get(dim, "bias")?)))
}

/// diffusers' `ResnetBlock2D` without a time embedding; dropout is inference's identity.
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    pub fn new(cin: usize, cout: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, cin, vb.pp("norm1"))?,
            conv1: conv2d(cin, cout, 3, 1, 1, vb.pp("conv1"))?,
            norm2: group_norm(groups, cout, vb.pp("norm2"))?,
            conv2: conv2d(cout, cout, 3, 1, 1, vb.pp("conv2"))?,
            conv_shortcut: if cin != cout { Some(conv2d(cin, cout, 1, 0, 1, vb.pp("conv_shortcut"))?) } else { None },
        })
    }
}

impl Module for ResnetBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x, true)?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h, true)?)?;
        match &self.conv_shortcut {
            Some(c) => c.forward(x)? + h,
            None => x + h,
        }
    }
}

/// The mid block's single-head self-attention over pixels (diffusers' `Attention` with
/// `_from_deprecated_attn_block`, heads = 1, dim_head = channels): GroupNorm, q/k/v/out projections, residual.
pub struct Attention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl Attention {
    pub fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            group_norm: group_norm(groups, channels, vb.pp("group_norm"))?,
            to_q: linear(channels, vb.pp("to_q"))?,
            to_k: linear(channels, vb.pp("to_k"))?,
            to_v: linear(channels, vb.pp("to_v"))?,
            to_out: linear(channels, vb.pp("to_out.0"))?,
        })
    }
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self.group_norm.forward(x, false)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        let scores = (q.matmul(&k.t()?)? * (c as f64).powf(-0.5))?;
        let attended = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
        let out = self.to_out.forward(&attended)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        out + x
    }
}

/// Stride-2 3×3 conv after zero padding of one row below and one column right (diffusers' `Downsample2D` with
/// `padding=0`, as the encoder builds it): the LDM VAE's asymmetric padding.
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { conv: conv2d(channels, channels, 3, 0, 2, vb.pp("conv"))? })
    }
}

impl Module for Downsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&x.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(D::Minus2, 0, 1)?)
    }
}

/// Nearest-neighbour ×2, then a 3×3 conv (diffusers' `Upsample2D` with `use_conv`).
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { conv: conv2d(channels, channels, 3, 1, 1, vb.pp("conv"))? })
    }
}

impl Module for Upsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
    }
}

/// resnet, attention (unless the config leaves it out), resnet, all at the deepest level's width.
pub struct UNetMidBlock2D {
    resnets: [ResnetBlock2D; 2],
    attention: Option<Attention>,
}

impl UNetMidBlock2D {
    pub fn new(channels: usize, groups: usize, add_attention: bool, vb: VarBuilder) -> Result<Self> {
        let r = vb.pp("resnets");
        Ok(Self {
            resnets: [ResnetBlock2D::new(channels, channels, groups, r.pp("0"))?, ResnetBlock2D::new(channels, channels, groups, r.pp("1"))?],
            attention: if add_attention { Some(Attention::new(channels, groups, vb.pp("attentions.0"))?) } else { None },
        })
    }
}

impl Module for UNetMidBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.resnets[0].forward(x)?;
        if let Some(a) = &self.attention {
            x = a.forward(&x)?;
        }
        self.resnets[1].forward(&x)
    }
}

fn resnets(n: usize, cin: usize, cout: usize, groups: usize, vb: VarBuilder) -> Result<Vec<ResnetBlock2D>> {
    (0..n).map(|i| ResnetBlock2D::new(if i == 0 { cin } else { cout }, cout, groups, vb.pp(i.to_string()))).collect()
}

/// `layers` resnets, then a [`Downsample2D`] on all but the last level.
pub struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    pub fn new(layers: usize, cin: usize, cout: usize, groups: usize, downsample: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            resnets: resnets(layers, cin, cout, groups, vb.pp("resnets"))?,
            downsampler: if downsample { Some(Downsample2D::new(cout, vb.pp("downsamplers.0"))?) } else { None },
        })
    }
}

impl Module for DownEncoderBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x)?;
        }
        match &self.downsampler {
            Some(d) => d.forward(&x),
            None => Ok(x),
        }
    }
}

/// `layers` resnets, then an [`Upsample2D`] on all but the last level.
pub struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    pub fn new(layers: usize, cin: usize, cout: usize, groups: usize, upsample: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            resnets: resnets(layers, cin, cout, groups, vb.pp("resnets"))?,
            upsampler: if upsample { Some(Upsample2D::new(cout, vb.pp("upsamplers.0"))?) } else { None },
        })
    }
}

impl Module for UpDecoderBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(&x),
            None => Ok(x),
        }
    }
}
