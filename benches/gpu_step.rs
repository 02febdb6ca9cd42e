//! The GPU benchmark of issue 4: training throughput (images/s) and model FLOPs utilisation of DiT-S/2 and
//! DiT-XL/2 on 32×32×4 latents (256×256 images through the SD-VAE), 1,000 classes, learned Σ, as the reference
//! trains them. For each model: bf16 mixed precision at λ = 0 and with SADM (λ = 0.1), and fp32 at λ = 0 for
//! comparison; then DDIM 50 sampling with classifier-free guidance. MFU counts the matmul FLOPs of the step
//! (`sadm_core::flops`, the convention MFU figures use) against the H100 SXM's dense bf16 peak, 989 TFLOP/s
//! (override with `SADM_PEAK_TFLOPS` on another GPU). The target is ≥ 40 % for DiT-XL/2 in bf16.
//!
//! Built here (no GPU needed to compile) and run on the GPU machine, which has no cargo:
//!   eval "$(.ci/cuda-toolkit)"
//!   cargo bench -p sadm-core --features cuda --bench gpu_step --no-run      # prints the binary's path
//!   <that binary> --bench [DiT-S/2|DiT-XL/2] [--device cuda:N]
//! Prints a Markdown table on stderr and one JSON line per model on stdout; record the figures, with the date and
//! the device, in `benches/RESULTS.md`.
use sadm_core::candle::Device;
use sadm_core::config::Precision;
use sadm_core::diffusion::{SampleOptions, Sampler};
use sadm_core::{device, flops, CoreConfig, StepParams, Trainer};
use std::time::Instant;

struct Model {
    name: &'static str,
    hidden: usize,
    depth: usize,
    heads: usize,
    batch: usize,
    /// Timed steps, after warm-up steps that also let cuBLAS pick its algorithms.
    steps: usize,
    sample_batch: usize,
}

const MODELS: [Model; 2] = [
    Model { name: "DiT-S/2", hidden: 384, depth: 12, heads: 6, batch: 256, steps: 20, sample_batch: 64 },
    // The reference trains XL/2 at 256 images per step over 8 GPUs: 32 per GPU; 64 fills one GPU better.
    Model { name: "DiT-XL/2", hidden: 1152, depth: 28, heads: 16, batch: 64, steps: 10, sample_batch: 32 },
];

fn core_config(m: &Model, precision: Precision) -> CoreConfig {
    let mut cfg = CoreConfig::tiny_mnist();
    let mc = &mut cfg.model;
    (mc.input_size, mc.in_channels, mc.patch_size, mc.hidden_size, mc.depth, mc.num_heads, mc.num_classes) =
        (32, 4, 2, m.hidden, m.depth, m.heads, 1000);
    mc.learn_sigma = true;
    let d = &mut cfg.discriminator;
    (d.patch_size, d.width, d.proj_dim) = (4, 256, 128);
    cfg.precision = precision;
    cfg
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

/// Median seconds per training step. `Trainer::step` reads its losses back to the host, so each timed step ends
/// with the GPU idle and the time is the GPU's, not the launch queue's.
fn seconds_per_step(tr: &mut Trainer, m: &Model, lambda: f64) -> sadm_core::Result<f64> {
    let x: Vec<f32> = (0..m.batch * 4 * 32 * 32).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
    let y: Vec<i32> = (0..m.batch).map(|i| (i % 1000) as i32).collect();
    let p = StepParams { lambda, lr: 1e-4, disc_lr: 1e-4, ema_decay: 0.9999, update_disc: lambda > 0.0 };
    for _ in 0..3 {
        tr.step(&x, &y, &p)?;
    }
    let mut times = vec![];
    for _ in 0..m.steps {
        let t0 = Instant::now();
        tr.step(&x, &y, &p)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

fn main() -> sadm_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device_name = args.iter().position(|a| a == "--device").and_then(|i| args.get(i + 1)).map_or("cuda:0", |s| s);
    let wanted: Vec<&String> = args.iter().filter(|a| !a.starts_with("--") && a.as_str() != device_name).collect();
    if let Some(bad) = wanted.iter().find(|w| !MODELS.iter().any(|m| m.name == w.as_str())) {
        return Err(sadm_core::Error::Input(format!("unknown model '{bad}' (known: DiT-S/2, DiT-XL/2)")));
    }
    let dev: Device = device::parse_device(device_name)?;
    let peak_tflops: f64 = std::env::var("SADM_PEAK_TFLOPS").ok().and_then(|v| v.parse().ok()).unwrap_or(989.0);
    eprintln!("device {device_name}; MFU against {peak_tflops} TFLOP/s (dense bf16)\n");
    eprintln!("| model | batch | bf16 λ = 0: img/s | MFU | bf16 SADM λ = 0.1: img/s | SADM overhead | fp32 λ = 0: img/s | bf16 / fp32 | DDIM 50 + CFG (bf16): img/s |");
    eprintln!("|---|---|---|---|---|---|---|---|---|");
    for m in MODELS.iter().filter(|m| wanted.is_empty() || wanted.iter().any(|w| w.as_str() == m.name)) {
        let cfg = core_config(m, Precision::Bf16);
        let flops_step = m.batch as f64 * flops::train_step_per_image(&cfg.model, &cfg.discriminator, false);
        let mut tr = Trainer::new(cfg, &dev)?;
        let bf16 = seconds_per_step(&mut tr, m, 0.0)?;
        let sadm = seconds_per_step(&mut tr, m, 0.1)?;
        let labels: Vec<i32> = (0..m.sample_batch).map(|i| (i % 1000) as i32).collect();
        let opts = SampleOptions { cfg_scale: 4.0, ..SampleOptions::new(Sampler::Ddim, 50) };
        tr.sample(&labels, &SampleOptions { steps: 2, ..opts.clone() }, true)?;
        let t0 = Instant::now();
        tr.sample(&labels, &opts, true)?;
        let ddim = m.sample_batch as f64 / t0.elapsed().as_secs_f64();
        drop(tr);
        let mut tr32 = Trainer::new(core_config(m, Precision::Fp32), &dev)?;
        let fp32 = seconds_per_step(&mut tr32, m, 0.0)?;
        drop(tr32);
        let mfu = flops_step / bf16 / (peak_tflops * 1e12);
        let img = |s: f64| m.batch as f64 / s;
        eprintln!(
            "| {} | {} | {:.1} | {:.1}% | {:.1} | {:+.0}% | {:.1} | {:.2}× | {:.1} |",
            m.name, m.batch, img(bf16), 100.0 * mfu, img(sadm), (sadm / bf16 - 1.0) * 100.0, img(fp32), fp32 / bf16, ddim
        );
        let row = serde_json::json!({
            "model": m.name, "batch": m.batch, "device": device_name, "peakTflops": peak_tflops,
            "bf16": { "msPerStep": bf16 * 1e3, "imagesPerSec": img(bf16), "mfu": mfu },
            "bf16Sadm": { "msPerStep": sadm * 1e3, "imagesPerSec": img(sadm), "overhead": sadm / bf16 - 1.0 },
            "fp32": { "msPerStep": fp32 * 1e3, "imagesPerSec": img(fp32) },
            "ddim50CfgImagesPerSec": ddim,
        });
        println!("{row}");
    }
    Ok(())
}
