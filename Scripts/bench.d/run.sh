#!/usr/bin/env bash
# run-overlay on the native runtime against a hand-written shell sequence doing the same mounts:
#   start-up of `run-overlay -o a -o b -- /bin/true` (a writable, b read-only, on the host root)
#   against unshare -m + mount -o loop + mount -t overlay + binds + chroot, as root; and the
#   same as an ordinary user (run-overlay's FUSE drivers in a user namespace, against fuse2fs
#   + fuse-overlayfs by hand);
#   small files: creating 50,000 files inside the writable overlay against the host directory;
#   many files: find, stat, cat and create over $MANY files (default 20,000) in one directory
#   and in a tree of 1,000-file directories, in one run each (the first pass is cold): root,
#   an ordinary user (run-overlay: the built-in writable driver under fuse-overlayfs on the
#   host root, under the kernel's overlay on a sandbox) and the plain fuse2fs + fuse-overlayfs
#   stack, on the host root and on a sandbox; then read-only on a sandbox (-o IMAGE:ro): root,
#   the built-in image driver under the kernel's overlay and under fuse-overlayfs, fuse2fs
#   under the kernel's overlay, and the plain stack read-only;
#   a Python import of about 800 modules from an image (the pack part's Python environment):
#   root, an ordinary user and the plain stack, on the host root and on the sandbox, then
#   read-only on the sandbox.
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
    # setpriv, not runuser: runuser opens a PAM session (about 10 ms here), which the root row
    # does not pay; setpriv only changes identity and executes.
    as_user() {
        setpriv --reuid="$USER_NAME" --regid="$(id -g "$USER_NAME")" --init-groups \
            env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME="$dir" "$@"
    }
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

