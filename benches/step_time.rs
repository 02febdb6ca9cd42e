//! sadm's side of the performance benchmark (issue 4): for each config, the throughput of one full training step
//! (DiT forward + backward, AdamW, EMA; with SADM also the discriminator update and the structure term), plain
//! (λ = 0) and SADM (λ = 0.1) in the same process, so the SADM overhead is a same-run ratio; sampling throughput
//! for DDPM 250 steps, DDIM 50 steps and DPM-Solver++ 2M 25 steps with classifier-free guidance (scale 4); achieved matmul GFLOP/s
//! (`sadm_core::flops`) against this CPU's f32 GEMM peak measured in the same run; and the process's peak RSS.
//!
//!   cargo bench -p sadm-core --bench step_time                 # every config, one process
//!   cargo bench -p sadm-core --bench step_time -- DiT-S/2      # one config (peak RSS is then that config's)
//!
//! Prints a Markdown table on stderr and one JSON line per config on stdout. `benches/peer.sh` runs each config in
//! a process of its own next to the PyTorch peer (`benches/torch_peer.py`, the same configs) and writes the ratios.
//! Times are medians over the timed steps: this machine is shared, and the median ignores the odd preempted step.
use sadm_core::candle::{DType, Device, Tensor};
use sadm_core::diffusion::{SampleOptions, Sampler};
use sadm_core::{flops, CoreConfig, StepParams, Trainer};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A benchmark config; `benches/torch_peer.py` defines the same list.
struct Config {
    name: &'static str,
    input: usize,
    channels: usize,
    patch: usize,
    hidden: usize,
    depth: usize,
    heads: usize,
    classes: usize,
    batch: usize,
    /// Timed training steps (after one warm-up step).
    steps: usize,
    /// Images per sampling call, and the denoising steps timed (per-step cost does not depend on the schedule's
    /// length, so DDPM 250 is timed over this many steps of a 250-step respacing's cost and scaled).
    sample_batch: usize,
    sample_steps: usize,
}

const CONFIGS: [Config; 4] = [
    // The MNIST presets: 28×28 digits, patch 4, the discriminator of the presets (7×7 patches, width 64).
    Config { name: "mnist-tiny", input: 28, channels: 1, patch: 4, hidden: 128, depth: 4, heads: 4, classes: 10, batch: 64, steps: 10, sample_batch: 64, sample_steps: 25 },
    Config { name: "mnist-small", input: 28, channels: 1, patch: 4, hidden: 192, depth: 6, heads: 6, classes: 10, batch: 64, steps: 10, sample_batch: 64, sample_steps: 25 },
    // The reference DiTs on 32×32×4 latents (256×256 images through the SD-VAE), ImageNet's 1,000 classes.
    Config { name: "DiT-S/2", input: 32, channels: 4, patch: 2, hidden: 384, depth: 12, heads: 6, classes: 1000, batch: 32, steps: 3, sample_batch: 8, sample_steps: 5 },
    Config { name: "DiT-B/2", input: 32, channels: 4, patch: 2, hidden: 768, depth: 12, heads: 12, classes: 1000, batch: 8, steps: 3, sample_batch: 8, sample_steps: 5 },
];

