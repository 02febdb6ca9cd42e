//! Training-step throughput of the MNIST presets, plain (λ = 0) against SADM (λ > 0) in the same run, so the
//! SADM overhead is a ratio that machine noise affects less than absolute times.
//!
//! `cargo bench -p sadm-core --bench step_time` (set RAYON_NUM_THREADS to pin the thread count).
use sadm_core::candle::Device;
use sadm_core::{CoreConfig, StepParams, Trainer};
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

fn main() -> sadm_core::Result<()> {
    println!("| preset | DiT params | λ = 0: ms/step | img/s | λ = 0.1: ms/step | img/s | SADM overhead |");
    println!("|---|---|---|---|---|---|---|");
    for (name, hidden, depth, heads) in PRESETS {
        let mut cfg = CoreConfig::tiny_mnist();
        (cfg.model.hidden_size, cfg.model.depth, cfg.model.num_heads) = (hidden, depth, heads);
        (cfg.discriminator.patch_size, cfg.discriminator.width, cfg.discriminator.proj_dim) = (7, 64, 64);
        let mut tr = Trainer::new(cfg, &Device::Cpu)?;
        let plain = seconds_per_step(&mut tr, 0.0)?;
        let sadm = seconds_per_step(&mut tr, 0.1)?;
        println!(
            "| {name} | {:.2}M | {:.0} | {:.0} | {:.0} | {:.0} | {:+.0}% |",
            tr.num_params().0 as f64 / 1e6,
            plain * 1e3,
            BATCH as f64 / plain,
            sadm * 1e3,
            BATCH as f64 / sadm,
            (sadm / plain - 1.0) * 100.0
        );
    }
    Ok(())
}
