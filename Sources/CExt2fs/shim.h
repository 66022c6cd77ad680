#ifndef CEXT2FS_SHIM_H
#define CEXT2FS_SHIM_H

#include <ext2fs/ext2_fs.h>
#include <ext2fs/ext2fs.h>
#include <et/com_err.h>
#include <string.h>

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

// ---- Writing helpers (the built-in driver's writable mode) ----

static inline void cext2fs_set_owner(struct ext2_inode_large *inode, unsigned int uid, unsigned int gid) {
    inode->i_uid = (__u16)(uid & 0xffff);
    inode->osd2.linux2.l_i_uid_high = (__u16)(uid >> 16);
    inode->i_gid = (__u16)(gid & 0xffff);
    inode->osd2.linux2.l_i_gid_high = (__u16)(gid >> 16);
}
// Device numbers, in the old encoding where it fits (as the kernel writes them), else the new.
static inline void cext2fs_set_rdev(struct ext2_inode_large *inode, unsigned int major, unsigned int minor) {
    if (major < 256 && minor < 256) {
        inode->i_block[0] = (major << 8) | minor;
        inode->i_block[1] = 0;
    } else {
        inode->i_block[0] = 0;
        inode->i_block[1] = (minor & 0xff) | (major << 8) | ((minor & ~0xffu) << 12);
    }
}
static inline unsigned char *cext2fs_inode_block_bytes_mutable(struct ext2_inode_large *inode) {
    return (unsigned char *)inode->i_block;
}
// Writes a new inode whole (the part past the large inode's fields zeroed: no stale in-inode
// extended attributes of a former owner of the slot).
static inline errcode_t cext2fs_write_new_inode_large(ext2_filsys fs, ext2_ino_t ino, struct ext2_inode_large *inode) {
    int size = EXT2_INODE_SIZE(fs->super);
    unsigned char buffer[1024];
    if (size > (int)sizeof(buffer)) return EXT2_ET_INVALID_ARGUMENT;
    memset(buffer, 0, sizeof(buffer));
    int copy = size < (int)sizeof(*inode) ? size : (int)sizeof(*inode);
    memcpy(buffer, inode, copy);
    if (size <= EXT2_GOOD_OLD_INODE_SIZE) ((struct ext2_inode_large *)buffer)->i_extra_isize = 0;
    return ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)buffer, size);
}
static inline errcode_t cext2fs_write_inode_large(ext2_filsys fs, ext2_ino_t ino, struct ext2_inode_large *inode) {
    int size = EXT2_INODE_SIZE(fs->super);
    if (size > (int)sizeof(*inode)) size = (int)sizeof(*inode);
    return ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)inode, size);
}
// The same on a large inode, taken by pointer for the length of the call only.
static inline unsigned int cext2fs_large_uid(const struct ext2_inode_large *inode) { return inode_uid(*inode); }
static inline unsigned int cext2fs_large_gid(const struct ext2_inode_large *inode) { return inode_gid(*inode); }
static inline int cext2fs_large_is_fast_symlink(struct ext2_inode_large *inode) {
    return ext2fs_is_fast_symlink((struct ext2_inode *)inode);
}
static inline int cext2fs_large_has_valid_blocks(ext2_filsys fs, struct ext2_inode_large *inode) {
    return ext2fs_inode_has_valid_blocks2(fs, (struct ext2_inode *)inode);
}
static inline errcode_t cext2fs_large_punch(ext2_filsys fs, ext2_ino_t ino, struct ext2_inode_large *inode, blk64_t start) {
    return ext2fs_punch(fs, ino, (struct ext2_inode *)inode, NULL, start, ~0ULL);
}
static inline errcode_t cext2fs_large_iblk_set(ext2_filsys fs, struct ext2_inode_large *inode, blk64_t count) {
    return ext2fs_iblk_set(fs, (struct ext2_inode *)inode, count);
}
// The physical block of logical block `block` (0: a hole), allocating nothing.
static inline errcode_t cext2fs_large_bmap(ext2_filsys fs, ext2_ino_t ino, struct ext2_inode_large *inode, blk64_t block, blk64_t *physical) {
    return ext2fs_bmap2(fs, ino, (struct ext2_inode *)inode, NULL, 0, block, NULL, physical);
}
static inline void cext2fs_large_set_i_block(struct ext2_inode_large *inode, const unsigned char *bytes, int count) {
    memcpy(inode->i_block, bytes, (size_t)count);
}
static inline void cext2fs_large_get_i_block(const struct ext2_inode_large *inode, unsigned char *bytes, int count) {
    memcpy(bytes, inode->i_block, (size_t)count);
}
static inline int cext2fs_inode_size(ext2_filsys fs) { return EXT2_INODE_SIZE(fs->super); }
static inline io_channel cext2fs_io(ext2_filsys fs) { return fs->io; }

#endif
