//! Algorithm 1 on the GPU: the estimate leaves the trajectory alone, batching the M copies
//! changes nothing, and the three modes agree with their definitions.

mod common;

use common::{assert_close, ddim, fixture_model, gpu, read, to_f64};
use wgsl_diff::gpu::Tensor;
use wgsl_diff::models::{UNet2DModel, WeightFile};
use wgsl_diff::noise::{NoisePlan, NoisePurpose};
use wgsl_diff::ops::{self, UncertaintyMode};
use wgsl_diff::sampling::{sample_batch, BatchSpec, Scheduler, StepHook};
use wgsl_diff::uncertainty::{UncertaintyConfig, UncertaintyEstimator};

fn run(
    model: &UNet2DModel,
    sched: &Scheduler,
    first: usize,
    size: usize,
    hooks: &mut [&mut dyn StepHook],
) -> Vec<f32> {
    let spec = BatchSpec {
        first_index: first,
        size,
        labels: None,
        init_noise: None,
    };
    read(
        &sample_batch(
            gpu(),
            model,
            sched,
            &NoisePlan::new(11),
            spec,
            hooks,
            |_| {},
        )
        .unwrap()
        .x,
    )
}

fn estimator(mode: UncertaintyMode, per_forward: Option<usize>) -> UncertaintyEstimator {
    UncertaintyEstimator::new(UncertaintyConfig {
        copies: 4,
        mode,
        max_copies_per_forward: per_forward,
        keep_maps: 0..usize::MAX,
        ..Default::default()
    })
    .unwrap()
}

fn maps(est: &UncertaintyEstimator) -> Vec<Vec<f32>> {
    est.maps.iter().map(|(_, m)| read(m)).collect()
}

#[test]
fn estimating_uncertainty_does_not_change_the_samples() {
    let (m, s) = (fixture_model("unet_tiny_gray.safetensors"), ddim(5));
    let plain = run(&m, &s, 0, 3, &mut []);
    let mut est = estimator(UncertaintyMode::Centred, None);
    let with = run(&m, &s, 0, 3, &mut [&mut est]);
    assert_eq!(plain, with);
    assert_eq!(est.maps.len(), 5);
    let scores = read(&est.scores(gpu()).unwrap().unwrap());
    assert!(
        scores.iter().all(|s| s.is_finite() && *s > 0.0),
        "{scores:?}"
    );
}

