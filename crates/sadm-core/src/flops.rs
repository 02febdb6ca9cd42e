//! Matmul FLOP counts of the networks, for achieved-GFLOP/s and MFU figures. Only the matrix products are
//! counted (2 FLOPs per multiply-add), as MFU conventions do: norms, softmax and element-wise ops are noise next to
//! them. A backward pass costs two forwards (one product for the input gradient, one for the weight gradient).
use crate::config::{DiscriminatorConfig, ModelConfig};

/// Matmul FLOPs of one DiT forward pass on one image.
pub fn dit_forward(m: &ModelConfig) -> f64 {
    let n = (m.grid() * m.grid()) as f64;
    let d = m.hidden_size as f64;
    let patch_in = (m.in_channels * m.patch_size * m.patch_size) as f64;
    let patch_out = (m.out_channels() * m.patch_size * m.patch_size) as f64;
    let mlp = m.mlp_hidden() as f64;
    // Per-image (not per-token) work: the timestep MLP (256 → d → d) and the adaLN projections.
    let t_embed = 2.0 * 256.0 * d + 2.0 * d * d;
    let block = 2.0 * d * 6.0 * d // adaLN modulation
        + 2.0 * n * d * 3.0 * d // qkv
        + 2.0 * 2.0 * n * n * d // q·kᵀ and attention·v
        + 2.0 * n * d * d // output projection
        + 2.0 * 2.0 * n * d * mlp; // the two MLP layers
    let final_layer = 2.0 * d * 2.0 * d + 2.0 * n * d * patch_out;
    2.0 * n * patch_in * d + t_embed + m.depth as f64 * block + final_layer
}

/// Matmul FLOPs of one structure-encoder forward pass on one image.
pub fn encoder_forward(c: &DiscriminatorConfig, in_channels: usize, input_size: usize) -> f64 {
    let g = input_size / c.patch_size;
    let n = (g * g) as f64;
    let w = c.width as f64;
    let block = 2.0 * n * w * 3.0 * w + 2.0 * 2.0 * n * n * w + 2.0 * n * w * w + 2.0 * 2.0 * n * w * 4.0 * w;
    2.0 * n * (in_channels * c.patch_size * c.patch_size) as f64 * w
        + c.depth as f64 * block
        + 2.0 * w * w
        + 2.0 * w * c.proj_dim as f64
}

/// Matmul FLOPs of one training step per image: DiT forward + backward, and with SADM the discriminator update
/// (encoder forward + backward on x0 and x̂0, per discriminator step) and the structure term of the denoiser update
/// (forward on x0, forward + backward on x̂0; the input gradient only, but counted as a full backward).
pub fn train_step_per_image(m: &ModelConfig, c: &DiscriminatorConfig, sadm: bool) -> f64 {
    let dit = 3.0 * dit_forward(m);
    if !sadm {
        return dit;
    }
    let enc = encoder_forward(c, m.in_channels, m.input_size);
    dit + c.steps as f64 * 2.0 * 3.0 * enc + (1.0 + 3.0) * enc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CoreConfig;
    use crate::nn::sorted_vars;
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    #[test]
    fn forward_flops_are_twice_the_token_weighted_parameter_count_plus_attention() {
        // For a DiT, 2·(weights used per token)·tokens + attention + per-image terms must equal the formula:
        // check against the real parameter shapes rather than a hand count.
        let cfg = CoreConfig::tiny_mnist();
        let m = &cfg.model;
        let vm = VarMap::new();
        crate::model::dit::DiT::new(m, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        let n = (m.grid() * m.grid()) as f64;
        let mut expected = 0.0;
        for (name, v) in sorted_vars(&vm) {
            if !name.ends_with(".weight") || name.starts_with("y_embedder") {
                continue;
            }
            let elems = v.elem_count() as f64;
            let per_image = name.contains("adaLN") || name.starts_with("t_embedder");
            expected += 2.0 * elems * if per_image { 1.0 } else { n };
        }
        expected += m.depth as f64 * 4.0 * n * n * m.hidden_size as f64;
        assert!((dit_forward(m) - expected).abs() < 1e-6 * expected, "{} vs {expected}", dit_forward(m));
    }

    #[test]
    fn sadm_adds_the_encoder_work() {
        let cfg = CoreConfig::tiny_mnist();
        let plain = train_step_per_image(&cfg.model, &cfg.discriminator, false);
        let sadm = train_step_per_image(&cfg.model, &cfg.discriminator, true);
        let enc = encoder_forward(&cfg.discriminator, 1, 28);
        assert_eq!(plain, 3.0 * dit_forward(&cfg.model));
        assert!((sadm - plain - 10.0 * enc).abs() < 1e-6 * sadm);
    }
}
