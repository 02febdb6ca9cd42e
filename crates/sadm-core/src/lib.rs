//! sadm-core: structure-guided adversarial training (SADM, Yang et al., CVPR 2024) of diffusion transformers
//! on candle. See `shared/design.md` for the method and the layout.
pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod discriminator;
pub mod dit;
pub mod error;
pub mod flops;
mod inception;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod train;

pub use candle_core as candle;
pub use config::CoreConfig;
pub use error::{Error, Result};
pub use train::{StepParams, StepStats, Trainer};
