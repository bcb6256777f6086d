//! Stable Diffusion 1.x's configs, which a single file does not carry: those of
//! runwayml/stable-diffusion-v1-5's diffusers folder (`unet/config.json`, `vae/config.json`,
//! `text_encoder/config.json`, `scheduler/scheduler_config.json`) without diffusers' bookkeeping
//! keys (but the scheduler's class) or transformers' generic ones. Versions 1.1 to 1.5 share one architecture (ViT-L/14's
//! text tower, a 768-wide context) and one training schedule, so these fit every SD 1.x
//! text-to-image single file.

use super::SingleFileConfigs;
use serde_json::json;

impl Default for SingleFileConfigs {
    fn default() -> Self {
        let four = |block: &'static str| vec![block; 4];
        SingleFileConfigs {
            unet: json!({
                "act_fn": "silu",
                "attention_head_dim": 8,
                "block_out_channels": [320, 640, 1280, 1280],
                "center_input_sample": false,
                "cross_attention_dim": 768,
                "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                     "CrossAttnDownBlock2D", "DownBlock2D"],
                "downsample_padding": 1,
                "flip_sin_to_cos": true,
                "freq_shift": 0,
                "in_channels": 4,
                "layers_per_block": 2,
                "mid_block_scale_factor": 1,
                "norm_eps": 1e-5,
                "norm_num_groups": 32,
                "out_channels": 4,
                "sample_size": 64,
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                   "CrossAttnUpBlock2D"],
            }),
            vae: json!({
                "act_fn": "silu",
                "block_out_channels": [128, 256, 512, 512],
                "down_block_types": four("DownEncoderBlock2D"),
                "in_channels": 3,
                "latent_channels": 4,
                "layers_per_block": 2,
                "norm_num_groups": 32,
                "out_channels": 3,
                "sample_size": 512,
                "scaling_factor": 0.18215,
                "up_block_types": four("UpDecoderBlock2D"),
            }),
            text_encoder: json!({
                "vocab_size": 49408,
                "hidden_size": 768,
                "intermediate_size": 3072,
                "num_hidden_layers": 12,
                "num_attention_heads": 12,
                "max_position_embeddings": 77,
                "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5,
            }),
            scheduler: json!({
                "_class_name": "PNDMScheduler",
                "beta_end": 0.012,
                "beta_schedule": "scaled_linear",
                "beta_start": 0.00085,
                "clip_sample": false,
                "num_train_timesteps": 1000,
                "set_alpha_to_one": false,
                "skip_prk_steps": true,
                "steps_offset": 1,
                "trained_betas": null,
            }),
        }
    }
}