# Many files: an image of the user's with /bench/flat ($MANY files) and /bench/deep ($MANY
# files in directories of 1,000), each file a line. The job times each step itself (ms):
# find (cold: names), stat (find -printf %s), cat (every file), create (the same again,
# new files, synced).
MANY="${MANY:-20000}"
if id "$USER_NAME" >/dev/null 2>&1 && command -v fuse2fs >/dev/null && command -v fuse-overlayfs >/dev/null; then
    rm -rf tree && mkdir -p tree/bench/flat tree/bench/deep
    (cd tree/bench/flat && seq "$MANY" | sed 's/.*/echo "file &" > f&/' | sh)
    for ((d = 0; d < MANY / 1000; d++)); do
        mkdir "tree/bench/deep/d$d"
        (cd "tree/bench/deep/d$d" && seq 1000 | sed 's/.*/echo "file &" > f&/' | sh)
    done
    chown -R "$USER_NAME:$(id -g "$USER_NAME")" tree
    rm -f many.ext3 && as_user "$BIN/create-overlay" --from tree -s 1G -n $((MANY * 5 / 1000 + 10)) -o many.ext3 >/dev/null
    # A sandbox container of the host's /usr (hard links), for the read-only kernel-overlay rows.
    rm -rf sandbox && mkdir -p sandbox/proc sandbox/sys sandbox/dev sandbox/tmp sandbox/etc
    cp -al /usr sandbox/usr && for l in bin sbin lib lib64; do [ -e /$l ] && ln -s usr/$l sandbox/$l; done
    job='t() { local s=${EPOCHREALTIME/./}; "$@" >/dev/null || echo "failed: $*" >&2; printf "%d " $(( (${EPOCHREALTIME/./} - s) / 1000 )); }
        for l in flat deep; do
            t find /bench/$l -name nothing
            t find /bench/$l -type f -printf "%s\n"
            t sh -c "cd /bench/$l && find . -type f -print0 | xargs -0 cat"
            [ -w /bench ] && t sh -c "mkdir /bench/new-$l && cd /bench/new-$l && if [ $l = flat ]; then seq $1 | xargs touch; else for d in \$(seq \$(($1 / 1000))); do mkdir d\$d && (cd d\$d && seq 1000 | xargs touch); done; fi; sync -f ."
        done; echo'
    fresh() { cp --sparse=always many.ext3 m.ext3; chown "$USER_NAME" m.ext3; }
    fresh; root=$("$BIN/run-overlay" --runtime native -o m.ext3 -- bash -c "$job" sh "$MANY")
    fresh; user=$(as_user OVERLAY_RUNTIME=native "$BIN/run-overlay" --runtime native -o m.ext3 -- bash -c "$job" sh "$MANY")
    # The plain stack: fuse2fs and fuse-overlayfs with their defaults (and the options
    # run-overlay needs: noacl, static_nlink), by hand as in by_hand_user; rw: IMAGE writable
    # on the host root; rw-sandbox: IMAGE writable on the sandbox; ro: IMAGE and the sandbox,
    # both read-only. Then COMMAND in it.
    plain_stack() {  # rw|rw-sandbox|ro IMAGE COMMAND...
        as_user unshare --map-current-user --keep-caps -m --propagation private \
            setpriv --inh-caps +sys_admin,+sys_chroot --ambient-caps +sys_admin,+sys_chroot bash -ec '
            m="$1"; sandbox="$2"; mode="$3"; image="$4"; shift 4
            trap '"'"'umount -l "$m/root" 2>/dev/null; umount "$m/a" 2>/dev/null || umount -l "$m/a" 2>/dev/null'"'"' EXIT
            mount -t tmpfs tmpfs "$m"; mkdir "$m/a" "$m/root"
            if [ "$mode" = ro ]; then
                fuse2fs "$image" "$m/a" -o fakeroot,ro
                fuse-overlayfs -o "ro,noacl,static_nlink,lowerdir=$m/a/upper:$sandbox" "$m/root"
            elif [ "$mode" = rw-sandbox ]; then
                fuse2fs "$image" "$m/a" -o fakeroot
                fuse-overlayfs -o "noacl,static_nlink,lowerdir=$sandbox,upperdir=$m/a/upper,workdir=$m/a/work" "$m/root"
            else
                fuse2fs "$image" "$m/a" -o fakeroot
                fuse-overlayfs -o "noacl,static_nlink,lowerdir=/,upperdir=$m/a/upper,workdir=$m/a/work" "$m/root"
            fi
            for d in /proc /sys /dev /tmp; do mount --rbind "$d" "$m/root$d"; done
            chroot "$m/root" "$@"
        ' sh "$dir/mnt" "$dir/sandbox" "$@" 3>&1 2>/dev/null | cat
    }
    fresh; plain=$(plain_stack rw m.ext3 bash -c "$job" sh "$MANY")
    # Read-only on the sandbox: the built-in driver under the kernel's overlay and under
    # fuse-overlayfs; fuse2fs (OVERLAY_IMAGE_DRIVER=fuse2fs) under the kernel's overlay; root;
    # and the plain stack read-only (fuse2fs ro + fuse-overlayfs ro), by hand.
    fresh; kernel=$(as_user OVERLAY_RUNTIME=native OVERLAY_FUSE_STACK=kernel "$BIN/run-overlay" --runtime native -o m.ext3:ro -c sandbox -- bash -c "$job" sh "$MANY")
    fresh; fov=$(as_user OVERLAY_RUNTIME=native OVERLAY_FUSE_STACK=fuse-overlayfs "$BIN/run-overlay" --runtime native -o m.ext3:ro -c sandbox -- bash -c "$job" sh "$MANY")
    fresh; oldro=$(as_user OVERLAY_RUNTIME=native OVERLAY_FUSE_STACK=kernel OVERLAY_IMAGE_DRIVER=fuse2fs "$BIN/run-overlay" --runtime native -o m.ext3:ro -c sandbox -- bash -c "$job" sh "$MANY")
    fresh; rootro=$("$BIN/run-overlay" --runtime native -o m.ext3:ro -c sandbox -- bash -c "$job" sh "$MANY")
    fresh; plainro=$(plain_stack ro m.ext3 bash -c "$job" sh "$MANY")
    # Writable on the sandbox: root; the user (the built-in driver's writable mode under the
    # kernel's overlay); the plain stack on the sandbox.
    fresh; rootsb=$("$BIN/run-overlay" --runtime native -o m.ext3 -c sandbox -- bash -c "$job" sh "$MANY")
    fresh; usersb=$(as_user OVERLAY_RUNTIME=native "$BIN/run-overlay" --runtime native -o m.ext3 -c sandbox -- bash -c "$job" sh "$MANY")
    fresh; plainsb=$(plain_stack rw-sandbox m.ext3 bash -c "$job" sh "$MANY")
    echo
    printf '%-30s %9s %9s %9s %7s %7s %9s %9s %7s\n' "$MANY files (ms, one run)" root user plain user/root plain/root "user ro:kernel" "ro:fuse-ovl" kernel/root
    read -ra R <<<"$root"; read -ra U <<<"$user"; read -ra P <<<"$plain"; read -ra K <<<"$kernel"; read -ra F <<<"$fov"
    names=("find, one directory" "stat, one directory" "cat, one directory" "create, one directory"
           "find, 1,000-file dirs" "stat, 1,000-file dirs" "cat, 1,000-file dirs" "create, 1,000-file dirs")
    k=0
    for i in 0 1 2 3 4 5 6 7; do
        if ((i % 4 == 3)); then kv=-; fv=-; else kv=${K[k]}; fv=${F[k]}; k=$((k + 1)); fi
        # A step a run did not reach (it failed: its message is above) shows as 0.
        awk -v n="${names[i]}" -v r="${R[i]:-0}" -v u="${U[i]:-0}" -v p="${P[i]:-0}" -v k="${kv:-0}" -v f="${fv:-0}" 'BEGIN {
            r1 = r < 1 ? 1 : r
            printf "%-30s %9d %9d %9d %7.1f %7.1f %9s %9s %7s\n", n, r, u, p, u / r1, p / r1, k, f, (k == "-" ? "-" : sprintf("%.1f", k / r1)) }'
    done
    # The same, writable, on the sandbox (where the kernel's overlay takes the user's stack).
    echo
    printf '%-30s %9s %9s %9s %7s %7s %11s\n' "$MANY files, on a sandbox" root user plain user/root plain/root plain/user
    read -ra RS <<<"$rootsb"; read -ra US <<<"$usersb"; read -ra PS <<<"$plainsb"
    for i in 0 1 2 3 4 5 6 7; do
        awk -v n="${names[i]}" -v r="${RS[i]:-0}" -v u="${US[i]:-0}" -v p="${PS[i]:-0}" 'BEGIN {
            r1 = r < 1 ? 1 : r; u1 = u < 1 ? 1 : u
            printf "%-30s %9d %9d %9d %7.1f %7.1f %11.1f\n", n, r, u, p, u / r1, p / r1, p / u1 }'
    done
    # The read-only rows: what a batch job sharing an image (-o IMAGE:ro) gets.
    echo
    printf '%-30s %9s %13s %13s %13s %9s %13s %13s\n' "$MANY files, :ro (ms, one run)" root builtin:kernel builtin:fuse-ovl fuse2fs:kernel plain-ro builtin/root plain/builtin
    read -ra RR <<<"$rootro"; read -ra O <<<"$oldro"; read -ra PR <<<"$plainro"
    k=0
    for i in 0 1 2 4 5 6; do
        awk -v n="${names[i]}" -v r="${RR[k]:-0}" -v b="${K[k]:-0}" -v f="${F[k]:-0}" -v o="${O[k]:-0}" -v p="${PR[k]:-0}" 'BEGIN {
            r1 = r < 1 ? 1 : r; b1 = b < 1 ? 1 : b
            printf "%-30s %9d %13d %13d %13d %9d %13.1f %13.1f\n", n, r, b, f, o, p, b / r1, p / b1 }'
        k=$((k + 1))
    done
    rm -rf tree many.ext3 m.ext3

    # A Python import from the image: the Python environment of `Scripts/bench pack` (the venv
    # of python-env.txt, installed from PyPI once into $PACK_CACHE) packed into an image of the
    # user's at /opt/pyenv; the job imports numpy, pandas, aiohttp, jinja2 and yaml with it
    # (about 800 modules, from their compiled .pyc files), in a fresh mount each time:
    # root, the ordinary user and the plain stack on the host root (writable image), the same
    # on the sandbox (the user's: the built-in writable driver under the kernel's overlay), then
    # the image read-only on the sandbox: root, the ordinary user (the built-in driver under the
    # kernel's overlay) and the plain stack read-only. Median of $IMPORT_RUNS runs (default 3) of each.
    PACK_CACHE="${PACK_CACHE:-/var/tmp/overlay-bench-cache}"
    venv="$PACK_CACHE/python-env"
    if [ ! -e "$venv.done" ]; then
        mkdir -p "$PACK_CACHE"; rm -rf "$venv"
        echo "installing the Python environment into $venv (once; a few minutes)..." >&2
        if python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check --no-deps \
            -r "$(dirname "$0")/python-env.txt" >&2; then
            touch "$venv.done"
        fi
    fi
    echo
    if [ -e "$venv.done" ]; then
        rm -rf pytree && mkdir -p pytree/opt && cp -al "$venv" pytree/opt/pyenv
        # The venv runs the host's /usr/bin/python3 (also in the sandbox, and readable by the
        # user; the cache's may point elsewhere): replaced in the copy, not in the cache.
        rm -f pytree/opt/pyenv/bin/python3 pytree/opt/pyenv/pyvenv.cfg
        ln -s /usr/bin/python3 pytree/opt/pyenv/bin/python3
        printf 'home = /usr/bin\ninclude-system-site-packages = false\n' >pytree/opt/pyenv/pyvenv.cfg
        modules=$(/usr/bin/python3 -c 'import sys; sys.path[:0] = sys.argv[1:]; import numpy, pandas, aiohttp, jinja2, yaml; print(len(sys.modules))' \
            pytree/opt/pyenv/lib/python3*/site-packages 2>/dev/null || echo "?")
        rm -f py.ext3 && as_user "$BIN/create-overlay" --from pytree -o py.ext3 >/dev/null
        chmod 644 py.ext3
        imp='s=${EPOCHREALTIME/./}; /opt/pyenv/bin/python -c "import numpy, pandas, aiohttp, jinja2, yaml" || echo failed >&2; echo $(( (${EPOCHREALTIME/./} - s) / 1000 ))'
        import_runs() {  # COMMAND...: the median of the job's own figures
            for ((i = 0; i < ${IMPORT_RUNS:-3}; i++)); do
                cp --sparse=always py.ext3 p.ext3; chown "$USER_NAME" p.ext3
                "$@"
            done | median
        }
        proot=$(import_runs env HOME="$dir" "$BIN/run-overlay" --runtime native -o p.ext3 -- bash -c "$imp")
        puser=$(import_runs as_user "$BIN/run-overlay" --runtime native -o p.ext3 -- bash -c "$imp")
        pplain=$(import_runs plain_stack rw p.ext3 env HOME="$dir" bash -c "$imp")
        prootro=$(import_runs env HOME="$dir" "$BIN/run-overlay" --runtime native -o p.ext3:ro -c sandbox -- bash -c "$imp")
        puserro=$(import_runs as_user "$BIN/run-overlay" --runtime native -o p.ext3:ro -c sandbox -- bash -c "$imp")
        pplainro=$(import_runs plain_stack ro p.ext3 env HOME="$dir" bash -c "$imp")
        prootsb=$(import_runs env HOME="$dir" "$BIN/run-overlay" --runtime native -o p.ext3 -c sandbox -- bash -c "$imp")
        pusersb=$(import_runs as_user "$BIN/run-overlay" --runtime native -o p.ext3 -c sandbox -- bash -c "$imp")
        pplainsb=$(import_runs plain_stack rw-sandbox p.ext3 env HOME="$dir" bash -c "$imp")
        printf '%-34s %9s %9s %9s %9s %9s\n' "Python import (ms, median)" root user plain user/root plain/root
        awk -v n="$modules modules, writable image" -v r="$proot" -v u="$puser" -v p="$pplain" 'BEGIN {
            printf "%-34s %9d %9d %9d %9.1f %9.1f\n", n, r, u, p, u / r, p / r }'
        awk -v n="the same, writable, on a sandbox" -v r="$prootsb" -v u="$pusersb" -v p="$pplainsb" 'BEGIN {
            printf "%-34s %9d %9d %9d %9.1f %9.1f\n", n, r, u, p, u / r, p / r }'
        awk -v n="the same, :ro on a sandbox" -v r="$prootro" -v u="$puserro" -v p="$pplainro" 'BEGIN {
            printf "%-34s %9d %9d %9d %9.1f %9.1f\n", n, r, u, p, u / r, p / r }'
        rm -rf pytree py.ext3 p.ext3
    else
        echo "Python import: skipped (the Python environment could not be installed: no PyPI?)"
    fi
    rm -rf sandbox
fi
