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

#endif
