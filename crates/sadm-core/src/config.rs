//! The configuration the core needs, as the TypeScript layer sends it (camelCase JSON). The TS side validates
//! user input with friendly messages; [`CoreConfig::validate`] re-checks what would otherwise panic or silently
//! misbehave here, because the core is also usable on its own.
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelConfig {
    pub input_size: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub hidden_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    /// 0 means unconditional.
    pub num_classes: usize,
    pub learn_sigma: bool,
    pub class_dropout_prob: f64,
}

impl ModelConfig {
    /// A reference DiT preset: `"S" | "B" | "L" | "XL"` with patch 2, 4 or 8, on `input_size`² × `in_channels`.
    pub fn preset(name: &str, input_size: usize, in_channels: usize, num_classes: usize) -> Result<Self> {
        let (size, patch) = name
            .trim_start_matches("DiT-")
            .split_once('/')
            .ok_or_else(|| Error::Config(format!("unknown preset '{name}': expected e.g. DiT-S/2")))?;
        let (depth, hidden_size, num_heads) = match size {
            "S" => (12, 384, 6),
            "B" => (12, 768, 12),
            "L" => (24, 1024, 16),
            "XL" => (28, 1152, 16),
            _ => return Err(Error::Config(format!("unknown preset size '{size}': expected S, B, L or XL"))),
        };
        let patch_size = match patch {
            "2" => 2,
            "4" => 4,
            "8" => 8,
            _ => return Err(Error::Config(format!("unknown preset patch '{patch}': expected 2, 4 or 8"))),
        };
        Ok(Self {
            input_size,
            in_channels,
            patch_size,
            hidden_size,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            num_classes,
            learn_sigma: true,
            class_dropout_prob: 0.1,
        })
    }

    pub fn out_channels(&self) -> usize {
        if self.learn_sigma { 2 * self.in_channels } else { self.in_channels }
    }
    pub fn grid(&self) -> usize {
        self.input_size / self.patch_size
    }
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BetaSchedule {
    Linear,
    Cosine,
}

/// Per-timestep weighting of the ε-loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LossWeighting {
    /// Plain DiT: every timestep counts the same.
    #[default]
    Uniform,
    /// Min-SNR-γ (Hang et al., 2023): `min(SNR_t, γ)/SNR_t`, which stops the many easy low-noise timesteps from
    /// dominating the gradient; reported to converge ~3× faster for diffusion transformers.
    MinSnr,
}

/// What the network's first C output channels predict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Prediction {
    /// ε, as DiT (needed to load DiT checkpoints).
    #[default]
    Epsilon,
    /// v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x0 (Salimans & Ho, 2022): well-conditioned at high noise, where ε-prediction
    /// must be exact to give a usable x̂0; converges much faster for small models and budgets.
    V,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiffusionConfig {
    pub num_timesteps: usize,
    pub schedule: BetaSchedule,
    #[serde(default)]
    pub prediction: Prediction,
    #[serde(default)]
    pub loss_weighting: LossWeighting,
    #[serde(default = "default_min_snr_gamma")]
    pub min_snr_gamma: f64,
}

