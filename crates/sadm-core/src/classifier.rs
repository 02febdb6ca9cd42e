//! Feature extractors for the sample-quality metrics (FD, KID, precision/recall, classifier accuracy).
//!
//! An extractor is "a named architecture + a safetensors file". Two are known:
//! - `lenet-mnist`, built in: a LeNet-like MNIST classifier that sadm trains itself ([`train_lenet`]); its 128-d
//!   penultimate activations (before the ReLU, which keeps them closer to Gaussian) play the role Inception's pool
//!   features play for FID, and its predictions give the class accuracy of conditional samples.
//! - `lenet-emoji`, built in: the same network on 32×32 RGB images of the emoji set's 10 categories (`--data
//!   emoji`), for the RGB presets, where Inception's weights cannot be shipped.
//! - `inception-v3-fid`, the network behind published FIDs ([`InceptionV3`]), for users who have its weights.
use crate::io::checkpoint::{check_shapes, expected, load_tensors, save_tensors};
use crate::error::{Error, Result};
pub use crate::inception::InceptionV3;
use crate::nn::{init_vars, linear, sorted_vars, Init, Linear};
use crate::optim::AdamW;
use crate::rng::Rng;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder, VarMap};
use std::collections::HashMap;
use std::path::Path;

/// The architectures an extractor file can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// [`LeNet`] on 28×28 grey images in [-1, 1], 10 classes, 128-d features.
    LeNetMnist,
    /// [`LeNet`] on 32×32 RGB images in [-1, 1], the emoji set's 10 categories, 128-d features.
    LeNetEmoji,
    /// [`InceptionV3`] (FID variant) on grey or RGB images of any size, 2048-d features, no classes.
    InceptionV3Fid,
}

impl Arch {
    pub const NAMES: &'static [&'static str] = &["lenet-mnist", "lenet-emoji", "inception-v3-fid"];

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "lenet-mnist" => Ok(Self::LeNetMnist),
            "lenet-emoji" => Ok(Self::LeNetEmoji),
            "inception-v3-fid" => Ok(Self::InceptionV3Fid),
            _ => Err(Error::Input(format!(
                "unknown feature-extractor architecture '{name}' (known: {})",
                Self::NAMES.join(", ")
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::LeNetMnist => "lenet-mnist",
            Self::LeNetEmoji => "lenet-emoji",
            Self::InceptionV3Fid => "inception-v3-fid",
        }
    }

    /// The LeNet's input and classes, for the LeNet architectures.
    pub fn lenet(self) -> Option<LeNetSpec> {
        match self {
            Self::LeNetMnist => Some(LeNetSpec { input: (1, 28, 28), classes: 10 }),
            Self::LeNetEmoji => Some(LeNetSpec { input: (3, 32, 32), classes: 10 }),
            Self::InceptionV3Fid => None,
        }
    }

    pub fn feature_dim(self) -> usize {
        match self {
            Self::LeNetMnist | Self::LeNetEmoji => LeNet::FEATURES,
            Self::InceptionV3Fid => InceptionV3::FEATURES,
        }
    }

    /// Classes the extractor predicts; 0 when it only gives features.
    pub fn num_classes(self) -> usize {
        match self {
            Self::LeNetMnist | Self::LeNetEmoji => self.lenet().map_or(0, |l| l.classes),
            Self::InceptionV3Fid => 0,
        }
    }

    /// Checks that images of shape channels×height×width are something this architecture reads.
    pub fn check_input(self, (c, h, w): (usize, usize, usize)) -> Result<()> {
        let ok = match self {
            Self::LeNetMnist | Self::LeNetEmoji => self.lenet().is_some_and(|l| l.input == (c, h, w)),
            Self::InceptionV3Fid => (c == 1 || c == 3) && h > 0 && w > 0,
        };
        if ok {
            return Ok(());
        }
        let wants = match self {
            Self::LeNetMnist => "28×28 grey (1×28×28) images, i.e. MNIST",
            Self::LeNetEmoji => "32×32 RGB (3×32×32) images, i.e. the emoji set at --resolution 32",
            Self::InceptionV3Fid => "grey or RGB images (1 or 3 channels) of any size",
        };
        Err(Error::Input(format!(
            "feature extractor {} reads {wants}, not {c}×{h}×{w}; choose an extractor for these images \
             (eval.extractor.arch: {})",
            self.name(),
            Self::NAMES.join(", ")
        )))
    }

    /// Images per forward pass: bounds the im2col buffers (Inception's first convolutions take ~25 MB per image).
    fn batch(self) -> usize {
        match self {
            Self::LeNetMnist | Self::LeNetEmoji => 500,
            Self::InceptionV3Fid => 8,
        }
    }

    /// Tensors a weight file of this architecture may hold besides the ones the features need: the classifier head,
    /// the auxiliary head and BatchNorm's counters of a torchvision/pytorch-fid state dict.
    fn unused(self, name: &str) -> bool {
        match self {
            Self::LeNetMnist | Self::LeNetEmoji => false,
            Self::InceptionV3Fid => {
                name.starts_with("fc.") || name.starts_with("AuxLogits.") || name.ends_with(".num_batches_tracked")
            }
        }
    }
}

