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

#endif
