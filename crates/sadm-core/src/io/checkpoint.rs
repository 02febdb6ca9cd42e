//! Checkpoints as directories (design §5): model, EMA, discriminator and optimizer tensors as safetensors, and
//! `state.json` (format version, config, step, RNG state, caller's extra state) written last as the completion
//! marker. Everything is written under a temporary name, synced and renamed into place, so a crash never leaves
//! a partial checkpoint where a complete one was. state.json records the SHA-256 of each tensor file, checked on
//! every load: a file changed after it was written (a bad disk, a copy gone wrong) is refused, not used.
use crate::config::CoreConfig;
use crate::error::{Error, Result};
use crate::io::pth::{self, PthWeights};
use crate::rng::{Rng, RngState};
use crate::train::Trainer;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 1;
pub const MODEL_FILE: &str = "model.safetensors";
pub const EMA_FILE: &str = "ema.safetensors";
pub const DISC_FILE: &str = "discriminator.safetensors";
pub const OPTIM_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub format_version: u32,
    pub config: CoreConfig,
    pub step: u64,
    pub rng: RngState,
    /// Whatever the caller keeps with the checkpoint (data position, metrics, its own config).
    #[serde(default)]
    pub extra: serde_json::Value,
    /// The SHA-256 (lowercase hex, as `sha256sum` prints it) of each tensor file by name; absent in checkpoints
    /// written before sadm recorded them, which load unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, String>>,
}

/// The tensor files of a checkpoint, in the order they are written.
pub const TENSOR_FILES: [&str; 4] = [MODEL_FILE, EMA_FILE, DISC_FILE, OPTIM_FILE];

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn io<T>(r: std::io::Result<T>, what: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|e| Error::io(what(), e))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = io(fs::File::create(path), || format!("cannot create {}", path.display()))?;
    io(f.write_all(bytes), || format!("cannot write {}", path.display()))?;
    io(f.sync_all(), || format!("cannot sync {}", path.display()))
}

/// Writes `tensors` to `path` as safetensors, synced, and returns the SHA-256 of the bytes written. The file is
/// serialised in memory first so that the digest is of exactly those bytes, without reading the file back.
pub(crate) fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<String> {
    // Tensors go to the CPU first so a CUDA run writes the same files.
    let cpu: HashMap<String, Tensor> =
        tensors.iter().map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?))).collect::<Result<_>>()?;
    let bytes = safetensors::serialize(&cpu, None).map_err(|e| Error::checkpoint(path, format!("cannot serialise the tensors: {e}")))?;
    // Hashing (about 1 GB/s) runs while the bytes go to the disk.
    let (digest, written) = std::thread::scope(|s| {
        let digest = s.spawn(|| sha256_hex(&bytes));
        let written = write_synced(path, &bytes);
        (digest.join(), written)
    });
    written?;
    digest.map_err(|_| Error::Internal("save".into(), "the hashing thread panicked".into()))
}

