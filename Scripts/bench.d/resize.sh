#!/usr/bin/env bash
# overlay resize when it rebuilds an image (more inodes at the same size: resize2fs cannot add
# them) against the hand-written sequence doing the same: a read-only loop mount of the old
# image, `mke2fs -t ext3 -N INODES -d` of the mounted tree into a new file, `e2fsck -fn` of the
# new one, umount and mv over the old one. Both end with a checked image holding the same files;
# overlay resize also checks the old image first and fsyncs the new one before the rename (the
# sequence gets a `sync` of its image for the same). The image: 30,000 files of 2-8 KiB in 30
# directories and one 300 MiB file, in a 1 GiB image with 40,000 inodes, grown to 80,000. Page
# cache dropped before each run (as root). Median wall time of $RUNS runs each, and the ratio.
# Needs $BIN (release bin dir with create-overlay and overlay), $BENCH_TMP (scratch) and
# now/median; see Scripts/bench.
set -euo pipefail

RUNS="${RUNS:-3}"
MKE2FS="$(command -v mke2fs || echo /sbin/mke2fs)"
dir="$BENCH_TMP/resize"
mkdir -p "$dir"
tree="$dir/tree"
if [ ! -e "$tree/.done" ]; then
    rm -rf "$tree"
    python3 - "$tree" <<'EOF'
import os, sys
root = sys.argv[1]
for d in range(30):
    os.makedirs(os.path.join(root, "d%d" % d))
    for f in range(1000):
        with open(os.path.join(root, "d%d" % d, "f%d" % f), "wb") as out:
            out.write(os.urandom(2000 + (f * 37) % 6000))
with open(os.path.join(root, "large"), "wb") as out:
    for _ in range(300):
        out.write(os.urandom(1 << 20))
EOF
    touch "$tree/.done"
fi
original="$dir/original.ext3"
rm -f "$original"
"$BIN/create-overlay" --from "$tree" --to /data -s 1024 -n 40 -o "$original" >/dev/null

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }

ours() {
    "$BIN/overlay" resize "$dir/ours.ext3" -n 80 >/dev/null
}

theirs() {
    local mnt="$dir/mnt" new="$dir/.theirs.new"
    mkdir -p "$mnt"
    mount -o loop,ro "$dir/theirs.ext3" "$mnt"
    truncate -s 1G "$new"
    "$MKE2FS" -q -F -t ext3 -b 4096 -I 256 -N 80000 -m 0 -d "$mnt" "$new"
    umount "$mnt"
    e2fsck -fn "$new" >/dev/null 2>&1
    sync "$new"
    mv "$new" "$dir/theirs.ext3"
}

# time_runs NAME: median microseconds of $RUNS runs of NAME on a fresh copy of the original.
time_runs() {
    local name="$1" times=() start
    for ((i = 0; i < RUNS; i++)); do
        cp --sparse=always "$original" "$dir/$name.ext3"
        cold
        start=$(now)
        "$name"
        times+=($(( $(now) - start )))
        e2fsck -fn "$dir/$name.ext3" >/dev/null 2>&1
    done
    printf '%s\n' "${times[@]}" | median
    rm -f "$dir/$name.ext3"
}

a=$(time_runs ours)
b=$(time_runs theirs)
awk -v a="$a" -v b="$b" 'BEGIN {
    printf "image: 1 GiB, 30,001 files (about 420 MiB), 40,000 -> 80,000 inodes\n"
    printf "%12s %16s %10s\n", "resize", "mount+mke2fs -d", "ratio"
    printf "%10.2fs %15.2fs %10.2f\n", a / 1e6, b / 1e6, a / b
}'