#[test]
fn one_batched_forward_equals_m_separate_forwards() {
    let (m, s) = (fixture_model("unet_tiny_gray.safetensors"), ddim(3));
    let mut batched = estimator(UncertaintyMode::Centred, None);
    let mut separate = estimator(UncertaintyMode::Centred, Some(1));
    let mut pairs = estimator(UncertaintyMode::Centred, Some(3));
    run(&m, &s, 0, 2, &mut [&mut batched]);
    run(&m, &s, 0, 2, &mut [&mut separate]);
    run(&m, &s, 0, 2, &mut [&mut pairs]);
    for ((a, b), c) in maps(&batched).iter().zip(maps(&separate)).zip(maps(&pairs)) {
        assert_close("M·B batch vs M calls", a, &to_f64(&b), 1e-6, 1e-5);
        assert_close(
            "M·B batch vs calls of 3 and 1 copies",
            a,
            &to_f64(&c),
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn maps_and_scores_do_not_depend_on_batching() {
    let (m, s) = (fixture_model("unet_tiny_gray.safetensors"), ddim(3));
    let mut whole = estimator(UncertaintyMode::Centred, None);
    run(&m, &s, 0, 3, &mut [&mut whole]);
    let mut tail = estimator(UncertaintyMode::Centred, None);
    run(&m, &s, 2, 1, &mut [&mut tail]);
    let a = read(&whole.scores(gpu()).unwrap().unwrap());
    let b = read(&tail.scores(gpu()).unwrap().unwrap());
    assert_close("score of sample 2", &b, &[a[2] as f64], 0.0, 1e-5);
}

/// Recomputes each mode on the CPU in f64 from the ε predictions of the copies.
#[test]
fn modes_match_their_definitions() {
    let g = gpu();
    let mut rng = common::Rng::new(9);
    let (b, m, len) = (3, 5, 2 * 7 * 5);
    let eps = rng.vec(b * len);
    let copies = rng.vec(m * b * len);
    let e = g.upload(&[b, 2, 7, 5], &eps).unwrap();
    let c = g.upload(&[m * b, 2, 7, 5], &copies).unwrap();
    for mode in [
        UncertaintyMode::Centred,
        UncertaintyMode::Variance,
        UncertaintyMode::VarianceBiased,
    ] {
        let want = common::reference::uncertainty_map(&eps, &copies, m, mode);
        let got = read(&ops::uncertainty_map(g, &e, &c, mode).unwrap());
        assert_close(&format!("{mode:?}"), &got, &want, 1e-6, 1e-5);
        let sums = read(&ops::sum_per_sample(g, &g.upload(&[b, 2, 7, 5], &got).unwrap()).unwrap());
        let want_sums: Vec<f64> = (0..b)
            .map(|k| got[k * len..(k + 1) * len].iter().map(|&x| x as f64).sum())
            .collect();
        assert_close("per-sample sums", &sums, &want_sums, 1e-6, 1e-6);
    }
}

#[test]
fn perturbation_noise_is_one_stream_per_step_and_copy() {
    let g = gpu();
    let key = NoisePlan::new(5).key(NoisePurpose::Uncertainty, 7, 0);
    let all = read(&ops::normal_copies(g, &[3, 1, 4, 4], 4, key, 10).unwrap());
    for m in 0..4 {
        let one = read(
            &ops::normal(
                g,
                &[3, 1, 4, 4],
                NoisePlan::new(5).key(NoisePurpose::Uncertainty, 7, m),
                10,
            )
            .unwrap(),
        );
        assert_eq!(&all[m * 48..(m + 1) * 48], &one[..], "copy {m}");
    }
}

#[test]
fn window_limits_the_steps_that_are_scored() {
    let (m, s) = (fixture_model("unet_tiny_gray.safetensors"), ddim(6));
    let mut est = UncertaintyEstimator::new(UncertaintyConfig {
        copies: 2,
        start: 2,
        steps: Some(3),
        keep_maps: 0..usize::MAX,
        ..Default::default()
    })
    .unwrap();
    run(&m, &s, 0, 1, &mut [&mut est]);
    let steps: Vec<usize> = est.maps.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, vec![2, 3, 4]);
    let total: Tensor = est.total_map().unwrap().clone();
    let summed: Vec<f64> = (0..total.numel())
        .map(|i| maps(&est).iter().map(|mp| mp[i] as f64).sum())
        .collect();
    assert_close(
        "total map = sum of window maps",
        &read(&total),
        &summed,
        1e-6,
        1e-5,
    );
}

/// Each sampling step, uncertainty estimation included, is one command buffer; nothing is
/// submitted or read back in between.
#[test]
fn every_step_is_one_submission() {
    // A device of its own: tests running in parallel would submit on the shared one.
    let g = &wgsl_diff::gpu::Gpu::new(&Default::default()).unwrap();
    let m = UNet2DModel::load(
        g,
        &WeightFile::open(&common::fixture("unet_tiny_gray.safetensors")).unwrap(),
    )
    .unwrap();
    let s = ddim(4);
    let mut est = estimator(UncertaintyMode::Centred, None);
    let spec = BatchSpec {
        first_index: 0,
        size: 2,
        labels: None,
        init_noise: None,
    };
    g.flush();
    let before = g.submissions();
    let x = sample_batch(g, &m, &s, &NoisePlan::new(1), spec, &mut [&mut est], |_| {}).unwrap();
    assert_eq!(g.submissions() - before, 4);
    drop(x);
}

/// A reference file that is incomplete, misshapen or broken is refused by name, not used.
#[test]
fn broken_reference_files_are_refused() {
    use wgsl_diff::uncertainty::UncertaintyReference;
    let dir = common::tmp_dir("bad-reference");
    let good = UncertaintyReference {
        source: String::new(),
        timesteps: vec![500, 0],
        sample_shape: [1, 2, 2],
        copies: 3,
        images: 4,
        seed: 1,
        posterior_variance_mean: vec![1.0; 8],
        posterior_variance_sd: vec![0.5; 8],
        residual_mean: vec![4.0, 5.0],
        residual_sd: vec![1.0, 2.0],
        typicality_mean: vec![0.0, 0.1],
        typicality_sd: vec![1.0, 1.0],
    };
    let path = dir.join("good.npz");
    good.save(&path).unwrap();
    let back = UncertaintyReference::load(&path).unwrap();
    assert_eq!(back.residual_sd, good.residual_sd);
    assert!(back.check_fits(&[500, 0], [1, 2, 2], 3).is_ok());
    for (timesteps, shape, m) in [
        (&[500][..], [1, 2, 2], 3),
        (&[500, 0], [1, 2, 3], 3),
        (&[500, 0], [1, 2, 2], 5),
    ] {
        let e = back
            .check_fits(timesteps, shape, m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("make one with the run's model"), "{e}");
    }
    let broken = |name: &str, edit: &dyn Fn(&mut UncertaintyReference), needle: &str| {
        let mut r = good.clone();
        edit(&mut r);
        let path = dir.join(format!("{name}.npz"));
        r.save(&path).unwrap();
        let e = UncertaintyReference::load(&path).unwrap_err().to_string();
        assert!(e.contains(needle), "{name}: {e}");
    };
    broken("nan", &|r| r.posterior_variance_mean[3] = f64::NAN, "NaN");
    broken(
        "zero-sd",
        &|r| r.residual_sd[1] = 0.0,
        "spread at step 1 is 0",
    );
    // One array of another length than the steps: rewrite the good file with it.
    let mut arrays = wgsl_diff::npz::read(&path).unwrap();
    let residual = arrays.get_mut("residual_mean").unwrap();
    residual.shape = vec![3];
    residual.data.push(1.0);
    let members: Vec<(&str, &[usize], &[f64])> = arrays
        .iter()
        .map(|(k, a)| (k.as_str(), &a.shape[..], &a.data[..]))
        .collect();
    wgsl_diff::npz::write(&dir.join("shape.npz"), &members).unwrap();
    let e = UncertaintyReference::load(&dir.join("shape.npz"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("residual_mean has shape [3]"), "{e}");
    let e = UncertaintyReference::load(&common::fixture("unet_tiny_gray.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(!e.is_empty());
    wgsl_diff::npz::write(&dir.join("partial.npz"), &[("timesteps", &[1], &[0.0])]).unwrap();
    let e = UncertaintyReference::load(&dir.join("partial.npz"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no array sample_shape"), "{e}");
}
