//! DiT weights as users have them (a `torch.save` file such as the published `DiT-XL-2-256x256.pt`, or a
//! safetensors file in the reference names), turned into a model sadm can sample or fine-tune: the architecture is
//! read from the tensors' shapes ([`dit::infer_config`]), so nothing but the file is needed.
use crate::config::{CoreConfig, ModelConfig};
use crate::error::Result;
use crate::io::checkpoint;
use crate::model::dit::{self, ConfigHints};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// A DiT's architecture as its tensors show it, and the reference preset it is (`DiT-XL/2`, …) when it is one.
#[derive(Clone, Debug, PartialEq)]
pub struct Architecture {
    pub model: ModelConfig,
    pub preset: Option<String>,
}

/// The architecture of DiT weights ([`dit::infer_config`]), named by its reference preset when it is one.
pub fn infer_architecture(tensors: &HashMap<String, Tensor>, path: &Path, hints: ConfigHints) -> Result<Architecture> {
    let model = dit::infer_config(tensors, path, hints)?;
    let preset = ["S", "B", "L", "XL"]
        .iter()
        .map(|size| format!("DiT-{size}/{}", model.patch_size))
        .find(|name| {
            ModelConfig::preset(name, model.input_size, model.in_channels, model.num_classes)
                .is_ok_and(|p| ModelConfig { learn_sigma: model.learn_sigma, class_dropout_prob: model.class_dropout_prob, ..p } == model)
        });
    Ok(Architecture { model, preset })
}

/// DiT weights from a file (torch.save or safetensors), with their architecture; DiT's own diffusion settings
/// (1,000 linear-β steps, ε-prediction) come with them, as DiT trained them.
pub fn load_dit_weights(path: &Path, num_heads: Option<usize>, device: &Device) -> Result<(CoreConfig, HashMap<String, Tensor>)> {
    let tensors = checkpoint::load_pretrained(path, device)?;
    let arch = infer_architecture(&tensors, path, ConfigHints { input_size: None, num_heads })?;
    // tiny_mnist's diffusion settings are DiT's; the discriminator is not used for sampling.
    let mut cfg = CoreConfig::tiny_mnist();
    cfg.discriminator.patch_size = arch.model.patch_size;
    cfg.model = arch.model;
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
            let a = infer_architecture(&t, Path::new(layout), ConfigHints::default()).unwrap();
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
        let e = infer_architecture(&t, p, ConfigHints::default()).unwrap_err().to_string();
        assert!(e.contains("pos_embed"), "{e}");
        let mut t = published("DiT-XL-2-256x256");
        t.remove("x_embedder.proj.weight");
        let e = infer_architecture(&t, p, ConfigHints::default()).unwrap_err().to_string();
        assert!(e.contains("tensor 'x_embedder.proj.weight' is missing: these are not DiT weights"), "{e}");
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
