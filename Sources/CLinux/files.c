#define _GNU_SOURCE
#include "CLinux.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

int clinux_rename_noreplace(const char *from, const char *to) {
#ifdef SYS_renameat2
    return (int)syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, 1 /* RENAME_NOREPLACE */);
#else
    errno = ENOSYS;
    return -1;
#endif
}

long long clinux_seek_data(int fd, long long offset) { return (long long)lseek(fd, (off_t)offset, SEEK_DATA); }
long long clinux_seek_hole(int fd, long long offset) { return (long long)lseek(fd, (off_t)offset, SEEK_HOLE); }
unsigned int clinux_major(unsigned long long dev) { return major((dev_t)dev); }
unsigned int clinux_minor(unsigned long long dev) { return minor((dev_t)dev); }

// The numbers are the same on x86_64 and arm64 (the generic table); glibc's headers do not
// have them yet.
#if defined(SYS_listxattrat)
#define CLINUX_SYS_LISTXATTRAT SYS_listxattrat
#elif defined(__x86_64__) || defined(__aarch64__)
#define CLINUX_SYS_LISTXATTRAT 465
#endif
#if defined(SYS_getxattrat)
#define CLINUX_SYS_GETXATTRAT SYS_getxattrat
#elif defined(__x86_64__) || defined(__aarch64__)
#define CLINUX_SYS_GETXATTRAT 464
#endif

// struct xattr_args of <linux/xattr.h> (its first published size, 16 bytes).
struct clinux_xattr_args {
    unsigned long long value;
    unsigned int size;
    unsigned int flags;
};

long long clinux_listxattrat(int dfd, const char *name, char *list, size_t size) {
#ifdef CLINUX_SYS_LISTXATTRAT
    return (long long)syscall(CLINUX_SYS_LISTXATTRAT, dfd, name, AT_SYMLINK_NOFOLLOW, list, size);
#else
    (void)dfd; (void)name; (void)list; (void)size;
    errno = ENOSYS;
    return -1;
#endif
}

long long clinux_getxattrat(int dfd, const char *name, const char *attribute, void *value, size_t size) {
#ifdef CLINUX_SYS_GETXATTRAT
    struct clinux_xattr_args args = { (unsigned long long)(uintptr_t)value, (unsigned int)size, 0 };
    return (long long)syscall(CLINUX_SYS_GETXATTRAT, dfd, name, AT_SYMLINK_NOFOLLOW, attribute, &args, sizeof args);
#else
    (void)dfd; (void)name; (void)attribute; (void)value; (void)size;
    errno = ENOSYS;
    return -1;
#endif
}

int clinux_fallocate(int fd, long long offset, long long length) {
    return fallocate(fd, 0, (off_t)offset, (off_t)length);
}

long long clinux_copy_file_range(int in, long long *in_offset, int out, long long *out_offset, size_t length) {
    return (long long)copy_file_range(in, (off_t *)in_offset, out, (off_t *)out_offset, length, 0U);
}

int clinux_open_tmpfile(const char *directory, int mode) {
    return open(directory, O_TMPFILE | O_RDWR | O_CLOEXEC, (mode_t)mode);
}

int clinux_link_tmpfile(int fd, const char *target) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return linkat(AT_FDCWD, path, AT_FDCWD, target, AT_SYMLINK_FOLLOW);
}

int clinux_pipe_cloexec(int ends[2]) { return pipe2(ends, O_CLOEXEC); }

#include <sys/ioctl.h>
#ifndef FICLONE
#define FICLONE _IOW(0x94, 9, int)
#endif
#include <sys/ioctl.h>
int clinux_ficlone(int destination, int source) { return ioctl(destination, FICLONE, source); }
struct clinux_clone_range {
    long long src_fd;
    unsigned long long src_offset, src_length, dest_offset;
};
int clinux_ficlonerange(int destination, int source, long long offset, long long length) {
    struct clinux_clone_range range = { .src_fd = source, .src_offset = (unsigned long long)offset,
                                      .src_length = (unsigned long long)length, .dest_offset = (unsigned long long)offset };
    return ioctl(destination, _IOW(0x94, 13, struct clinux_clone_range), &range);  /* FICLONERANGE */
}
#ifndef FIFREEZE
#define FIFREEZE _IOWR('X', 119, int)
#define FITHAW _IOWR('X', 120, int)
#endif
int clinux_fifreeze(int fd) { return ioctl(fd, FIFREEZE, 0); }
int clinux_fithaw(int fd) { return ioctl(fd, FITHAW, 0); }
int clinux_syncfs(int fd) { return syncfs(fd); }

#include <sys/xattr.h>
long long clinux_llistxattr(const char *path, char *list, size_t size) { return (long long)llistxattr(path, list, size); }
long long clinux_lgetxattr(const char *path, const char *name, void *value, size_t size) {
    return (long long)lgetxattr(path, name, value, size);
}
