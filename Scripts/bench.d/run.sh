#!/usr/bin/env bash
# run-overlay on the native runtime against a hand-written shell sequence doing the same mounts:
#   start-up of `run-overlay -o a -o b -- /bin/true` (a writable, b read-only, on the host root)
#   against unshare -m + mount -o loop + mount -t overlay + binds + chroot, as root; and the
#   same as an ordinary user (fuse2fs + fuse-overlayfs in a user namespace both ways);
#   small files: creating 50,000 files inside the writable overlay against the host directory.
# Median of $RUNS runs each; ratios below 1 mean run-overlay is faster.
# Needs $BIN (release bin dir), $BENCH_TMP (scratch) and now/median; see Scripts/bench. Needs root.
set -euo pipefail

RUNS="${RUNS:-7}"
USER_NAME="${BENCH_USER:-overlaytest}"
dir="$BENCH_TMP/run"
mkdir -p "$dir"
chmod 755 "$BENCH_TMP" "$dir"
cd "$dir"

# time_runs COMMAND...: median microseconds of $RUNS runs.
time_runs() {
    local times=() start
    for ((i = 0; i < RUNS; i++)); do
        start=$(now)
        "$@" >/dev/null
        times+=($(( $(now) - start )))
    done
    printf '%s\n' "${times[@]}" | median
}

row() {  # name ours_us theirs_us
    awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%-34s %10.1fms %10.1fms %7.2f\n", n, a / 1000, b / 1000, a / b }'
}

"$BIN/create-overlay" -s 64 -n 16 -o a.ext3 >/dev/null
"$BIN/create-overlay" -s 64 -n 16 -o b.ext3 >/dev/null
mkdir -p mnt

# The hand-written sequence, as root: the same mounts run-overlay makes.
by_hand_root() {
    unshare -m --propagation private sh -ec '
        m="$1"
        mount -t tmpfs tmpfs "$m"
        mkdir "$m/a" "$m/b" "$m/root"
        mount -t ext3 -o loop,nosuid,nodev,errors=remount-ro a.ext3 "$m/a"
        mount -t ext3 -o loop,ro,nosuid,nodev,errors=remount-ro b.ext3 "$m/b"
        mount -t overlay overlay -o "lowerdir=$m/b/upper:/,upperdir=$m/a/upper,workdir=$m/a/work" "$m/root"
        for d in /proc /sys /dev /tmp "$HOME" "$PWD"; do mount --rbind "$d" "$m/root$d"; done
        cd "$PWD"
        chroot "$m/root" /bin/true
    ' sh "$dir/mnt"
}

printf '%-34s %12s %12s %7s\n' case run-overlay by-hand ratio
ours=$(time_runs "$BIN/run-overlay" --runtime native -o a.ext3 -o b.ext3 -- /bin/true)
theirs=$(time_runs by_hand_root)
row "start-up, root (kernel mounts)" "$ours" "$theirs"

# As an ordinary user: FUSE drivers in a user namespace, torn down at the end.
if id "$USER_NAME" >/dev/null 2>&1 && command -v fuse2fs >/dev/null && command -v fuse-overlayfs >/dev/null; then
    chmod 666 /dev/fuse
    as_user() { runuser -u "$USER_NAME" -- env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME="$dir" "$@"; }
    # The user's own images, as create-overlay makes them for them: upper/ and work/ are theirs
    # (uid and gid: a directory whose group is not mapped in the user namespace cannot be
    # written there, so fuse-overlayfs could not make its work directory).
    rm -f a.ext3 b.ext3
    chown "$USER_NAME" "$dir"
    as_user "$BIN/create-overlay" -s 64 -n 16 -o a.ext3 >/dev/null
    as_user "$BIN/create-overlay" -s 64 -n 16 -o b.ext3 >/dev/null
    # The same as run-overlay does, by hand: the user stays themselves in the namespace
    # (--map-current-user, with CAP_SYS_ADMIN kept across exec), so files written stay theirs
    # on disk; fuse-overlayfs with the same options. The drivers inherit fd 3, the write end
    # of the pipe to cat: the sequence ends when the last fuse2fs has exited, i.e. has closed
    # its image cleanly, as run-overlay waits for (without it, the image is still being
    # written when the command returns). The EXIT trap unmounts on any failure, so that no
    # driver is left running.
    by_hand_user() {
        as_user unshare --map-current-user --keep-caps -m --propagation private \
            setpriv --inh-caps +sys_admin,+sys_chroot --ambient-caps +sys_admin,+sys_chroot sh -ec '
            m="$1"
            trap '"'"'umount -l "$m/root" 2>/dev/null; umount "$m/a" "$m/b" 2>/dev/null || umount -l "$m/a" "$m/b" 2>/dev/null'"'"' EXIT
            mount -t tmpfs tmpfs "$m"
            mkdir "$m/a" "$m/b" "$m/root"
            fuse2fs a.ext3 "$m/a" -o fakeroot
            fuse2fs b.ext3 "$m/b" -o fakeroot,ro
            fuse-overlayfs -o "noacl,static_nlink,lowerdir=$m/b/upper:/,upperdir=$m/a/upper,workdir=$m/a/work" "$m/root"
            for d in /proc /sys /dev /tmp "$HOME" "$PWD"; do mount --rbind "$d" "$m/root$d"; done
            cd "$PWD"
            chroot "$m/root" /bin/true
        ' sh "$dir/mnt" 3>&1 2>/dev/null | cat
    }
    ours=$(time_runs as_user "$BIN/run-overlay" --runtime native -o a.ext3 -o b.ext3 -- /bin/true)
    theirs=$(time_runs by_hand_user)
    row "start-up, ordinary user (FUSE)" "$ours" "$theirs"
    for f in a.ext3 b.ext3; do
        e2fsck -fn "$f" >/dev/null 2>&1 || echo "warning: $f is not clean after the runs"
    done
else
    echo "start-up, ordinary user (FUSE): skipped (no user $USER_NAME, or no fuse2fs/fuse-overlayfs)"
fi

# Small files: 50,000 empty files made inside the writable overlay (the run includes mounting
# and the unmount that writes them out) against the same in a host directory, synced.
make_files='mkdir -p "$1" && cd "$1" && seq 50000 | xargs touch && sync -f .'
echo
printf '%-34s %12s %12s %7s\n' case overlay host ratio
RUNS_FILES="${RUNS_FILES:-3}"
times_ours=() times_host=()
for ((i = 0; i < RUNS_FILES; i++)); do
    rm -f files.ext3
    "$BIN/create-overlay" -s 1G -n 120 -o files.ext3 >/dev/null
    start=$(now)
    "$BIN/run-overlay" --runtime native -o files.ext3 -- sh -c "$make_files" sh "/opt/bench-files-$i" >/dev/null
    times_ours+=($(( $(now) - start )))
    start=$(now)
    sh -c "$make_files" sh "$dir/host-files-$i"
    times_host+=($(( $(now) - start )))
    rm -rf "$dir/host-files-$i"
done
ours=$(printf '%s\n' "${times_ours[@]}" | median)
theirs=$(printf '%s\n' "${times_host[@]}" | median)
row "create 50,000 files" "$ours" "$theirs"
awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%-34s %10.0f/s %10.0f/s\n", "files per second", 50000e6 / a, 50000e6 / b }'
rm -f a.ext3 b.ext3 files.ext3