fn sync_dir(dir: &Path) {
    // Directory fsync makes the rename durable; not every filesystem allows it, and the data is already synced.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `trainer` to `dir` atomically, replacing a previous checkpoint there only once the new one is whole.
pub fn save(trainer: &Trainer, dir: &Path, extra: serde_json::Value) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dir.file_name().ok_or_else(|| Error::checkpoint(dir, "not a directory name"))?.to_string_lossy().to_string();
    io(fs::create_dir_all(parent), || format!("cannot create {}", parent.display()))?;
    let stamp = format!("{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    let tmp = parent.join(format!(".{name}.tmp-{stamp}"));
    io(fs::create_dir(&tmp), || format!("cannot create {} (is the directory writable?)", tmp.display()))?;
    let result = (|| {
        let mut opt = HashMap::new();
        trainer.opt_dit.state_tensors("dit", &mut opt)?;
        trainer.opt_disc.state_tensors("disc", &mut opt)?;
        let contents = [Trainer::var_tensors(&trainer.dit_vars), trainer.ema_tensors(), Trainer::var_tensors(&trainer.disc_vars), opt];
        let mut files = BTreeMap::new();
        for (file, tensors) in TENSOR_FILES.iter().zip(&contents) {
            files.insert(file.to_string(), save_tensors(&tmp.join(file), tensors)?);
        }
        let state = State {
            format_version: FORMAT_VERSION,
            config: trainer.cfg.clone(),
            step: trainer.step,
            rng: trainer.rng.state(),
            extra,
            files: Some(files),
        };
        let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::checkpoint(dir, e.to_string()))?;
        write_synced(&tmp.join(STATE_FILE), &json)?;
        sync_dir(&tmp);
        if dir.exists() {
            let old = parent.join(format!(".{name}.old-{stamp}"));
            io(fs::rename(dir, &old), || format!("cannot move the previous {} aside", dir.display()))?;
            io(fs::rename(&tmp, dir), || format!("cannot rename {} into place", tmp.display()))?;
            let _ = fs::remove_dir_all(&old);
        } else {
            io(fs::rename(&tmp, dir), || format!("cannot rename {} into place", tmp.display()))?;
        }
        sync_dir(parent);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

pub fn read_state(dir: &Path) -> Result<State> {
    let path = dir.join(STATE_FILE);
    if !dir.is_dir() {
        return Err(Error::checkpoint(dir, "no such checkpoint directory"));
    }
    let bytes = fs::read(&path).map_err(|_| {
        Error::checkpoint(dir, "state.json is missing: this is not a complete checkpoint (it may have been interrupted while writing)")
    })?;
    let state: State = serde_json::from_slice(&bytes).map_err(|e| Error::checkpoint(&path, format!("state.json is not valid: {e}")))?;
    if state.format_version != FORMAT_VERSION {
        return Err(Error::checkpoint(dir, format!("format version {} is not supported (expected {FORMAT_VERSION})", state.format_version)));
    }
    state.config.validate().map_err(|e| Error::checkpoint(dir, format!("its config is invalid: {e}")))?;
    Ok(state)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    if !path.is_file() {
        return Err(Error::checkpoint(path, "file is missing"));
    }
    io(fs::read(path), || format!("cannot read {}", path.display()))
}

fn parse_tensors(path: &Path, bytes: &[u8], device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load_buffer(bytes, device).map_err(|e| Error::checkpoint(path, format!("cannot read safetensors: {e}")))
}

/// The tensors of a safetensors file (one no state.json vouches for).
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    parse_tensors(path, &read_file(path)?, device)
}

/// The tensors of the checkpoint file `file` in `dir`, read once and checked against the SHA-256 its state.json
/// recorded when it was written (checkpoints from before the digests have none to check).
fn load_checked(dir: &Path, state: &State, file: &str, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = dir.join(file);
    let bytes = read_file(&path)?;
    if let Some(files) = &state.files {
        let corrupt = |why: &str| {
            Error::checkpoint(&path, format!("{file} is corrupt: {why}, so it changed after it was written; use another checkpoint of the run"))
        };
        match files.get(file) {
            None => return Err(corrupt("state.json records no SHA-256 for it")),
            Some(want) if *want != sha256_hex(&bytes) => return Err(corrupt("its SHA-256 differs from the one state.json recorded")),
            _ => {}
        }
    }
    parse_tensors(&path, &bytes, device)
}

/// Checks `tensors` against the expected names and shapes, naming the first mismatch in sorted order.
pub fn check_shapes(path: &Path, expected: &[(String, Vec<usize>)], tensors: &HashMap<String, Tensor>, ignore: &[&str]) -> Result<()> {
    for (name, shape) in expected {
        match tensors.get(name) {
            None => return Err(Error::checkpoint(path, format!("tensor '{name}' is missing"))),
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor '{name}' has shape {:?} but the model expects {:?}", t.dims(), shape),
                ))
            }
            _ => {}
        }
    }
    let mut extra: Vec<&String> =
        tensors.keys().filter(|k| !ignore.contains(&k.as_str()) && !expected.iter().any(|(n, _)| n == *k)).collect();
    extra.sort();
    if let Some(k) = extra.first() {
        return Err(Error::checkpoint(path, format!("unexpected tensor '{k}': the checkpoint is of another architecture")));
    }
    Ok(())
}

pub fn expected(vars: &[(String, Var)]) -> Vec<(String, Vec<usize>)> {
    vars.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect()
}

fn assign(path: &Path, vars: &[(String, Var)], tensors: &HashMap<String, Tensor>) -> Result<()> {
    check_shapes(path, &expected(vars), tensors, &["pos_embed"])?;
    for (name, var) in vars {
        var.set(&tensors[name].to_dtype(DType::F32)?)?;
    }
    Ok(())
}

