#!/usr/bin/env bash
# Job snapshots against what a careful user scripts instead, page cache warm, median of $RUNS:
#   a running job whose writable overlay holds $FILES files (default 20,000) of $MB MiB in all
#   (default 1024): `run-overlay --snapshot-to` taking a snapshot on SIGUSR1 — the pause the job
#   sees (the "job paused" its stderr reports) and the total time from the signal until the
#   snapshot is named — against freezing a process with kill -STOP, `cp -a` of a directory
#   holding the same files, and kill -CONT (pause and total are the same there);
#   on the scratch filesystem, then on an XFS with reflinks made and loop-mounted for it (the
#   overlay image and the snapshot directory on it; `cp -a` there reflinks too, as coreutils
#   does by default).
# Ratios below 1 mean the snapshot is faster. A quick run: FILES=2000 MB=100.
# Needs $BIN (release bin dir), $BENCH_TMP (scratch) and now/median; see Scripts/bench. Needs root.
set -euo pipefail

RUNS="${RUNS:-3}"
FILES="${FILES:-20000}"
MB="${MB:-1024}"
dir="$BENCH_TMP/jobsnap"
mkdir -p "$dir"
cd "$dir"
export OVERLAY_RUNTIME=native XDG_RUNTIME_DIR="$dir/run"
mkdir -p "$XDG_RUNTIME_DIR"

row() {  # name ours_us theirs_us
    awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%-44s %10.1fms %10.1fms %7.3f\n", n, a / 1000, b / 1000, a / b }'
}

# The job's files: $FILES files making $MB MiB, in directories of 500.
python3 - "$FILES" "$MB" <<'PY'
import os, sys
files, mb = int(sys.argv[1]), int(sys.argv[2])
size = mb * (1 << 20) // files
block = os.urandom(size + 1024)
for n in range(files):
    d = f"tree/d{n // 500:03d}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{n:05d}", "wb") as f:
        f.write(block[n % 1024:n % 1024 + size])
PY
echo "job's overlay: $(find tree -type f | wc -l) files, $(du -sm tree | cut -f1) MiB"
"$BIN/create-overlay" --from tree --to /data -s $((MB * 2 + 512)) -o job.ext3 >/dev/null

# ours WHERE: the median pause and total (microseconds, "pause total") of $RUNS snapshots of a
# running job on the overlay WHERE/job.ext3, into WHERE/snaps.
ours() {
    local where="$1" log="$1/run.log" pid start pauses=() totals=() line count
    mkdir -p "$where/snaps"
    setsid "$BIN/run-overlay" --snapshot-to "$where/snaps" -o "$where/job.ext3" -- \
        sh -c 'echo ready; while true; do sleep 0.1; done' >"$where/ready" 2>"$log" </dev/null &
    pid=$!
    until grep -q ready "$where/ready" 2>/dev/null; do sleep 0.1; done
    for ((i = 0; i <= RUNS; i++)); do
        count=$(grep -c '^snapshot ' "$log" || true)
        start=$(now)
        kill -USR1 "$pid"
        until (( $(grep -c '^snapshot \|^warning' "$log" || true) > count )); do sleep 0.002; done
        totals+=($(( $(now) - start )))
        line=$(grep '^snapshot \|^warning' "$log" | tail -1)
        case "$line" in snapshot*) ;; *) echo "$line" >&2; kill -KILL "$pid"; exit 1 ;; esac
        pauses+=($(sed -E 's/.*job paused ([0-9.]+) ms.*/\1/' <<<"$line" | awk '{ printf "%d", $1 * 1000 }'))
        rm -f "$where"/snaps/*.ext3
    done
    kill -INT "$pid"
    wait "$pid" || true
    # The first one warms the page cache: left out.
    echo "$(printf '%s\n' "${pauses[@]:1}" | median) $(printf '%s\n' "${totals[@]:1}" | median)"
}

# theirs WHERE: the median microseconds of $RUNS kill -STOP, cp -a WHERE/tree, kill -CONT.
theirs() {
    local where="$1" start times=() job
    sleep 100000 &
    job=$!
    cp -a "$where/tree" "$where/copy" && rm -rf "$where/copy"
    for ((i = 0; i < RUNS; i++)); do
        start=$(now)
        kill -STOP "$job"
        cp -a "$where/tree" "$where/copy"
        kill -CONT "$job"
        times+=($(( $(now) - start )))
        rm -rf "$where/copy"
    done
    kill "$job"
    wait "$job" 2>/dev/null || true
    printf '%s\n' "${times[@]}" | median
}

report() {  # where label
    local o t
    read -r pause total <<<"$(ours "$1")"
    t=$(theirs "$1")
    row "$2: pause vs STOP + cp -a + CONT" "$pause" "$t"
    row "$2: total vs STOP + cp -a + CONT" "$total" "$t"
}

printf '%-44s %12s %12s %7s\n' case snapshot other ratio
report "$dir" "scratch ($(df --output=fstype "$dir" | tail -1))"

if command -v mkfs.xfs >/dev/null; then
    truncate -s $((MB * 6 + 4096))M xfs.img
    mkfs.xfs -q -m reflink=1 xfs.img
    mkdir -p xfs
    mount -o loop xfs.img xfs
    trap 'umount "$dir/xfs" 2>/dev/null || true' EXIT
    cp --sparse=always job.ext3 xfs/job.ext3
    cp -a tree xfs/tree
    report "$dir/xfs" "XFS (reflink)"
    umount xfs
    trap - EXIT
fi
