//! The decoder of diffusers' AutoencoderKL (Stable Diffusion's VAE) against PyTorch float64 at
//! random weights (tests/fixtures/vae_*.safetensors, `python -m tools.fixtures.vae`): latents in
//! the diffusion's scale to images, through a run's decode stage.

mod common;

use common::{assert_close, fixture, gpu, read, read_safetensors, to_f64};
use wgsl_diff::models::diffusers::autoencoder_kl::AutoencoderKlDecoder;
use wgsl_diff::models::{Decoder, MapSpace, WeightFile};

#[test]
fn decode_matches_diffusers() {
    let g = gpu();
    for (name, factor) in [("sd_tiny", 8), ("two_levels", 2)] {
        let file = WeightFile::open(&fixture(&format!("vae_{name}.safetensors"))).unwrap();
        let vae = AutoencoderKlDecoder::load(g, &file).unwrap();
        assert_eq!(vae.map_space(), MapSpace::Latent { factor });
        let io = read_safetensors(&fixture(&format!("vae_{name}_io.safetensors")));
        let (shape, latents) = &io["latents"];
        let images = vae.decode(g, &g.upload(shape, latents).unwrap()).unwrap();
        let (want_shape, want) = &io["images"];
        assert_eq!(images.shape(), &want_shape[..]);
        assert_eq!(
            vae.image_shape([shape[1], shape[2], shape[3]]),
            [want_shape[1], want_shape[2], want_shape[3]]
        );
        assert_close(
            &format!("vae_{name}"),
            &read(&images),
            &to_f64(want),
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn unsupported_autoencoders_are_refused() {
    use common::weights_file::WeightsFile;
    let g = gpu();
    let dir = common::tmp_dir("vae-refused");
    for (key, value, expected) in [
        ("shift_factor", serde_json::json!(0.1159), "shift_factor"),
        (
            "up_block_types",
            serde_json::json!([
                "UpDecoderBlock2D",
                "UpDecoderBlock2D",
                "UpDecoderBlock2D",
                "X"
            ]),
            "UpDecoderBlock2D",
        ),
    ] {
        let mut file = WeightsFile::read(&fixture("vae_sd_tiny.safetensors"));
        file.edit_meta_json("config", key, Some(value));
        let path = dir.join(format!("{key}.safetensors"));
        file.write(&path);
        let err = AutoencoderKlDecoder::load(g, &WeightFile::open(&path).unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(expected), "{key}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
