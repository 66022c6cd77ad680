import CExt2fs

extension Ext3 {
    /// Directories made with libext2fs, with an owner (`ext2fs_mkdir` makes them root's).
    enum Directories {
        /// Mode bits of a directory inode: S_IFDIR | 0755.
        static let mode = UInt16(LINUX_S_IFDIR) | 0o755

        /// Makes `name` in `parent` owned by `owner` with mode 0755, or returns the existing
        /// directory of that name. Grows `parent` when it has no room for the entry.
        static func make(_ fs: ext2_filsys, parent: ext2_ino_t, name: String, owner: Owner, path: String) throws -> ext2_ino_t {
            let length = Int32(name.utf8.count)
            var inode: ext2_ino_t = 0
            let found = ext2fs_lookup(fs, parent, name, length, nil, &inode)
            if found == 0 {
                var existing = ext2_inode()
                try check(ext2fs_read_inode(fs, inode, &existing), "read inode \(inode) (\(name))", path: path)
                guard existing.i_mode & UInt16(LINUX_S_IFMT) == UInt16(LINUX_S_IFDIR) else {
                    throw Error.other("\(path): \(name) exists in the image and is not a directory")
                }
                return inode
            }
            guard found == errcode_t(EXT2_ET_FILE_NOT_FOUND) else {
                try check(found, "look up \(name)", path: path)
                return inode
            }

            var made = ext2fs_mkdir(fs, parent, 0, name)
            if made == errcode_t(EXT2_ET_DIR_NO_SPACE) {
                try check(ext2fs_expand_dir(fs, parent), "make room for \(name)", path: path)
                made = ext2fs_mkdir(fs, parent, 0, name)
            }
            try check(made, "create directory \(name)", path: path)
            try check(ext2fs_lookup(fs, parent, name, length, nil, &inode), "look up \(name)", path: path)
            try setOwner(fs, inode: inode, owner: owner, mode: mode, path: path)
            return inode
        }

        /// Sets owner (all 32 bits of uid and gid) and mode of an inode.
        static func setOwner(_ fs: ext2_filsys, inode number: ext2_ino_t, owner: Owner, mode: UInt16, path: String) throws {
            var inode = ext2_inode()
            try check(ext2fs_read_inode(fs, number, &inode), "read inode \(number)", path: path)
            inode.i_uid = UInt16(truncatingIfNeeded: owner.uid)
            inode.osd2.linux2.l_i_uid_high = UInt16(truncatingIfNeeded: owner.uid >> 16)
            inode.i_gid = UInt16(truncatingIfNeeded: owner.gid)
            inode.osd2.linux2.l_i_gid_high = UInt16(truncatingIfNeeded: owner.gid >> 16)
            inode.i_mode = mode
            try check(ext2fs_write_inode(fs, number, &inode), "write inode \(number)", path: path)
        }
    }
}
