#!/usr/bin/env bash
# The Slurm recipe of docs/cluster.md on a real Slurm: sets up a single-node
# cluster on this host from Debian's slurm-wlm and munge (installed when missing; needs root),
# with its own munge key and socket, config, state, logs and ports under WORK_DIR (nothing under
# /etc is touched), starts munged, slurmctld and slurmd, and submits that job array
# (`sbatch --array`, each task `srun wgsl-diff sample ... --shard-from-env`) and then its
# `--dependency=afterok` job without the shard, scaled down to a few samples of the shipped
# model. The folder they leave is compared byte for byte with one `wgsl-diff sample` process's
# (made into the same path first, so that the filtered sets, which name their folder, match);
# the script exits non-zero on any difference or failed job. The daemons it started are
# stopped on exit.
#
#   tools/slurm/local_cluster.sh [BINARY]      # default: target/release/wgsl-diff
#
# Environment: WORK_DIR (default /tmp/wgsl-diff-slurm, emptied first), TASKS (array tasks,
# default 3), NUM (samples, default 6), STEPS (default 5), SLURM_PORT (slurmctld's; slurmd
# takes the next, default 6817). `.ci/run` runs it after the tests where it runs as root; the
# measured result is in docs/cluster.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(realpath "${1:-$root/target/release/wgsl-diff}")
work=${WORK_DIR:-/tmp/wgsl-diff-slurm}
tasks=${TASKS:-3}
num=${NUM:-6}
steps=${STEPS:-5}
port=${SLURM_PORT:-6817}
host=$(hostname -s)
cpus=$(nproc)

[ "$(id -u)" = 0 ] || { echo "run as root: slurmd and munged need it" >&2; exit 2; }
[ -x "$bin" ] || { echo "no wgsl-diff binary at $bin (cargo build --release)" >&2; exit 2; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

rm -rf "$work"
mkdir -p "$work"/{munge,etc,state,spool,logs}
export SLURM_CONF=$work/etc/slurm.conf

# Our own munge key and socket, so a munged already on the host is neither used nor disturbed.
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 700 "$work/munge"
chmod 400 "$work/munge/munge.key"
socket=$work/munge/munge.socket

stop() {
    for pid_file in "$work/slurmd.pid" "$work/slurmctld.pid" "$work/munge/munged.pid"; do
        [ -s "$pid_file" ] && kill "$(cat "$pid_file")" 2>/dev/null || true
    done
}
trap stop EXIT

munged --force --socket="$socket" --key-file="$work/munge/munge.key" \
    --pid-file="$work/munge/munged.pid" --log-file="$work/logs/munged.log" \
    --seed-file="$work/munge/munged.seed"

cat >"$SLURM_CONF" <<EOF
ClusterName=wgsl-diff-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/logs/slurmctld.log
SlurmdLogFile=$work/logs/slurmd.log
# No cgroups: this may be a container.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# A final job whose array failed is cancelled rather than left pending forever.
SchedulerParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 1
done
[ "$state" = idle ] || { echo "node $host never became idle (state: $state); logs in $work/logs" >&2; exit 1; }
echo "slurm: node $host idle with $cpus CPUs ($(sinfo --version))"

# docs/cluster.md's command, scaled down; every run goes to the same path (see above).
out=$work/fmnist
sample_args=(sample --quiet --num "$num" --seed 0 --steps "$steps" --uncertainty
    --keep-fraction 0.5 --out "$out")
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}

cd "$root"
started=$(date +%s)
"$bin" "${sample_args[@]}"
echo "one process: $num samples in $(($(date +%s) - started)) s"
mv "$out" "$work/single"

cat >"$work/array.sh" <<EOF
#!/bin/bash
#SBATCH --job-name=fmnist-array
#SBATCH --array=0-$((tasks - 1))
#SBATCH --cpus-per-task=1
#SBATCH --output=$work/logs/%x-%A_%a.out
# Task i makes its shard: SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT.
srun "$bin" ${sample_args[*]} --shard-from-env
EOF
started=$(date +%s)
array=$(sbatch --parsable --chdir="$root" "$work/array.sh")
echo "submitted array job $array ($tasks tasks)"
sbatch --parsable --wait --chdir="$root" --dependency="afterok:$array" \
    --job-name=fmnist-final --output="$work/logs/%x-%j.out" \
    --wrap "$bin ${sample_args[*]}" >/dev/null || {
    echo "the final job failed; logs in $work/logs:" >&2
    tail -n 20 "$work"/logs/*.out >&2
    exit 1
}
echo "array and final job: $(($(date +%s) - started)) s"
# What each worker says it made (its shard; the last to finish writes the filtered sets).
for log in "$work"/logs/fmnist-*.out; do
    sed "s|^|$(basename "$log" .out): |" "$log"
done

rm -f "$out/.wgsl-diff.lock" "$work/single/.wgsl-diff.lock"
if diff -r "$work/single" "$out"; then
    echo "identical: $(find "$out" -type f | wc -l) files of the $tasks-task array job equal one process's byte for byte"
else
    echo "the array job's folder differs from one process's" >&2
    exit 1
fi
