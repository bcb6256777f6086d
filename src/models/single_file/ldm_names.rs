//! The rename table from the original Stable Diffusion code's module names (CompVis' `ldm`:
//! `openaimodel.py`'s UNet, `model.py`'s autoencoder, the `FrozenCLIPEmbedder`) to diffusers' and
//! transformers', written from diffusers' single-file loaders (`convert_ldm_unet_checkpoint`,
//! `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`). Each function takes a name with
//! its single-file prefix removed and returns None for a name it does not know, which the
//! caller shows under its stored name so the loader lists it as unexpected.

/// What a stored tensor becomes.
#[derive(Debug, PartialEq)]
pub(super) enum Target {
    /// The tensor under this name, as stored.
    Tensor(String),
    /// A 1×1 conv weight (O, I, 1, 1) the diffusers module reads as a linear weight (O, I).
    Linear(String),
    /// Part of the checkpoint no network here reads (the VAE's encoder).
    Ignored,
}

/// `prefix` of `name` replaced by its entry in `table` (pairs of LDM, diffusers prefixes).
fn renamed(name: &str, table: &[(&str, &str)]) -> Option<String> {
    table
        .iter()
        .find_map(|(ldm, ours)| name.strip_prefix(ldm).map(|rest| format!("{ours}{rest}")))
}

/// `"3.0.op.weight"` → `(3, "0.op.weight")`.
fn index(name: &str) -> Option<(usize, &str)> {
    let (number, rest) = name.split_once('.')?;
    Some((number.parse().ok()?, rest))
}

/// The UNet's `ResBlock` (in_layers: norm, SiLU, conv; out_layers: norm, SiLU, dropout, conv)
/// as diffusers' `ResnetBlock2D`.
const UNET_RESNET: [(&str, &str); 6] = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
];

/// The UNet's layers outside its blocks.
const UNET_TOP: [(&str, &str); 5] = [
    ("input_blocks.0.0.", "conv_in."),
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
];

