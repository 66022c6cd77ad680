#!/usr/bin/env bash
# overlay checkpoint dump/restore against criu dump/restore run by hand on the same process
# tree (outside any container): a process holding 1 GiB of memory, and 1,000 small processes
# (sleeps under one shell). Median wall time of $RUNS runs each; the dump is --leave-running
# (the pause a job sees), the restore starts from a killed tree (--detach / criu -d). Ratios
# below 1 mean the toolkit is faster. Needs root and a working criu; see Scripts/bench.
set -euo pipefail

RUNS="${RUNS:-3}"
CRIU=/usr/local/sbin/criu
[ -x "$CRIU" ] || CRIU="$(command -v criu)"
dir="$BENCH_TMP/checkpoint"
mkdir -p "$dir"

# start_tree KIND: starts the tree in a session of its own, prints its root pid.
start_tree() {
    case "$1" in
    1GiB) setsid python3 -c 'import time; b = b"\x01" * (1 << 30); print("ready", flush=True); time.sleep(100000)' \
            </dev/null >"$dir/ready" 2>&1 &
        local pid=$!
        until grep -q ready "$dir/ready" 2>/dev/null; do sleep 0.1; done ;;
    1000procs) setsid sh -c 'for i in $(seq 1000); do sleep 100000 & done; echo ready; wait' </dev/null >"$dir/ready" 2>&1 &
        local pid=$!
        until grep -q ready "$dir/ready" 2>/dev/null; do sleep 0.1; done ;;
    esac
    rm -f "$dir/ready"
    echo "$pid"
}

# stop_tree PID: kills the tree (its process group) and waits until its pids are free.
stop_tree() {
    local pids; pids="$(pgrep -s "$1" || true)"
    kill -KILL -- "-$1" 2>/dev/null || true
    for p in $pids; do while [ -e "/proc/$p" ]; do sleep 0.01; done; done
}

# one_run KIND WHO: dump (leave running) then kill and restore; prints "dump_us restore_us".
one_run() {
    local kind="$1" who="$2" pid start dump_us restore_us restored
    rm -rf "$dir/ck" && mkdir -p "$dir/ck"
    pid=$(start_tree "$kind")
    sync
    start=$(now)
    if [ "$who" = ours ]; then
        "$BIN/overlay" checkpoint dump --leave-running "$pid" "$dir/ck" >/dev/null
    else
        "$CRIU" dump -t "$pid" -D "$dir/ck" -o dump.log --shell-job --file-locks --leave-running
    fi
    dump_us=$(( $(now) - start ))
    stop_tree "$pid"
    start=$(now)
    if [ "$who" = ours ]; then
        restored=$("$BIN/overlay" checkpoint restore --detach "$dir/ck")
    else
        "$CRIU" restore -D "$dir/ck" -o restore.log --shell-job --file-locks -d --pidfile "$dir/ck/pid" </dev/null >/dev/null 2>&1
        restored=$(cat "$dir/ck/pid")
    fi
    restore_us=$(( $(now) - start ))
    stop_tree "$restored"
    rm -rf "$dir/ck"
    echo "$dump_us $restore_us"
}

printf '%-10s %11s %11s %7s %11s %11s %7s\n' tree dump-ovl dump-criu time× restore-ovl restore-criu time×
for kind in 1GiB 1000procs; do
    ours_d=(); ours_r=(); theirs_d=(); theirs_r=()
    for ((i = 0; i < RUNS; i++)); do
        read -r d r < <(one_run "$kind" ours); ours_d+=("$d"); ours_r+=("$r")
        read -r d r < <(one_run "$kind" criu); theirs_d+=("$d"); theirs_r+=("$r")
    done
    a=$(printf '%s\n' "${ours_d[@]}" | median); b=$(printf '%s\n' "${theirs_d[@]}" | median)
    c=$(printf '%s\n' "${ours_r[@]}" | median); d=$(printf '%s\n' "${theirs_r[@]}" | median)
    awk -v k="$kind" -v a="$a" -v b="$b" -v c="$c" -v d="$d" 'BEGIN {
        printf "%-10s %9.0fms %9.0fms %7.2f %9.0fms %10.0fms %7.2f\n", k, a / 1000, b / 1000, a / b, c / 1000, d / 1000, c / d }'
done
