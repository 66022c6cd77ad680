#define _GNU_SOURCE
#include "CLinux.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/capability.h>
#include <linux/loop.h>
#include <sched.h>

extern char **environ;

int clinux_unshare(int flags) { return (int)syscall(SYS_unshare, flags); }
int clinux_setns(int fd, int type) { return (int)syscall(SYS_setns, fd, type); }
int clinux_flag_newns(void) { return CLONE_NEWNS; }
int clinux_flag_newuser(void) { return CLONE_NEWUSER; }
int clinux_flag_newpid(void) { return CLONE_NEWPID; }

pid_t clinux_fork(void) {
    pid_t pid = fork();
    return pid < 0 ? -errno : pid;
}

int clinux_pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    return -1;
#endif
}

int clinux_pidfd_send_signal(int pidfd, int sig) {
#ifdef SYS_pidfd_send_signal
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
#else
    (void)pidfd; (void)sig;
    errno = ENOSYS;
    return -1;
#endif
}

int clinux_set_name(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0UL, 0UL, 0UL);
}

int clinux_set_parent_death_signal(int sig) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0UL, 0UL, 0UL);
}
int clinux_loop_attach(const char *path, int readonly, uint64_t offset,
                                     uint64_t sizelimit, int *number) {
    int backing = open(path, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (backing < 0) return -errno;
    int device = clinux_loop_attach_fd(backing, path, readonly, offset, sizelimit, number);
    close(backing);
    return device;
}

int clinux_loop_attach_fd(int backing, const char *path, int readonly, uint64_t offset,
                          uint64_t sizelimit, int *number) {
    int control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (control < 0) return -errno;
    for (int attempt = 0; attempt < 64; attempt++) {
        int n = ioctl(control, LOOP_CTL_GET_FREE);
        if (n < 0) { int e = errno; close(control); return -e; }
        char name[32];
        snprintf(name, sizeof name, "/dev/loop%d", n);
        int device = open(name, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
        if (device < 0) {
            if (errno == ENOENT) continue;
            int e = errno; close(control); return -e;
        }
        struct loop_config config;
        memset(&config, 0, sizeof config);
        config.fd = (unsigned int)backing;
        config.block_size = 0;
        config.info.lo_offset = offset;
        config.info.lo_sizelimit = sizelimit;
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR | (readonly ? LO_FLAGS_READ_ONLY : 0);
        strncpy((char *)config.info.lo_file_name, path, LO_NAME_SIZE - 1);
        if (ioctl(device, LOOP_CONFIGURE, &config) == 0) {
            close(control);
            *number = n;
            return device;
        }
        int e = errno;
        close(device);
        if (e != EBUSY) { close(control); return -e; }
        // Another process took it between GET_FREE and CONFIGURE: ask again.
    }
    close(control);
    return -EBUSY;
}

static void clinux_child_fail(int fd, int step) {
    int report[2] = { step, errno };
    ssize_t ignored = write(fd, report, sizeof report);
    (void)ignored;
    _exit(step == CLINUX_STEP_EXEC && report[1] == ENOENT ? 127 : 126);
}

// The init process of a job's PID namespace passes signals on: SIGUSR1/SIGUSR2 to the job, the
// others (SIGINT, SIGTERM, SIGHUP, SIGQUIT) to every process in the namespace, as a terminal's
// Ctrl-C reaches a whole foreground job and a batch system's SIGTERM all of a job's processes.
static volatile sig_atomic_t clinux_init_job = 0;
static void clinux_init_forward(int sig) {
    if (clinux_init_job <= 0) return;
    if (sig == SIGUSR1 || sig == SIGUSR2) kill(clinux_init_job, sig);
    else kill(-1, sig);
}

static void clinux_child_run(const struct clinux_child *c, pid_t parent);

#define CLINUX_INIT_ARGV0 "overlay-toolkit-init"

static void clinux_forwarded_signals(sigset_t *set) {
    sigemptyset(set);
    int forwarded[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 };
    for (unsigned i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) sigaddset(set, forwarded[i]);
}

/// Init's loop, once the job runs: passes the forwarded signals on (they were blocked until
/// now, so none is lost), reaps orphans, exits with the job's status.
__attribute__((noreturn)) static void clinux_init_loop(pid_t job) {
    sigset_t forwarded;
    clinux_forwarded_signals(&forwarded);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = clinux_init_forward;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    for (int s = 1; s < 32; s++) {
        if (sigismember(&forwarded, s)) sigaction(s, &action, NULL);
    }
    // Stopping from the terminal is the job's business; init stays put.
    signal(SIGTSTP, SIG_IGN);
    signal(SIGTTIN, SIG_IGN);
    signal(SIGTTOU, SIG_IGN);
    clinux_init_job = job;
    sigprocmask(SIG_UNBLOCK, &forwarded, NULL);
    for (;;) {
        int status = 0;
        pid_t done = wait(&status);
        if (done < 0) {
            if (errno == EINTR) continue;
            _exit(125);
        }
        if (done != job) continue;
        if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
        if (WIFSIGNALED(status)) _exit(128 + WTERMSIG(status));
    }
}

/// The re-executed init (see clinux_spawn's reexec_init): recognised before anything else
/// of the program runs, and only as pid 1 of a namespace.
__attribute__((constructor)) static void clinux_init_entry(int argc, char **argv, char **envp) {
    (void)envp;
    if (argc != 3 || argv == NULL || strcmp(argv[0], CLINUX_INIT_ARGV0) != 0 || strcmp(argv[1], "--job") != 0) return;
    if (getpid() != 1) return;
    char *end = NULL;
    long job = strtol(argv[2], &end, 10);
    if (end == argv[2] || *end != 0 || job <= 1) _exit(125);
    clinux_init_loop((pid_t)job);
}

/// fork(); the child applies `c` and execs. Returns the child's pid, or -errno.
///
/// With `init_process`, the child is the first process of the PID namespace this process
/// unshared: it mounts the namespace's /proc, forks the job (which applies `c` and execs),
/// passes SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 on to it, reaps whatever is
/// orphaned, and exits with the job's status (128+N for signal N). When it exits, the kernel
/// kills every process left in the namespace: nothing the job started outlives the run.
pid_t clinux_spawn(const struct clinux_child *c) {
    pid_t parent = getpid();
    // For init: a pipe whose write end this process keeps open (and so holds until it exits),
    // so that init can tell whether it is still there once its parent-death signal is set.
    int alive[2] = { -1, -1 };
    if (c->init_process) {
        if (pipe(alive) != 0) return -errno;
        fcntl(alive[0], F_SETFD, FD_CLOEXEC);
        fcntl(alive[1], F_SETFD, FD_CLOEXEC);
    }
    pid_t pid = fork();
    if (pid != 0) {
        int e = errno;
        if (c->init_process) {
            close(alive[0]);
            if (pid < 0) close(alive[1]);
        }
        return pid < 0 ? -e : pid;
    }
    if (!c->init_process) clinux_child_run(c, parent);

    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    // The parent is outside the namespace (getppid() says 0 here): the pipe says whether it
    // died before the parent-death signal was set (every write end closed: POLLHUP).
    prctl(PR_SET_PDEATHSIG, (unsigned long)SIGKILL, 0UL, 0UL, 0UL);
    close(alive[1]);
    struct pollfd parent_gone = { alive[0], POLLIN, 0 };
    if (poll(&parent_gone, 1, 0) > 0) _exit(125);
    close(alive[0]);
    if (c->proc_target) {
        if (mount("proc", c->proc_target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
            mount("/proc", c->proc_target, NULL, MS_BIND | MS_REC, NULL);
    }
    // The forwarded signals wait (blocked) until init's loop is ready to pass them on.
    sigset_t forwarded;
    clinux_forwarded_signals(&forwarded);
    sigprocmask(SIG_BLOCK, &forwarded, NULL);
    // A session inside the namespace (CRIU dumps only trees whose session leader it sees).
    if (c->new_session) setsid();
    pid_t init = getpid();
    pid_t job = fork();
    if (job < 0) _exit(126);
    if (job == 0) clinux_child_run(c, init);
    close(c->error_fd);
    if (c->reexec_init) {
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n > 0) {
            self[n] = 0;
            char number[32];
            snprintf(number, sizeof number, "%d", (int)job);
            char *argv[] = { (char *)CLINUX_INIT_ARGV0, (char *)"--job", number, NULL };
            execv(self, argv);
        }
    }
    clinux_init_loop(job);
}

static void clinux_child_prepare(const struct clinux_child *c, pid_t parent);

static void clinux_child_run(const struct clinux_child *c, pid_t parent) {
    clinux_child_prepare(c, parent);
    environ = c->envp;
    execvp(c->file, c->argv);
    clinux_child_fail(c->error_fd, CLINUX_STEP_EXEC);
}

pid_t clinux_fork_prepared(const struct clinux_child *c) {
    pid_t parent = getpid();
    // Nothing buffered may be written twice, once by each process.
    fflush(NULL);
    pid_t pid = fork();
    if (pid != 0) return pid < 0 ? -errno : pid;
    clinux_child_prepare(c, parent);
    // Only the standard streams go on: no pipe, lock or image descriptor of the parent's is
    // held by the child (an exec'd child loses them by close-on-exec; error_fd too, which
    // tells the parent the steps are done).
    if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0) {
        for (int fd = 3; fd < 1024; fd++) close(fd);
    }
    return 0;
}

/// The steps of `c` before its exec, in the child.
static void clinux_child_prepare(const struct clinux_child *c, pid_t parent) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < 32; s++) {
        if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
    }
    if (c->ignore_job_signals) {
        // Ignored across exec (libfuse sets its exit handler only on a signal left at its
        // default), so that a batch system's signal to every process of the job leaves the
        // FUSE driver serving the job's files; SIGHUP still ends it.
        const int job_signals[] = { SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2 };
        for (size_t i = 0; i < sizeof job_signals / sizeof job_signals[0]; i++) signal(job_signals[i], SIG_IGN);
    }
    if (c->new_process_group) setpgid(0, 0);
    if (c->foreground_terminal && isatty(0)) {
        // A process group of its own, in the foreground of the terminal, so that a shell that
        // saves the terminal's foreground group at start (dash) saves one it can see from
        // its PID namespace and can give the terminal back to when it exits.
        setpgid(0, 0);
        signal(SIGTTOU, SIG_IGN);
        tcsetpgrp(0, getpgrp());
        signal(SIGTTOU, SIG_DFL);
    }
    if (c->null_stdio) {
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { dup2(null, 0); dup2(null, 1); if (null > 2) close(null); }
    }
    if (c->root && (chroot(c->root) != 0)) clinux_child_fail(c->error_fd, CLINUX_STEP_ROOT);
    if (c->cwd && chdir(c->cwd) != 0) {
        if (chdir("/") != 0) clinux_child_fail(c->error_fd, CLINUX_STEP_CWD);
    }
    if (c->change_ids) {
        if (setgroups((size_t)c->ngroups, c->groups) != 0 || setgid(c->gid) != 0 || setuid(c->uid) != 0)
            clinux_child_fail(c->error_fd, CLINUX_STEP_IDS);
    }
    if (c->ambient_sys_admin) {
        struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
        struct __user_cap_data_struct data[2];
        memset(data, 0, sizeof data);
        if (syscall(SYS_capget, &header, data) != 0) clinux_child_fail(c->error_fd, CLINUX_STEP_CAPS);
        data[CAP_TO_INDEX(CAP_SYS_ADMIN)].inheritable |= CAP_TO_MASK(CAP_SYS_ADMIN);
        if (syscall(SYS_capset, &header, data) != 0) clinux_child_fail(c->error_fd, CLINUX_STEP_CAPS);
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN, 0UL, 0UL) != 0)
            clinux_child_fail(c->error_fd, CLINUX_STEP_CAPS);
    } else {
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0UL, 0UL, 0UL);
    }
    // After the uid change, which clears it.
    if (c->death_signal) {
        prctl(PR_SET_PDEATHSIG, (unsigned long)c->death_signal, 0UL, 0UL, 0UL);
        if (getppid() != parent) _exit(128 + c->death_signal);
    }
}

