//! diffusers' pixel-space `UNet2DModel`, mirroring diffusers' file layout: [`unet_2d`] (the
//! model and its config) is built from [`unet_2d_blocks`], which are built from [`resnet`],
//! [`attention`] and [`embeddings`] modules on the shared [`layers`](super::layers)
//! primitives. Each module also has a saving forward (its output and a small tape of what its
//! backward needs) and a backward giving the gradient with respect to its input only; [`vjp`]
//! runs them over a batch for gradient guidance.

pub mod attention;
pub mod autoencoder_kl;
pub mod embeddings;
pub mod resnet;
pub mod transformer_2d;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;
pub mod vjp;