fn core_config(c: &Config) -> CoreConfig {
    let mut cfg = CoreConfig::tiny_mnist();
    let m = &mut cfg.model;
    (m.input_size, m.in_channels, m.patch_size, m.hidden_size, m.depth, m.num_heads, m.num_classes) =
        (c.input, c.channels, c.patch, c.hidden, c.depth, c.heads, c.classes);
    // ε-prediction with the plain MSE on both sides: the peer has no learned-Σ term.
    m.learn_sigma = false;
    let d = &mut cfg.discriminator;
    (d.patch_size, d.width, d.proj_dim) = (if c.input == 28 { 7 } else { 4 }, 64, 64);
    cfg
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

fn seconds_per_step(tr: &mut Trainer, c: &Config, lambda: f64) -> sadm_core::Result<f64> {
    let per = c.channels * c.input * c.input;
    let x: Vec<f32> = (0..c.batch * per).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
    let y: Vec<i32> = (0..c.batch).map(|i| (i % c.classes) as i32).collect();
    let p = StepParams { lambda, lr: 1e-4, disc_lr: 1e-4, ema_decay: 0.9999, update_disc: lambda > 0.0 };
    tr.step(&x, &y, &p)?; // warm-up: allocator pools, thread pools
    let mut times = vec![];
    for _ in 0..c.steps {
        let t0 = Instant::now();
        tr.step(&x, &y, &p)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// Seconds per denoising step of a guided sampling call (batch doubled for the unconditional half).
fn seconds_per_sample_step(tr: &Trainer, c: &Config, sampler: Sampler) -> sadm_core::Result<f64> {
    let labels: Vec<i32> = (0..c.sample_batch).map(|i| (i % c.classes) as i32).collect();
    let opts = SampleOptions { cfg_scale: 4.0, ..SampleOptions::new(sampler, c.sample_steps) };
    tr.sample(&labels, &SampleOptions { steps: 1, ..opts.clone() }, true)?; // warm-up
    let t0 = Instant::now();
    tr.sample(&labels, &opts, true)?;
    Ok(t0.elapsed().as_secs_f64() / c.sample_steps as f64)
}

/// The best f32 GEMM rate of candle's CPU matmul over a few square sizes (GFLOP/s): the peak the step's
/// achieved rate is compared with.
fn gemm_peak() -> sadm_core::Result<(f64, usize)> {
    let mut best = (0.0, 0);
    for n in [256usize, 512, 1024] {
        let a = Tensor::ones((n, n), DType::F32, &Device::Cpu)?;
        let b = Tensor::ones((n, n), DType::F32, &Device::Cpu)?;
        a.matmul(&b)?; // warm-up
        let reps = (2e9 / (2.0 * (n * n * n) as f64)).ceil() as usize;
        let mut times = vec![];
        for _ in 0..reps.max(3) {
            let t0 = Instant::now();
            a.matmul(&b)?;
            times.push(t0.elapsed().as_secs_f64());
        }
        let rate = 2.0 * (n * n * n) as f64 / median(times) / 1e9;
        if rate > best.0 {
            best = (rate, n);
        }
    }
    Ok(best)
}

/// The process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> sadm_core::Result<()> {
    // What the addon does when it loads (crates/sadm-node/src/lib.rs, `init`).
    sadm_core::device::init_cpu_threads();
    unsafe { libmimalloc_sys::mi_option_set(15 /* mi_option_purge_delay */, -1) };

    // `cargo bench` passes `--bench`; anything else names configs.
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if let Some(bad) = wanted.iter().find(|w| !CONFIGS.iter().any(|c| c.name == w.as_str())) {
        let names: Vec<&str> = CONFIGS.iter().map(|c| c.name).collect();
        return Err(sadm_core::Error::Input(format!("unknown bench config '{bad}' (known: {})", names.join(", "))));
    }
    let (peak, peak_n) = gemm_peak()?;
    let threads = sadm_core::candle::utils::get_num_threads();
    eprintln!("f32 GEMM peak: {peak:.1} GFLOP/s ({peak_n}×{peak_n}, {threads} threads)\n");
    eprintln!("| config | batch | DiT params | λ = 0: img/s | GFLOP/s | % of peak | SADM λ = 0.1: img/s | SADM overhead (FLOPs) | DDPM 250 + CFG: img/s | DDIM 50 + CFG: img/s | DPM++ 2M 25 + CFG: img/s | peak RSS MiB |");
    eprintln!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for c in CONFIGS.iter().filter(|c| wanted.is_empty() || wanted.iter().any(|w| w == c.name)) {
        let cfg = core_config(c);
        let flops_plain = c.batch as f64 * flops::train_step_per_image(&cfg.model, &cfg.discriminator, false);
        // SADM's extra matmul work as a fraction of the plain step's: the overhead no implementation can go under.
        let flop_overhead = flops::train_step_per_image(&cfg.model, &cfg.discriminator, true) * c.batch as f64 / flops_plain - 1.0;
        let mut tr = Trainer::new(cfg, &Device::Cpu)?;
        let plain = seconds_per_step(&mut tr, c, 0.0)?;
        let sadm = seconds_per_step(&mut tr, c, 0.1)?;
        let ddpm = seconds_per_sample_step(&tr, c, Sampler::Ddpm)? * 250.0;
        let ddim = seconds_per_sample_step(&tr, c, Sampler::Ddim)? * 50.0;
        let dpm = seconds_per_sample_step(&tr, c, Sampler::DpmPp2m)? * 25.0;
        let gflops = flops_plain / plain / 1e9;
        let rss = peak_rss_mib();
        let img = |s: f64, n: usize| n as f64 / s;
        eprintln!(
            "| {} | {} | {:.1}M | {:.1} | {:.1} | {:.0}% | {:.1} | {:+.0}% ({:+.0}%) | {:.2} | {:.2} | {:.2} | {:.0} |",
            c.name,
            c.batch,
            tr.num_params().0 as f64 / 1e6,
            img(plain, c.batch),
            gflops,
            100.0 * gflops / peak,
            img(sadm, c.batch),
            (sadm / plain - 1.0) * 100.0,
            flop_overhead * 100.0,
            img(ddpm, c.sample_batch),
            img(ddim, c.sample_batch),
            img(dpm, c.sample_batch),
            rss
        );
        let row = serde_json::json!({
            "config": c.name, "batch": c.batch, "threads": threads, "ditParams": tr.num_params().0,
            "gemmPeakGflops": peak,
            "plain": { "msPerStep": plain * 1e3, "imagesPerSec": img(plain, c.batch), "gflops": gflops },
            "sadm": { "msPerStep": sadm * 1e3, "imagesPerSec": img(sadm, c.batch) },
            "sadmOverhead": sadm / plain - 1.0, "sadmFlopOverhead": flop_overhead,
            "sampling": {
                "batch": c.sample_batch, "cfgScale": 4.0, "timedSteps": c.sample_steps,
                "ddpm250ImagesPerSec": img(ddpm, c.sample_batch), "ddim50ImagesPerSec": img(ddim, c.sample_batch),
                "dpm25ImagesPerSec": img(dpm, c.sample_batch),
            },
            "peakRssMiB": rss,
        });
        println!("{row}");
    }
    Ok(())
}