/// Restores a trainer from a checkpoint directory, with the `extra` the caller saved.
pub fn load(dir: &Path, device: &Device) -> Result<(Trainer, serde_json::Value)> {
    let state = read_state(dir)?;
    let mut tr = Trainer::build(state.config.clone(), device, false)?;
    assign(&dir.join(MODEL_FILE), &tr.dit_vars, &load_checked(dir, &state, MODEL_FILE, device)?)?;
    assign(&dir.join(DISC_FILE), &tr.disc_vars, &load_checked(dir, &state, DISC_FILE, device)?)?;
    let ema_path = dir.join(EMA_FILE);
    let ema = load_checked(dir, &state, EMA_FILE, device)?;
    check_shapes(&ema_path, &expected(&tr.dit_vars), &ema, &["pos_embed"])?;
    tr.ema = tr.dit_vars.iter().map(|(n, _)| ema[n].to_dtype(DType::F32)).collect::<candle_core::Result<_>>()?;
    let opt_path = dir.join(OPTIM_FILE);
    let opt = load_checked(dir, &state, OPTIM_FILE, device)?;
    tr.opt_dit.load_state("dit", &opt, &opt_path)?;
    tr.opt_disc.load_state("disc", &opt, &opt_path)?;
    tr.rng = Rng::from_state(&state.rng).map_err(|e| Error::checkpoint(dir, e))?;
    tr.step = state.step;
    Ok((tr, state.extra))
}

