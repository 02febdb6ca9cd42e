//! The VAE's weights as users have them: a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`,
//! or a pipeline folder with them in `vae/`), or a single file with Stable Diffusion's architecture. Three name
//! sets are read, each mapped to diffusers' current names: the current ones (`to_q`, `to_k`, `to_v`, `to_out.0`),
//! the older diffusers attention names (`query`, `key`, `value`, `proj_attn`), and the original LDM/CompVis ones
//! (`encoder.down.0.block.0.norm1.weight`, `mid.attn_1.q` as 1×1 convs, optionally under `first_stage_model.` or
//! `vae.` as in whole-model checkpoints), as diffusers' single-file loader maps them. Every tensor is checked,
//! by name and shape, in the file's own names, before anything is built.
//!
//! The mapping works on a name → tensor map, so any reader plugs in: [`AutoencoderKL::from_tensors`].
use super::{AutoencoderKL, VaeConfig};
use crate::error::{Error, Result};
use crate::io::checkpoint::{check_shapes, load_tensors};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How a file names the VAE's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameScheme {
    /// diffusers' names since 0.14: `mid_block.attentions.0.to_q`.
    Diffusers,
    /// diffusers' names before: `mid_block.attentions.0.query`, `proj_attn`.
    DiffusersLegacy,
    /// The original LDM/CompVis `AutoencoderKL`: `down.{i}.block.{j}`, `mid.block_1`, `mid.attn_1.q`, `norm_out`.
    Ldm,
}

/// Prefixes under which whole-model checkpoints hold their VAE (diffusers' `LDM_VAE_KEYS`).
const PREFIXES: [&str; 2] = ["first_stage_model.", "vae."];

/// Entries of LDM VAE checkpoints that are training state, not the model: the loss's discriminator and LPIPS
/// network, and EMA bookkeeping. diffusers' conversion drops them too.
const LDM_TRAINING_STATE: [&str; 2] = ["loss.", "model_ema."];

/// Shape recorder for [`parameter_shapes`]: every tensor the model asks for is a broadcast zero, so the full
/// SD-VAE's 84M parameters cost no memory.
struct Recorder(Mutex<Vec<(String, Vec<usize>)>>);

