import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// Settles a copy of an image taken while fuse2fs held it mounted writable (a job snapshot
    /// of an ordinary user's run, after fuse2fs wrote out everything it held): fuse2fs clears
    /// the superblock's "valid" state when it mounts an image and sets it again only when it
    /// unmounts, so the copy says "not cleanly unmounted", which makes e2fsck check it and
    /// Apptainer's and the kernel's mounts warn. The copy is complete (fuse2fs journals
    /// nothing and flushed its metadata before the cut), so this marks it clean, as fuse2fs's
    /// unmount would have, and removes the regular file `workFile` in the image's `work/` (the
    /// file the flush was asked through), if there is one. An image with errors recorded keeps
    /// its error state. The copy must be a file nobody has mounted.
    public static func settleLiveCopy(image path: String, removingWorkFile workFile: String) throws {
        let handle = try FileSystemHandle(path: path, writable: true)
        defer { handle.abandon() }
        guard let fs = handle.fs else { throw Error.other("\(path): image is closed") }
        try check(ext2fs_read_bitmaps(fs), "read the bitmaps", path: path)
        var work: ext2_ino_t = 0
        if ext2fs_lookup(fs, ext2_ino_t(EXT2_ROOT_INO), "work", 4, nil, &work) == 0, work != 0 {
            try RootFile(name: workFile, contents: [], owner: .root).remove(from: fs, path: path, directory: work)
        }
        fs.pointee.super.pointee.s_state |= UInt16(EXT2_VALID_FS)
        ext2fs_mark_super_dirty(fs)
        // Written without fsync, as RootFile.add does: the copy goes on to be described and
        // named, and the kernel writes it back.
        try check(ext2fs_write_bitmaps(fs), "write the bitmaps", path: path)
        try check(ext2fs_flush2(fs, Int32(EXT2_FLAG_FLUSH_NO_SYNC)), "write the filesystem metadata", path: path)
        handle.abandon()
    }

    /// Removes the regular file `name` from the `work/` directory of an image nobody has
    /// mounted any more (the caller holds its lock), when its filesystem is marked clean (its
    /// last driver closed it properly); an image in any other state is left as it is. Returns
    /// whether the file was there and is gone.
    @discardableResult
    public static func removeWorkFile(image path: String, named name: String) throws -> Bool {
        let handle = try FileSystemHandle(path: path, writable: true)
        defer { handle.abandon() }
        guard let fs = handle.fs, fs.pointee.super.pointee.s_state & UInt16(EXT2_VALID_FS) != 0,
              fs.pointee.super.pointee.s_state & UInt16(EXT2_ERROR_FS) == 0 else { return false }
        var work: ext2_ino_t = 0
        var ino: ext2_ino_t = 0
        guard ext2fs_lookup(fs, ext2_ino_t(EXT2_ROOT_INO), "work", 4, nil, &work) == 0, work != 0,
              ext2fs_lookup(fs, work, name, Int32(name.utf8.count), nil, &ino) == 0, ino != 0 else { return false }
        try check(ext2fs_read_bitmaps(fs), "read the bitmaps", path: path)
        try RootFile(name: name, contents: [], owner: .root).remove(from: fs, path: path, directory: work)
        try handle.close()
        return true
    }
}