/// The DiT weights of a checkpoint for sampling: its EMA (or raw) tensors, checked against its config.
pub fn load_weights(dir: &Path, device: &Device, use_ema: bool) -> Result<(CoreConfig, HashMap<String, Tensor>)> {
    let state = read_state(dir)?;
    let file = if use_ema { EMA_FILE } else { MODEL_FILE };
    let path: PathBuf = dir.join(file);
    let tensors = load_checked(dir, &state, file, device)?;
    // Only the DiT's names and shapes are needed: no discriminator or optimizer state.
    let varmap = candle_nn::VarMap::new();
    crate::model::dit::DiT::new(&state.config.model, candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    check_shapes(&path, &expected(&crate::nn::sorted_vars(&varmap)), &tensors, &["pos_embed"])?;
    Ok((state.config, tensors))
}

/// Weights to start a fine-tuning run from: a checkpoint directory (its EMA weights), or a safetensors or PyTorch
/// (`torch.save`, e.g. the published `DiT-XL-2-256x256.pt`) file of DiT weights in the reference names. They are
/// checked against the new model by `Trainer::from_pretrained`.
pub fn load_pretrained(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    Ok(load_pretrained_with(path, None, device)?.tensors)
}

/// [`load_pretrained`], reading the entry `key` of a `torch.save` dict (by default its `ema`, `model` or
/// `state_dict`, as DiT's `sample.py`) and saying which entry it read (None for a flat state dict, a safetensors
/// file or a checkpoint directory). A file's float tensors come as F32, and a `pos_embed` in it must be DiT's
/// sin-cos table, which sadm computes instead of loading.
pub fn load_pretrained_with(path: &Path, key: Option<&str>, device: &Device) -> Result<PthWeights> {
    if !path.exists() {
        return Err(Error::checkpoint(path, "no such checkpoint directory or weights file"));
    }
    let torch = path.is_file() && pth::is_torch_file(path)?;
    if let (Some(k), false) = (key, torch) {
        return Err(Error::checkpoint(path, format!("is not a PyTorch .pt file, whose entries a key ('{k}') selects")));
    }
    if path.is_dir() {
        return Ok(PthWeights { tensors: load_weights(path, device, true)?.1, key: None });
    }
    let mut weights = if torch { pth::load_pth(path, key, device)? } else { PthWeights { tensors: load_tensors(path, device)?, key: None } };
    for t in weights.tensors.values_mut() {
        if t.dtype().is_float() {
            *t = t.to_dtype(DType::F32)?;
        }
    }
    crate::model::dit::check_pos_embed(&weights.tensors, path)?;
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::StepParams;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sadm-ckpt-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn bytes(dir: &Path) -> Vec<Vec<u8>> {
        [MODEL_FILE, EMA_FILE, DISC_FILE, OPTIM_FILE].iter().map(|f| fs::read(dir.join(f)).unwrap()).collect()
    }

    fn trained() -> Trainer {
        let mut tr = Trainer::new(CoreConfig::tiny_mnist(), &Device::Cpu).unwrap();
        let mut rng = Rng::new(1);
        let x: Vec<f32> = rng.normal_vec(4 * 784).iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        let p = StepParams { lambda: 0.1, lr: 1e-3, disc_lr: 1e-3, ema_decay: 0.5, update_disc: true };
        for _ in 0..2 {
            tr.step(&x, &[0, 1, 2, 3], &p).unwrap();
        }
        tr
    }

    #[test]
    fn round_trip_is_bit_exact_and_resumes_the_same_sequence() -> Result<()> {
        let dir = tmpdir("rt");
        let mut a = trained();
        save(&a, &dir.join("c1"), serde_json::json!({"epoch": 3}))?;
        let (mut b, extra) = load(&dir.join("c1"), &Device::Cpu)?;
        assert_eq!(extra["epoch"], 3);
        save(&b, &dir.join("c2"), extra)?;
        assert_eq!(bytes(&dir.join("c1")), bytes(&dir.join("c2")));
        // The next step after loading equals the next step of the original.
        let x: Vec<f32> = Rng::new(2).normal_vec(4 * 784).iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        let p = StepParams { lambda: 0.1, lr: 1e-3, disc_lr: 1e-3, ema_decay: 0.5, update_disc: true };
        let sa = a.step(&x, &[4, 5, 6, 7], &p)?;
        let sb = b.step(&x, &[4, 5, 6, 7], &p)?;
        assert_eq!((sa.loss, sa.structure, sa.step), (sb.loss, sb.structure, sb.step));
        save(&a, &dir.join("c3"), serde_json::Value::Null)?;
        save(&b, &dir.join("c4"), serde_json::Value::Null)?;
        assert_eq!(bytes(&dir.join("c3")), bytes(&dir.join("c4")));
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn overwrite_replaces_whole_and_leaves_no_temporaries() -> Result<()> {
        let dir = tmpdir("ow");
        let tr = trained();
        save(&tr, &dir.join("c"), serde_json::json!(1))?;
        save(&tr, &dir.join("c"), serde_json::json!(2))?;
        assert_eq!(read_state(&dir.join("c"))?.extra, serde_json::json!(2));
        let names: Vec<String> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(names, vec!["c".to_string()]);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn fine_tuning_starts_from_the_weights_with_fresh_state() -> Result<()> {
        let dir = tmpdir("ft");
        let src = trained();
        save(&src, &dir.join("c"), serde_json::Value::Null)?;
        let w = load_pretrained(&dir.join("c"), &Device::Cpu)?;
        // Another seed, only the efficient subset trainable, and 12 classes instead of 10.
        let mut cfg = CoreConfig::tiny_mnist();
        cfg.seed = 7;
        cfg.model.num_classes = 12;
        cfg.trainable = crate::config::PEFT_PATTERNS.iter().map(|s| s.to_string()).collect();
        let (mut ft, notes) = Trainer::from_pretrained(cfg, &w, &dir.join("c"), &Device::Cpu)?;
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("10 classes and this model 12"), "{notes:?}");
        assert_eq!(ft.step_count(), 0);
        let ema = src.ema_tensors();
        let value = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (name, var) in &ft.dit_vars {
            if name != crate::model::dit::CLASS_TABLE {
                assert_eq!(value(var.as_tensor()), value(&ema[name]), "{name} not taken from the source EMA");
            }
        }
        let names = ft.trainable_names();
        assert!(names.contains(&"blocks.0.attn.qkv.bias".to_string()) && !names.contains(&"blocks.0.attn.qkv.weight".to_string()));
        // One step moves only the trainable subset.
        let before: HashMap<String, Vec<f32>> = ft.dit_vars.iter().map(|(n, v)| (n.clone(), value(v.as_tensor()))).collect();
        let x: Vec<f32> = Rng::new(3).normal_vec(4 * 784).iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        ft.step(&x, &[0, 1, 11, 3], &StepParams { lambda: 0.0, lr: 1e-2, disc_lr: 0.0, ema_decay: 0.0, update_disc: false })?;
        for (name, var) in &ft.dit_vars {
            let moved = value(var.as_tensor()) != before[name];
            assert_eq!(moved, names.contains(name), "{name}: moved = {moved}");
        }
        // The same weights as a plain safetensors file in the reference names (how converted DiT weights come).
        let file = dir.join("dit.safetensors");
        candle_core::safetensors::save(&src.ema_tensors(), &file)?;
        let from_file = load_pretrained(&file, &Device::Cpu)?;
        let (ft2, notes2) = Trainer::from_pretrained(CoreConfig::tiny_mnist(), &from_file, &file, &Device::Cpu)?;
        assert!(notes2.is_empty(), "{notes2:?}");
        for (name, var) in &ft2.dit_vars {
            assert_eq!(value(var.as_tensor()), value(&ema[name]), "{name} not taken from the file");
        }
        assert!(load_pretrained(&dir.join("nope"), &Device::Cpu).err().unwrap().to_string().contains("no such checkpoint directory or weights file"));
        // Another architecture is refused, naming the tensor.
        let mut wide = CoreConfig::tiny_mnist();
        wide.model.hidden_size = 32;
        let e = Trainer::from_pretrained(wide, &w, Path::new("src"), &Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("has shape"), "{e}");
        // A pattern that matches nothing is refused.
        let mut none = CoreConfig::tiny_mnist();
        none.trainable = vec!["decoder.*".into()];
        assert!(Trainer::new(none, &Device::Cpu).err().unwrap().to_string().contains("matches no DiT parameter"));
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn fine_tuning_starts_from_a_pytorch_file() -> Result<()> {
        let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        // The reference DiT's torch.save(model.state_dict()) (testdata/pth_reference.py), pos_embed included.
        let file = testdata.join("pth_dit_small.pt");
        let w = load_pretrained(&file, &Device::Cpu)?;
        let mut cfg = CoreConfig::tiny_mnist();
        cfg.model = crate::model::dit::infer_config(&w, &file, crate::model::dit::ConfigHints { num_heads: Some(4), input_size: None })?;
        cfg.discriminator.patch_size = 2;
        let (ft, notes) = Trainer::from_pretrained(cfg, &w, &file, &Device::Cpu)?;
        assert!(notes.is_empty(), "{notes:?}");
        let value = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let torch = pth::load_pth(&file, None, &Device::Cpu)?.tensors;
        for (name, var) in &ft.dit_vars {
            assert_eq!(value(var.as_tensor()), value(&torch[name]), "{name} not taken from the file");
        }
        // Nested files say which entry they read; their floats come as F32, other dtypes as stored.
        let nested = load_pretrained_with(&testdata.join("pth_train_style.pt"), None, &Device::Cpu)?;
        assert_eq!(nested.key.as_deref(), Some("ema"));
        let model = load_pretrained_with(&testdata.join("pth_train_style.pt"), Some("model"), &Device::Cpu)?;
        assert_eq!(model.key.as_deref(), Some("model"));
        let dtypes = load_pretrained(&testdata.join("pth_dtypes.pt"), &Device::Cpu)?;
        for (name, dtype) in [("f16", DType::F32), ("bf16", DType::F32), ("f64", DType::F32), ("f8e4m3fn", DType::F32), ("i64", DType::I64), ("bool", DType::U8)] {
            assert_eq!(dtypes[name].dtype(), dtype, "{name}");
        }
        // A key only selects in a .pt file; a .pt file's own errors come through.
        let dir = tmpdir("pt");
        let st = dir.join("dit.safetensors");
        candle_core::safetensors::save(&torch, &st)?;
        assert_eq!(load_pretrained(&st, &Device::Cpu)?.len(), torch.len());
        let e = load_pretrained_with(&st, Some("ema"), &Device::Cpu).err().unwrap().to_string();
        assert!(e.ends_with("is not a PyTorch .pt file, whose entries a key ('ema') selects"), "{e}");
        let e = load_pretrained(&testdata.join("pth_os_system.pt"), &Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("refused: its pickle calls os.system"), "{e}");
        // A position table that is not DiT's sin-cos one would make sadm run another model.
        let mut learned = torch.clone();
        learned.insert("pos_embed".into(), (&torch["pos_embed"] + 0.01)?);
        candle_core::safetensors::save(&learned, &st)?;
        let e = load_pretrained(&st, &Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("tensor 'pos_embed' is not DiT's fixed sin-cos embedding"), "{e}");
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn sha256_is_the_standard_digest() {
        // FIPS 180-2's examples, as `sha256sum` prints them.
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    fn flip_byte(path: &Path) -> Vec<u8> {
        let original = fs::read(path).unwrap();
        let mut b = original.clone();
        let mid = b.len() / 2; // in the tensor data: the file still parses, only the digest can tell
        b[mid] ^= 0x10;
        fs::write(path, &b).unwrap();
        original
    }

    #[test]
    fn a_tensor_file_changed_after_it_was_written_is_refused_by_name() -> Result<()> {
        let dir = tmpdir("dg");
        let c = dir.join("c");
        save(&trained(), &c, serde_json::Value::Null)?;
        let files = read_state(&c)?.files.expect("digests in state.json");
        assert_eq!(files.keys().map(|k| k.as_str()).collect::<Vec<_>>(), {
            let mut v = TENSOR_FILES.to_vec();
            v.sort();
            v
        });
        for f in TENSOR_FILES {
            assert_eq!(files[f], sha256_hex(&fs::read(c.join(f)).unwrap()), "{f}");
        }
        for f in TENSOR_FILES {
            let original = flip_byte(&c.join(f));
            let e = load(&c, &Device::Cpu).err().unwrap().to_string();
            assert!(e.contains(&format!("{f} is corrupt")) && e.contains("use another checkpoint of the run"), "{e}");
            assert!(e.contains("changed after it was written"), "{e}");
            for (use_ema, file) in [(true, EMA_FILE), (false, MODEL_FILE)] {
                let r = load_weights(&c, &Device::Cpu, use_ema);
                assert_eq!(r.is_err(), f == file, "{f}, use_ema {use_ema}");
            }
            assert_eq!(load_pretrained(&c, &Device::Cpu).is_err(), f == EMA_FILE, "{f}");
            fs::write(c.join(f), original).unwrap();
        }
        load(&c, &Device::Cpu)?;
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn a_checkpoint_without_digests_still_loads() -> Result<()> {
        // A checkpoint as sadm wrote them before the digests: state.json without "files".
        let dir = tmpdir("old");
        let c = dir.join("c");
        let tr = trained();
        save(&tr, &c, serde_json::json!({"epoch": 1}))?;
        let mut json: serde_json::Value = serde_json::from_slice(&fs::read(c.join(STATE_FILE)).unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("files").expect("a files entry");
        fs::write(c.join(STATE_FILE), serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        assert!(read_state(&c)?.files.is_none());
        let (loaded, extra) = load(&c, &Device::Cpu)?;
        assert_eq!((extra["epoch"].as_i64(), loaded.step_count()), (Some(1), tr.step_count()));
        load_weights(&c, &Device::Cpu, true)?;
        // Nothing to check a changed file against: it loads as before.
        flip_byte(&c.join(EMA_FILE));
        load_weights(&c, &Device::Cpu, true)?;
        // Saving it again records the digests.
        save(&loaded, &dir.join("d"), extra)?;
        assert!(read_state(&dir.join("d"))?.files.is_some());
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn mismatches_name_the_first_bad_tensor() -> Result<()> {
        let dir = tmpdir("mm");
        save(&trained(), &dir.join("c"), serde_json::Value::Null)?;
        // Another architecture: same names, wider model.
        let mut cfg = CoreConfig::tiny_mnist();
        cfg.model.hidden_size = 32;
        let other = Trainer::build(cfg, &Device::Cpu, false)?;
        let t = load_tensors(&dir.join("c").join(MODEL_FILE), &Device::Cpu)?;
        let e = check_shapes(Path::new("m"), &expected(&other.dit_vars), &t, &[]).unwrap_err().to_string();
        assert!(e.contains("'blocks.0.adaLN_modulation.1.bias' has shape [384] but the model expects [192]"), "{e}");
        // A missing state.json is not a checkpoint.
        fs::remove_file(dir.join("c").join(STATE_FILE)).unwrap();
        assert!(load(&dir.join("c"), &Device::Cpu).err().unwrap().to_string().contains("state.json is missing"));
        // A truncated tensor file is reported, not a panic.
        save(&trained(), &dir.join("d"), serde_json::Value::Null)?;
        let f = dir.join("d").join(MODEL_FILE);
        let b = fs::read(&f).unwrap();
        fs::write(&f, &b[..b.len() / 2]).unwrap();
        assert!(load(&dir.join("d"), &Device::Cpu).err().unwrap().to_string().contains("model.safetensors is corrupt"));
        assert!(load_tensors(&f, &Device::Cpu).err().unwrap().to_string().contains("cannot read safetensors"));
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
