//! Runs generated inputs through the targets on a worker thread: a panic is caught
//! (`catch_unwind`), an input that takes longer than [`TIME_LIMIT`] is a hang (the stuck worker
//! is abandoned and a fresh one takes the next input), and every verdict is counted. Input `i`
//! of a run draws from its own seeded generator, so any finding is reproduced by its index alone.

use crate::mutate::Rng;
use crate::targets::{Target, Verdict};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest an input may take: parsing any of these small files takes microseconds to
/// milliseconds, so anything near this is a loop that does not end.
pub const TIME_LIMIT: Duration = Duration::from_secs(10);

/// Which inputs to run: indices `first .. first + count` of the stream seeded by `seed`.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub seed: u64,
    pub first: u64,
    pub count: u64,
}

/// What went wrong with one input: its index (to reproduce it), target and why.
#[derive(Clone, Debug)]
pub struct Finding {
    pub index: u64,
    pub target: &'static str,
    pub what: String,
}

/// Per target: inputs accepted, refused, and the slowest one.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub accepted: u64,
    pub refused: u64,
    pub slowest: Duration,
}

pub struct Report {
    pub inputs: u64,
    pub elapsed: Duration,
    pub tallies: BTreeMap<&'static str, Tally>,
    pub findings: Vec<Finding>,
}

impl Report {
    /// A table of the counts, then the findings (at most 5 per target and kind of problem).
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} inputs in {:.1} s ({:.0} inputs/s)\n",
            self.inputs,
            self.elapsed.as_secs_f64(),
            self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
        );
        for (name, t) in &self.tallies {
            out += &format!(
                "  {name:<22} accepted {:>8}  refused {:>8}  slowest {:>8.2} ms\n",
                t.accepted,
                t.refused,
                t.slowest.as_secs_f64() * 1e3
            );
        }
        out += &format!("{} findings\n", self.findings.len());
        let mut shown: BTreeMap<(&str, String), usize> = BTreeMap::new();
        for f in &self.findings {
            let kind = f.what.chars().take(60).collect::<String>();
            let n = shown.entry((f.target, kind)).or_default();
            *n += 1;
            if *n <= 5 {
                out += &format!("  #{} {}: {}\n", f.index, f.target, f.what);
            }
        }
        out
    }
}

/// The generator of input `index` of the stream `seed`.
pub fn input_rng(seed: u64, index: u64) -> Rng {
    Rng::new(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17))
}

type Job = (usize, u64);
type Outcome = (u64, std::result::Result<Verdict, String>, Duration);

/// A thread that runs jobs in its own scratch folder until its channel closes.
fn spawn_worker(
    targets: Arc<Vec<Box<dyn Target>>>,
    seed: u64,
    scratch: PathBuf,
    done: mpsc::Sender<Outcome>,
) -> (mpsc::Sender<Job>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Job>();
    let handle = std::thread::spawn(move || {
        for (t, index) in rx {
            let started = Instant::now();
            let target = &targets[t];
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = std::fs::remove_dir_all(&scratch);
                std::fs::create_dir_all(&scratch).expect("the scratch folder");
                target.case(&mut input_rng(seed, index), &scratch)
            }))
            .map_err(|payload| {
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic without a message".into())
            });
            if done.send((index, result, started.elapsed())).is_err() {
                break;
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
    });
    (tx, handle)
}

/// The outcome of input `index`, or None when none comes within [`TIME_LIMIT`] (a late answer
/// of an abandoned worker, for an earlier input, is skipped).
fn next_outcome(
    done: &mpsc::Receiver<Outcome>,
    index: u64,
) -> Option<(std::result::Result<Verdict, String>, Duration)> {
    let deadline = Instant::now() + TIME_LIMIT;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match done.recv_timeout(left) {
            Ok((i, result, took)) if i == index => return Some((result, took)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// A folder for scratch files: memory-backed where the system has one.
fn scratch_root() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let base = match shm.is_dir() {
        true => shm,
        false => std::env::temp_dir(),
    };
    base.join(format!("wgsl-diff-fuzz-{}", std::process::id()))
}

/// Runs `plan` over `targets` (input `i` goes to target `i mod n`), printing progress every
/// `progress_every` inputs when it is non-zero (so an abort names the inputs it happened in).
pub fn run(targets: Vec<Box<dyn Target>>, plan: Plan, progress_every: u64) -> Report {
    let targets = Arc::new(targets);
    let root = scratch_root();
    let (done_tx, done_rx) = mpsc::channel();
    let mut workers = 0;
    let mut next_worker = |tx: &mpsc::Sender<Outcome>| {
        workers += 1;
        spawn_worker(
            targets.clone(),
            plan.seed,
            root.join(format!("worker{workers}")),
            tx.clone(),
        )
    };
    let mut worker = next_worker(&done_tx);
    let mut report = Report {
        inputs: 0,
        elapsed: Duration::ZERO,
        tallies: BTreeMap::new(),
        findings: Vec::new(),
    };
    let started = Instant::now();
    for index in plan.first..plan.first + plan.count {
        let t = (index % targets.len() as u64) as usize;
        let name = targets[t].name();
        worker.0.send((t, index)).expect("the worker takes inputs");
        let finding = |what: String| Finding {
            index,
            target: name,
            what,
        };
        match next_outcome(&done_rx, index) {
            Some((result, took)) => {
                let tally = report.tallies.entry(name).or_default();
                tally.slowest = tally.slowest.max(took);
                match result {
                    Ok(Verdict::Accepted) => tally.accepted += 1,
                    Ok(Verdict::Refused) => tally.refused += 1,
                    Ok(Verdict::Wrong(what)) => report.findings.push(finding(what)),
                    Err(panic) => report.findings.push(finding(format!("panic: {panic}"))),
                }
            }
            None => {
                report.findings.push(finding(format!(
                    "hang: no verdict within {} s",
                    TIME_LIMIT.as_secs()
                )));
                // The stuck worker keeps its thread; the next inputs go to a fresh one.
                worker = next_worker(&done_tx);
            }
        }
        report.inputs += 1;
        if progress_every > 0 && report.inputs.is_multiple_of(progress_every) {
            eprintln!(
                "fuzz: {} inputs (up to #{index}) in {:.0} s, {} findings",
                report.inputs,
                started.elapsed().as_secs_f64(),
                report.findings.len()
            );
        }
    }
    report.elapsed = started.elapsed();
    // The last worker removes its folder as it ends; abandoned ones leave theirs.
    let (jobs, handle) = worker;
    drop(jobs);
    let _ = handle.join();
    let _ = std::fs::remove_dir(&root);
    report
}
