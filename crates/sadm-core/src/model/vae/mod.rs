//! Stable Diffusion's VAE: diffusers' `AutoencoderKL` (the `sd-vae-ft-ema` / `sd-vae-ft-mse` DiT encodes its
//! images with), inference only, on any candle device. Images are [B, C, H, W] in [-1, 1]; latents for the
//! diffusion model are the posterior's mean or a seeded sample, times `scaling_factor` (0.18215 for SD).
//!
//! The blocks are written here rather than taken from candle-transformers' `stable_diffusion::vae`: that crate
//! compiles every model it ships (minutes on a 2-core CI, for a few hundred lines used), and its VAE differs from
//! diffusers where sadm needs it not to: it does not clamp the log-variance, samples with candle's unseedable
//! generator, reads only one set of names and has no tiled decoding.
//!
//! Memory: [`Chunks`] decodes (and encodes) a few images at a time, and optionally in overlapping tiles blended
//! as diffusers' `tiled_decode` does, so that peak memory follows the tile, not the batch or the image.
//!
//! Speed: the work is the 3×3 convolutions (622 GFLOP per 256×256 decode, 273 per encode). On the CPU they run
//! as banded im2col + GEMM (`conv`) and every GroupNorm → SiLU as one pass (`norm`), both written for this
//! after candle's conv2d and GroupNorm spent more time arranging and re-reading data than multiplying
//! (`benches/vae.sh` compares the whole against diffusers on PyTorch).
mod blocks;
mod config;
mod conv;
mod norm;
#[cfg(test)]
mod tests;
mod weights;

pub use config::VaeConfig;
pub use weights::{parameter_shapes, source_files, NameScheme};

use crate::error::{Error, Result};
use crate::rng::Rng;
use blocks::{conv2d, group_norm, DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use conv::Conv2d;
use norm::GroupNorm;

/// diffusers' `Encoder` with `double_z`: conv_in, the down blocks, the mid block, norm → SiLU → conv_out to the
/// posterior's 2 × latent channels.
struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let last = *ch.last().unwrap();
        // Built in the order of the forward pass, which is the order missing tensors are reported in.
        let conv_in = conv2d(cfg.in_channels, ch[0], 3, 1, 1, vb.pp("conv_in"))?;
        let blocks = vb.pp("down_blocks");
        let down_blocks = (0..ch.len())
            .map(|i| {
                let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                DownEncoderBlock2D::new(cfg.layers_per_block, cin, ch[i], g, i + 1 < ch.len(), blocks.pp(i.to_string()))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: UNetMidBlock2D::new(last, g, cfg.mid_block_add_attention, vb.pp("mid_block"))?,
            conv_norm_out: group_norm(g, last, vb.pp("conv_norm_out"))?,
            conv_out: conv2d(last, 2 * cfg.latent_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.conv_in.forward(x)?;
        for b in &self.down_blocks {
            x = b.forward(&x)?;
        }
        let x = self.mid_block.forward(&x)?;
        self.conv_out.forward(&self.conv_norm_out.forward(&x, true)?)
    }
}

/// diffusers' `Decoder`: conv_in, the mid block, the up blocks (levels in reverse, one resnet more each), norm →
/// SiLU → conv_out.
struct Decoder {
    conv_in: Conv2d,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let conv_in = conv2d(cfg.latent_channels, rev[0], 3, 1, 1, vb.pp("conv_in"))?;
        let mid_block = UNetMidBlock2D::new(rev[0], g, cfg.mid_block_add_attention, vb.pp("mid_block"))?;
        let blocks = vb.pp("up_blocks");
        let up_blocks = (0..rev.len())
            .map(|i| {
                let cin = if i == 0 { rev[0] } else { rev[i - 1] };
                UpDecoderBlock2D::new(cfg.layers_per_block + 1, cin, rev[i], g, i + 1 < rev.len(), blocks.pp(i.to_string()))
            })
            .collect::<candle_core::Result<_>>()?;
        let first = cfg.block_out_channels[0];
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(g, first, vb.pp("conv_norm_out"))?,
            conv_out: conv2d(first, cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.mid_block.forward(&self.conv_in.forward(z)?)?;
        for b in &self.up_blocks {
            x = b.forward(&x)?;
        }
        self.conv_out.forward(&self.conv_norm_out.forward(&x, true)?)
    }
}

/// The encoder's posterior: a diagonal Gaussian per latent element (diffusers' `DiagonalGaussianDistribution`).
pub struct DiagonalGaussian {
    pub mean: Tensor,
    /// Clamped to [-30, 20], as diffusers does before taking exponentials.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    fn new(moments: &Tensor) -> Result<Self> {
        let half = moments.dim(1)? / 2;
        Ok(Self { mean: moments.narrow(1, 0, half)?, logvar: moments.narrow(1, half, half)?.clamp(-30f32, 20f32)? })
    }

    /// The most likely latent: the mean.
    pub fn mode(&self) -> Tensor {
        self.mean.clone()
    }

    pub fn std(&self) -> Result<Tensor> {
        Ok((&self.logvar * 0.5)?.exp()?)
    }

    /// `mean + std · ε` with ε drawn from sadm's seeded generator (one standard normal per element, in the
    /// row-major order of the latent tensor), so the same `rng` state gives the same latents on every device.
    pub fn sample(&self, rng: &mut Rng) -> Result<Tensor> {
        let eps = rng.randn(self.mean.dims(), self.mean.device())?;
        Ok((&self.mean + self.std()?.mul(&eps)?)?)
    }
}

/// How much of a batch goes through the network at once.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunks {
    /// Images per pass (diffusers' `enable_slicing` is 1); `None` takes the whole batch at once.
    pub slice: Option<usize>,
    /// Overlapping tiles for images larger than one tile (diffusers' `enable_tiling`); `None` runs whole images.
    pub tiling: Option<Tiling>,
}

