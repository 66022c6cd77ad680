#!/usr/bin/env bash
# overlay snapshot against what people do instead, page cache warm, median of $RUNS runs:
#   a source tree of $FILES files (default 20,000, ~300 MB) in a git repository with some
#   uncommitted changes: `overlay snapshot create` against `cp -a` and against the git way
#   (git worktree add + rsync -a --filter=':- .gitignore' + git add -A + git commit), and
#   `overlay snapshot create --git` against the git way;
#   a 4 GiB overlay image holding 1 GiB of files: `overlay snapshot create` against
#   `cp --sparse=always`, here and on a reflink-capable XFS made and loop-mounted for it;
#   start-up of `run-overlay --snapshot` against `run-overlay -o <the same image>:ro`.
# Ratios below 1 mean the snapshot is faster.
# Needs $BIN (release bin dir), $BENCH_TMP (scratch) and now/median; see Scripts/bench. Needs root.
set -euo pipefail

RUNS="${RUNS:-3}"
FILES="${FILES:-20000}"
dir="$BENCH_TMP/snapshot"
mkdir -p "$dir"
cd "$dir"
export OVERLAY_SNAPSHOTS="$dir/store" OVERLAY_RUNTIME=native

row() {  # name ours_us theirs_us
    awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%-44s %10.1fms %10.1fms %7.2f\n", n, a / 1000, b / 1000, a / b }'
}

# time_runs SETUP COMMAND CLEANUP: median microseconds of $RUNS runs of COMMAND (setup and
# cleanup not timed); one untimed run first warms the page cache.
time_runs() {
    local setup=$1 command=$2 cleanup=$3 times=() start
    $setup; $command >/dev/null; $cleanup
    for ((i = 0; i < RUNS; i++)); do
        $setup
        start=$(now)
        $command >/dev/null
        times+=($(( $(now) - start )))
        $cleanup
    done
    printf '%s\n' "${times[@]}" | median
}
nothing() { :; }

# The source tree: $FILES files of 15 KiB in directories of 500, a git repository with a
# .gitignore, then some edits, new files and ignored output left uncommitted.
python3 - "$FILES" <<'PY'
import os, sys
files = int(sys.argv[1])
os.makedirs("src", exist_ok=True)
block = os.urandom(15 * 1024)
for n in range(files):
    d = f"src/pkg{n // 500:03d}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/file{n:05d}.py", "wb") as f:
        f.write(block[n % 1024:] + block[:n % 1024])
with open("src/.gitignore", "w") as f:
    f.write("*.log\n")
PY
git -C src init -q
git -C src -c user.name=bench -c user.email=bench@localhost add -A
git -C src -c user.name=bench -c user.email=bench@localhost commit -qm tree
for n in 1 2 3; do echo "# edited" >> "src/pkg000/file0000$n.py"; echo new > "src/new$n.py"; echo log > "src/run$n.log"; done
echo "tree: $(find src -type f -not -path '*/.git/*' | wc -l) files, $(du -sm --exclude=.git src | cut -f1) MB (without .git)"

printf '%-44s %12s %12s %7s\n' case snapshot other ratio
clean_copy() { rm -rf copy; }
snap() { "$BIN/overlay" snapshot create --quiet s "$dir/src"; }
clean_snap() { rm -f "$OVERLAY_SNAPSHOTS/s.ext3"; }
ours=$(time_runs nothing snap clean_snap)
theirs=$(time_runs nothing "cp -a src copy" clean_copy)
row "directory tree vs cp -a" "$ours" "$theirs"

git_way() {
    git -C src worktree add -q --detach ../wt HEAD
    rsync -a --filter=':- .gitignore' --exclude=.git src/ wt/
    git -C wt add -A
    git -C wt -c user.name=bench -c user.email=bench@localhost commit -qm snapshot
}
clean_git_way() { git -C src worktree remove --force ../wt; }
git_ours=$(time_runs nothing git_way clean_git_way)
row "directory tree vs the git way" "$ours" "$git_ours"

snap_git() { (cd src && "$BIN/overlay" snapshot create --git --quiet bench-snap); }
clean_snap_git() { rm -f "$OVERLAY_SNAPSHOTS/bench-snap.ext3"; git -C src branch -q -D bench-snap; }
ours=$(time_runs nothing snap_git clean_snap_git)
row "--git vs the git way" "$ours" "$git_ours"

# The image: 4 GiB holding 1 GiB of files.
mkdir -p data
for n in $(seq 1 64); do head -c 16M /dev/urandom > "data/blob$n"; done
"$BIN/create-overlay" --from data --to /data -s 4G -o image.ext3 >/dev/null
rm -rf data
snap_image() { "$BIN/overlay" snapshot create --quiet i "$dir/image.ext3"; }
clean_image() { rm -f "$OVERLAY_SNAPSHOTS/i.ext3"; }
clean_sparse() { rm -f copy.ext3; }
ours=$(time_runs nothing snap_image clean_image)
theirs=$(time_runs nothing "cp --sparse=always image.ext3 copy.ext3" clean_sparse)
row "4 GiB image (1 GiB used) vs cp --sparse" "$ours" "$theirs"

if command -v mkfs.xfs >/dev/null; then
    truncate -s 8G xfs.img
    mkfs.xfs -q -m reflink=1 xfs.img
    mkdir -p xfs
    mount -o loop xfs.img xfs
    trap 'umount "$dir/xfs" 2>/dev/null || true' EXIT
    cp --sparse=always image.ext3 xfs/image.ext3
    mkdir -p xfs/store
    snap_xfs() { OVERLAY_SNAPSHOTS="$dir/xfs/store" "$BIN/overlay" snapshot create --quiet i "$dir/xfs/image.ext3"; }
    clean_xfs() { rm -f "$dir/xfs/store/i.ext3"; }
    clean_xfs_copy() { rm -f xfs/copy.ext3; }
    ours=$(time_runs nothing snap_xfs clean_xfs)
    theirs=$(time_runs nothing "cp --sparse=always xfs/image.ext3 xfs/copy.ext3" clean_xfs_copy)
    row "same on XFS (reflink) vs cp --sparse" "$ours" "$theirs"
    umount xfs
    trap - EXIT
fi

# Start-up: the same snapshot image through --snapshot and through -o.
"$BIN/overlay" snapshot create --quiet startup "$dir/src" >/dev/null
ours=$(time_runs nothing "$BIN/run-overlay --snapshot startup -- /bin/true" nothing)
theirs=$(time_runs nothing "$BIN/run-overlay -o $OVERLAY_SNAPSHOTS/startup.ext3:ro -- /bin/true" nothing)
row "run-overlay --snapshot vs -o :ro, start-up" "$ours" "$theirs"
