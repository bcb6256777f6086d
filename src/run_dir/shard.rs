//! Which part of a run one worker makes: `--shard I/N` by hand, or from the task index a job
//! array gives each worker (Slurm's `SLURM_ARRAY_TASK_*`, a Kubernetes Indexed Job's
//! `JOB_COMPLETION_INDEX`). The N parts are contiguous, differ in size by at most one sample,
//! and together are the whole run, so N workers writing into one folder make exactly the
//! samples one process would.

use crate::error::{Error, Result};
use std::ops::Range;

/// Part `index` (0-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = Error;

    /// `I/N`, e.g. `3/8`: part 3 of 0..8.
    fn from_str(s: &str) -> Result<Shard> {
        let bad = || Error::Invalid(format!("{s:?} is not a shard I/N (e.g. 0/8)"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let number = |v: &str| v.trim().parse::<usize>().map_err(|_| bad());
        Shard::new(number(i)?, number(n)?)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Part `index` of `count`: needs `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if index >= count {
            return Err(Error::Invalid(format!(
                "shard {index}/{count}: the index must be below the count (0-based)"
            )));
        }
        Ok(Shard { index, count })
    }

    /// The shard a job array gives this worker, from environment variables read by `var`:
    /// the index from `SLURM_ARRAY_TASK_ID` (counted from `SLURM_ARRAY_TASK_MIN` in steps of
    /// `SLURM_ARRAY_TASK_STEP`) or `JOB_COMPLETION_INDEX`; the count `count` or, when None,
    /// `SLURM_ARRAY_TASK_COUNT`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>, count: Option<usize>) -> Result<Shard> {
        let number = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        Error::Invalid(format!("{name}={v:?} is not a non-negative integer"))
                    })
                })
                .transpose()
        };
        let index =
            match (
                number("SLURM_ARRAY_TASK_ID")?,
                number("JOB_COMPLETION_INDEX")?,
            ) {
                (Some(id), _) => {
                    let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
                    let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
                    let offset = id.checked_sub(min).ok_or_else(|| {
                        Error::Invalid(format!(
                            "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
                        ))
                    })?;
                    offset / step
                }
                (None, Some(index)) => index,
                (None, None) => return Err(Error::Invalid(
                    "--shard-from-env: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set"
                        .into(),
                )),
            };
        let count = match count {
            Some(n) => n,
            None => number("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                Error::Invalid(
                    "--shard-from-env: SLURM_ARRAY_TASK_COUNT is not set; give the number of \
                     workers with --shard-count"
                        .into(),
                )
            })?,
        };
        Shard::new(index, count)
    }

    /// This part of the run `run`; each of the `count` parts is non-empty, so the run must
    /// have at least `count` samples.
    pub fn part(&self, run: &Range<usize>) -> Result<Range<usize>> {
        let n = run.len();
        if self.count > n {
            return Err(Error::Invalid(format!(
                "{} shards of a run of {n} samples would leave some empty: use at most {n}",
                self.count
            )));
        }
        // index · n can exceed 64 bits (both below 2^32 … 2^64); the quotient cannot.
        let at = |k: usize| run.start + (k as u128 * n as u128 / self.count as u128) as usize;
        Ok(at(self.index)..at(self.index + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_tile_the_run_in_order() {
        for (num, count) in [(1, 1), (7, 3), (16, 8), (50_000, 7), (10, 10)] {
            let run = 5..5 + num;
            let parts: Vec<Range<usize>> = (0..count)
                .map(|i| Shard::new(i, count).unwrap().part(&run).unwrap())
                .collect();
            assert_eq!(parts[0].start, run.start);
            assert_eq!(parts[count - 1].end, run.end);
            for pair in parts.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            let (lo, hi) = (num / count, num.div_ceil(count));
            assert!(
                parts.iter().all(|p| (lo..=hi).contains(&p.len())),
                "{parts:?}"
            );
        }
        let huge = 0..(u32::MAX as usize + 1);
        let last = Shard::new(2, 3).unwrap().part(&huge).unwrap();
        assert_eq!(last.end, huge.end);
        assert!(Shard::new(0, 9).unwrap().part(&(0..8)).is_err());
    }

    #[test]
    fn shards_parse_and_come_from_job_arrays() {
        assert_eq!(
            "3/8".parse::<Shard>().unwrap(),
            Shard { index: 3, count: 8 }
        );
        for bad in ["8/8", "1", "a/2", "-1/2", "1/0", "18446744073709551616/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::from_env(slurm, None).unwrap(),
            Shard::new(3, 4).unwrap()
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "5")]);
        assert_eq!(
            Shard::from_env(k8s, Some(8)).unwrap(),
            Shard::new(5, 8).unwrap()
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "5")]);
        assert!(Shard::from_env(k8s, None).is_err(), "no count");
        assert!(Shard::from_env(env(&[]), Some(2)).is_err(), "no index");
        assert!(Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "x")]), Some(2)).is_err());
    }
}
