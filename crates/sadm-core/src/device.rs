//! Device names as users write them: "cpu", "cuda", "cuda:N".
use crate::error::{Error, Result};
use candle_core::Device;

pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim();
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::Device(format!("unknown device '{name}': use \"cpu\" or \"cuda:N\"")))?,
        None => return Err(Error::Device(format!("unknown device '{name}': use \"cpu\" or \"cuda:N\""))),
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::Device(format!(
            "'{name}' needs the CUDA build of sadm, but this binary was built for the CPU only; use device \"cpu\" or install the CUDA package"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| Error::Device(format!("cannot open '{name}': {e}")))
}

/// Devices this build can use, as names `parse_device` accepts.
pub fn available_devices() -> Vec<String> {
    let mut out = vec!["cpu".to_string()];
    if cfg!(feature = "cuda") {
        for i in 0..16 {
            if Device::new_cuda(i).is_ok() {
                out.push(format!("cuda:{i}"));
            } else {
                break;
            }
        }
    }
    out
}

pub fn build_features() -> Vec<String> {
    let mut f = vec!["cpu".to_string()];
    if cfg!(feature = "cuda") {
        f.push("cuda".into());
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_explains_errors() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        let e = parse_device("gpu").unwrap_err().to_string();
        assert!(e.contains("unknown device 'gpu'"), "{e}");
        assert!(parse_device("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(parse_device("cuda:0").unwrap_err().to_string().contains("CPU only"));
    }
}

/// Runs `f` on a thread of the rayon pool that candle's matmuls and sadm's kernels parallelise over, blocking the
/// caller. From any other thread (Node's libuv pool, a bench's main thread), the caller would otherwise compute
/// the serial parts while the pool's idle workers spin: one thread more than there are cores, and on a 2-core
/// machine the spinning steals the caller's core.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("the pool ran the closure")
}

/// Process-wide CPU threading defaults; call once at start-up, before the first tensor op (the addon does it when
/// it loads). candle's element-wise ops run on a pool of its own whose workers spin 25,000 rounds after every op
/// before they park; next to rayon's pool (matmuls, sadm's kernels) that keeps one more thread busy than there are
/// cores, and on 2 cores a training step ran 15–25 % slower. A value the user set is kept.
pub fn init_cpu_threads() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
}
