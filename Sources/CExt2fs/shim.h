#ifndef CEXT2FS_SHIM_H
#define CEXT2FS_SHIM_H

#include <ext2fs/ext2_fs.h>
#include <ext2fs/ext2fs.h>
#include <et/com_err.h>

// Mutable C globals are not concurrency-safe in Swift 6: read them through accessors.
static inline io_manager cext2fs_unix_io_manager(void) { return unix_io_manager; }

// Macros Swift does not import.
static inline unsigned int cext2fs_block_size(ext2_filsys fs) { return (unsigned int)fs->blocksize; }
static inline int cext2fs_has_feature_journal(struct ext2_super_block *sb) { return ext2fs_has_feature_journal(sb); }

// Owner of an inode, with the high 16 bits (macros in ext2_fs.h).
static inline unsigned int cext2fs_inode_uid(const struct ext2_inode *inode) { return inode_uid(*inode); }
static inline unsigned int cext2fs_inode_gid(const struct ext2_inode *inode) { return inode_gid(*inode); }

// ---- Reading helpers ----

// The whole on-disk inode (up to sizeof(struct ext2_inode_large)), for the _extra time fields.
static inline errcode_t cext2fs_read_inode_large(ext2_filsys fs, ext2_ino_t ino, struct ext2_inode_large *inode) {
    return ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)inode, (int)sizeof(*inode));
}
static inline struct ext2_inode *cext2fs_small_inode(struct ext2_inode_large *inode) { return (struct ext2_inode *)inode; }
// The 60 bytes of i_block (a fast symlink's target lives there).
static inline const unsigned char *cext2fs_inode_block_bytes(const struct ext2_inode_large *inode) {
    return (const unsigned char *)inode->i_block;
}
// Device numbers of a character/block device inode (old and new encodings, as the kernel reads them).
static inline unsigned int cext2fs_inode_rdev_major(const struct ext2_inode_large *inode) {
    if (inode->i_block[0]) return (inode->i_block[0] >> 8) & 0xff;
    return (inode->i_block[1] & 0xfff00) >> 8;
}
static inline unsigned int cext2fs_inode_rdev_minor(const struct ext2_inode_large *inode) {
    if (inode->i_block[0]) return inode->i_block[0] & 0xff;
    return (inode->i_block[1] & 0xff) | ((inode->i_block[1] >> 12) & 0xfff00);
}
static inline unsigned int cext2fs_dirent_name_len(const struct ext2_dir_entry *entry) { return entry->name_len & 0xff; }
static inline unsigned int cext2fs_inode_blocks_per_group(ext2_filsys fs) { return fs->inode_blocks_per_group; }
static inline unsigned int cext2fs_group_count(ext2_filsys fs) { return fs->group_desc_count; }
static inline const char *cext2fs_dirent_name(const struct ext2_dir_entry *entry) { return entry->name; }

// ---- Formatting helpers ----
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <sys/syscall.h>

// rename(2) that refuses to replace an existing target (renameat2 RENAME_NOREPLACE, which
// glibc's headers only declare under _GNU_SOURCE). Returns 0, or -1 with errno set.
static inline int cext2fs_rename_noreplace(const char *from, const char *to) {
#ifdef SYS_renameat2
    return (int)syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, 1 /* RENAME_NOREPLACE */);
#else
    errno = ENOSYS;
    return -1;
#endif
}

// ---- Reading a tree to pack ----
#include <sys/types.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <stdint.h>

// GNU-only names (glibc declares them only under _GNU_SOURCE).
static inline long long cext2fs_seek_data(int fd, long long offset) { return (long long)lseek(fd, (off_t)offset, 3 /* SEEK_DATA */); }
static inline long long cext2fs_seek_hole(int fd, long long offset) { return (long long)lseek(fd, (off_t)offset, 4 /* SEEK_HOLE */); }
static inline unsigned int cext2fs_major(unsigned long long dev) { return major((dev_t)dev); }
static inline unsigned int cext2fs_minor(unsigned long long dev) { return minor((dev_t)dev); }

// listxattrat(2) and getxattrat(2) (Linux 6.13): the extended attributes of `name` relative to
// the open directory `dfd`, not following a symlink, so the kernel looks up one name instead of
// walking the whole path. The numbers are the same on x86_64 and arm64 (the generic table);
// glibc's headers do not have them yet. -1 with errno ENOSYS where they do not exist.
#if defined(SYS_listxattrat)
#define CEXT2FS_SYS_LISTXATTRAT SYS_listxattrat
#elif defined(__x86_64__) || defined(__aarch64__)
#define CEXT2FS_SYS_LISTXATTRAT 465
#endif
#if defined(SYS_getxattrat)
#define CEXT2FS_SYS_GETXATTRAT SYS_getxattrat
#elif defined(__x86_64__) || defined(__aarch64__)
#define CEXT2FS_SYS_GETXATTRAT 464
#endif

// struct xattr_args of <linux/xattr.h> (its first published size, 16 bytes).
struct cext2fs_xattr_args {
    unsigned long long value;
    unsigned int size;
    unsigned int flags;
};

static inline long long cext2fs_listxattrat(int dfd, const char *name, char *list, size_t size) {
#ifdef CEXT2FS_SYS_LISTXATTRAT
    return (long long)syscall(CEXT2FS_SYS_LISTXATTRAT, dfd, name, AT_SYMLINK_NOFOLLOW, list, size);
#else
    (void)dfd; (void)name; (void)list; (void)size;
    errno = ENOSYS;
    return -1;
#endif
}

static inline long long cext2fs_getxattrat(int dfd, const char *name, const char *attribute, void *value, size_t size) {
#ifdef CEXT2FS_SYS_GETXATTRAT
    struct cext2fs_xattr_args args = { (unsigned long long)(uintptr_t)value, (unsigned int)size, 0 };
    return (long long)syscall(CEXT2FS_SYS_GETXATTRAT, dfd, name, AT_SYMLINK_NOFOLLOW, attribute, &args, sizeof args);
#else
    (void)dfd; (void)name; (void)attribute; (void)value; (void)size;
    errno = ENOSYS;
    return -1;
#endif
}

// fallocate(2) with mode 0 (GNU-only name): reserve the blocks of a byte range of a file, so
// writing into it later does not allocate page by page. 0, or -1 with errno set.
static inline int cext2fs_fallocate(int fd, long long offset, long long length) {
#ifdef SYS_fallocate
    return (int)syscall(SYS_fallocate, fd, 0, (off_t)offset, (off_t)length);
#else
    errno = ENOSYS;
    return -1;
#endif
}

// copy_file_range(2): the kernel copies between the files, no user-space buffer. Returns the
// bytes copied, or -1 with errno set.
static inline long long cext2fs_copy_file_range(int in, long long *in_offset, int out, long long *out_offset, size_t length) {
#ifdef SYS_copy_file_range
    return (long long)syscall(SYS_copy_file_range, in, (loff_t *)in_offset, out, (loff_t *)out_offset, length, 0U);
#else
    errno = ENOSYS;
    return -1;
#endif
}

#endif
