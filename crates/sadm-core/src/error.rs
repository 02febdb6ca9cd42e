use std::path::PathBuf;

/// Every failure the core reports. Messages name the cause and, where there is one, the fix: they reach users
/// verbatim through the addon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config: {0}")]
    Config(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("device: {0}")]
    Device(String),
    #[error("numerical error: {0}")]
    Numerical(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("internal error in {0}: {1} (please report this as a bug)")]
    Internal(String, String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), msg: msg.into() }
    }
}

/// The largest integer a JavaScript number holds exactly (`Number.MAX_SAFE_INTEGER`): seeds stop there.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A number as JavaScript prints it (NaN, Infinity, 0.001), for messages about values that come from JS.
pub fn js_number(v: f64) -> String {
    match v {
        v if v.is_nan() => "NaN".into(),
        f64::INFINITY => "Infinity".into(),
        f64::NEG_INFINITY => "-Infinity".into(),
        v => format!("{v}"),
    }
}

/// `v` when it is finite and in [min, max]; else an input error naming `what` and the range, e.g.
/// `step: lr must be a finite number between 0 and 1 (got NaN)`.
pub fn check_range(what: &str, v: f64, min: f64, max: f64) -> Result<f64> {
    if v.is_finite() && v >= min && v <= max {
        return Ok(v);
    }
    Err(Error::Input(format!("{what} must be a finite number between {} and {} (got {})", js_number(min), js_number(max), js_number(v))))
}

/// `v` as an integer when it is one in [min, max]; else an input error naming `what` and the range.
pub fn check_integer(what: &str, v: f64, min: u64, max: u64) -> Result<u64> {
    if v.is_finite() && v.fract() == 0.0 && v >= min as f64 && v <= max as f64 {
        return Ok(v as u64);
    }
    Err(Error::Input(format!("{what} must be an integer between {min} and {max} (got {})", js_number(v))))
}

/// Runs `f`, turning a panic into [`Error::Internal`] so that it never unwinds into a caller that cannot take it
/// (the Node addon: a panic crossing into V8 would abort the process).
pub fn catch_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Internal(what.into(), msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks_name_the_value_as_javascript_prints_it() {
        assert_eq!(check_range("step: lr", 1e-3, 0.0, 1.0).unwrap(), 1e-3);
        assert_eq!(check_range("step: lr", 0.0, 0.0, 1.0).unwrap(), 0.0);
        let e = |r: Result<f64>| r.unwrap_err().to_string();
        assert_eq!(e(check_range("step: lr", f64::NAN, 0.0, 1.0)), "invalid input: step: lr must be a finite number between 0 and 1 (got NaN)");
        assert!(e(check_range("x", f64::INFINITY, 0.0, 1e300)).ends_with("(got Infinity)"));
        assert!(e(check_range("x", f64::NEG_INFINITY, -1.0, 1.0)).ends_with("between -1 and 1 (got -Infinity)"));
        assert!(e(check_range("x", 10.5, 0.0, 10.0)).ends_with("between 0 and 10 (got 10.5)"));
        assert!(e(check_range("x", -1e-300, 0.0, 10.0)).contains("(got -0.000"));
        assert_eq!(check_integer("s", 7.0, 1, 9).unwrap(), 7);
        assert_eq!(check_integer("s", MAX_SAFE_INTEGER as f64, 0, MAX_SAFE_INTEGER).unwrap(), MAX_SAFE_INTEGER);
        for bad in [0.0, 1.5, 10.0, f64::NAN, -1.0, f64::INFINITY] {
            let m = check_integer("sample: steps", bad, 1, 9).unwrap_err().to_string();
            assert_eq!(m, format!("invalid input: sample: steps must be an integer between 1 and 9 (got {})", js_number(bad)));
        }
    }

    #[test]
    fn panics_become_errors_with_their_message() {
        let e = catch_panic::<()>("step", || panic!("index out of bounds: {}", 3)).unwrap_err().to_string();
        assert_eq!(e, "internal error in step: index out of bounds: 3 (please report this as a bug)");
        let e = catch_panic::<()>("save", || std::panic::panic_any(7u8)).unwrap_err().to_string();
        assert!(e.contains("unknown panic"));
        assert_eq!(catch_panic("ok", || Ok(5)).unwrap(), 5);
    }
}