/// A LeNet's input (channels, height, width; sides divisible by 4) and class count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeNetSpec {
    pub input: (usize, usize, usize),
    pub classes: usize,
}

/// conv5×5(32) → ReLU → max-pool 2 → conv5×5(64) → ReLU → max-pool 2 → fc(128) → ReLU → fc(classes).
pub struct LeNet {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl LeNet {
    /// The MNIST LeNet's input.
    pub const INPUT: (usize, usize, usize) = (1, 28, 28);
    pub const FEATURES: usize = 128;

    pub fn new(spec: LeNetSpec, vb: VarBuilder) -> Result<Self> {
        let same = Conv2dConfig { padding: 2, ..Default::default() };
        let (c, h, w) = spec.input;
        Ok(Self {
            conv1: candle_nn::conv2d(c, 32, 5, same, vb.pp("conv1"))?,
            conv2: candle_nn::conv2d(32, 64, 5, same, vb.pp("conv2"))?,
            fc1: linear(64 * (h / 4) * (w / 4), Self::FEATURES, vb.pp("fc1"))?,
            fc2: linear(Self::FEATURES, spec.classes, vb.pp("fc2"))?,
        })
    }

    /// (features before the last ReLU, logits) for a batch of N×C×H×W images.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let features = self.features(x)?;
        let logits = self.fc2.forward(&features.relu()?)?;
        Ok((features, logits))
    }

    /// The 128-d features alone (what FD compares, and what a feature-space discriminator reads).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let h = crate::ops::max_pool2d(&self.conv1.forward(x)?.relu()?, 2)?;
        let h = crate::ops::max_pool2d(&self.conv2.forward(&h)?.relu()?, 2)?;
        Ok(self.fc1.forward(&h.flatten_from(1)?)?)
    }
}

fn lenet_init(name: &str) -> Init {
    if name.ends_with(".bias") { Init::Zeros } else { Init::XavierUniform }
}

/// Options of [`train_lenet`].
#[derive(Clone, Debug)]
pub struct LeNetTraining {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

impl Default for LeNetTraining {
    fn default() -> Self {
        Self { epochs: 4, batch_size: 64, lr: 1e-3, seed: 0 }
    }
}

fn check_images(spec: LeNetSpec, images: &[f32], labels: &[i32], what: &str) -> Result<usize> {
    let (c, h, w) = spec.input;
    let n = labels.len();
    if n == 0 || images.len() != n * c * h * w {
        return Err(Error::Input(format!(
            "{what}: {} values for {n} labels; expected {n}×{c}×{h}×{w}",
            images.len()
        )));
    }
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l < 0 || l as usize >= spec.classes) {
        return Err(Error::Input(format!("{what}: label {l} at index {i} is outside [0, {})", spec.classes)));
    }
    Ok(n)
}

