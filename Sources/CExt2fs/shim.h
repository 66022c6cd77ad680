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

#endif
