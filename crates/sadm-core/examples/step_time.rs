//! Times the fused step for a model shape given on the command line:
//! `cargo run --release --example step_time -- HIDDEN DEPTH HEADS PATCH BATCH LAMBDA [DISC_WIDTH]`
use sadm_core::{CoreConfig, StepParams, Trainer};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> sadm_core::Result<()> {
    let a: Vec<f64> = std::env::args().skip(1).map(|s| s.parse().expect("numbers")).collect();
    let mut cfg = CoreConfig::tiny_mnist();
    cfg.model.hidden_size = a[0] as usize;
    cfg.model.depth = a[1] as usize;
    cfg.model.num_heads = a[2] as usize;
    cfg.model.patch_size = a[3] as usize;
    let batch = a[4] as usize;
    let lambda = a[5];
    if let Some(&w) = a.get(6) {
        cfg.discriminator.width = w as usize;
    }
    let mut tr = Trainer::new(cfg, &sadm_core::candle::Device::Cpu)?;
    let x: Vec<f32> = (0..batch * 784).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
    let y: Vec<i32> = (0..batch as i32).map(|i| i % 10).collect();
    let p = StepParams { lambda, lr: 1e-3, disc_lr: 1e-4, ema_decay: 0.999, update_disc: lambda > 0.0 };
    tr.step(&x, &y, &p)?;
    let n = 10;
    let t0 = Instant::now();
    for _ in 0..n {
        tr.step(&x, &y, &p)?;
    }
    let dt = t0.elapsed().as_secs_f64() / n as f64;
    println!("params {:?} step {:.1} ms, {:.0} img/s", tr.num_params(), dt * 1e3, batch as f64 / dt);
    Ok(())
}
