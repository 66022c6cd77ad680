#!/usr/bin/env bash
# The directory scan of create-overlay --from (every entry's metadata, symlink target and
# extended attributes, read before anything is written) against `find -printf` printing the
# same metadata of the same tree (one lstat per entry on one thread, no extended attributes),
# page cache warm. create-overlay is stopped right after the scan by a size that cannot hold the
# tree (-s 8 -n 1: it refuses, naming what the tree needs). Median wall time of $RUNS runs each,
# and the ratio scan/find.
# Needs $BIN (release bin dir with create-overlay), $BENCH_TMP (scratch) and now/median; see Scripts/bench.
# SCAN_TREE scans that directory instead of the generated one (60,000 empty files in 6,600
# directories: 600 packages of 10 subdirectories of 10 files, a symlink per package).
set -euo pipefail

RUNS="${RUNS:-5}"
tree="${SCAN_TREE:-$BENCH_TMP/scan/tree}"

if [ -z "${SCAN_TREE:-}" ] && [ ! -e "$tree/.done" ]; then
    rm -rf "$tree"
    python3 - "$tree" <<'EOF'
import os, sys
root = sys.argv[1]
for p in range(600):
    package = os.path.join(root, "lib", "site-packages", "pkg%03d" % p)
    for d in range(10):
        path = os.path.join(package, "sub%d" % d)
        os.makedirs(path)
        for f in range(10):
            open(os.path.join(path, "mod%d.py" % f), "wb").close()
    os.symlink("sub0/mod0.py", os.path.join(package, "__init__.py"))
EOF
    touch "$tree/.done"
fi
read -r entries < <(find "$tree" | wc -l)

warm() { find "$tree" -printf '' ; }

# time_runs COMMAND...: median microseconds of $RUNS runs (any exit status).
time_runs() {
    local times=() start
    for ((i = 0; i < RUNS; i++)); do
        warm
        start=$(now)
        "$@" >/dev/null 2>&1 || true
        times+=($(( $(now) - start )))
    done
    printf '%s\n' "${times[@]}" | median
}

out="$BENCH_TMP/scan-refused.ext3"
refusal="$("$BIN/create-overlay" --from "$tree" --root-tree -s 8 -n 1 -o "$out" 2>&1 || true)"
if ! grep -q "needs room for" <<<"$refusal" || [ -e "$out" ]; then
    echo "create-overlay did not stop after the scan: $refusal" >&2
    exit 1
fi
ours=$(time_runs "$BIN/create-overlay" --from "$tree" --root-tree -s 8 -n 1 -o "$out")
theirs=$(time_runs find "$tree" -printf '%y %m %U %G %s %n %i %T@ %l\n')

awk -v n="$entries" -v a="$ours" -v f="$theirs" 'BEGIN {
    printf "tree: %d entries\n", n
    printf "%12s %12s %10s\n", "scan", "find", "scan/find"
    printf "%10.3fs %10.3fs %10.2f\n", a / 1e6, f / 1e6, a / f
}'
