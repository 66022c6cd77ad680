#ifndef CLINUX_H
#define CLINUX_H

// The Linux calls Swift cannot make itself (variadic ones such as prctl, ioctl and syscall;
// GNU-only names glibc declares only under _GNU_SOURCE; syscalls glibc has no wrapper for) and
// the code between fork and exec, which must not allocate. Only LinuxSupport imports this
// module; everything above it uses LinuxSupport's Swift API.

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

// ---- Namespaces, mounts, processes ----

int clinux_unshare(int flags);
/// setns(2).
int clinux_setns(int fd, int type);
int clinux_flag_newns(void);
int clinux_flag_newuser(void);
int clinux_flag_newpid(void);

/// fork(): the child's pid in the parent, 0 in the child, -errno on failure.
pid_t clinux_fork(void);
/// A descriptor that polls readable when child `pid` exits (Linux 5.3+); -1 without pidfds.
int clinux_pidfd_open(pid_t pid);
/// Sends `sig` to the process `pidfd` refers to (never to a later process with its pid).
int clinux_pidfd_send_signal(int pidfd, int sig);
/// This process's name (PR_SET_NAME: /proc/self/comm).
int clinux_set_name(const char *name);
/// The signal this process gets when its parent dies (0 for none).
int clinux_set_parent_death_signal(int sig);

/// Attaches `path` to a free loop device with autoclear (and read-only when asked), limited to
/// [offset, offset + sizelimit) (0 = to the end). Returns the open loop device descriptor (the
/// caller mounts `/dev/loopN` and then closes it: autoclear frees the device when the mount
/// goes) and writes N to *number; -errno on failure.
int clinux_loop_attach(const char *path, int readonly, uint64_t offset, uint64_t sizelimit, int *number);
/// The same with an open file as the backing file (`path` only names it in the device's info):
/// the loop device holds that open file description for as long as it is attached, and with
/// it any OFD lock taken through it.
int clinux_loop_attach_fd(int backing, const char *path, int readonly, uint64_t offset, uint64_t sizelimit,
                          int *number);

// ---- Files ----

/// rename(2) that refuses to replace an existing target (renameat2 RENAME_NOREPLACE).
/// 0, or -1 with errno set.
int clinux_rename_noreplace(const char *from, const char *to);
/// lseek SEEK_DATA / SEEK_HOLE.
long long clinux_seek_data(int fd, long long offset);
long long clinux_seek_hole(int fd, long long offset);
unsigned int clinux_major(unsigned long long dev);
unsigned int clinux_minor(unsigned long long dev);
/// listxattrat(2) and getxattrat(2) (Linux 6.13), not following a symlink; -1 with errno
/// ENOSYS where they do not exist.
long long clinux_listxattrat(int dfd, const char *name, char *list, size_t size);
long long clinux_getxattrat(int dfd, const char *name, const char *attribute, void *value, size_t size);
/// fallocate(2) with mode 0: reserve the blocks of a byte range. 0, or -1 with errno set.
int clinux_fallocate(int fd, long long offset, long long length);
/// copy_file_range(2). The bytes copied, or -1 with errno set.
long long clinux_copy_file_range(int in, long long *in_offset, int out, long long *out_offset, size_t length);
/// O_TMPFILE (an unnamed file in `directory`, linked into place with clinux_link_tmpfile).
int clinux_open_tmpfile(const char *directory, int mode);
/// linkat(fd, "", AT_FDCWD, target, AT_EMPTY_PATH) through /proc/self/fd: gives the unnamed
/// file a name; fails with EEXIST when the target exists. 0, or -1 with errno set.
int clinux_link_tmpfile(int fd, const char *target);
/// ioctl(destination, FICLONE, source): the whole file shared by reflink (XFS, btrfs). 0, or -1
/// with errno set (EOPNOTSUPP, EXDEV, EINVAL where the filesystem cannot).
int clinux_ficlone(int destination, int source);
int clinux_ficlonerange(int destination, int source, long long offset, long long length);
/// ioctl(fd, FIFREEZE/FITHAW) on a mount point: the filesystem's writes blocked and its
/// journal checkpointed (clean on disk) until thawed. 0, or -1 with errno set.
int clinux_fifreeze(int fd);
int clinux_fithaw(int fd);
/// syncfs(2). 0, or -1 with errno set.
int clinux_syncfs(int fd);

/// llistxattr(2) and lgetxattr(2) (sys/xattr.h is not in the Glibc module).
long long clinux_llistxattr(const char *path, char *list, size_t size);
long long clinux_lgetxattr(const char *path, const char *name, void *value, size_t size);
/// pipe2(ends, O_CLOEXEC).
int clinux_pipe_cloexec(int ends[2]);

// ---- Between fork and exec ----

/// What a child does between fork and exec. Strings and arrays stay owned by the caller.
struct clinux_child {
    const char *root;          // chroot here first (NULL: stay)
    const char *cwd;           // then chdir here (NULL: stay)
    int change_ids;            // setgroups/setgid/setuid to the values below
    uid_t uid;
    gid_t gid;
    int ngroups;
    const gid_t *groups;
    int ambient_sys_admin;     // keep CAP_SYS_ADMIN across exec (a FUSE daemon in a user namespace)
    int death_signal;          // signal when the parent dies (0: none)
    int null_stdio;            // stdin/stdout to /dev/null (daemons); stderr kept
    int new_process_group;     // setpgid(0, 0)
    const char *file;          // execvp: looked up on the PATH of envp
    char *const *argv;
    char **envp;
    int error_fd;              // close-on-exec pipe: receives {step, errno} when a step fails
    int init_process;          // first process of a new PID namespace: see clinux_spawn
    const char *proc_target;   // with init_process: mount the namespace's /proc here
    int reexec_init;           // with init_process: init re-executes this program (see clinux_spawn)
    int new_session;           // with init_process: init starts a session (setsid) the job joins
    int foreground_terminal;   // a terminal on stdin: a process group of its own, the terminal's foreground
    int ignore_job_signals;    // SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2 ignored across exec (FUSE drivers)
};

/// Steps reported through error_fd.
enum { CLINUX_STEP_ROOT = 1, CLINUX_STEP_CWD, CLINUX_STEP_IDS, CLINUX_STEP_CAPS, CLINUX_STEP_EXEC };

/// fork(); the child applies `c` and execs. Returns the child's pid, or -errno.
///
/// With `init_process`, the child is the first process of the PID namespace this process
/// unshared: it mounts the namespace's /proc, forks the job (which applies `c` and execs),
/// passes SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 on to it, reaps whatever is
/// orphaned, and exits with the job's status (128+N for signal N). When it exits, the kernel
/// kills every process left in the namespace: nothing the job started outlives the run.
///
/// With `reexec_init` as well, init, once it has started the job, executes this program again
/// (by the path /proc/self/exe names, looked up in the job's mount namespace) in a mode a
/// constructor of this library recognises (argv "overlay-toolkit-init --job PID", as pid 1)
/// and runs its loop there. Its memory then maps only files of the job's own mount namespace,
/// which a CRIU dump from inside that namespace needs; a fork of the tool maps files through
/// the mounts of the tool's namespace. When the exec fails, init carries on as it is.
pid_t clinux_spawn(const struct clinux_child *c);

/// fork(); the child applies the steps of `c` before an exec (file, argv and envp are not
/// used), closes every descriptor above 2 and returns 0, to run the caller's code instead of a
/// program; the parent gets the child's pid, or -errno. `init_process` is not supported. A
/// failed step is reported through error_fd as for clinux_spawn.
pid_t clinux_fork_prepared(const struct clinux_child *c);

#endif
