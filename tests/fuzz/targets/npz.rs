//! `.npz` archives (`npz::read`: the z-scored modes' reference) and FID statistics
//! (`fid::read_statistics`: `mu` and `sigma` as pytorch-fid saves them).

use super::{judge, put, Expect, Target, Verdict};
use crate::mutate::{mutate_bytes, Rng};
use crate::npy_file::NpyPlan;
use crate::zip_file::{self, Damage, Member, Style};
use nalgebra::DMatrix;
use std::collections::BTreeMap;
use std::path::Path;
use wgsl_diff::npz::NpzArray;

/// An archive of `arrays` in a random valid style, then sometimes a field of its structure or a
/// byte changed. Returns the bytes, what was done and what it means.
fn archive(rng: &mut Rng, members: Vec<Member>) -> (Vec<u8>, String, Expect) {
    let style = Style {
        zip64_sizes: rng.chance(0.2),
        zip64_end: rng.chance(0.2),
        comment: if rng.chance(0.1) { rng.below(100) } else { 0 },
    };
    let (mut bytes, layout) = zip_file::build(&members, style);
    let mut what = format!("{style:?}");
    let mut expect = Expect::Accept;
    if rng.chance(0.5) {
        match zip_file::damage(rng, &mut bytes, &layout) {
            Damage::Fatal(w) => {
                expect = Expect::Refuse(w.clone());
                what += &format!("; {w}");
            }
            Damage::Harmless(w) => {
                expect = Expect::Either;
                what += &format!("; {w}");
            }
        }
    }
    if rng.chance(0.25) {
        what += &format!("; {}", mutate_bytes(rng, &mut bytes));
        expect = Expect::Either;
    }
    (bytes, what, expect)
}

/// Every array read under a name the archive gave it holds that member's data exactly.
fn same_members(
    read: &BTreeMap<String, NpzArray>,
    want: &BTreeMap<String, NpzArray>,
) -> Result<(), String> {
    let bits = |a: &NpzArray| a.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for (name, array) in read {
        if array.shape.iter().product::<usize>() != array.data.len() {
            return Err(format!(
                "{name}: shape {:?} for {}",
                array.shape,
                array.data.len()
            ));
        }
        if let Some(w) = want.get(name) {
            if w.shape != array.shape || bits(w) != bits(array) {
                return Err(format!("{name} differs from the member written"));
            }
        }
    }
    Ok(())
}

/// A member `name.npy` holding `values` of `shape`, as float64 or float32.
fn member(rng: &mut Rng, name: &str, shape: &[usize], values: &[f64]) -> (Member, NpzArray) {
    let (plan, data) = match rng.chance(0.8) {
        true => (NpyPlan::f64s(shape, values), values.to_vec()),
        false => {
            let narrow: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            let data = narrow.iter().map(|&v| v as f64).collect();
            (NpyPlan::f32s(shape, &narrow), data)
        }
    };
    let m = Member {
        name: format!("{name}.npy"),
        data: plan.encode(),
        deflate: rng.chance(0.6),
    };
    let a = NpzArray {
        shape: shape.to_vec(),
        data,
    };
    (m, a)
}

pub struct Npz;

impl Target for Npz {
    fn name(&self) -> &'static str {
        "npz"
    }

    fn case(&self, rng: &mut Rng, dir: &Path) -> Verdict {
        let mut members = Vec::new();
        let mut want = BTreeMap::new();
        for k in 0..rng.below(4) {
            let shape: Vec<usize> = (0..rng.below(3)).map(|_| rng.below(4) + 1).collect();
            let n = shape.iter().product::<usize>();
            let values: Vec<f64> = (0..n).map(|_| rng.u64() as f64 / 7e15).collect();
            let (m, a) = member(rng, &format!("array{k}"), &shape, &values);
            members.push(m);
            want.insert(format!("array{k}"), a);
        }
        let mut clash = None;
        if !members.is_empty() && rng.chance(0.1) {
            // The same array name twice (with or without `.npy`): which one is meant?
            let k = rng.below(members.len());
            let name = match rng.chance(0.5) {
                true => members[k].name.clone(),
                false => members[k].name.trim_end_matches(".npy").to_string(),
            };
            members.push(Member {
                name: name.clone(),
                data: NpyPlan::f64s(&[1], &[7.0]).encode(),
                deflate: false,
            });
            clash = Some(name);
        }
        let (bytes, what, mut expect) = archive(rng, members);
        if let (Some(name), Expect::Accept) = (&clash, &expect) {
            expect = Expect::Refuse(format!("two members named {name}"));
        }
        let path = put(dir, "a.npz", &bytes);
        judge(wgsl_diff::npz::read(&path), &expect, &what, |read| {
            match clash {
                // The clashing names are not the members' own: only the others are compared.
                Some(_) => Ok(()),
                None => same_members(&read, &want),
            }
        })
    }
}

