//! Weights on disk: sadm's checkpoint directories.
pub mod checkpoint;
pub mod pth;
