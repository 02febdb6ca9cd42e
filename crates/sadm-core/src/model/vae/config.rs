//! The VAE's architecture and latent scaling, as diffusers' `AutoencoderKL` config describes them, read from a
//! diffusers `config.json` with diffusers' defaults for what it leaves out (early configs, such as
//! sd-vae-ft-ema's, have no `scaling_factor`).
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Channels of each resolution level, highest resolution first; the image side shrinks by 2 per level after
    /// the first.
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    /// The image side diffusers tiles with (`tile_sample_min_size`).
    pub sample_size: usize,
    /// Latents for the diffusion model are `(z - shift) · scaling_factor / std`, per channel: `shift` is
    /// `shift_factor` or `latents_mean`, `std` is `latents_std` (else 1), as diffusers' pipelines apply them.
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub latents_mean: Option<Vec<f64>>,
    pub latents_std: Option<Vec<f64>>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl VaeConfig {
    /// Stable Diffusion's VAE (sd-vae-ft-ema, sd-vae-ft-mse, and the VAE inside SD 1.x/2.x checkpoints), which
    /// DiT encodes its 256×256 ImageNet images with.
    pub fn stable_diffusion() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 256,
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }

    /// The factor between the image side and the latent side.
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// What would make the model ill-formed or the scaling meaningless, as one sentence.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let ch = &self.block_out_channels;
        if ch.is_empty() || ch.len() > 8 {
            return Err(format!("block_out_channels must list 1 to 8 levels (got {})", ch.len()));
        }
        if self.norm_num_groups == 0 {
            return Err("norm_num_groups must be at least 1".into());
        }
        if let Some(c) = ch.iter().find(|&&c| c == 0 || c % self.norm_num_groups != 0) {
            return Err(format!("block_out_channels {ch:?}: {c} is not a positive multiple of norm_num_groups ({})", self.norm_num_groups));
        }
        for (what, v) in [("in_channels", self.in_channels), ("out_channels", self.out_channels), ("latent_channels", self.latent_channels)] {
            if v == 0 {
                return Err(format!("{what} must be at least 1"));
            }
        }
        if self.layers_per_block == 0 {
            return Err("layers_per_block must be at least 1".into());
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return Err(format!("scaling_factor must be a finite non-zero number (got {})", self.scaling_factor));
        }
        if self.shift_factor.is_some() && self.latents_mean.is_some() {
            return Err("shift_factor and latents_mean are both set: a VAE shifts its latents by one of them".into());
        }
        if self.latents_mean.is_some() != self.latents_std.is_some() {
            return Err("latents_mean and latents_std come together: set both or neither".into());
        }
        for (what, v) in [("latents_mean", &self.latents_mean), ("latents_std", &self.latents_std)] {
            if let Some(v) = v {
                if v.len() != self.latent_channels || v.iter().any(|x| !x.is_finite()) {
                    return Err(format!("{what} must be {} finite numbers, one per latent channel", self.latent_channels));
                }
            }
        }
        if self.latents_std.as_ref().is_some_and(|s| s.contains(&0.0)) {
            return Err("latents_std must not contain 0".into());
        }
        if self.shift_factor.is_some_and(|s| !s.is_finite()) {
            return Err("shift_factor must be finite".into());
        }
        Ok(())
    }

    /// The per-channel (shift, multiplier) of [`VaeConfig::scaling_factor`]'s doc.
    pub fn latent_affine(&self) -> (Vec<f64>, Vec<f64>) {
        let n = self.latent_channels;
        let shift = match (&self.latents_mean, self.shift_factor) {
            (Some(m), _) => m.clone(),
            (None, s) => vec![s.unwrap_or(0.0); n],
        };
        let std = self.latents_std.clone().unwrap_or_else(|| vec![1.0; n]);
        (shift, std.iter().map(|s| self.scaling_factor / s).collect())
    }

    /// The config of a diffusers `config.json`: an `AutoencoderKL` with the blocks and activation sadm implements.
    pub fn from_diffusers_json(path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::checkpoint(path, msg);
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
        let raw: DiffusersConfig =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a valid diffusers config.json: {e}")))?;
        let fix = "sadm reads Stable Diffusion's AutoencoderKL (e.g. stabilityai/sd-vae-ft-ema); point to such a VAE";
        if let Some(class) = raw.class_name.as_deref().filter(|c| *c != "AutoencoderKL") {
            return Err(bad(format!("the model is a {class}, not an AutoencoderKL: {fix}")));
        }
        let n = raw.block_out_channels.len();
        for (what, types, want) in [("down_block_types", &raw.down_block_types, "DownEncoderBlock2D"), ("up_block_types", &raw.up_block_types, "UpDecoderBlock2D")] {
            if let Some(t) = types.iter().find(|t| *t != want) {
                return Err(bad(format!("{what} has {t}, a block sadm's VAE does not implement (only {want}): {fix}")));
            }
            if types.len() != n {
                return Err(bad(format!("{what} lists {} blocks but block_out_channels {n} levels: the config is inconsistent", types.len())));
            }
        }
        if !matches!(raw.act_fn.to_lowercase().as_str(), "silu" | "swish") {
            return Err(bad(format!("act_fn '{}' is not supported (only silu, which every Stable Diffusion VAE uses): {fix}", raw.act_fn)));
        }
        let sample_size = match &raw.sample_size {
            SampleSize::Side(s) => *s,
            SampleSize::HeightWidth(v) => *v.first().ok_or_else(|| bad("sample_size is an empty list".into()))?,
        };
        let cfg = Self {
            in_channels: raw.in_channels,
            out_channels: raw.out_channels,
            block_out_channels: raw.block_out_channels,
            layers_per_block: raw.layers_per_block,
            latent_channels: raw.latent_channels,
            norm_num_groups: raw.norm_num_groups,
            sample_size,
            scaling_factor: raw.scaling_factor,
            shift_factor: raw.shift_factor,
            latents_mean: raw.latents_mean,
            latents_std: raw.latents_std,
            use_quant_conv: raw.use_quant_conv,
            use_post_quant_conv: raw.use_post_quant_conv,
            mid_block_add_attention: raw.mid_block_add_attention,
        };
        cfg.validate().map_err(|e| bad(format!("invalid AutoencoderKL config: {e}")))?;
        Ok(cfg)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SampleSize {
    Side(usize),
    HeightWidth(Vec<usize>),
}

/// `AutoencoderKL.__init__`'s arguments with its defaults; other keys (`_diffusers_version`, `force_upcast`) are
/// ignored, as diffusers ignores unknown ones.
#[derive(Deserialize)]
struct DiffusersConfig {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    #[serde(default = "three")]
    in_channels: usize,
    #[serde(default = "three")]
    out_channels: usize,
    #[serde(default = "down_types")]
    down_block_types: Vec<String>,
    #[serde(default = "up_types")]
    up_block_types: Vec<String>,
    #[serde(default = "channels")]
    block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    layers_per_block: usize,
    #[serde(default = "silu")]
    act_fn: String,
    #[serde(default = "four")]
    latent_channels: usize,
    #[serde(default = "groups")]
    norm_num_groups: usize,
    #[serde(default = "sample")]
    sample_size: SampleSize,
    #[serde(default = "scaling")]
    scaling_factor: f64,
    #[serde(default)]
    shift_factor: Option<f64>,
    #[serde(default)]
    latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    latents_std: Option<Vec<f64>>,
    #[serde(default = "yes")]
    use_quant_conv: bool,
    #[serde(default = "yes")]
    use_post_quant_conv: bool,
    #[serde(default = "yes")]
    mid_block_add_attention: bool,
}

fn one() -> usize {
    1
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn groups() -> usize {
    32
}
fn sample() -> SampleSize {
    SampleSize::Side(32)
}
fn channels() -> Vec<usize> {
    vec![64]
}
fn down_types() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn up_types() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn silu() -> String {
    "silu".into()
}
fn scaling() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}