impl Default for Chunks {
    /// One image at a time, untiled: the same results as the whole batch, with one image's activations.
    fn default() -> Self {
        Self { slice: Some(1), tiling: None }
    }
}

/// diffusers' tiling parameters: tiles of `sample_size` pixels (`sample_size / 2^(levels-1)` latents) that
/// overlap by `overlap` of a tile, the overlaps blended linearly.
#[derive(Clone, Debug, PartialEq)]
pub struct Tiling {
    pub sample_size: usize,
    pub overlap: f64,
}

impl Tiling {
    /// diffusers' defaults for a model: the config's `sample_size` (256 for SD's VAE), overlap 0.25.
    pub fn for_config(cfg: &VaeConfig) -> Self {
        Self { sample_size: cfg.sample_size, overlap: 0.25 }
    }
}

pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: VaeConfig,
    device: Device,
}

impl AutoencoderKL {
    /// The model with its tensors from `vb` under diffusers' names.
    pub fn new(config: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        let lc = config.latent_channels;
        Ok(Self {
            encoder: Encoder::new(config, vb.pp("encoder"))?,
            decoder: Decoder::new(config, vb.pp("decoder"))?,
            quant_conv: if config.use_quant_conv { Some(conv2d(2 * lc, 2 * lc, 1, 0, 1, vb.pp("quant_conv"))?) } else { None },
            post_quant_conv: if config.use_post_quant_conv { Some(conv2d(lc, lc, 1, 0, 1, vb.pp("post_quant_conv"))?) } else { None },
            config: config.clone(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The posterior of images [B, in_channels, H, W] in [-1, 1].
    pub fn encode(&self, images: &Tensor, chunks: &Chunks) -> Result<DiagonalGaussian> {
        let x = self.checked(images, self.config.in_channels, "encode: images")?;
        let tile = chunks.tiling.as_ref().map(|t| self.tile_sides(t)).transpose()?;
        let moments = sliced(&x, chunks.slice, |x| {
            let (_, _, h, w) = x.dims4()?;
            match tile {
                Some((px, lat, ov)) if h > px || w > px => tiled(x, px, lat, ov, |t| self.moments(t)),
                _ => self.moments(x),
            }
        })?;
        DiagonalGaussian::new(&moments)
    }

    /// Images [B, out_channels, 2^(levels-1)·h, 2^(levels-1)·w] of raw (unscaled) latents [B, latent_channels, h, w].
    pub fn decode(&self, z: &Tensor, chunks: &Chunks) -> Result<Tensor> {
        let z = self.checked(z, self.config.latent_channels, "decode: latents")?;
        let tile = chunks.tiling.as_ref().map(|t| self.tile_sides(t)).transpose()?;
        sliced(&z, chunks.slice, |z| {
            let (_, _, h, w) = z.dims4()?;
            match tile {
                Some((px, lat, ov)) if h > lat || w > lat => tiled(z, lat, px, ov, |t| self.decode_whole(t)),
                _ => self.decode_whole(z),
            }
        })
    }

    /// The diffusion model's latents of images: the posterior's mean (`rng` None) or a sample drawn with `rng`,
    /// scaled by the config (see [`VaeConfig::scaling_factor`]).
    pub fn encode_latents(&self, images: &Tensor, rng: Option<&mut Rng>, chunks: &Chunks) -> Result<Tensor> {
        let posterior = self.encode(images, chunks)?;
        let z = match rng {
            Some(rng) => posterior.sample(rng)?,
            None => posterior.mode(),
        };
        self.scale_latents(&z)
    }

    /// Images of the diffusion model's (scaled) latents: [`AutoencoderKL::unscale_latents`], then decode.
    pub fn decode_latents(&self, latents: &Tensor, chunks: &Chunks) -> Result<Tensor> {
        let z = self.checked(latents, self.config.latent_channels, "decode: latents")?;
        self.decode(&self.unscale_latents(&z)?, chunks)
    }

    /// Raw latents → the diffusion model's: `(z - shift) · multiplier` per channel.
    pub fn scale_latents(&self, z: &Tensor) -> Result<Tensor> {
        let (shift, mult) = self.affine()?;
        Ok(z.broadcast_sub(&shift)?.broadcast_mul(&mult)?)
    }

    /// The diffusion model's latents → raw: `z / multiplier + shift` per channel.
    pub fn unscale_latents(&self, z: &Tensor) -> Result<Tensor> {
        let (shift, mult) = self.affine()?;
        Ok(z.broadcast_div(&mult)?.broadcast_add(&shift)?)
    }

    fn affine(&self) -> Result<(Tensor, Tensor)> {
        let (shift, mult) = self.config.latent_affine();
        let t = |v: Vec<f64>| {
            let n = v.len();
            Tensor::from_vec(v.into_iter().map(|x| x as f32).collect::<Vec<_>>(), (1, n, 1, 1), &self.device)
        };
        Ok((t(shift)?, t(mult)?))
    }

    /// `_encode`: the encoder and quant_conv on whole images.
    fn moments(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.encoder.forward(x)?;
        match &self.quant_conv {
            Some(q) => q.forward(&h),
            None => Ok(h),
        }
    }

    /// `_decode`: post_quant_conv and the decoder on whole latents.
    fn decode_whole(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        match &self.post_quant_conv {
            Some(p) => self.decoder.forward(&p.forward(z)?),
            None => self.decoder.forward(z),
        }
    }

    /// (pixel tile, latent tile, overlap) as diffusers computes them.
    fn tile_sides(&self, t: &Tiling) -> Result<(usize, usize, f64)> {
        let latent = t.sample_size / self.config.downscale();
        let ok = t.overlap.is_finite() && (0.0..1.0).contains(&t.overlap) && latent > 0 && ((latent as f64 * (1.0 - t.overlap)) as usize) > 0;
        if !ok {
            return Err(Error::Input(format!(
                "tiling: tiles of {} pixels overlapping by {} leave no step; use at least {} pixels and an overlap in [0, 1)",
                t.sample_size,
                t.overlap,
                2 * self.config.downscale()
            )));
        }
        Ok((t.sample_size, latent, t.overlap))
    }

    /// `x` as f32 on the model's device, after checking it is [B, channels, H, W] with B, H, W ≥ 1.
    fn checked(&self, x: &Tensor, channels: usize, what: &str) -> Result<Tensor> {
        let ok = matches!(x.dims(), [b, c, h, w] if *b > 0 && *c == channels && *h > 0 && *w > 0);
        if !ok {
            return Err(Error::Input(format!("vae {what} must be [batch, {channels}, height, width] (got {:?})", x.dims())));
        }
        if !x.device().same_device(&self.device) {
            return Err(Error::Input(format!("vae {what} are on {:?} but the VAE is on {:?}", x.device(), self.device)));
        }
        Ok(x.to_dtype(DType::F32)?)
    }
}

/// `f` on `slice` images at a time, concatenated.
fn sliced(x: &Tensor, slice: Option<usize>, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Tensor> {
    let b = x.dim(0)?;
    let n = slice.unwrap_or(b).max(1);
    if n >= b {
        return Ok(f(x)?);
    }
    let parts = (0..b).step_by(n).map(|i| f(&x.narrow(0, i, n.min(b - i))?)).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// diffusers' `tiled_decode` / `_tiled_encode`: `f` on tiles of `tile_in` (stepping by `tile_in · (1 - overlap)`),
/// each output tile blended with the (already blended) ones above and to its left over `tile_out · overlap` rows
/// and columns, then cropped to `tile_out - blend` and concatenated.
fn tiled(x: &Tensor, tile_in: usize, tile_out: usize, overlap: f64, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let step = (tile_in as f64 * (1.0 - overlap)) as usize;
    let blend = (tile_out as f64 * overlap) as usize;
    let keep = tile_out - blend;
    let mut rows = (0..h)
        .step_by(step)
        .map(|i| (0..w).step_by(step).map(|j| f(&x.narrow(2, i, tile_in.min(h - i))?.narrow(3, j, tile_in.min(w - j))?)).collect())
        .collect::<candle_core::Result<Vec<Vec<Tensor>>>>()?;
    let mut out_rows = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let mut out_row = Vec::with_capacity(rows[i].len());
        for j in 0..rows[i].len() {
            let mut t = rows[i][j].clone();
            if i > 0 {
                t = blend_into(&rows[i - 1][j], &t, blend, 2)?;
            }
            if j > 0 {
                t = blend_into(&rows[i][j - 1], &t, blend, 3)?;
            }
            let (th, tw) = (t.dim(2)?, t.dim(3)?);
            out_row.push(t.narrow(2, 0, keep.min(th))?.narrow(3, 0, keep.min(tw))?);
            // Later tiles blend with this one as diffusers leaves it, blended in place.
            rows[i][j] = t;
        }
        out_rows.push(Tensor::cat(&out_row, 3)?);
    }
    Tensor::cat(&out_rows, 2)
}

/// `b` with its first `extent` rows (dim 2) or columns (dim 3) faded in from the last ones of `a`: weight `y/extent`
/// on `b` and `1 - y/extent` on `a` at offset y (diffusers' `blend_v` / `blend_h`).
fn blend_into(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> candle_core::Result<Tensor> {
    let extent = extent.min(a.dim(dim)?).min(b.dim(dim)?);
    if extent == 0 {
        return Ok(b.clone());
    }
    let mut shape = [1, 1, 1, 1];
    shape[dim] = extent;
    let wb: Vec<f32> = (0..extent).map(|y| (y as f64 / extent as f64) as f32).collect();
    let wa: Vec<f32> = (0..extent).map(|y| (1.0 - y as f64 / extent as f64) as f32).collect();
    let wb = Tensor::from_vec(wb, &shape, b.device())?;
    let wa = Tensor::from_vec(wa, &shape, b.device())?;
    let tail = a.narrow(dim, a.dim(dim)? - extent, extent)?;
    let head = (tail.broadcast_mul(&wa)? + b.narrow(dim, 0, extent)?.broadcast_mul(&wb)?)?;
    let rest = b.dim(dim)? - extent;
    if rest == 0 {
        return Ok(head);
    }
    Tensor::cat(&[head, b.narrow(dim, extent, rest)?], dim)
}
