//! Weights on disk: sadm's checkpoint directories, PyTorch's `torch.save` files, and DiT weights files.
pub mod checkpoint;
pub mod pth;
pub mod weights;
