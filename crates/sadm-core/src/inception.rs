//! The Inception-v3 of FID (Heusel et al. 2017), as pytorch-fid ports TensorFlow's 2015 graph: its 2048-d
//! final average-pool features are what every published FID is computed on. Parameter names are those of
//! pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (torchvision's `Inception3` names, e.g.
//! `Mixed_5b.branch1x1.conv.weight`), so a user's copy of those weights loads after a plain conversion to
//! safetensors. The FID variant pools differently from torchvision's, and both differences are kept here: its average
//! pools skip the zero padding (TensorFlow's behaviour), and its last block max-pools its pool branch.
use crate::error::Result;
use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

/// TensorFlow's BatchNorm epsilon, as ported.
const BN_EPS: f64 = 1e-3;

/// conv (no bias) → BatchNorm (running statistics) → ReLU. The BatchNorm is folded into the convolution when the
/// weights load: inference only, and one op fewer per layer.
struct BasicConv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    /// (rows, columns) of zero padding; candle's conv pads both axes alike, so uneven ones pad explicitly.
    padding: (usize, usize),
}

impl BasicConv2d {
    fn new(cin: usize, cout: usize, kernel: (usize, usize), stride: usize, padding: (usize, usize), vb: VarBuilder) -> Result<Self> {
        let w = vb.get((cout, cin, kernel.0, kernel.1), "conv.weight")?;
        let bn = vb.pp("bn");
        let gamma = bn.get(cout, "weight")?;
        let beta = bn.get(cout, "bias")?;
        let mean = bn.get(cout, "running_mean")?;
        let var = bn.get(cout, "running_var")?;
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        Ok(Self {
            weight: w.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?,
            bias: (beta - (mean * &scale)?)?.reshape((1, cout, 1, 1))?,
            stride,
            padding,
        })
    }