pub struct FidStatistics;

/// Whether `sigma` is a covariance: symmetric and positive semi-definite, both within 1e-6 of
/// its scale (checked by a Cholesky factorisation of σ + 1e-6·scale·I, independently of the
/// crate's eigenvalue test).
fn is_covariance(d: usize, sigma: &[f64]) -> bool {
    let m = DMatrix::from_row_slice(d, d, sigma);
    let scale = m
        .iter()
        .fold(0f64, |a, v| a.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    let symmetric = (&m - m.transpose()).iter().all(|v| v.abs() <= 1e-6 * scale);
    let shifted = &m + DMatrix::identity(d, d) * (1e-6 * scale * d as f64);
    symmetric && shifted.cholesky().is_some()
}

impl Target for FidStatistics {
    fn name(&self) -> &'static str {
        "fid_statistics"
    }

    fn case(&self, rng: &mut Rng, dir: &Path) -> Verdict {
        let d = rng.below(5) + 1;
        let a = DMatrix::from_fn(d, d, |_, _| rng.u64() as f64 / u64::MAX as f64 - 0.5);
        let mut sigma: Vec<f64> = (&a * a.transpose()).transpose().iter().copied().collect();
        let mut mu: Vec<f64> = (0..d).map(|_| rng.u64() as f64 / 1e19).collect();
        let mut mu_shape = vec![d];
        let mut sigma_shape = vec![d, d];
        let mut what = String::from("valid");
        let mut expect = Expect::Accept;
        match rng.below(10) {
            0 => {
                let v = *rng.pick(&[f64::NAN, f64::INFINITY, -f64::INFINITY]);
                let k = rng.below(d * d);
                sigma[k] = v;
                what = format!("sigma[{k}] = {v}");
                expect = Expect::Refuse(what.clone());
            }
            1 => {
                let v = *rng.pick(&[f64::NAN, 1e300, -1e300, f64::INFINITY]);
                mu[rng.below(d)] = v;
                what = format!("a mean of {v:e}");
                expect = match v.is_finite() {
                    true => Expect::Either,
                    false => Expect::Refuse(what.clone()),
                };
            }
            2 if d > 1 => {
                let delta = *rng.pick(&[1e-12, 1e-3, 1.0]);
                sigma[1] += delta;
                what = format!("sigma[0][1] off its transpose by {delta}");
                expect = Expect::Either;
            }
            3 => {
                sigma.iter_mut().for_each(|v| *v = -*v);
                sigma[0] -= 1.0;
                what = "sigma negated".into();
                expect = Expect::Refuse(what.clone());
            }
            4 => {
                mu_shape = vec![d, 1];
                what = "mu of shape (d, 1)".into();
                expect = Expect::Refuse(what.clone());
            }
            5 => {
                sigma_shape = vec![d * d];
                what = "sigma flat".into();
                expect = Expect::Refuse(what.clone());
            }
            6 => {
                sigma.iter_mut().for_each(|v| *v *= 1e300);
                what = "sigma scaled by 1e300".into();
                expect = Expect::Either;
            }
            _ => {}
        }
        let (m_mu, _) = member(rng, "mu", &mu_shape, &mu);
        let (m_sigma, _) = member(rng, "sigma", &sigma_shape, &sigma);
        let mut members = vec![m_mu, m_sigma];
        if rng.chance(0.1) {
            members.remove(rng.below(2));
            what += "; a member missing";
            expect = Expect::Refuse("mu or sigma missing".into());
        }
        let (bytes, zip_what, zip_expect) = archive(rng, members);
        what += &format!("; {zip_what}");
        expect = match (expect, zip_expect) {
            (Expect::Refuse(why), _) | (_, Expect::Refuse(why)) => Expect::Refuse(why),
            (Expect::Either, _) | (_, Expect::Either) => Expect::Either,
            _ => Expect::Accept,
        };
        let path = put(dir, "stats.npz", &bytes);
        judge(
            wgsl_diff::evaluation::fid::read_statistics(&path),
            &expect,
            &what,
            |g| {
                let d = g.dim();
                let sigma: Vec<f64> = g.covariance.transpose().iter().copied().collect();
                if !g.mean.iter().all(|v| v.is_finite()) || !is_covariance(d, &sigma) {
                    return Err("statistics that are not a Gaussian's".into());
                }
                match wgsl_diff::metrics::frechet_distance(&g, &g) {
                    Ok(fd)
                        if !(fd.is_finite()
                            && fd <= 1e-6 * g.covariance.trace().abs().max(1.0)) =>
                    {
                        Err(format!("a distance of {fd} to itself"))
                    }
                    _ => Ok(()),
                }
            },
        )
    }
}
