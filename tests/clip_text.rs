//! transformers' CLIPTextModel against PyTorch float64 at random weights
//! (tests/fixtures/clip_text_*.safetensors, `python -m tools.fixtures.clip_text`): embeddings,
//! causal pre-norm encoder layers with quick_gelu or exact GELU, the final layer norm.

mod common;

use common::{assert_close, fixture, gpu, read, read_safetensors, to_f64};
use wgsl_diff::models::clip::ClipTextModel;
use wgsl_diff::models::WeightFile;

#[test]
fn last_hidden_state_matches_transformers() {
    let g = gpu();
    for name in ["quick", "gelu"] {
        let file = WeightFile::open(&fixture(&format!("clip_text_{name}.safetensors"))).unwrap();
        let model = ClipTextModel::load(g, &file).unwrap();
        let io = read_safetensors(&fixture(&format!("clip_text_{name}_io.safetensors")));
        let (shape, ids) = &io["input_ids"];
        let got = model.forward(g, &g.upload(shape, ids).unwrap()).unwrap();
        let (want_shape, want) = &io["last_hidden_state"];
        assert_eq!(got.shape(), &want_shape[..]);
        assert_close(
            &format!("clip_text_{name}"),
            &read(&got),
            &to_f64(want),
            1e-4,
            1e-4,
        );
    }
}

/// Stable Diffusion checkpoints (transformers 4) name the tensors `text_model.…`: the same
/// weights load either way; an activation the model does not implement is refused by name.
#[test]
fn prefixed_names_load_and_bad_configs_are_refused() {
    use common::weights_file::WeightsFile;
    let g = gpu();
    let dir = common::tmp_dir("clip-text");
    let plain = WeightsFile::read(&fixture("clip_text_quick.safetensors"));
    let mut prefixed = plain.clone();
    for name in plain.tensor_names() {
        let entry = prefixed.header.remove(&name).unwrap();
        prefixed.header.insert(format!("text_model.{name}"), entry);
    }
    prefixed.write(&dir.join("prefixed.safetensors"));
    let io = read_safetensors(&fixture("clip_text_quick_io.safetensors"));
    let (shape, ids) = &io["input_ids"];
    let ids = g.upload(shape, ids).unwrap();
    let run = |path: &std::path::Path| {
        let model = ClipTextModel::load(g, &WeightFile::open(path).unwrap()).unwrap();
        read(&model.forward(g, &ids).unwrap())
    };
    assert_eq!(
        run(&dir.join("prefixed.safetensors")),
        run(&fixture("clip_text_quick.safetensors"))
    );
    let mut relu = plain.clone();
    relu.edit_meta_json("config", "hidden_act", Some(serde_json::json!("relu")));
    relu.write(&dir.join("relu.safetensors"));
    let err = ClipTextModel::load(g, &WeightFile::open(&dir.join("relu.safetensors")).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("hidden_act \"relu\""), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A token table larger than one storage binding (SD 1.5's is 49,408 × 768 = 145 MiB, over
/// lavapipe's 128 MiB) is held in blocks of rows, each id's row gathered from its block: here
/// the quick fixture's 512 × 32 table on a device limited to 100 rows a tensor (6 blocks), read
/// back row for row against the file, ids at the blocks' edges included.
#[test]
fn a_token_table_over_one_binding_is_looked_up_in_blocks() {
    use wgsl_diff::gpu::{AdapterChoice, Gpu};
    use wgsl_diff::models::layers::Embedding;
    let (vocab, width) = (512, 32);
    let g = Gpu::new(&AdapterChoice::Default)
        .unwrap()
        .with_max_tensor_bytes((100 * width * 4) as u64);
    let file = WeightFile::open(&fixture("clip_text_quick.safetensors")).unwrap();
    let vb = file.var_builder(&g);
    let table = Embedding::load(&vb.pp("embeddings").pp("token_embedding"), vocab, width).unwrap();
    let ids = [0.0f32, 99.0, 100.0, 101.0, 399.0, 400.0, 511.0, 250.0];
    let rows = table
        .forward(&g, &g.upload(&[ids.len()], &ids).unwrap())
        .unwrap();
    let got = common::read_from(&g, &rows);
    let all = read_safetensors(&fixture("clip_text_quick.safetensors"));
    let data = &all["embeddings.token_embedding.weight"].1;
    for (b, &id) in ids.iter().enumerate() {
        let id = id as usize;
        assert_eq!(
            &got[b * width..(b + 1) * width],
            &data[id * width..(id + 1) * width],
            "row of id {id}"
        );
    }
}
