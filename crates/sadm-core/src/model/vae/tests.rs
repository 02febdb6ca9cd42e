//! Against diffusers' own `AutoencoderKL` (testdata/vae_reference.py): outputs of two small architectures with
//! deterministic weights, and the full SD-VAE's tensor names and shapes.
use super::weights::scheme_name;
use super::*;
use crate::io::checkpoint::load_tensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

// The weights of testdata/vae_reference.py, regenerated bit for bit: integers from splitmix64(FNV-1a(name) + index)
// scaled by powers of two, exact in f32.
fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3))
}

fn signed(name: &str, n: usize, bits: u32) -> Vec<f64> {
    let base = fnv1a64(name);
    (0..n as u64)
        .map(|i| {
            let mut z = base.wrapping_add(i).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> (64 - bits)) as f64 - 2f64.powi(bits as i32 - 1)
        })
        .collect()
}

fn synthetic(name: &str, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = if shape.len() == 1 && name.ends_with(".weight") {
        signed(name, n, 21).iter().map(|k| 1.0 + k * 2f64.powi(-23)).collect()
    } else if name.ends_with(".bias") {
        let mut v: Vec<f64> = signed(name, n, 24).iter().map(|k| k * 2f64.powi(-27)).collect();
        if name == "quant_conv.bias" {
            let half = shape[0] / 2;
            v[half + 1] += 24.0;
            v[half + 2] -= 36.0;
        }
        v
    } else {
        let fan_in = n / shape[0];
        let s = (0..).find(|s| 3 * 4usize.pow(*s) >= fan_in).unwrap() as i32;
        signed(name, n, 24).iter().map(|k| k * 2f64.powi(-(23 + s))).collect()
    };
    Tensor::from_vec(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
}

fn weights(cfg: &VaeConfig) -> HashMap<String, Tensor> {
    parameter_shapes(cfg).unwrap().into_iter().map(|(n, s)| (n.clone(), synthetic(&n, &s))).collect()
}

/// `w` (diffusers names) as a file in `scheme` names writes it: LDM's attention projections as 1×1 convs.
fn renamed(w: &HashMap<String, Tensor>, scheme: NameScheme, levels: usize) -> HashMap<String, Tensor> {
    w.iter()
        .map(|(n, t)| {
            let t = if scheme == NameScheme::Ldm && n.contains(".attentions.0.to_") && t.rank() == 2 { t.unsqueeze(2).unwrap().unsqueeze(3).unwrap() } else { t.clone() };
            (scheme_name(n, scheme, levels), t)
        })
        .collect()
}

fn config(tag: &str) -> (String, VaeConfig) {
    let all: HashMap<String, String> = serde_json::from_slice(&std::fs::read(testdata().join("vae_reference_configs.json")).unwrap()).unwrap();
    let json = all[tag].clone();
    let dir = tmpdir(&format!("cfg-{tag}"));
    std::fs::write(dir.join("config.json"), &json).unwrap();
    let cfg = VaeConfig::from_diffusers_json(&dir.join("config.json")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (json, cfg)
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sadm-vae-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn reference() -> HashMap<String, Tensor> {
    load_tensors(&testdata().join("vae_reference.safetensors"), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Max |got - want| ≤ 1e-5 · max |want|: f32 against diffusers in f64 measures 1-2e-6 here, and a GroupNorm ε of
/// 1e-5 instead of 1e-6 already moves the outputs by 2-5e-5.
fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (values(got), values(want));
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = g.iter().zip(&w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{what}: max |Δ| {worst:.2e} of max |value| {scale:.3} ({:.1e} relative)", worst / scale);
    assert!(worst <= 1e-5 * scale, "{what}: differs from diffusers by up to {worst} (max |value| {scale})");
}

/// The log-variance: clamped entries exactly at diffusers' bounds, the others within the tolerance of their scale.
fn assert_logvar(what: &str, got: &Tensor, want: &Tensor) {
    let (g, w) = (values(got), values(want));
    let clamped: Vec<bool> = w.iter().map(|&v| v == -30.0 || v == 20.0).collect();
    assert!(clamped.iter().any(|&c| c), "{what}: the reference exercises the clamp");
    for ((a, b), c) in g.iter().zip(&w).zip(&clamped) {
        if *c {
            assert_eq!(a, b, "{what}: a clamped entry");
        }
    }
    let keep = |v: &[f32]| v.iter().zip(&clamped).map(|(x, c)| if *c { 0.0 } else { *x }).collect::<Vec<f32>>();
    let shape = got.dims().to_vec();
    let t = |v: Vec<f32>| Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
    assert_close(what, &t(keep(&g)), &t(keep(&w)));
}

fn check_tiny(vae: &AutoencoderKL, reference: &HashMap<String, Tensor>, label: &str) -> Result<()> {
    let x = &reference["tiny.image"];
    let z = &reference["tiny.latent"];
    let whole = Chunks { slice: None, tiling: None };
    let post = vae.encode(x, &whole)?;
    assert_close(&format!("{label} mean"), &post.mean, &reference["tiny.mean"]);
    assert_logvar(&format!("{label} logvar"), &post.logvar, &reference["tiny.logvar"]);
    assert_close(&format!("{label} decoded"), &vae.decode(z, &whole)?, &reference["tiny.decoded"]);
    let tiles = Chunks { slice: None, tiling: Some(Tiling::for_config(vae.config())) };
    let post = vae.encode(x, &tiles)?;
    assert_close(&format!("{label} tiled mean"), &post.mean, &reference["tiny.tiled.mean"]);
    assert_logvar(&format!("{label} tiled logvar"), &post.logvar, &reference["tiny.tiled.logvar"]);
    assert_close(&format!("{label} tiled decoded"), &vae.decode(z, &tiles)?, &reference["tiny.tiled.decoded"]);
    Ok(())
}

#[test]
fn matches_diffusers_in_each_name_set() -> Result<()> {
    let reference = reference();
    let (_, cfg) = config("tiny");
    let w = weights(&cfg);
    for scheme in [NameScheme::Diffusers, NameScheme::DiffusersLegacy, NameScheme::Ldm] {
        let mut file = renamed(&w, scheme, 2);
        if scheme == NameScheme::Ldm {
            // As in a whole SD checkpoint: under first_stage_model., next to the UNet, with the loss's state.
            file = file.into_iter().map(|(k, v)| (format!("first_stage_model.{k}"), v)).collect();
            file.insert("model.diffusion_model.input_blocks.0.0.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu)?);
            file.insert("first_stage_model.loss.logvar".into(), Tensor::zeros((), DType::F32, &Device::Cpu)?);
        }
        let vae = AutoencoderKL::from_tensors(&cfg, file, Path::new("synthetic"), &Device::Cpu)?;
        check_tiny(&vae, &reference, &format!("{scheme:?}"))?;
    }
    Ok(())
}

#[test]
fn slicing_changes_nothing() -> Result<()> {
    let reference = reference();
    let (_, cfg) = config("tiny");
    let vae = AutoencoderKL::from_tensors(&cfg, weights(&cfg), Path::new("synthetic"), &Device::Cpu)?;
    let z = &reference["tiny.latent"];
    let whole = vae.decode(z, &Chunks { slice: None, tiling: None })?;
    let sliced = vae.decode(z, &Chunks::default())?;
    let worst = values(&whole).iter().zip(values(&sliced)).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-6, "sliced decoding differs by {worst}");
    let x = &reference["tiny.image"];
    let a = vae.encode(x, &Chunks { slice: None, tiling: None })?.mean;
    let b = vae.encode(x, &Chunks { slice: Some(1), tiling: None })?.mean;
    let worst = values(&a).iter().zip(values(&b)).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-6, "sliced encoding differs by {worst}");
    Ok(())
}

/// A diffusers folder as `save_pretrained` leaves it: config.json (diffusers' own text) and the weights.
fn write_folder(dir: &Path, config_json: &str, w: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config_json).unwrap();
    candle_core::safetensors::save(w, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
}

#[test]
fn loads_diffusers_folders() -> Result<()> {
    let reference = reference();
    let dir = tmpdir("folder");
    let (json, cfg) = config("tiny");
    write_folder(&dir.join("tiny"), &json, &renamed(&weights(&cfg), NameScheme::DiffusersLegacy, 2));
    check_tiny(&AutoencoderKL::load(&dir.join("tiny"), &Device::Cpu)?, &reference, "folder")?;

    // The architecture without attention or quant convs, with a shift: read from its config.json alone, in a
    // pipeline folder's vae/.
    let (json, cfg) = config("plain");
    assert_eq!((cfg.block_out_channels.clone(), cfg.mid_block_add_attention, cfg.use_quant_conv), (vec![16, 32, 32], false, false));
    write_folder(&dir.join("pipeline").join("vae"), &json, &weights(&cfg));
    let vae = AutoencoderKL::load(&dir.join("pipeline"), &Device::Cpu)?;
    assert_eq!(vae.config(), &cfg);
    let post = vae.encode(&reference["plain.image"], &Chunks::default())?;
    assert_close("plain mean", &post.mean, &reference["plain.mean"]);
    assert_close("plain logvar", &post.logvar, &reference["plain.logvar"]);
    let z = &reference["plain.latent"];
    assert_close("plain decoded", &vae.decode(z, &Chunks::default())?, &reference["plain.decoded"]);
    // Latents for the diffusion model: (z - 0.25) · 0.5, and back.
    let scaled = vae.encode_latents(&reference["plain.image"], None, &Chunks::default())?;
    let want = ((&reference["plain.mean"] - 0.25)? * 0.5)?;
    assert_close("plain scaled latents", &scaled, &want);
    assert_close("plain decode of scaled", &vae.decode_latents(&((z - 0.25)? * 0.5)?, &Chunks::default())?, &reference["plain.decoded"]);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn sd_vae_names_and_shapes_are_diffusers() -> Result<()> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Row {
        name: String,
        shape: Vec<usize>,
        legacy: String,
        ldm: String,
        ldm_shape: Vec<usize>,
    }
    let rows: Vec<Row> = serde_json::from_slice(&std::fs::read(testdata().join("vae_sd_names.json")).unwrap()).unwrap();
    let cfg = VaeConfig::stable_diffusion();
    let mut ours = parameter_shapes(&cfg)?;
    let mut theirs: Vec<(String, Vec<usize>)> = rows.iter().map(|r| (r.name.clone(), r.shape.clone())).collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours.len(), 248);
    assert_eq!(ours, theirs);
    assert_eq!(ours.iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>(), 83_653_863);
    for r in &rows {
        assert_eq!(scheme_name(&r.name, NameScheme::DiffusersLegacy, 4), r.legacy);
        assert_eq!(scheme_name(&r.name, NameScheme::Ldm, 4), r.ldm);
        let squeezed: Vec<usize> = if r.ldm_shape.len() == 4 && r.shape.len() == 2 { r.ldm_shape[..2].to_vec() } else { r.ldm_shape.clone() };
        assert_eq!(squeezed, r.shape, "{}", r.ldm);
    }
    Ok(())
}

#[test]
fn reads_early_diffusers_configs_with_defaults() {
    // sd-vae-ft-ema's config.json (diffusers 0.4.2): no scaling_factor, no quant-conv or attention switches.
    let dir = tmpdir("ema-config");
    let path = dir.join("config.json");
    let ema = r#"{"_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2", "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D",
        "DownEncoderBlock2D", "DownEncoderBlock2D"], "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
        "norm_num_groups": 32, "out_channels": 3, "sample_size": 256, "up_block_types": ["UpDecoderBlock2D",
        "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}"#;
    std::fs::write(&path, ema).unwrap();
    assert_eq!(VaeConfig::from_diffusers_json(&path).unwrap(), VaeConfig::stable_diffusion());
    let err = |json: String| {
        std::fs::write(&path, json).unwrap();
        VaeConfig::from_diffusers_json(&path).unwrap_err().to_string()
    };
    let e = err(ema.replace("\"AutoencoderKL\"", "\"AutoencoderTiny\""));
    assert!(e.contains("config.json") && e.contains("is a AutoencoderTiny, not an AutoencoderKL") && e.contains("sd-vae-ft-ema"), "{e}");
    let e = err(ema.replacen("\"DownEncoderBlock2D\"", "\"AttnDownEncoderBlock2D\"", 1));
    assert!(e.contains("down_block_types has AttnDownEncoderBlock2D") && e.contains("only DownEncoderBlock2D"), "{e}");
    let e = err(ema.replace("\"silu\"", "\"mish\""));
    assert!(e.contains("act_fn 'mish' is not supported"), "{e}");
    let e = err(ema.replace("\"norm_num_groups\": 32", "\"norm_num_groups\": 48"));
    assert!(e.contains("128 is not a positive multiple of norm_num_groups (48)"), "{e}");
    let e = err(ema.replace("\"up_block_types\": [\"UpDecoderBlock2D\",", "\"up_block_types\": ["));
    assert!(e.contains("up_block_types lists 3 blocks but block_out_channels 4 levels"), "{e}");
    assert!(err("{".into()).contains("not a valid diffusers config.json"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_weights_are_refused_naming_the_file_and_tensor() -> Result<()> {
    let dir = tmpdir("bad");
    let (json, tiny) = config("tiny");
    let (_, plain) = config("plain");
    let load_err = |p: &Path| AutoencoderKL::load(p, &Device::Cpu).err().unwrap().to_string();

    std::fs::write(dir.join("config.json"), &json).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("has config.json but no weights") && e.contains("download diffusion_pytorch_model.safetensors"), "{e}");
    // A .bin is read as a torch.save archive, and one that is not is refused as such.
    std::fs::write(dir.join("diffusion_pytorch_model.bin"), b"pickle").unwrap();
    let e = load_err(&dir);
    assert!(e.contains("diffusion_pytorch_model.bin: is not a PyTorch checkpoint"), "{e}");
    std::fs::remove_file(dir.join("diffusion_pytorch_model.bin")).unwrap();
    assert!(load_err(&dir.join("nothing")).contains("no such VAE folder or weights file"));
    let e = load_err(&tmpdir("empty"));
    assert!(e.contains("not a diffusers VAE folder (no config.json)"), "{e}");

    // Weights of another architecture under this config.
    write_folder(&dir.join("other"), &json, &weights(&plain));
    let e = load_err(&dir.join("other"));
    assert!(e.contains("diffusion_pytorch_model.safetensors: tensor 'encoder.conv_in.weight' has shape [16, 1, 3, 3] but the model expects [32, 3, 3, 3]"), "{e}");
    assert!(e.contains("use the weights file that came with it"), "{e}");

    // A missing and an extra tensor, named as the file names them (LDM here).
    let ldm = renamed(&weights(&tiny), NameScheme::Ldm, 2);
    let mut missing = ldm.clone();
    missing.remove("decoder.mid.attn_1.q.weight").unwrap();
    let e = AutoencoderKL::from_tensors(&tiny, missing, Path::new("vae.safetensors"), &Device::Cpu).err().unwrap().to_string();
    assert!(e.starts_with("checkpoint vae.safetensors: tensor 'decoder.mid.attn_1.q.weight' is missing (LDM/CompVis names)"), "{e}");
    let mut extra = ldm;
    extra.insert("encoder.mid.attn_2.q.weight".into(), Tensor::zeros((64, 64), DType::F32, &Device::Cpu)?);
    let e = AutoencoderKL::from_tensors(&tiny, extra, Path::new("vae.safetensors"), &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("unexpected tensor 'encoder.mid.attn_2.q.weight'"), "{e}");

    // A file that is not a VAE, through the single-file path (Stable Diffusion's architecture).
    let file = dir.join("dit.safetensors");
    candle_core::safetensors::save(&HashMap::from([("x_embedder.proj.weight".to_string(), Tensor::zeros(4, DType::F32, &Device::Cpu)?)]), &file)?;
    let e = load_err(&file);
    assert!(e.contains("dit.safetensors: no VAE tensor in it (found 'x_embedder.proj.weight', …)") && e.contains("diffusers folder"), "{e}");
    // The tiny VAE as a single file: read as Stable Diffusion's, so the shapes differ.
    candle_core::safetensors::save(&weights(&tiny), dir.join("tiny.safetensors"))?;
    let e = load_err(&dir.join("tiny.safetensors"));
    assert!(e.contains("has shape") && e.contains("read as Stable Diffusion's VAE"), "{e}");
    std::fs::write(dir.join("vae.ckpt"), b"pickle").unwrap();
    // A .ckpt goes to the torch.save reader, whose diagnosis names the file.
    let e = load_err(&dir.join("vae.ckpt"));
    assert!(e.contains("vae.ckpt") && e.contains("is not a PyTorch checkpoint"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn samples_are_seeded_and_inputs_checked() -> Result<()> {
    let reference = reference();
    let (_, cfg) = config("tiny");
    let vae = AutoencoderKL::from_tensors(&cfg, weights(&cfg), Path::new("synthetic"), &Device::Cpu)?;
    let x = &reference["tiny.image"];
    let post = vae.encode(x, &Chunks::default())?;
    let a = post.sample(&mut Rng::new(3))?;
    assert_eq!(values(&a), values(&post.sample(&mut Rng::new(3))?));
    assert_ne!(values(&a), values(&post.sample(&mut Rng::new(4))?));
    // (sample - mean) / std are the generator's normals, in order.
    let eps = values(&((a - &post.mean)? / post.std()?)?);
    let want = Rng::new(3).normal_vec(eps.len());
    let std = values(&post.std()?);
    for ((e, w), s) in eps.iter().zip(&want).zip(&std) {
        // std = e^-15 makes the division's rounding visible; e^10 does not.
        assert!((e - w).abs() <= 1e-4 * w.abs().max(1.0) || *s < 1e-3, "{e} vs {w}");
    }
    let scaled = vae.encode_latents(x, Some(&mut Rng::new(3)), &Chunks::default())?;
    assert_close("scaled sample", &scaled, &(post.sample(&mut Rng::new(3))? * 0.18215)?);

    let e = vae.encode(&Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu)?, &Chunks::default()).err().unwrap().to_string();
    assert_eq!(e, "invalid input: vae encode: images must be [batch, 3, height, width] (got [1, 4, 8, 8])");
    let e = vae.decode(&Tensor::zeros((4, 8, 8), DType::F32, &Device::Cpu)?, &Chunks::default()).err().unwrap().to_string();
    assert!(e.contains("latents must be [batch, 4, height, width]"), "{e}");
    let bad = Chunks { slice: None, tiling: Some(Tiling { sample_size: 2, overlap: 0.25 }) };
    let e = vae.decode(&reference["tiny.latent"], &bad).err().unwrap().to_string();
    assert!(e.contains("tiling: tiles of 2 pixels"), "{e}");
    Ok(())
}
