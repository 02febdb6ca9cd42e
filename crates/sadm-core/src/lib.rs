//! sadm-core: structure-guided adversarial training (SADM, Yang et al., CVPR 2024) of diffusion transformers
//! on candle. See `shared/design.md` for the method and the layout.
pub mod classifier;
pub mod config;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod error;
pub mod flops;
pub mod io;
mod inception;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod train;

pub use candle_core as candle;
pub use config::CoreConfig;
pub use error::{Error, Result};
pub use train::{StepParams, StepStats, Trainer};