impl SimpleBackend for &Recorder {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.lock().unwrap().push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("the shape recorder has no tensor '{name}'")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Every tensor of the architecture in diffusers' current names, with its shape, in the order the model reads them.
pub fn parameter_shapes(config: &VaeConfig) -> Result<Vec<(String, Vec<usize>)>> {
    let recorder = Recorder(Mutex::new(vec![]));
    AutoencoderKL::new(config, VarBuilder::from_backend(Box::new(&recorder), DType::F32, Device::Cpu))?;
    Ok(recorder.0.into_inner().unwrap())
}

const LEGACY_ATTENTION: [(&str, &str); 4] = [("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")];

/// The name a file in `scheme` gives the tensor diffusers calls `name`, for a model of `levels` resolution levels.
pub fn scheme_name(name: &str, scheme: NameScheme, levels: usize) -> String {
    match scheme {
        NameScheme::Diffusers => name.to_string(),
        NameScheme::DiffusersLegacy => {
            for (new, old) in LEGACY_ATTENTION {
                if let Some((head, tail)) = name.split_once(&format!(".attentions.0.{new}.")) {
                    return format!("{head}.attentions.0.{old}.{tail}");
                }
            }
            name.to_string()
        }
        NameScheme::Ldm => ldm_name(name, levels),
    }
}

/// diffusers → LDM, the inverse of diffusers' `convert_ldm_vae_checkpoint`.
fn ldm_name(name: &str, levels: usize) -> String {
    let Some((coder, rest)) = name.split_once('.') else { return name.to_string() };
    let parts: Vec<&str> = rest.split('.').collect();
    let renamed = match parts.as_slice() {
        ["conv_norm_out", p] => format!("norm_out.{p}"),
        ["down_blocks", i, "resnets", j, layer @ ..] => format!("down.{i}.block.{j}.{}", resnet_layer(layer)),
        ["down_blocks", i, "downsamplers", "0", "conv", p] => format!("down.{i}.downsample.conv.{p}"),
        // The decoder's up blocks run from the deepest level; LDM numbers its levels as the encoder does.
        ["up_blocks", i, "resnets", j, layer @ ..] => format!("up.{}.block.{j}.{}", flip(i, levels), resnet_layer(layer)),
        ["up_blocks", i, "upsamplers", "0", "conv", p] => format!("up.{}.upsample.conv.{p}", flip(i, levels)),
        ["mid_block", "resnets", j, layer @ ..] => {
            format!("mid.block_{}.{}", j.parse::<usize>().map_or(0, |j| j + 1), resnet_layer(layer))
        }
        ["mid_block", "attentions", "0", layer @ ..] => {
            let layer = layer.join(".");
            let ldm = match layer.rsplit_once('.') {
                Some(("group_norm", p)) => format!("norm.{p}"),
                Some(("to_q", p)) => format!("q.{p}"),
                Some(("to_k", p)) => format!("k.{p}"),
                Some(("to_v", p)) => format!("v.{p}"),
                Some(("to_out.0", p)) => format!("proj_out.{p}"),
                _ => layer,
            };
            format!("mid.attn_1.{ldm}")
        }
        _ => rest.to_string(),
    };
    format!("{coder}.{renamed}")
}

fn resnet_layer(layer: &[&str]) -> String {
    layer.join(".").replace("conv_shortcut", "nin_shortcut")
}

fn flip(i: &str, levels: usize) -> usize {
    i.parse::<usize>().map_or(0, |i| levels - 1 - i)
}

/// The scheme of a file's (prefix-stripped) names.
fn detect(names: &[&String]) -> NameScheme {
    let ldm = ["encoder.down.", "encoder.mid.", "decoder.up.", "decoder.mid."];
    if names.iter().any(|n| ldm.iter().any(|p| n.starts_with(p))) {
        NameScheme::Ldm
    } else if names.iter().any(|n| LEGACY_ATTENTION.iter().any(|(_, old)| n.contains(&format!(".attentions.0.{old}.")))) {
        NameScheme::DiffusersLegacy
    } else {
        NameScheme::Diffusers
    }
}

/// The attention projections of LDM files are 1×1 convs ([C, C, 1, 1]); diffusers' are linears ([C, C]).
fn squeeze_projection(name: &str, t: Tensor) -> Result<Tensor> {
    let projection = name.contains(".attentions.0.") || name.contains(".mid.attn_1.");
    match t.dims() {
        [a, b, 1, 1] | [a, b, 1] if projection => Ok(t.reshape((*a, *b))?),
        _ => Ok(t),
    }
}

/// A file's tensors in diffusers' current names, every name and shape checked against `config`'s architecture.
/// Errors name `path` and the tensor in the file's own names.
pub(super) fn canonical_tensors(config: &VaeConfig, tensors: HashMap<String, Tensor>, path: &Path, hint: &str) -> Result<HashMap<String, Tensor>> {
    let prefix = PREFIXES.iter().find(|p| tensors.keys().any(|k| k.starts_with(*p)));
    let mut tensors: HashMap<String, Tensor> = match prefix {
        // Whole-model checkpoints: the UNet and text encoder are not ours to check.
        Some(p) => tensors.into_iter().filter_map(|(k, v)| k.strip_prefix(p).map(|s| (s.to_string(), v))).collect(),
        None => tensors,
    };
    let scheme = detect(&tensors.keys().collect::<Vec<_>>());
    if scheme == NameScheme::Ldm {
        tensors.retain(|k, _| !LDM_TRAINING_STATE.iter().any(|p| k.starts_with(p)));
    }
    let levels = config.block_out_channels.len();
    let shapes = parameter_shapes(config)?;
    let in_file: Vec<(String, Vec<usize>)> = shapes.iter().map(|(n, s)| (scheme_name(n, scheme, levels), s.clone())).collect();
    if !in_file.iter().any(|(n, _)| tensors.contains_key(n)) {
        let mut found: Vec<&String> = tensors.keys().collect();
        found.sort();
        let example = found.first().map_or("no tensors at all".to_string(), |k| format!("'{k}', …"));
        return Err(Error::checkpoint(path, format!("no VAE tensor in it (found {example}): this is not an AutoencoderKL checkpoint; {hint}")));
    }
    let mut tensors: HashMap<String, Tensor> = tensors.into_iter().map(|(k, v)| Ok((k.clone(), squeeze_projection(&k, v)?))).collect::<Result<_>>()?;
    check_shapes(path, &in_file, &tensors, &[]).map_err(|e| match e {
        Error::Checkpoint { path, msg } => Error::checkpoint(path, format!("{msg} ({} names); {hint}", scheme_label(scheme))),
        e => e,
    })?;
    Ok(shapes.iter().zip(&in_file).map(|((name, _), (file_name, _))| (name.clone(), tensors.remove(file_name).unwrap())).collect())
}

fn scheme_label(s: NameScheme) -> &'static str {
    match s {
        NameScheme::Diffusers => "diffusers",
        NameScheme::DiffusersLegacy => "older diffusers",
        NameScheme::Ldm => "LDM/CompVis",
    }
}

