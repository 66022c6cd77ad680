#!/bin/bash
# Submits a job that runs on a snapshot taken now, on the login node, so that what you edit
# while the job waits in the queue (or runs) does not reach it. Options before `--` go to
# sbatch, options after it to run-overlay (through Templates/run-overlay.sbatch):
#
#   Templates/submit-with-snapshot.sh -- --writable-dir results -o env.ext3:ro -- python train.py
#
# An array job: every task runs on the same snapshot (one is taken, at submission):
#
#   Templates/submit-with-snapshot.sh --array=1-100 --output=%x-%A_%a.out -- -o env.ext3:ro -f job.txt
#
# A requeued job (--requeue, or scontrol requeue after a preemption) reruns the same script
# with the same arguments, so it runs on the same snapshot again: the name is fixed here, and
# no job removes a snapshot. Remove it yourself when the results are in (overlay snapshot rm).
#
#   Templates/submit-with-snapshot.sh --requeue -- --writable-dir results -f job.txt
#
# What is captured:
#   SNAPSHOT_GIT=1        the git working tree, recorded as a commit on a new branch
#                         slurm-job-<UTC time> (your work tree, index, HEAD and stash untouched)
#   SNAPSHOT_PATHS="a b"  these directories (default: the current directory)
#   SNAPSHOT_NAME=name    the snapshot's name (default: <job name or "job">-<UTC time>)
# The tools are found through $OVERLAY_BIN (their directory), else on PATH.
set -euo pipefail

sbatch_options=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do sbatch_options+=("$1"); shift; done
if [ $# -eq 0 ]; then
    echo "submit-with-snapshot.sh: give sbatch options, then --, then run-overlay's arguments" >&2
    exit 64
fi
shift

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
overlay=${OVERLAY_BIN:+$OVERLAY_BIN/}overlay
if ! command -v "$overlay" >/dev/null; then
    echo "submit-with-snapshot.sh: overlay not found: put it on PATH or set OVERLAY_BIN to its directory" >&2
    exit 127
fi

if [ "${SNAPSHOT_GIT:-0}" = 1 ]; then
    name=$("$overlay" snapshot create --git --quiet ${SNAPSHOT_NAME:+"$SNAPSHOT_NAME"})
else
    read -r -a paths <<< "${SNAPSHOT_PATHS:-.}"
    name=${SNAPSHOT_NAME:-job-$(date -u +%Y%m%d-%H%M%S)-$$}
    name=$("$overlay" snapshot create --quiet "$name" "${paths[@]}")
fi
echo "submit-with-snapshot.sh: snapshot $name" >&2

# A failed submission leaves no snapshot behind (a --git branch is kept, for the record).
if ! sbatch ${sbatch_options[@]+"${sbatch_options[@]}"} "$here/run-overlay.sbatch" --snapshot "$name" "$@"; then
    "$overlay" snapshot rm "$name" >&2 || true
    exit 1
fi