/// Trains a LeNet extractor (`arch` is `lenet-mnist` or `lenet-emoji`) with AdamW and cross-entropy; seeded
/// initialisation and data order. `on_epoch(epoch, mean_loss)` is called after each epoch. Returns the weights by
/// name.
pub fn train_lenet(
    arch: Arch,
    images: &[f32],
    labels: &[i32],
    opts: &LeNetTraining,
    device: &Device,
    mut on_epoch: impl FnMut(usize, f64),
) -> Result<HashMap<String, Tensor>> {
    let spec = arch.lenet().ok_or_else(|| Error::Input(format!("{} is not trained by sadm: only the LeNets are", arch.name())))?;
    let n = check_images(spec, images, labels, "classifier training data")?;
    if opts.batch_size == 0 || opts.batch_size > n || opts.epochs == 0 {
        return Err(Error::Input(format!(
            "classifier training: need 1 ≤ batch size ≤ {n} images and at least one epoch (got batch {}, {} epochs)",
            opts.batch_size, opts.epochs
        )));
    }
    // The TS API's range (ts/evaluate.ts): a NaN or negative rate would train the extractor into NaN.
    if !(opts.lr > 0.0 && opts.lr < 1.0) {
        return Err(Error::Input(format!(
            "trainClassifier: lr must be a finite number greater than 0 and less than 1 (got {})",
            crate::error::js_number(opts.lr)
        )));
    }
    if let Some(i) = images.iter().position(|v| !v.is_finite()) {
        return Err(Error::Input(format!("classifier training data: value at index {i} is not finite")));
    }
    let varmap = VarMap::new();
    let net = LeNet::new(spec, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let mut rng = Rng::derive(opts.seed, 0);
    init_vars(&varmap, &mut rng, lenet_init)?;
    let vars = sorted_vars(&varmap);
    let mut opt = AdamW::new(vars.clone(), Default::default())?;
    let per = images.len() / n;
    let (c, h, w) = spec.input;
    for epoch in 0..opts.epochs {
        // Fisher–Yates from our stream, so the order is reproducible.
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.below(i as u32 + 1) as usize);
        }
        let (mut sum, mut count) = (0f64, 0usize);
        for batch in order.chunks_exact(opts.batch_size) {
            let x: Vec<f32> = batch.iter().flat_map(|&i| images[i * per..(i + 1) * per].iter().copied()).collect();
            let y: Vec<u32> = batch.iter().map(|&i| labels[i] as u32).collect();
            let x = Tensor::from_vec(x, (batch.len(), c, h, w), device)?;
            let y = Tensor::new(y, device)?;
            let (_, logits) = net.forward(&x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let grads = loss.backward()?;
            opt.step(&grads, opts.lr, 1.0)?;
            sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            count += 1;
        }
        on_epoch(epoch + 1, sum / count as f64);
    }
    Ok(vars.into_iter().map(|(name, v)| (name, v.as_tensor().detach())).collect())
}

/// The tensors of `arch` in a weight file (cast to f32 on `device`), after checking that every one the network
/// needs is there with its shape and that nothing else is (bar the [`Arch::unused`] ones).
pub fn checked_tensors(arch: Arch, tensors: &HashMap<String, Tensor>, source: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let used: HashMap<String, Tensor> =
        tensors.iter().filter(|(k, _)| !arch.unused(k)).map(|(k, t)| (k.clone(), t.clone())).collect();
    // The expected names and shapes are those the network asks for when built on placeholder variables.
    let varmap = VarMap::new();
    Net::new(arch, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    check_shapes(source, &expected(&sorted_vars(&varmap)), &used, &[])?;
    used.into_iter().map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.to_device(device)?))).collect()
}

enum Net {
    LeNet(LeNet),
    Inception(InceptionV3),
}

impl Net {
    fn new(arch: Arch, vb: VarBuilder) -> Result<Self> {
        Ok(match arch {
            Arch::LeNetMnist | Arch::LeNetEmoji => Self::LeNet(LeNet::new(arch.lenet().expect("a LeNet"), vb)?),
            Arch::InceptionV3Fid => Self::Inception(InceptionV3::new(vb)?),
        })
    }
}

/// A loaded feature extractor.
pub struct Extractor {
    arch: Arch,
    net: Net,
    device: Device,
}

/// What an extractor computes for a set of images.
pub struct Extracted {
    /// n × feature_dim, row-major.
    pub features: Vec<f32>,
    /// The arg-max class of each image; empty for an extractor without classes.
    pub predictions: Vec<i32>,
}

impl Extractor {
    /// Builds `arch` from weights by name, naming the first missing or mis-shaped tensor.
    pub fn from_tensors(arch: Arch, tensors: &HashMap<String, Tensor>, source: &Path, device: &Device) -> Result<Self> {
        let cast = checked_tensors(arch, tensors, source, device)?;
        let net = Net::new(arch, VarBuilder::from_tensors(cast, DType::F32, device))?;
        Ok(Self { arch, net, device: device.clone() })
    }