fn default_min_snr_gamma() -> f64 {
    5.0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kernel {
    Cosine,
    Euclidean,
    Gaussian,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Distance {
    L1,
    Squared,
    Huber,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Pairs {
    /// `Â_ij = ẑ_i·ẑ_j`
    Within,
    /// `Â_ij = z_i·ẑ_j`
    Cross,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Weighting {
    Snr,
    Uniform,
    Cutoff,
}

/// The body of the discriminator's encoder, before the pooled features go through the projector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EncoderKind {
    /// Linear patch embedding and pre-norm transformer blocks (the DiT's own ops), mean-pooled.
    #[default]
    Transformer,
    /// `depth` stride-2 3×3 convolutions up to `width` channels, global mean pool.
    Conv,
    /// A frozen pretrained feature network ([`FeatureNet`]): only the projector learns, so the structure is compared
    /// in a feature space that already separates the data's classes.
    Features,
}

/// The frozen network of `encoder: features`: a built-in LeNet architecture and its weights. The weights are read
/// once, when the discriminator is created; a checkpoint keeps its own copy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeatureNet {
    pub arch: String,
    pub weights: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiscriminatorConfig {
    #[serde(default)]
    pub encoder: EncoderKind,
    /// With `encoder: features`, the frozen network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_net: Option<FeatureNet>,
    /// Divide every learned weight matrix by its largest singular value (Miyato et al. 2018), which bounds the
    /// encoder's Lipschitz constant: the discriminator cannot win by growing its weights.
    #[serde(default)]
    pub spectral_norm: bool,
    /// Add an embedding of each pair's timestep to the pooled features: the encoder may then judge x̂0 against
    /// what a reconstruction from that noise level can be (real z_i and ẑ_i both get t_i).
    #[serde(default)]
    pub time_conditioned: bool,
    pub patch_size: usize,
    pub width: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub proj_dim: usize,
    pub kernel: Kernel,
    /// Bandwidth of the Gaussian kernel.
    pub tau: f64,
    pub distance: Distance,
    pub huber_delta: f64,
    pub pairs: Pairs,
    pub weighting: Weighting,
    /// With `weighting = cutoff`, pairs count only where both timesteps are below this.
    pub t_max: usize,
    /// Discriminator updates per denoiser update.
    pub steps: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OptimConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, grad_clip: 0.0 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CoreConfig {
    pub seed: u64,
    pub model: ModelConfig,
    pub diffusion: DiffusionConfig,
    pub discriminator: DiscriminatorConfig,
    pub dit_optim: OptimConfig,
    pub disc_optim: OptimConfig,
    /// Name patterns (`*` matches any run of characters) of the DiT parameters the optimizer updates; the rest
    /// stay frozen. `["*"]`, the default, trains everything; fine-tuning can restrict it (see `PEFT_PATTERNS`).
    #[serde(default = "all_parameters")]
    pub trainable: Vec<String>,
    /// Arithmetic of the DiT's matrix products; not part of the model, so a run may change it on resume.
    #[serde(default)]
    pub precision: Precision,
}

/// `Bf16` is mixed precision as PyTorch's autocast does it: the DiT's linear layers multiply in bfloat16, while
/// the master weights, gradients, optimizer state, norms, softmax and losses stay in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    /// The dtype the DiT's matrix products run in.
    pub fn compute_dtype(self) -> candle_core::DType {
        match self {
            Precision::Fp32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }
}

fn all_parameters() -> Vec<String> {
    vec!["*".into()]
}

/// Parameter-efficient fine-tuning in the spirit of DiffFit (Xie et al. 2023): biases, the adaLN modulation
/// (which scales and shifts every norm), and the timestep and class embeddings.
pub const PEFT_PATTERNS: &[&str] = &["*.bias", "*adaLN_modulation*", "t_embedder.*", "y_embedder.*"];

/// Whether `name` matches a pattern where `*` stands for any run of characters (including none).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond { Ok(()) } else { Err(Error::Config(msg())) }
}

impl CoreConfig {
    pub fn from_json(json: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(json).map_err(|e| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        check(m.input_size > 0 && m.in_channels > 0, || "model.inputSize and model.inChannels must be positive".into())?;
        check(m.patch_size > 0 && m.input_size % m.patch_size == 0, || {
            format!("model.patchSize {} must divide model.inputSize {}", m.patch_size, m.input_size)
        })?;
        check(m.depth > 0 && m.hidden_size > 0, || "model.depth and model.hiddenSize must be positive".into())?;
        check(m.num_heads > 0 && m.hidden_size % m.num_heads == 0, || {
            format!("model.numHeads {} must divide model.hiddenSize {}", m.num_heads, m.hidden_size)
        })?;
        check(m.hidden_size % 4 == 0, || format!("model.hiddenSize {} must be a multiple of 4 (2-D sin-cos positions)", m.hidden_size))?;
        check(m.mlp_ratio > 0.0, || "model.mlpRatio must be positive".into())?;
        check((0.0..1.0).contains(&m.class_dropout_prob), || "model.classDropoutProb must be in [0, 1)".into())?;
        check(self.diffusion.num_timesteps >= 2, || "diffusion.numTimesteps must be at least 2".into())?;
        check(self.diffusion.min_snr_gamma > 0.0, || "diffusion.minSnrGamma must be positive".into())?;
        let d = &self.discriminator;
        if d.encoder == EncoderKind::Transformer {
            check(d.patch_size > 0 && m.input_size % d.patch_size == 0, || {
                format!("discriminator.patchSize {} must divide model.inputSize {}", d.patch_size, m.input_size)
            })?;
        }
        match (&d.feature_net, d.encoder) {
            (None, EncoderKind::Features) => {
                return Err(Error::Config("discriminator.encoder 'features' needs discriminator.featureNet (arch and weights)".into()))
            }
            (Some(f), EncoderKind::Features) => {
                let arch = crate::classifier::Arch::parse(&f.arch)?;
                let input = arch.lenet().map(|l| l.input);
                check(input == Some((m.in_channels, m.input_size, m.input_size)), || {
                    format!(
                        "discriminator.featureNet {} reads {:?} images, but the model's are {}×{}×{}; a feature \
                         discriminator needs a built-in LeNet for the model's images (lenet-mnist, lenet-emoji)",
                        f.arch, input, m.in_channels, m.input_size, m.input_size
                    )
                })?;
            }
            (Some(_), _) => {
                return Err(Error::Config("discriminator.featureNet is only read with discriminator.encoder 'features'".into()))
            }
            (None, _) => {}
        }
        check(d.width > 0 && d.depth > 0 && d.proj_dim > 0, || "discriminator width, depth and projDim must be positive".into())?;
        check(d.width % 4 == 0, || format!("discriminator.width {} must be a multiple of 4", d.width))?;
        check(d.num_heads > 0 && d.width % d.num_heads == 0, || {
            format!("discriminator.numHeads {} must divide discriminator.width {}", d.num_heads, d.width)
        })?;
        check(d.tau > 0.0, || "discriminator.tau must be positive".into())?;
        check(d.huber_delta > 0.0, || "discriminator.huberDelta must be positive".into())?;
        check(d.steps >= 1, || "discriminator.steps must be at least 1".into())?;
        check(d.t_max >= 1 && d.t_max <= self.diffusion.num_timesteps, || {
            format!("discriminator.tMax must be in [1, {}]", self.diffusion.num_timesteps)
        })?;
        check(!self.trainable.is_empty(), || "trainable must list at least one parameter pattern (\"*\" = all)".into())?;
        for (name, o) in [("ditOptim", &self.dit_optim), ("discOptim", &self.disc_optim)] {
            check((0.0..1.0).contains(&o.beta1) && (0.0..1.0).contains(&o.beta2), || format!("{name}.beta1/beta2 must be in [0, 1)"))?;
            check(o.eps > 0.0 && o.weight_decay >= 0.0 && o.grad_clip >= 0.0, || {
                format!("{name}: eps must be positive, weightDecay and gradClip non-negative")
            })?;
        }
        Ok(())
    }

    /// A small config for tests and the MNIST default.
    pub fn tiny_mnist() -> Self {
        Self {
            seed: 0,
            model: ModelConfig {
                input_size: 28,
                in_channels: 1,
                patch_size: 4,
                hidden_size: 64,
                depth: 2,
                num_heads: 4,
                mlp_ratio: 4.0,
                num_classes: 10,
                learn_sigma: true,
                class_dropout_prob: 0.1,
            },
            diffusion: DiffusionConfig {
                num_timesteps: 1000,
                schedule: BetaSchedule::Linear,
                prediction: Prediction::Epsilon,
                loss_weighting: LossWeighting::Uniform,
                min_snr_gamma: 5.0,
            },
            discriminator: DiscriminatorConfig {
                encoder: EncoderKind::Transformer,
                feature_net: None,
                spectral_norm: false,
                time_conditioned: false,
                patch_size: 4,
                width: 64,
                depth: 2,
                num_heads: 4,
                proj_dim: 32,
                kernel: Kernel::Cosine,
                tau: 1.0,
                distance: Distance::L1,
                huber_delta: 0.1,
                pairs: Pairs::Within,
                weighting: Weighting::Snr,
                t_max: 1000,
                steps: 1,
            },
            dit_optim: OptimConfig::default(),
            disc_optim: OptimConfig::default(),
            trainable: all_parameters(),
            precision: Precision::Fp32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_presets() {
        let xl = ModelConfig::preset("DiT-XL/2", 32, 4, 1000).unwrap();
        assert_eq!((xl.depth, xl.hidden_size, xl.num_heads, xl.patch_size), (28, 1152, 16, 2));
        assert!(xl.learn_sigma);
        assert_eq!(xl.out_channels(), 8);
        let s = ModelConfig::preset("S/8", 32, 4, 1000).unwrap();
        assert_eq!((s.depth, s.hidden_size, s.num_heads, s.patch_size, s.grid()), (12, 384, 6, 8, 4));
        assert!(ModelConfig::preset("DiT-M/2", 32, 4, 10).unwrap_err().to_string().contains("unknown preset size 'M'"));
        assert!(ModelConfig::preset("DiT-S/3", 32, 4, 10).unwrap_err().to_string().contains("patch '3'"));
    }

    #[test]
    fn glob_patterns() {
        for (p, n, want) in [
            ("*", "blocks.0.attn.qkv.weight", true),
            ("*.bias", "blocks.0.attn.qkv.bias", true),
            ("*.bias", "blocks.0.attn.qkv.weight", false),
            ("*adaLN_modulation*", "final_layer.adaLN_modulation.1.weight", true),
            ("t_embedder.*", "t_embedder.mlp.0.weight", true),
            ("t_embedder.*", "y_embedder.embedding_table.weight", false),
            ("blocks.*.mlp.*.bias", "blocks.3.mlp.fc2.bias", true),
            ("a*a", "a", false),
            ("x_embedder.proj.weight", "x_embedder.proj.weight", true),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} ~ {n}");
        }
        // Configs saved before `trainable` existed still load, training everything.
        let mut v = serde_json::to_value(CoreConfig::tiny_mnist()).unwrap();
        v.as_object_mut().unwrap().remove("trainable");
        assert_eq!(CoreConfig::from_json(&v.to_string()).unwrap().trainable, vec!["*"]);
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = CoreConfig::tiny_mnist();
        c.model.num_heads = 3;
        assert!(c.validate().unwrap_err().to_string().contains("model.numHeads 3 must divide model.hiddenSize 64"));
        let mut c = CoreConfig::tiny_mnist();
        c.discriminator.patch_size = 5;
        assert!(c.validate().unwrap_err().to_string().contains("discriminator.patchSize 5"));
        let json = serde_json::to_string(&CoreConfig::tiny_mnist()).unwrap().replace("\"seed\":0", "\"seed\":0,\"sede\":1");
        assert!(CoreConfig::from_json(&json).unwrap_err().to_string().contains("unknown field `sede`"));
    }
}
