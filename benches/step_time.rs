//! Training-step throughput of the MNIST presets, plain (λ = 0) against SADM (λ > 0) in the same run, so the
//! SADM overhead is a ratio that machine noise affects less than absolute times; and the achieved matmul GFLOP/s
//! (`sadm_core::flops`) against this CPU's measured f32 GEMM peak, from a micro-benchmark in the same run.
//!
//! `cargo bench -p sadm-core --bench step_time` (set RAYON_NUM_THREADS to pin the thread count). Prints a
//! Markdown table and writes `benches/results/step_time.json`.
use sadm_core::candle::{DType, Device, Tensor};
use sadm_core::{flops, CoreConfig, StepParams, Trainer};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (name, hidden, depth, heads) with the presets' patch 4 DiT and 7×7-patch width-64 discriminator.
const PRESETS: [(&str, usize, usize, usize); 2] = [("mnist-tiny", 128, 4, 4), ("mnist-small", 192, 6, 6)];
const BATCH: usize = 64;
const STEPS: usize = 10;

fn seconds_per_step(tr: &mut Trainer, lambda: f64) -> sadm_core::Result<f64> {
    let x: Vec<f32> = (0..BATCH * 784).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
    let y: Vec<i32> = (0..BATCH as i32).map(|i| i % 10).collect();
    let p = StepParams { lambda, lr: 1e-3, disc_lr: 1e-4, ema_decay: 0.999, update_disc: lambda > 0.0 };
    tr.step(&x, &y, &p)?; // warm-up: allocator pools, thread pool
    let t0 = Instant::now();
    for _ in 0..STEPS {
        tr.step(&x, &y, &p)?;
    }
    Ok(t0.elapsed().as_secs_f64() / STEPS as f64)
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
        let t0 = Instant::now();
        for _ in 0..reps {
            a.matmul(&b)?;
        }
        let rate = 2.0 * (n * n * n) as f64 * reps as f64 / t0.elapsed().as_secs_f64() / 1e9;
        if rate > best.0 {
            best = (rate, n);
        }
    }
    Ok(best)
}

fn main() -> sadm_core::Result<()> {
    // What the addon does when it loads (crates/sadm-node/src/lib.rs, `init`).
    sadm_core::device::init_cpu_threads();
    unsafe { libmimalloc_sys::mi_option_set(15 /* mi_option_purge_delay */, -1) };
    let (peak, peak_n) = gemm_peak()?;
    let threads = sadm_core::candle::utils::get_num_threads();
    println!("f32 GEMM peak: {peak:.1} GFLOP/s ({peak_n}×{peak_n}, {threads} threads)\n");
    println!("| preset | DiT params | λ = 0: ms/step | img/s | GFLOP/s | % of peak | λ = 0.1: ms/step | img/s | GFLOP/s | SADM overhead |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut rows = vec![];
    for (name, hidden, depth, heads) in PRESETS {
        let mut cfg = CoreConfig::tiny_mnist();
        (cfg.model.hidden_size, cfg.model.depth, cfg.model.num_heads) = (hidden, depth, heads);
        (cfg.discriminator.patch_size, cfg.discriminator.width, cfg.discriminator.proj_dim) = (7, 64, 64);
        let flops_plain = BATCH as f64 * flops::train_step_per_image(&cfg.model, &cfg.discriminator, false);
        let flops_sadm = BATCH as f64 * flops::train_step_per_image(&cfg.model, &cfg.discriminator, true);
        let mut tr = Trainer::new(cfg, &Device::Cpu)?;
        let plain = seconds_per_step(&mut tr, 0.0)?;
        let sadm = seconds_per_step(&mut tr, 0.1)?;
        let (g_plain, g_sadm) = (flops_plain / plain / 1e9, flops_sadm / sadm / 1e9);
        println!(
            "| {name} | {:.2}M | {:.0} | {:.0} | {:.1} | {:.0}% | {:.0} | {:.0} | {:.1} | {:+.0}% |",
            tr.num_params().0 as f64 / 1e6,
            plain * 1e3,
            BATCH as f64 / plain,
            g_plain,
            100.0 * g_plain / peak,
            sadm * 1e3,
            BATCH as f64 / sadm,
            g_sadm,
            (sadm / plain - 1.0) * 100.0
        );
        rows.push(serde_json::json!({
            "preset": name, "batch": BATCH, "ditParams": tr.num_params().0,
            "plain": { "msPerStep": plain * 1e3, "imagesPerSec": BATCH as f64 / plain, "gflops": g_plain },
            "sadm": { "msPerStep": sadm * 1e3, "imagesPerSec": BATCH as f64 / sadm, "gflops": g_sadm },
            "sadmOverhead": sadm / plain - 1.0,
        }));
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/results/step_time.json");
    std::fs::create_dir_all(out.parent().expect("has a parent")).map_err(|e| sadm_core::Error::io("benches/results", e))?;
    let json = serde_json::json!({ "gemmPeakGflops": peak, "gemmPeakSize": peak_n, "threads": threads, "rows": rows });
    std::fs::write(&out, serde_json::to_string_pretty(&json).expect("JSON")).map_err(|e| sadm_core::Error::io("step_time.json", e))?;
    println!("\nwrote {}", out.canonicalize().unwrap_or(out).display());
    Ok(())
}
