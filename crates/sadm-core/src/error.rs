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
    fn panics_become_errors_with_their_message() {
        let e = catch_panic::<()>("step", || panic!("index out of bounds: {}", 3)).unwrap_err().to_string();
        assert_eq!(e, "internal error in step: index out of bounds: 3 (please report this as a bug)");
        let e = catch_panic::<()>("save", || std::panic::panic_any(7u8)).unwrap_err().to_string();
        assert!(e.contains("unknown panic"));
        assert_eq!(catch_panic("ok", || Ok(5)).unwrap(), 5);
    }
}
