//! DiT weights as users have them (a `torch.save` file such as the published `DiT-XL-2-256x256.pt`, or a
//! safetensors file in the reference names), turned into a model sadm can sample or fine-tune: the architecture is
//! read from the tensors' shapes, so nothing but the file is needed.
use crate::config::{CoreConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::io::checkpoint;
use crate::model::dit::CLASS_TABLE;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// A DiT's architecture as its tensors show it, and the reference preset it is (`DiT-XL/2`, …) when it is one.
#[derive(Clone, Debug, PartialEq)]
pub struct Architecture {
    pub model: ModelConfig,
    pub preset: Option<String>,
}

/// Heads of the reference DiT sizes by width (their head size is 64, except S's).
fn reference_heads(hidden: usize) -> Option<(usize, &'static str, usize)> {
    match hidden {
        384 => Some((6, "S", 12)),
        768 => Some((12, "B", 12)),
        1024 => Some((16, "L", 24)),
        1152 => Some((16, "XL", 28)),
        _ => None,
    }
}

/// The architecture of DiT weights in the reference names: width, patch and channels from the patch embedding,
/// depth from the blocks, MLP ratio from `fc1`, classes from the label table, learned Σ from the final layer's
/// width, the input size from `pos_embed` (else `input_size`), heads from the reference sizes (else `num_heads`).
/// @throws a checkpoint error naming the tensor that is missing or does not fit a DiT.
pub fn infer_architecture(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    input_size: Option<usize>,
    num_heads: Option<usize>,
) -> Result<Architecture> {
    let bad = |msg: String| Error::checkpoint(path, msg);
    let dims = |name: &str| -> Result<Vec<usize>> {
        tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| bad(format!("tensor '{name}' is missing: these are not DiT weights in the reference names")))
    };
    let patch = dims("x_embedder.proj.weight")?;
    let [hidden, in_channels, p, q] = patch[..] else {
        return Err(bad(format!("tensor 'x_embedder.proj.weight' has shape {patch:?}, not [hidden, channels, patch, patch]")));
    };
    if p != q {
        return Err(bad(format!("tensor 'x_embedder.proj.weight' has a {p}×{q} patch; DiT's are square")));
    }
    let depth = (0..).take_while(|i| tensors.contains_key(&format!("blocks.{i}.attn.qkv.weight"))).count();
    if depth == 0 {
        return Err(bad("tensor 'blocks.0.attn.qkv.weight' is missing: these are not DiT weights in the reference names".into()));
    }
    let fc1 = dims("blocks.0.mlp.fc1.weight")?;
    let mlp_ratio = fc1[0] as f64 / hidden as f64;
    let out = dims("final_layer.linear.weight")?[0];
    let learn_sigma = match out / (p * p) {
        c if c == 2 * in_channels => true,
        c if c == in_channels => false,
        _ => return Err(bad(format!("tensor 'final_layer.linear.weight' has {out} outputs, neither {p}²×{in_channels} nor twice that"))),
    };
    let num_classes = match tensors.get(CLASS_TABLE) {
        Some(t) => t.dim(0)?.saturating_sub(1),
        None => 0,
    };
    let from_pos = match tensors.get("pos_embed") {
        Some(t) => {
            let n = t.dims().get(1).copied().unwrap_or(0);
            let g = (n as f64).sqrt().round() as usize;
            if g * g != n {
                return Err(bad(format!("tensor 'pos_embed' has {n} positions, not a square grid")));
            }
            Some(g * p)
        }
        None => None,
    };
    let input_size = input_size.or(from_pos).ok_or_else(|| {
        bad("the weights have no 'pos_embed' to tell the input size: give the model's input size (model.inputSize)".into())
    })?;
    let reference = reference_heads(hidden);
    let num_heads = match (num_heads, reference) {
        (Some(h), _) => h,
        (None, Some((h, _, _))) => h,
        (None, None) => {
            return Err(bad(format!(
                "a DiT {hidden} wide is no reference size, so its heads cannot be read from the tensors: give model.numHeads"
            )))
        }
    };
    if let Some(pos) = tensors.get("pos_embed") {
        check_pos_embed(pos, hidden, input_size / p, path)?;
    }
    let preset = reference
        .filter(|&(h, _, d)| h == num_heads && d == depth && mlp_ratio == 4.0 && matches!(p, 2 | 4 | 8))
        .map(|(_, size, _)| format!("DiT-{size}/{p}"));
    let model = ModelConfig {
        input_size,
        in_channels,
        patch_size: p,
        hidden_size: hidden,
        depth,
        num_heads,
        mlp_ratio,
        num_classes,
        learn_sigma,
        class_dropout_prob: 0.1,
    };
    Ok(Architecture { model, preset })
}

