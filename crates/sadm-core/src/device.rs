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
