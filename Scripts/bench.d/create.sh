#!/usr/bin/env bash
# create-overlay against `truncate -s + mke2fs -t ext3` on the same geometry (4 KiB blocks,
# 256-byte inodes, no reserved blocks): median wall time of $RUNS runs each, and the bytes each
# image allocates on disk right after creation. Ratios below 1 mean create-overlay is better.
# Needs $BIN (release bin dir with create-overlay), $BENCH_TMP (scratch) and now/median; see Scripts/bench.
set -euo pipefail

RUNS="${RUNS:-5}"
MKE2FS="$(command -v mke2fs || echo /sbin/mke2fs)"
dir="$BENCH_TMP/create"
mkdir -p "$dir"

allocated() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }

# time_runs NAME COMMAND...: runs COMMAND $RUNS times on a fresh $dir/NAME, prints the median
# microseconds and the allocated bytes of the last image.
time_runs() {
    local name="$1"; shift
    local times=() start
    for ((i = 0; i < RUNS; i++)); do
        rm -f "$dir/$name"
        sync
        start=$(now)
        "$@" >/dev/null
        times+=($(( $(now) - start )))
    done
    echo "$(printf '%s\n' "${times[@]}" | median) $(allocated "$dir/$name")"
    rm -f "$dir/$name"
}

printf '%-14s %12s %12s %7s %12s %12s %7s\n' geometry create-ovl mke2fs time× create-MiB mke2fs-MiB alloc×
for shape in "500M 700" "5G 3200" "50G 10000"; do
    read -r size thousands <<<"$shape"
    inodes=$((thousands * 1000))
    read -r ours_us ours_bytes < <(time_runs ours.ext3 "$BIN/create-overlay" -s "$size" -n "$thousands" -o "$dir/ours.ext3")
    read -r theirs_us theirs_bytes < <(time_runs theirs.ext3 bash -c \
        "truncate -s '$size' '$dir/theirs.ext3' && '$MKE2FS' -q -F -t ext3 -b 4096 -I 256 -N $inodes -m 0 '$dir/theirs.ext3'")
    awk -v g="$size/${thousands}K" -v a="$ours_us" -v b="$theirs_us" -v c="$ours_bytes" -v d="$theirs_bytes" 'BEGIN {
        printf "%-14s %10.1fms %10.1fms %7.2f %12.1f %12.1f %7.3f\n", g, a / 1000, b / 1000, a / b,
            c / 1048576, d / 1048576, c / d }'
done