/// A tensor of the UNet (`model.diffusion_model.`), whose blocks hold `per_block` resnets
/// (`layers_per_block`). The LDM UNet numbers its layers in one list per side: after
/// `input_blocks.0` (conv_in), each level is `per_block` rows of [resnet, transformer?] and, but
/// for the last level, a row holding the downsampler (`op`); the output side has `per_block + 1`
/// rows per level, the last of each (but the last level's) ending in the upsampler (`conv`),
/// second or third in the row as the level has a transformer or not. The transformers' own
/// names (SpatialTransformer, with 1×1-conv proj_in/proj_out in SD 1.x) are diffusers'.
pub(super) fn unet(name: &str, per_block: usize) -> Option<String> {
    if let Some(top) = renamed(name, &UNET_TOP) {
        return Some(top);
    }
    let per_level = per_block + 1;
    let (list, rest) = name.split_once('.')?;
    let (row, rest) = index(rest)?;
    match list {
        "middle_block" => match row {
            0 | 2 => Some(format!(
                "mid_block.resnets.{}.{}",
                row / 2,
                renamed(rest, &UNET_RESNET)?
            )),
            1 => Some(format!("mid_block.attentions.0.{rest}")),
            _ => None,
        },
        "input_blocks" if row > 0 => {
            let (level, j) = ((row - 1) / per_level, (row - 1) % per_level);
            let block = format!("down_blocks.{level}");
            match (index(rest)?, j == per_block) {
                ((0, op), true) => Some(format!(
                    "{block}.downsamplers.0.conv.{}",
                    op.strip_prefix("op.")?
                )),
                ((0, resnet), false) => Some(format!(
                    "{block}.resnets.{j}.{}",
                    renamed(resnet, &UNET_RESNET)?
                )),
                ((1, attention), false) => Some(format!("{block}.attentions.{j}.{attention}")),
                _ => None,
            }
        }
        "output_blocks" => {
            let (level, j) = (row / per_level, row % per_level);
            let block = format!("up_blocks.{level}");
            match index(rest)? {
                (0, resnet) => Some(format!(
                    "{block}.resnets.{j}.{}",
                    renamed(resnet, &UNET_RESNET)?
                )),
                (1 | 2, conv) if conv.starts_with("conv.") && j == per_block => {
                    Some(format!("{block}.upsamplers.0.{conv}"))
                }
                (1, attention) => Some(format!("{block}.attentions.{j}.{attention}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The decoder's layers outside its blocks.
const VAE_TOP: [(&str, &str); 5] = [
    ("conv_in.", "conv_in."),
    ("conv_out.", "conv_out."),
    ("norm_out.", "conv_norm_out."),
    ("mid.block_1.", "mid_block.resnets.0."),
    ("mid.block_2.", "mid_block.resnets.1."),
];

/// The mid block's attention: group norm and four 1×1 convs, diffusers' linear projections.
const VAE_ATTENTION: [(&str, &str); 5] = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
];

/// A tensor of the VAE (`first_stage_model.`) with `levels` resolutions; the encoder and
/// `quant_conv` are ignored, as sampling only decodes. The LDM decoder numbers its levels from
/// the lowest resolution, `up.{levels - 1}` first, where diffusers numbers them in the order
/// they run.
pub(super) fn vae(name: &str, levels: usize) -> Option<Target> {
    if name.starts_with("encoder.") || name.starts_with("quant_conv.") {
        return Some(Target::Ignored);
    }
    if name.starts_with("post_quant_conv.") {
        return Some(Target::Tensor(name.into()));
    }
    let decoder = name.strip_prefix("decoder.")?;
    if let Some(attention) = decoder.strip_prefix("mid.attn_1.") {
        let name = format!(
            "decoder.mid_block.attentions.0.{}",
            renamed(attention, &VAE_ATTENTION)?
        );
        return Some(
            match attention.starts_with("norm.") || !name.ends_with(".weight") {
                true => Target::Tensor(name),
                false => Target::Linear(name),
            },
        );
    }
    let inner = match renamed(decoder, &VAE_TOP) {
        Some(top) => top,
        None => {
            let (level, rest) = index(decoder.strip_prefix("up.")?)?;
            let block = format!("up_blocks.{}", levels.checked_sub(level + 1)?);
            match rest.strip_prefix("upsample.") {
                Some(conv) => format!("{block}.upsamplers.0.{conv}"),
                None => {
                    let (j, resnet) = index(rest.strip_prefix("block.")?)?;
                    format!("{block}.resnets.{j}.{resnet}")
                }
            }
        }
    };
    // The decoder's resnets keep their norm and conv names; only the shortcut is renamed.
    Some(Target::Tensor(format!(
        "decoder.{}",
        inner.replace("nin_shortcut.", "conv_shortcut.")
    )))
}

/// A tensor of CLIP's text model (`cond_stage_model.transformer.`): transformers' own names,
/// under `text_model.` as transformers 4 wrote them (read here without it, as transformers 5
/// names them). The position-id buffer is ignored: positions are 0..77 by construction (some
/// merged checkpoints carry it corrupted, as float).
pub(super) fn clip(name: &str) -> Target {
    let name = name.strip_prefix("text_model.").unwrap_or(name);
    match name {
        "embeddings.position_ids" => Target::Ignored,
        _ => Target::Tensor(name.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SD 1.5's layout (two resnets per block) at the rows where the numbering turns.
    #[test]
    fn sd15_unet_rows() {
        for (ldm, ours) in [
            ("input_blocks.0.0.weight", "conv_in.weight"),
            (
                "input_blocks.2.1.proj_in.weight",
                "down_blocks.0.attentions.1.proj_in.weight",
            ),
            (
                "input_blocks.3.0.op.bias",
                "down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "middle_block.2.emb_layers.1.weight",
                "mid_block.resnets.1.time_emb_proj.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.2.conv.weight",
                "up_blocks.1.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.1.norm.weight",
                "up_blocks.1.attentions.2.norm.weight",
            ),
            (
                "output_blocks.11.0.out_layers.3.bias",
                "up_blocks.3.resnets.2.conv2.bias",
            ),
        ] {
            assert_eq!(unet(ldm, 2).as_deref(), Some(ours), "{ldm}");
        }
        for unknown in [
            "input_blocks.3.1.norm.weight",
            "output_blocks.1.3.conv.weight",
            "label_emb.0.0.weight",
        ] {
            assert_eq!(unet(unknown, 2), None, "{unknown}");
        }
    }

    #[test]
    fn vae_levels_reverse_and_attention_is_linear() {
        let t = |s: &str| Some(Target::Tensor(s.into()));
        assert_eq!(
            vae("decoder.up.3.block.0.nin_shortcut.weight", 4),
            t("decoder.up_blocks.0.resnets.0.conv_shortcut.weight")
        );
        assert_eq!(
            vae("decoder.up.1.upsample.conv.bias", 4),
            t("decoder.up_blocks.2.upsamplers.0.conv.bias")
        );
        assert_eq!(
            vae("decoder.mid.attn_1.proj_out.weight", 4),
            Some(Target::Linear(
                "decoder.mid_block.attentions.0.to_out.0.weight".into()
            ))
        );
        assert_eq!(
            vae("decoder.mid.attn_1.norm.weight", 4),
            t("decoder.mid_block.attentions.0.group_norm.weight")
        );
        assert_eq!(
            vae("encoder.down.0.block.0.conv1.weight", 4),
            Some(Target::Ignored)
        );
        assert_eq!(vae("decoder.up.4.block.0.conv1.weight", 4), None);
    }
}
