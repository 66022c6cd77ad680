#!/usr/bin/env bash
# create-overlay --from against `mke2fs -t ext3 -d` (same size and inode count) and `tar cf`,
# packing the same tree, page cache warm. Median wall time of $RUNS runs each, and the ratios:
# the goals are create-overlay <= 1/5 of mke2fs (ratio <= 0.20) and <= 2x tar (ratio <= 2.00).
#
# The tree is a real Python environment: a venv with the packages of python-env.txt (about
# 62,000 files, 1.4 GB), installed from PyPI once and kept in $PACK_CACHE between runs. Where
# PyPI cannot be reached, a generated tree of the same shape is packed instead (and said so).
# PACK_TREE=DIR packs DIR instead.
# Needs $BIN (release bin dir with create-overlay), $BENCH_TMP (scratch) and now/median; see Scripts/bench.
set -euo pipefail

RUNS="${RUNS:-3}"
MKE2FS="$(command -v mke2fs || echo /sbin/mke2fs)"
PACK_CACHE="${PACK_CACHE:-/var/tmp/overlay-bench-cache}"
here="$(cd "$(dirname "$0")" && pwd)"
dir="$BENCH_TMP/pack"
mkdir -p "$dir" "$PACK_CACHE"

# A generated tree: 60,000 files of 0-16 KiB (mean 8 KiB) in 100-file directories three levels
# deep, 32 large files sharing 512 MiB, a symlink and a hard link per directory.
generated_tree() {
    local tree="$1"
    rm -rf "$tree"
    python3 - "$tree" 60000 512 <<'PY'
import os, random, sys
root, files, large_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(42)
pool = os.urandom(1 << 20)
def write(path, size):
    with open(path, "wb") as f:
        while size > 0:
            n = min(size, len(pool))
            start = random.randrange(0, len(pool) - n + 1)
            f.write(pool[start:start + n])
            size -= n
made = 0
d = 0
while made < files:
    path = os.path.join(root, "lib%02d" % (d // 100), "pkg%03d" % (d % 100), "mod")
    os.makedirs(path)
    for i in range(min(100, files - made)):
        write(os.path.join(path, "file%03d.py" % i), random.randrange(0, 16384))
    os.symlink("file000.py", os.path.join(path, "link.py"))
    os.link(os.path.join(path, "file000.py"), os.path.join(path, "hard.py"))
    made += 100
    d += 1
os.makedirs(os.path.join(root, "data"))
for i in range(32):
    write(os.path.join(root, "data", "blob%02d.bin" % i), large_mib * 1048576 // 32)
PY
    touch "$tree.done"
}

if [ -n "${PACK_TREE:-}" ]; then
    tree="$PACK_TREE"
    what="$tree"
else
    tree="$PACK_CACHE/python-env"
    what="a Python environment (python-env.txt)"
    if [ ! -e "$tree.done" ]; then
        rm -rf "$tree"
        echo "installing the Python environment into $tree (once; a few minutes)..." >&2
        if ! { python3 -m venv "$tree" && "$tree/bin/pip" install -q --disable-pip-version-check --no-deps -r "$here/python-env.txt" >&2; }; then
            echo "could not install it (no PyPI?): packing a generated tree of the same shape instead" >&2
            tree="$PACK_CACHE/generated"
            what="a generated tree (PyPI not reachable)"
            [ -e "$tree.done" ] || generated_tree "$tree"
        else
            touch "$tree.done"
        fi
    fi
fi
read -r count bytes < <(find "$tree" -type f -printf '%s\n' | awk '{ n++; s += $1 } END { print n, s }')

# Warm the page cache (tar to /dev/null would skip reading). Done again before every run: on
# some virtual machines cached pages drift away even with plenty of memory free.
warm() { tar cf - -C "$tree" . | cat >/dev/null; }

# time_runs OUTPUT COMMAND...: median microseconds of $RUNS runs, OUTPUT removed before each.
time_runs() {
    local output="$1"; shift
    local times=() start
    for ((i = 0; i < RUNS; i++)); do
        rm -f "$output"
        sync
        warm
        start=$(now)
        "$@" >/dev/null
        times+=($(( $(now) - start )))
    done
    printf '%s\n' "${times[@]}" | median
}

# Our image's size and inode count, chosen from the tree: mke2fs gets the same.
json="$("$BIN/create-overlay" --from "$tree" --root-tree -o "$dir/probe.ext3" --json)"
rm -f "$dir/probe.ext3"
size=$(sed -E 's/.*"sizeBytes":([0-9]+).*/\1/' <<<"$json")
inodes=$(sed -E 's/.*"inodeCount":([0-9]+).*/\1/' <<<"$json")

ours=$(time_runs "$dir/ours.ext3" "$BIN/create-overlay" --from "$tree" --root-tree -o "$dir/ours.ext3")
theirs=$(time_runs "$dir/mke2fs.ext3" bash -c \
    "truncate -s $size '$dir/mke2fs.ext3' && '$MKE2FS' -q -F -t ext3 -b 4096 -I 256 -N $inodes -m 0 -d '$tree' '$dir/mke2fs.ext3'")
tarred=$(time_runs "$dir/tree.tar" tar cf "$dir/tree.tar" -C "$tree" .)
rm -f "$dir/ours.ext3" "$dir/mke2fs.ext3" "$dir/tree.tar"

awk -v w="$what" -v n="$count" -v b="$bytes" -v s="$size" -v a="$ours" -v m="$theirs" -v t="$tarred" 'BEGIN {
    printf "tree: %s: %d files, %.1f MiB; image %.0f MiB\n", w, n, b / 1048576, s / 1048576
    printf "%12s %12s %12s %10s %10s\n", "create-ovl", "mke2fs -d", "tar cf", "ovl/mke2fs", "ovl/tar"
    printf "%10.2fs %10.2fs %10.2fs %10.3f %10.2f\n", a / 1e6, m / 1e6, t / 1e6, a / m, a / t
}'