/// The weights file of a diffusers model folder: safetensors, or the PyTorch pickle (`.bin`, a `torch.save` zip
/// archive) that older uploads and `save_pretrained(safe_serialization=False)` write; never its code, only tensors.
fn folder_weights(dir: &Path) -> Result<PathBuf> {
    let names = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin"];
    match names.iter().map(|n| dir.join(n)).find(|p| p.is_file()) {
        Some(p) => Ok(p),
        None => Err(Error::checkpoint(dir, "the VAE folder has config.json but no weights: download diffusion_pytorch_model.safetensors next to config.json")),
    }
}

/// The tensors of a weights file, by its format.
fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => load_tensors(path, device),
        // The original VAE releases are LDM checkpoints ({"state_dict": …}); whole SD checkpoints hold it under a prefix.
        Some("ckpt" | "pt" | "pth" | "bin") => Ok(crate::io::pth::load_pth(path, None, device)?.tensors),
        _ => Err(Error::checkpoint(path, "not a .safetensors file nor a diffusers VAE folder: pass the folder with config.json, or a .safetensors file")),
    }
}

impl AutoencoderKL {
    /// A VAE from disk: a diffusers folder (its `config.json` gives the architecture; a pipeline folder's `vae/`
    /// is used), or a single `.safetensors` file with Stable Diffusion's architecture ([`VaeConfig::stable_diffusion`])
    /// in any of the three name sets.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if path.is_dir() {
            let dir = if !path.join("config.json").is_file() && path.join("vae").join("config.json").is_file() { path.join("vae") } else { path.to_path_buf() };
            let config_path = dir.join("config.json");
            if !config_path.is_file() {
                return Err(Error::checkpoint(path, "not a diffusers VAE folder (no config.json): pass the folder with config.json and diffusion_pytorch_model.safetensors, or a .safetensors file"));
            }
            let config = VaeConfig::from_diffusers_json(&config_path)?;
            let weights = folder_weights(&dir)?;
            let hint = format!("the weights do not match {}: use the weights file that came with it", config_path.display());
            Self::from_tensors_with_hint(&config, read_tensors(&weights, device)?, &weights, device, &hint)
        } else if path.is_file() {
            Self::load_file(path, &VaeConfig::stable_diffusion(), device)
        } else {
            Err(Error::checkpoint(path, "no such VAE folder or weights file"))
        }
    }

    /// A weights file with the architecture `config`.
    pub fn load_file(path: &Path, config: &VaeConfig, device: &Device) -> Result<Self> {
        let hint = if *config == VaeConfig::stable_diffusion() {
            "a single file is read as Stable Diffusion's VAE; for another architecture load its diffusers folder (config.json with the weights)"
        } else {
            "the file does not match the given VAE config"
        };
        Self::from_tensors_with_hint(config, read_tensors(path, device)?, path, device, hint)
    }

    /// A VAE from a name → tensor map in any of the three name sets (from any reader: safetensors, PyTorch
    /// pickles), checked against `config`; `source` names the file in errors.
    pub fn from_tensors(config: &VaeConfig, tensors: HashMap<String, Tensor>, source: &Path, device: &Device) -> Result<Self> {
        Self::from_tensors_with_hint(config, tensors, source, device, "check that the file is the VAE of this config")
    }

    fn from_tensors_with_hint(config: &VaeConfig, tensors: HashMap<String, Tensor>, source: &Path, device: &Device, hint: &str) -> Result<Self> {
        config.validate().map_err(|e| Error::checkpoint(source, format!("invalid VAE config: {e}")))?;
        let tensors = canonical_tensors(config, tensors, source, hint)?;
        Self::new(config, VarBuilder::from_tensors(tensors, DType::F32, device))
    }
}

/// The files a VAE at `path` is read from (a folder's config.json and weights, or the one file), in that order:
/// what identifies it, so latents and runs can check they are decoded by the VAE that encoded them.
pub fn source_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        let dir = if !path.join("config.json").is_file() && path.join("vae").join("config.json").is_file() { path.join("vae") } else { path.to_path_buf() };
        Ok(vec![dir.join("config.json"), folder_weights(&dir)?])
    } else {
        Ok(vec![path.to_path_buf()])
    }
}
