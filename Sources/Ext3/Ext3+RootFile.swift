import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// A small regular file at an image's root, beside `upper/` and `work/`: outside what a
    /// container sees through the overlay (a snapshot's description goes there).
    public struct RootFile: Sendable, Equatable {
        public var name: String
        public var contents: [UInt8]
        public var owner: Owner
        public var permissions: UInt16

        public init(name: String, contents: [UInt8], owner: Owner, permissions: UInt16 = 0o444) {
            self.name = name
            self.contents = contents
            self.owner = owner
            self.permissions = permissions
        }

        /// Adds the file to an existing image nobody has mounted (the caller holds its lock);
        /// with `replacing`, a file of that name at the root is removed first.
        public func add(toImage path: String, replacing: Bool = false) throws {
            try RootFileEditor(path: path).add(self, replacing: replacing)
        }

        /// Removes the regular file `name` at the root of an image nobody has mounted (the
        /// caller holds its lock), if there is one.
        public static func remove(named name: String, fromImage path: String) throws {
            let handle = try FileSystemHandle(path: path, writable: true)
            defer { handle.abandon() }
            guard let fs = handle.fs else { throw Error.other("\(path): image is closed") }
            try check(ext2fs_read_bitmaps(fs), "read the bitmaps", path: path)
            try RootFile(name: name, contents: [], owner: .root).remove(from: fs, path: path)
            try handle.close()
        }

        /// Removes a regular file of this name at the root (or in the directory `directory`),
        /// if there is one.
        func remove(from fs: ext2_filsys, path: String, directory: ext2_ino_t = ext2_ino_t(EXT2_ROOT_INO)) throws {
            let root = directory
            var ino: ext2_ino_t = 0
            guard ext2fs_lookup(fs, root, name, Int32(name.utf8.count), nil, &ino) == 0, ino != 0 else { return }
            var inode = ext2_inode()
            try check(ext2fs_read_inode(fs, ino, &inode), "read the inode of /\(name)", path: path)
            guard (inode.i_mode & 0o170000) == 0o100000 else {
                throw Error.invalidConfiguration("\(path): /\(name) is not a regular file")
            }
            try check(ext2fs_unlink(fs, root, name, ino, 0), "remove /\(name)", path: path)
            if inode.i_links_count > 1 {
                inode.i_links_count -= 1
                try check(ext2fs_write_inode(fs, ino, &inode), "write the inode of /\(name)", path: path)
                return
            }
            if ext2fs_inode_has_valid_blocks2(fs, &inode) != 0 {
                try check(ext2fs_punch(fs, ino, &inode, nil, 0, ~0), "free the blocks of /\(name)", path: path)
            }
            inode.i_links_count = 0
            inode.i_dtime = UInt32(truncatingIfNeeded: time(nil))
            try check(ext2fs_write_inode(fs, ino, &inode), "write the inode of /\(name)", path: path)
            ext2fs_inode_alloc_stats2(fs, ino, -1, 0)
        }

        /// Writes the file into the root directory of the open filesystem `fs`.
        func write(into fs: ext2_filsys, path: String) throws {
            let root = ext2_ino_t(EXT2_ROOT_INO)
            let mode: UInt16 = 0o100000 | (permissions & 0o7777)
            var ino: ext2_ino_t = 0
            try check(ext2fs_new_inode(fs, root, Int32(mode), nil, &ino), "allocate an inode for /\(name)", path: path)
            var inode = ext2_inode()
            inode.i_mode = mode
            inode.i_links_count = 1
            inode.i_uid = UInt16(truncatingIfNeeded: owner.uid)
            inode.i_gid = UInt16(truncatingIfNeeded: owner.gid)
            inode.osd2.linux2.l_i_uid_high = UInt16(truncatingIfNeeded: owner.uid >> 16)
            inode.osd2.linux2.l_i_gid_high = UInt16(truncatingIfNeeded: owner.gid >> 16)
            let now = UInt32(truncatingIfNeeded: time(nil))
            inode.i_atime = now
            inode.i_ctime = now
            inode.i_mtime = now
            try check(ext2fs_write_new_inode(fs, ino, &inode), "write the inode of /\(name)", path: path)
            ext2fs_inode_alloc_stats2(fs, ino, 1, 0)
            var code = ext2fs_link(fs, root, name, ino, Int32(EXT2_FT_REG_FILE))
            if code == EXT2_ET_DIR_NO_SPACE {
                try check(ext2fs_expand_dir(fs, root), "make room in the root directory", path: path)
                code = ext2fs_link(fs, root, name, ino, Int32(EXT2_FT_REG_FILE))
            }
            try check(code, "add /\(name)", path: path)
            var file: ext2_file_t?
            try check(ext2fs_file_open(fs, ino, Int32(EXT2_FILE_WRITE), &file), "open /\(name)", path: path)
            var failure: errcode_t = 0
            contents.withUnsafeBytes { bytes in
                var offset = 0
                while offset < bytes.count {
                    var written: UInt32 = 0
                    failure = ext2fs_file_write(file, bytes.baseAddress! + offset, UInt32(bytes.count - offset), &written)
                    if failure != 0 || written == 0 { break }
                    offset += Int(written)
                }
            }
            let closed = ext2fs_file_close(file)
            try check(failure, "write /\(name)", path: path)
            try check(closed, "close /\(name)", path: path)
        }
    }

    /// An image opened to add a root file, which may be opened before the image is complete:
    /// libext2fs fsyncs a file when it opens it (1.47.0), so an image being copied is opened
    /// once its superblock and group descriptors are in place, before the bulk of the copy
    /// makes that fsync wait for it all to reach the disk. It reads nothing more until
    /// ``add(_:replacing:)``.
    public final class RootFileEditor {
        let handle: FileSystemHandle

        public init(path: String) throws {
            handle = try FileSystemHandle(path: path, writable: true)
        }

        /// Adds `file` at the root (with `replacing`, a file of that name there is removed
        /// first) and closes the image. Written out without fsync, like cp (the data is left
        /// to the kernel's writeback: an fsync would wait for a whole copied image to reach the
        /// disk). ext2fs_close would sync again when the image counts kilobytes written
        /// (s_kbytes_written), so the bitmaps and the metadata are written here and the handle
        /// freed, which closes the I/O channel after writing what it caches.
        public func add(_ file: RootFile, replacing: Bool = false) throws {
            defer { handle.abandon() }
            let path = handle.path
            guard let fs = handle.fs else { throw Error.other("\(path): image is closed") }
            try check(ext2fs_read_bitmaps(fs), "read the bitmaps", path: path)
            if replacing { try file.remove(from: fs, path: path) }
            try file.write(into: fs, path: path)
            try check(ext2fs_write_bitmaps(fs), "write the bitmaps", path: path)
            try check(ext2fs_flush2(fs, Int32(EXT2_FLAG_FLUSH_NO_SYNC)), "write the filesystem metadata", path: path)
        }

        /// Closes without writing anything.
        public func abandon() { handle.abandon() }
    }
}
