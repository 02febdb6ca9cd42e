//! sadm's side of the VAE benchmark: Stable Diffusion's VAE (the full sd-vae-ft-ema architecture, synthetic
//! weights: speed and memory do not depend on their values) on this CPU.
//!
//!   cargo bench -p sadm-core --bench vae                     # encode and decode at 256×256: images/s
//!   cargo bench -p sadm-core --bench vae -- decode512        # one 512×512 decode: seconds and peak RSS
//!   cargo bench -p sadm-core --bench vae -- decode512-tiled  # the same in diffusers' 256-pixel tiles
//!
//! Prints one JSON line on stdout (a summary on stderr). `benches/vae.sh` runs each mode in a process of its own
//! next to the PyTorch peer (`benches/torch_vae.py`, diffusers' AutoencoderKL) and writes the ratios. Times are
//! medians of the timed runs after one warm-up: this machine is shared.
use sadm_core::candle::{DType, Device, Tensor};
use sadm_core::model::vae::{parameter_shapes, AutoencoderKL, Chunks, Tiling, VaeConfig};
use sadm_core::rng::Rng;
use std::collections::HashMap;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

/// The process's peak resident set (VmHWM), and the current one (VmRSS), in MiB.
fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// GroupNorm gains 1, biases 0, conv and linear weights N(0, 1/fan_in): activations keep their scale, as trained
/// weights do.
fn synthetic_vae(cfg: &VaeConfig) -> sadm_core::Result<AutoencoderKL> {
    let mut rng = Rng::new(0);
    let mut tensors = HashMap::new();
    for (name, shape) in parameter_shapes(cfg)? {
        let t = if shape.len() == 1 && name.ends_with(".weight") {
            Tensor::ones(shape.as_slice(), DType::F32, &Device::Cpu)?
        } else if shape.len() == 1 {
            Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu)?
        } else {
            let fan_in: usize = shape[1..].iter().product();
            (rng.randn(&shape, &Device::Cpu)? * (1.0 / fan_in as f64).sqrt())?
        };
        tensors.insert(name, t);
    }
    AutoencoderKL::from_tensors(cfg, tensors, std::path::Path::new("synthetic"), &Device::Cpu)
}

/// Median seconds of `f` over [`RUNS`] runs after a warm-up.
fn time(mut f: impl FnMut() -> sadm_core::Result<Tensor>) -> sadm_core::Result<f64> {
    f()?;
    let mut times = vec![];
    for _ in 0..RUNS {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

fn main() -> sadm_core::Result<()> {
    // What the addon does when it loads (crates/sadm-node/src/lib.rs, `init`).
    sadm_core::device::init_cpu_threads();
    unsafe { libmimalloc_sys::mi_option_set(15 /* mi_option_purge_delay */, -1) };
    let mode = std::env::args().skip(1).find(|a| !a.starts_with("--")).unwrap_or_else(|| "throughput".into());
    let threads = sadm_core::candle::utils::get_num_threads();
    let cfg = VaeConfig::stable_diffusion();
    let vae = synthetic_vae(&cfg)?;
    let loaded_rss = rss_mib("VmRSS:");
    let mut rng = Rng::new(1);
    let row = match mode.as_str() {
        "throughput" => {
            let x = rng.uniform_tensor(&[1, 3, 256, 256], -1.0, 1.0, &Device::Cpu)?;
            let z = rng.randn(&[1, 4, 32, 32], &Device::Cpu)?;
            let chunks = Chunks::default();
            let encode = time(|| Ok(vae.encode(&x, &chunks)?.mean))?;
            let decode = time(|| vae.decode(&z, &chunks))?;
            eprintln!("sadm, {threads} threads: encode 256² {:.3} images/s ({encode:.2} s), decode 256² {:.3} images/s ({decode:.2} s)", 1.0 / encode, 1.0 / decode);
            serde_json::json!({
                "side": "sadm", "mode": mode, "threads": threads,
                "encode256": { "seconds": encode, "imagesPerSec": 1.0 / encode },
                "decode256": { "seconds": decode, "imagesPerSec": 1.0 / decode },
                "peakRssMiB": rss_mib("VmHWM:"), "loadedRssMiB": loaded_rss,
            })
        }
        "decode512" | "decode512-tiled" => {
            let z = rng.randn(&[1, 4, 64, 64], &Device::Cpu)?;
            let tiling = (mode == "decode512-tiled").then(|| Tiling::for_config(&cfg));
            let chunks = Chunks { slice: Some(1), tiling };
            let t0 = Instant::now();
            let out = vae.decode(&z, &chunks)?;
            let seconds = t0.elapsed().as_secs_f64();
            assert_eq!(out.dims(), &[1, 3, 512, 512]);
            let peak = rss_mib("VmHWM:");
            eprintln!("sadm, {threads} threads: {mode}: {seconds:.2} s, peak RSS {peak:.0} MiB ({loaded_rss:.0} MiB with the model loaded)");
            serde_json::json!({ "side": "sadm", "mode": mode, "threads": threads, "seconds": seconds, "peakRssMiB": peak, "loadedRssMiB": loaded_rss })
        }
        other => return Err(sadm_core::Error::Input(format!("unknown mode '{other}' (throughput, decode512, decode512-tiled)"))),
    };
    println!("{row}");
    Ok(())
}