/// sadm computes DiT's fixed 2-D sin-cos position embedding instead of loading it, so a file whose `pos_embed`
/// is another (learned, or of another layout) would run wrongly: refused.
fn check_pos_embed(pos: &Tensor, hidden: usize, grid: usize, path: &Path) -> Result<()> {
    let ours = crate::nn::sincos_pos_embed(hidden, grid, &Device::Cpu)?.unsqueeze(0)?;
    let theirs = pos.to_device(&Device::Cpu)?.to_dtype(candle_core::DType::F32)?;
    if theirs.dims() != ours.dims() {
        return Err(Error::checkpoint(path, format!("tensor 'pos_embed' has shape {:?}, not {:?}", theirs.dims(), ours.dims())));
    }
    let diff = (theirs - &ours)?.abs()?.max_all()?.to_scalar::<f32>()?;
    // fp16 storage rounds the embedding (values in [-1, 1]) by up to 5e-4.
    if diff > 1e-3 {
        return Err(Error::checkpoint(
            path,
            format!("tensor 'pos_embed' is not DiT's fixed sin-cos embedding (off by {diff:.3}): sadm cannot run a DiT with another position embedding"),
        ));
    }
    Ok(())
}

/// DiT weights from a file (torch.save or safetensors), with their architecture; DiT's own diffusion settings
/// (1,000 linear-β steps, ε-prediction) come with them, as DiT trained them.
pub fn load_dit_weights(path: &Path, num_heads: Option<usize>, device: &Device) -> Result<(CoreConfig, HashMap<String, Tensor>)> {
    let tensors = checkpoint::load_pretrained(path, device)?;
    let arch = infer_architecture(&tensors, path, None, num_heads)?;
    // tiny_mnist's diffusion settings are DiT's; the discriminator is not used for sampling.
    let mut cfg = CoreConfig::tiny_mnist();
    cfg.discriminator.patch_size = arch.model.patch_size;
    cfg.model = arch.model;
    let varmap = candle_nn::VarMap::new();
    crate::model::dit::DiT::new(&cfg.model, candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu))?;
    checkpoint::check_shapes(path, &checkpoint::expected(&crate::nn::sorted_vars(&varmap)), &tensors, &["pos_embed"])?;
    Ok((cfg, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dit::DiT;
    use candle_core::DType;
    use candle_nn::VarBuilder;
    use std::path::PathBuf;

    fn testdata(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
    }

    /// Zero tensors of the published checkpoints' names and shapes (dumped from DiT's models.py), with the real
    /// sin-cos `pos_embed`.
    fn published(layout: &str) -> HashMap<String, Tensor> {
        let text = std::fs::read_to_string(testdata("dit_xl2_state_dict_shapes.json")).unwrap();
        let all: serde_json::Value = serde_json::from_str(&text).unwrap();
        let shapes: Vec<(String, Vec<usize>)> = serde_json::from_value(all[layout].clone()).unwrap();
        shapes
            .into_iter()
            .map(|(name, dims)| {
                let t = if name == "pos_embed" {
                    let grid = (dims[1] as f64).sqrt() as usize;
                    crate::nn::sincos_pos_embed(dims[2], grid, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
                } else {
                    Tensor::zeros(dims.as_slice(), DType::F32, &Device::Cpu).unwrap()
                };
                (name, t)
            })
            .collect()
    }

    #[test]
    fn the_published_checkpoints_are_dit_xl_2_at_latent_32_and_64() {
        for (layout, size) in [("DiT-XL-2-256x256", 32), ("DiT-XL-2-512x512", 64)] {
            let t = published(layout);
            let a = infer_architecture(&t, Path::new(layout), None, None).unwrap();
            assert_eq!(a.preset.as_deref(), Some("DiT-XL/2"), "{layout}");
            let want = ModelConfig { class_dropout_prob: 0.1, ..ModelConfig::preset("DiT-XL/2", size, 4, 1000).unwrap() };
            assert_eq!(a.model, want, "{layout}");
            // Every tensor is one sadm's DiT-XL/2 has, and the other way round.
            let varmap = candle_nn::VarMap::new();
            DiT::new(&a.model, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
            checkpoint::check_shapes(Path::new(layout), &checkpoint::expected(&crate::nn::sorted_vars(&varmap)), &t, &["pos_embed"]).unwrap();
        }
    }

    #[test]
    fn what_does_not_fit_a_dit_is_named() {
        let p = Path::new("x.pt");
        let mut t = published("DiT-XL-2-256x256");
        t.insert("pos_embed".into(), Tensor::zeros((1, 256, 1152), DType::F32, &Device::Cpu).unwrap());
        let e = infer_architecture(&t, p, None, None).unwrap_err().to_string();
        assert!(e.contains("tensor 'pos_embed' is not DiT's fixed sin-cos embedding"), "{e}");
        let mut t = published("DiT-XL-2-256x256");
        t.remove("x_embedder.proj.weight");
        let e = infer_architecture(&t, p, None, None).unwrap_err().to_string();
        assert!(e.contains("tensor 'x_embedder.proj.weight' is missing: these are not DiT weights"), "{e}");
        let mut t = published("DiT-XL-2-256x256");
        t.insert("x_embedder.proj.weight".into(), Tensor::zeros((96, 4, 2, 2), DType::F32, &Device::Cpu).unwrap());
        let e = infer_architecture(&t, p, Some(32), None).unwrap_err().to_string();
        assert!(e.contains("a DiT 96 wide is no reference size, so its heads cannot be read from the tensors: give model.numHeads"), "{e}");
    }

    /// The reference DiT (DiT's models.py, in testdata/pth_reference.py) saved with torch.save and run by sadm.
    #[test]
    fn a_torch_save_dit_runs_as_dit_models_py_does() {
        let dev = Device::Cpu;
        let (cfg, tensors) = load_dit_weights(&testdata("pth_dit_small.pt"), Some(4), &dev).unwrap();
        assert_eq!((cfg.model.input_size, cfg.model.in_channels, cfg.model.depth, cfg.model.num_classes), (8, 4, 2, 10));
        assert!(cfg.model.learn_sigma);
        let refs = checkpoint::load_tensors(&testdata("pth_dit_small_reference.safetensors"), &dev).unwrap();
        let f32s: HashMap<String, Tensor> = tensors.iter().map(|(k, v)| (k.clone(), v.to_dtype(DType::F32).unwrap())).collect();
        let model = DiT::new(&cfg.model, VarBuilder::from_tensors(f32s, DType::F32, &dev)).unwrap();
        let y = refs["y"].to_dtype(DType::U32).unwrap();
        let out = model.forward(&refs["x"], &refs["t"], Some(&y)).unwrap();
        let want = &refs["out"];
        let err = (out - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 0.1, "the reference output is not trivially small ({scale})");
        assert!(err <= 1e-5 * scale, "max |sadm − DiT models.py| = {err} against max |out| = {scale}");
    }
}