    fn square(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(cin, cout, (k, k), stride, (pad, pad), vb)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (ph, pw) = self.padding;
        let y = if ph == pw {
            x.conv2d(&self.weight, ph, self.stride, 1, 1)?
        } else {
            x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?.conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        Ok(y.broadcast_add(&self.bias)?.relu()?)
    }
}

/// 3×3 average pool, stride 1, padding 1, dividing by the number of real (unpadded) pixels in each window.
fn avg_pool_3x3_valid(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let sums = (x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?.avg_pool2d_with_stride(3, 1)? * 9.0)?;
    let span = |i: usize, n: usize| 3 - usize::from(i == 0) - usize::from(i + 1 == n);
    let inv: Vec<f32> = (0..h).flat_map(|i| (0..w).map(move |j| 1.0 / (span(i, h) * span(j, w)) as f32)).collect();
    Ok(sums.broadcast_mul(&Tensor::from_vec(inv, (1, 1, h, w), x.device())?)?)
}

/// 3×3 max pool, stride 1, padding 1. Zero padding equals PyTorch's -∞ padding here because the input is a
/// concatenation of ReLU outputs (≥ 0) and every window holds its centre pixel.
fn max_pool_3x3_same_nonneg(x: &Tensor) -> Result<Tensor> {
    Ok(x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?.max_pool2d_with_stride(3, 1)?)
}

/// 35×35 block (Mixed_5b–5d).
struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5_1: BasicConv2d,
    branch5x5_2: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionA {
    fn new(cin: usize, pool_features: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            branch1x1: BasicConv2d::square(cin, 64, 1, 1, 0, vb.pp("branch1x1"))?,
            branch5x5_1: BasicConv2d::square(cin, 48, 1, 1, 0, vb.pp("branch5x5_1"))?,
            branch5x5_2: BasicConv2d::square(48, 64, 5, 1, 2, vb.pp("branch5x5_2"))?,
            branch3x3dbl_1: BasicConv2d::square(cin, 64, 1, 1, 0, vb.pp("branch3x3dbl_1"))?,
            branch3x3dbl_2: BasicConv2d::square(64, 96, 3, 1, 1, vb.pp("branch3x3dbl_2"))?,
            branch3x3dbl_3: BasicConv2d::square(96, 96, 3, 1, 1, vb.pp("branch3x3dbl_3"))?,
            branch_pool: BasicConv2d::square(cin, pool_features, 1, 1, 0, vb.pp("branch_pool"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b1 = self.branch1x1.forward(x)?;
        let b5 = self.branch5x5_2.forward(&self.branch5x5_1.forward(x)?)?;
        let b3 = self.branch3x3dbl_1.forward(x)?;
        let b3 = self.branch3x3dbl_3.forward(&self.branch3x3dbl_2.forward(&b3)?)?;
        let bp = self.branch_pool.forward(&avg_pool_3x3_valid(x)?)?;
        Ok(Tensor::cat(&[b1, b5, b3, bp], 1)?)
    }
}

/// 35×35 → 17×17 reduction (Mixed_6a).
struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn new(cin: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            branch3x3: BasicConv2d::square(cin, 384, 3, 2, 0, vb.pp("branch3x3"))?,
            branch3x3dbl_1: BasicConv2d::square(cin, 64, 1, 1, 0, vb.pp("branch3x3dbl_1"))?,
            branch3x3dbl_2: BasicConv2d::square(64, 96, 3, 1, 1, vb.pp("branch3x3dbl_2"))?,
            branch3x3dbl_3: BasicConv2d::square(96, 96, 3, 2, 0, vb.pp("branch3x3dbl_3"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b3 = self.branch3x3.forward(x)?;
        let bd = self.branch3x3dbl_1.forward(x)?;
        let bd = self.branch3x3dbl_3.forward(&self.branch3x3dbl_2.forward(&bd)?)?;
        let bp = x.max_pool2d_with_stride(3, 2)?;
        Ok(Tensor::cat(&[b3, bd, bp], 1)?)
    }
}

/// 17×17 block with factorised 7×7 convolutions (Mixed_6b–6e).
struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7: [BasicConv2d; 3],
    branch7x7dbl: [BasicConv2d; 5],
    branch_pool: BasicConv2d,
}

impl InceptionC {
    fn new(cin: usize, c7: usize, vb: VarBuilder) -> Result<Self> {
        let row = |cin, cout, name: &str| BasicConv2d::new(cin, cout, (1, 7), 1, (0, 3), vb.pp(name));
        let col = |cin, cout, name: &str| BasicConv2d::new(cin, cout, (7, 1), 1, (3, 0), vb.pp(name));
        Ok(Self {
            branch1x1: BasicConv2d::square(cin, 192, 1, 1, 0, vb.pp("branch1x1"))?,
            branch7x7: [
                BasicConv2d::square(cin, c7, 1, 1, 0, vb.pp("branch7x7_1"))?,
                row(c7, c7, "branch7x7_2")?,
                col(c7, 192, "branch7x7_3")?,
            ],
            branch7x7dbl: [
                BasicConv2d::square(cin, c7, 1, 1, 0, vb.pp("branch7x7dbl_1"))?,
                col(c7, c7, "branch7x7dbl_2")?,
                row(c7, c7, "branch7x7dbl_3")?,
                col(c7, c7, "branch7x7dbl_4")?,
                row(c7, 192, "branch7x7dbl_5")?,
            ],
            branch_pool: BasicConv2d::square(cin, 192, 1, 1, 0, vb.pp("branch_pool"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let chain = |convs: &[BasicConv2d]| convs.iter().try_fold(x.clone(), |h, c| c.forward(&h));
        let b1 = self.branch1x1.forward(x)?;
        let b7 = chain(&self.branch7x7)?;
        let bd = chain(&self.branch7x7dbl)?;
        let bp = self.branch_pool.forward(&avg_pool_3x3_valid(x)?)?;
        Ok(Tensor::cat(&[b1, b7, bd, bp], 1)?)
    }
}

/// 17×17 → 8×8 reduction (Mixed_7a).
struct InceptionD {
    branch3x3: [BasicConv2d; 2],
    branch7x7x3: [BasicConv2d; 4],
}

impl InceptionD {
    fn new(cin: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            branch3x3: [
                BasicConv2d::square(cin, 192, 1, 1, 0, vb.pp("branch3x3_1"))?,
                BasicConv2d::square(192, 320, 3, 2, 0, vb.pp("branch3x3_2"))?,
            ],
            branch7x7x3: [
                BasicConv2d::square(cin, 192, 1, 1, 0, vb.pp("branch7x7x3_1"))?,
                BasicConv2d::new(192, 192, (1, 7), 1, (0, 3), vb.pp("branch7x7x3_2"))?,
                BasicConv2d::new(192, 192, (7, 1), 1, (3, 0), vb.pp("branch7x7x3_3"))?,
                BasicConv2d::square(192, 192, 3, 2, 0, vb.pp("branch7x7x3_4"))?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let chain = |convs: &[BasicConv2d]| convs.iter().try_fold(x.clone(), |h, c| c.forward(&h));
        let bp = x.max_pool2d_with_stride(3, 2)?;
        Ok(Tensor::cat(&[chain(&self.branch3x3)?, chain(&self.branch7x7x3)?, bp], 1)?)
    }
}

/// 8×8 block with expanded filter banks (Mixed_7b, Mixed_7c); the FID graph max-pools the pool branch of the last.
struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
    max_pool: bool,
}

impl InceptionE {
    fn new(cin: usize, max_pool: bool, vb: VarBuilder) -> Result<Self> {
        let row = |cin, name: &str| BasicConv2d::new(cin, 384, (1, 3), 1, (0, 1), vb.pp(name));
        let col = |cin, name: &str| BasicConv2d::new(cin, 384, (3, 1), 1, (1, 0), vb.pp(name));
        Ok(Self {
            branch1x1: BasicConv2d::square(cin, 320, 1, 1, 0, vb.pp("branch1x1"))?,
            branch3x3_1: BasicConv2d::square(cin, 384, 1, 1, 0, vb.pp("branch3x3_1"))?,
            branch3x3_2a: row(384, "branch3x3_2a")?,
            branch3x3_2b: col(384, "branch3x3_2b")?,
            branch3x3dbl_1: BasicConv2d::square(cin, 448, 1, 1, 0, vb.pp("branch3x3dbl_1"))?,
            branch3x3dbl_2: BasicConv2d::square(448, 384, 3, 1, 1, vb.pp("branch3x3dbl_2"))?,
            branch3x3dbl_3a: row(384, "branch3x3dbl_3a")?,
            branch3x3dbl_3b: col(384, "branch3x3dbl_3b")?,
            branch_pool: BasicConv2d::square(cin, 192, 1, 1, 0, vb.pp("branch_pool"))?,
            max_pool,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b1 = self.branch1x1.forward(x)?;
        let b3 = self.branch3x3_1.forward(x)?;
        let b3 = Tensor::cat(&[self.branch3x3_2a.forward(&b3)?, self.branch3x3_2b.forward(&b3)?], 1)?;
        let bd = self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(x)?)?;
        let bd = Tensor::cat(&[self.branch3x3dbl_3a.forward(&bd)?, self.branch3x3dbl_3b.forward(&bd)?], 1)?;
        let pooled = if self.max_pool { max_pool_3x3_same_nonneg(x)? } else { avg_pool_3x3_valid(x)? };
        let bp = self.branch_pool.forward(&pooled)?;
        Ok(Tensor::cat(&[b1, b3, bd, bp], 1)?)
    }
}

/// The FID Inception-v3 up to its final average pool.
pub struct InceptionV3 {
    stem: [BasicConv2d; 5],
    mixed_5: [InceptionA; 3],
    mixed_6a: InceptionB,
    mixed_6: [InceptionC; 4],
    mixed_7a: InceptionD,
    mixed_7b: InceptionE,
    mixed_7c: InceptionE,
}

impl InceptionV3 {
    /// The resolution the network was trained at; inputs are resized to it, as pytorch-fid does.
    pub const SIZE: usize = 299;
    pub const FEATURES: usize = 2048;

    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            stem: [
                BasicConv2d::square(3, 32, 3, 2, 0, vb.pp("Conv2d_1a_3x3"))?,
                BasicConv2d::square(32, 32, 3, 1, 0, vb.pp("Conv2d_2a_3x3"))?,
                BasicConv2d::square(32, 64, 3, 1, 1, vb.pp("Conv2d_2b_3x3"))?,
                BasicConv2d::square(64, 80, 1, 1, 0, vb.pp("Conv2d_3b_1x1"))?,
                BasicConv2d::square(80, 192, 3, 1, 0, vb.pp("Conv2d_4a_3x3"))?,
            ],
            mixed_5: [
                InceptionA::new(192, 32, vb.pp("Mixed_5b"))?,
                InceptionA::new(256, 64, vb.pp("Mixed_5c"))?,
                InceptionA::new(288, 64, vb.pp("Mixed_5d"))?,
            ],
            mixed_6a: InceptionB::new(288, vb.pp("Mixed_6a"))?,
            mixed_6: [
                InceptionC::new(768, 128, vb.pp("Mixed_6b"))?,
                InceptionC::new(768, 160, vb.pp("Mixed_6c"))?,
                InceptionC::new(768, 160, vb.pp("Mixed_6d"))?,
                InceptionC::new(768, 192, vb.pp("Mixed_6e"))?,
            ],
            mixed_7a: InceptionD::new(768, vb.pp("Mixed_7a"))?,
            mixed_7b: InceptionE::new(1280, false, vb.pp("Mixed_7b"))?,
            mixed_7c: InceptionE::new(2048, true, vb.pp("Mixed_7c"))?,
        })
    }

    /// N×2048 pool features of N×C×H×W images in [-1, 1], C = 1 (repeated to RGB) or 3, any H×W (bilinearly
    /// resized to 299×299 without corner alignment, as pytorch-fid does).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let x = if c == 1 { x.broadcast_as((n, 3, h, w))?.contiguous()? } else { x.clone() };
        let x = if (h, w) == (Self::SIZE, Self::SIZE) { x } else { x.upsample_bilinear2d(Self::SIZE, Self::SIZE, false)? };
        let [c1a, c2a, c2b, c3b, c4a] = &self.stem;
        let x = c2b.forward(&c2a.forward(&c1a.forward(&x)?)?)?.max_pool2d_with_stride(3, 2)?;
        let mut x = c4a.forward(&c3b.forward(&x)?)?.max_pool2d_with_stride(3, 2)?;
        for block in &self.mixed_5 {
            x = block.forward(&x)?;
        }
        x = self.mixed_6a.forward(&x)?;
        for block in &self.mixed_6 {
            x = block.forward(&x)?;
        }
        let x = self.mixed_7c.forward(&self.mixed_7b.forward(&self.mixed_7a.forward(&x)?)?)?;
        Ok(x.flatten_from(2)?.mean(D::Minus1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::checkpoint::load_tensors;
    use crate::classifier::{Arch, Extractor};
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use std::collections::HashMap;
    use std::path::Path;

    // The deterministic weights and images of testdata/inception_fid_reference.py, regenerated bit for bit.
    fn fnv1a64(name: &str) -> u64 {
        name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3))
    }

    fn uniform(name: &str, n: usize) -> impl Iterator<Item = f64> {
        let base = fnv1a64(name);
        (0..n as u64).map(move |i| {
            let mut z = base.wrapping_add(i).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 * 2f64.powi(-53)
        })
    }

    fn synthetic(name: &str, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = if name.ends_with("bn.weight") || name.ends_with("running_var") {
            uniform(name, n).map(|u| (0.5 + u) as f32).collect()
        } else if name.ends_with("bn.bias") || name.ends_with("running_mean") || name == "fc.bias" {
            uniform(name, n).map(|u| (0.2 * (2.0 * u - 1.0)) as f32).collect()
        } else {
            let bound = (6.0 / (n / shape[0]) as f64).sqrt();
            uniform(name, n).map(|u| ((2.0 * u - 1.0) * bound) as f32).collect()
        };
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn images(name: &str, n: usize) -> Vec<f32> {
        uniform(name, n).map(|u| (2.0 * u - 1.0) as f32).collect()
    }

    /// The weights of the reference, plus the tensors of a pytorch-fid state dict the features do not use.
    fn reference_weights() -> HashMap<String, Tensor> {
        let varmap = VarMap::new();
        InceptionV3::new(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
        let mut w: HashMap<String, Tensor> =
            varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), synthetic(k, v.dims()))).collect();
        w.insert("fc.weight".into(), synthetic("fc.weight", &[1008, 2048]));
        w.insert("fc.bias".into(), synthetic("fc.bias", &[1008]));
        w.insert("Mixed_5b.branch1x1.bn.num_batches_tracked".into(), Tensor::new(0i64, &Device::Cpu).unwrap());
        w
    }

    #[test]
    fn matches_pytorch_fid_on_grey_upsampled_and_rgb_downsampled_images() -> Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let want = load_tensors(&dir.join("inception_fid_reference.safetensors"), &Device::Cpu)?;
        let ex = Extractor::from_tensors(Arch::InceptionV3Fid, &reference_weights(), Path::new("synthetic"), &Device::Cpu)?;
        for (key, shape) in [("grey", (2, 1, 28, 28)), ("rgb", (1, 3, 320, 360))] {
            let (n, c, h, w) = shape;
            let out = ex.run(&images(&format!("input_{key}"), n * c * h * w), (c, h, w))?;
            assert!(out.predictions.is_empty());
            let want = want[&format!("{key}_features")].flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(out.features.len(), want.len());
            let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
            let worst = out.features.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            eprintln!("{key}: max |Δ| {worst:.2e} of max |feature| {scale:.2}");
            assert!(worst <= 1e-4 * scale, "{key}: features differ from pytorch-fid's by up to {worst} (scale {scale})");
        }
        Ok(())
    }
}