    /// Loads `arch` from a safetensors file.
    pub fn load(arch: &str, path: &Path, device: &Device) -> Result<Self> {
        let arch = Arch::parse(arch)?;
        Self::from_tensors(arch, &load_tensors(path, device)?, path, device)
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }
    pub fn feature_dim(&self) -> usize {
        self.arch.feature_dim()
    }
    pub fn num_classes(&self) -> usize {
        self.arch.num_classes()
    }

    /// Features (and, for a classifier, predicted classes) of n images of shape `shape` = (channels, height,
    /// width), given as n·C·H·W floats in [-1, 1]; in batches to bound memory.
    pub fn run(&self, images: &[f32], shape: (usize, usize, usize)) -> Result<Extracted> {
        self.arch.check_input(shape)?;
        let (c, h, w) = shape;
        let per = c * h * w;
        if images.is_empty() || images.len() % per != 0 {
            return Err(Error::Input(format!(
                "{} image values are not a whole number of {c}×{h}×{w} images",
                images.len(),
            )));
        }
        if let Some(i) = images.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!("image value at index {i} is not finite")));
        }
        let n = images.len() / per;
        let mut out = Extracted { features: Vec::with_capacity(n * self.feature_dim()), predictions: Vec::with_capacity(n) };
        for chunk in images.chunks(self.arch.batch() * per) {
            let x = Tensor::from_slice(chunk, (chunk.len() / per, c, h, w), &self.device)?;
            let features = match &self.net {
                Net::LeNet(net) => {
                    let (f, logits) = net.forward(&x)?;
                    let p = logits.argmax(D::Minus1)?.to_device(&Device::Cpu)?.to_vec1::<u32>()?;
                    out.predictions.extend(p.iter().map(|&p| p as i32));
                    f
                }
                Net::Inception(net) => net.forward(&x)?,
            };
            out.features.extend(features.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

/// Writes extractor weights as safetensors, atomically (temporary file, sync, rename).
pub fn save_weights(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    save_tensors(&tmp, tensors)?;
    // A file meant for sharing (the package ships one): readable by all, as a plain create would make it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("cannot move {} into place", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two synthetic "digit" classes: a bright left half or a bright right half, with noise.
    fn halves(n: usize, seed: u64) -> (Vec<f32>, Vec<i32>) {
        let mut rng = Rng::new(seed);
        let mut x = Vec::with_capacity(n * 784);
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let label = (i % 2) as i32;
            for _r in 0..28 {
                for col in 0..28 {
                    let on = (col < 14) == (label == 0);
                    x.push(if on { 0.8 } else { -0.8 } + 0.3 * rng.normal_vec(1)[0]);
                }
            }
            y.push(label);
        }
        (x, y)
    }

    #[test]
    fn lenet_learns_a_separable_task_and_round_trips() -> Result<()> {
        let (x, y) = halves(256, 1);
        let opts = LeNetTraining { epochs: 2, batch_size: 32, lr: 1e-3, seed: 3 };
        let mut losses = vec![];
        let w = train_lenet(Arch::LeNetMnist, &x, &y, &opts, &Device::Cpu, |_, l| losses.push(l))?;
        assert!(losses[1] < losses[0], "loss did not fall: {losses:?}");
        let dir = std::env::temp_dir().join(format!("sadm-lenet-{}", std::process::id()));
        let path = dir.join("lenet.safetensors");
        save_weights(&w, &path)?;
        let ex = Extractor::load("lenet-mnist", &path, &Device::Cpu)?;
        let (tx, ty) = halves(64, 2);
        let out = ex.run(&tx, LeNet::INPUT)?;
        assert_eq!(out.features.len(), 64 * LeNet::FEATURES);
        let correct = out.predictions.iter().zip(&ty).filter(|(p, t)| p == t).count();
        assert!(correct >= 60, "held-out accuracy {correct}/64");
        // Same seed, same weights.
        let w2 = train_lenet(Arch::LeNetMnist, &x, &y, &opts, &Device::Cpu, |_, _| {})?;
        let a = w["fc2.weight"].flatten_all()?.to_vec1::<f32>()?;
        let b = w2["fc2.weight"].flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a, b);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// The RGB LeNet tells colours apart on 32×32 images (what the emoji categories' look partly is).
    #[test]
    fn the_emoji_lenet_learns_colour_on_32_pixel_rgb() -> Result<()> {
        let mut rng = Rng::new(4);
        let mut x = vec![];
        let mut y = vec![];
        for i in 0..192 {
            let label = (i % 3) as i32;
            for ch in 0..3 {
                for _ in 0..32 * 32 {
                    x.push(if ch == label as usize { 0.6 } else { -0.6 } + 0.4 * rng.normal_vec(1)[0]);
                }
            }
            y.push(label);
        }
        let opts = LeNetTraining { epochs: 2, batch_size: 32, lr: 1e-3, seed: 1 };
        let w = train_lenet(Arch::LeNetEmoji, &x, &y, &opts, &Device::Cpu, |_, _| {})?;
        assert_eq!(w["fc1.weight"].dims(), &[128, 64 * 8 * 8]);
        let ex = Extractor::from_tensors(Arch::LeNetEmoji, &w, Path::new("w"), &Device::Cpu)?;
        let out = ex.run(&x[..48 * 3072], (3, 32, 32))?;
        assert_eq!(out.features.len(), 48 * 128);
        let correct = out.predictions.iter().zip(&y).filter(|(p, t)| p == t).count();
        assert!(correct >= 45, "{correct}/48");
        assert!(ex.run(&x[..784], (1, 28, 28)).err().unwrap().to_string().contains("reads 32×32 RGB"));
        assert!(train_lenet(Arch::InceptionV3Fid, &x, &y, &opts, &Device::Cpu, |_, _| {}).is_err());
        Ok(())
    }

    #[test]
    fn bad_inputs_are_named() {
        let dir = std::env::temp_dir().join(format!("sadm-lenet-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Extractor::load("inception", &dir.join("x"), &Device::Cpu).err().unwrap().to_string().contains("unknown feature-extractor"));
        assert!(Extractor::load("lenet-mnist", &dir.join("x"), &Device::Cpu).err().unwrap().to_string().contains("missing"));
        // Weights of another shape.
        let mut w = HashMap::new();
        w.insert("conv1.weight".to_string(), Tensor::zeros((8, 1, 5, 5), DType::F32, &Device::Cpu).unwrap());
        let e = Extractor::from_tensors(Arch::LeNetMnist, &w, Path::new("w"), &Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("conv1.bias") || e.contains("conv1.weight"), "{e}");
        let (x, _) = halves(2, 0);
        let ok = train_lenet(Arch::LeNetMnist, &x, &[0, 1], &LeNetTraining { epochs: 1, batch_size: 2, ..Default::default() }, &Device::Cpu, |_, _| {}).unwrap();
        let ex = Extractor::from_tensors(Arch::LeNetMnist, &ok, Path::new("w"), &Device::Cpu).unwrap();
        assert!(ex.run(&x[..100], LeNet::INPUT).err().unwrap().to_string().contains("whole number"));
        assert!(ex.run(&x, (3, 28, 28)).err().unwrap().to_string().contains("not 3×28×28"));
        assert!(train_lenet(Arch::LeNetMnist, &x, &[0, 10], &Default::default(), &Device::Cpu, |_, _| {}).err().unwrap().to_string().contains("label 10"));
        let two = LeNetTraining { epochs: 1, batch_size: 2, ..Default::default() };
        for (lr, got) in [(f64::NAN, "NaN"), (1.0, "1"), (0.0, "0"), (-1e-3, "-0.001")] {
            let e = train_lenet(Arch::LeNetMnist, &x, &[0, 1], &LeNetTraining { lr, ..two }, &Device::Cpu, |_, _| {}).err().unwrap().to_string();
            assert!(e.ends_with(&format!("trainClassifier: lr must be a finite number greater than 0 and less than 1 (got {got})")), "{e}");
        }
        let mut nan = x.clone();
        nan[900] = f32::NAN;
        let e = train_lenet(Arch::LeNetMnist, &nan, &[0, 1], &two, &Device::Cpu, |_, _| {}).err().unwrap().to_string();
        assert!(e.contains("value at index 900 is not finite"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
