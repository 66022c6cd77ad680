import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

/// An open libext2fs filesystem. Closed with `ext2fs_close_free` exactly once: by `close()`
/// (which reports errors, e.g. a failed flush) or, as a safety net, by `deinit`.
///
/// Internal to the Ext3 module: C types stay behind this wall.
final class FileSystemHandle {
    private(set) var fs: ext2_filsys?
    let path: String
    let writable: Bool

    /// Opens the image at `path` (read-only unless `writable`). A damaged image fails with an
    /// error, never a crash.
    init(path: String, writable: Bool) throws {
        self.path = path
        self.writable = writable
        var flags = Int32(EXT2_FLAG_64BITS)
        if writable { flags |= Int32(EXT2_FLAG_RW) }
        var handle: ext2_filsys?
        try Ext3.check(
            ext2fs_open2(path, nil, flags, 0, 0, cext2fs_unix_io_manager(), &handle),
            "open filesystem", path: path)
        guard let handle else { throw Ext3.Error.notExt(path: path) }
        self.fs = handle
    }

    /// Takes ownership of an already-initialised filesystem (e.g. from `ext2fs_initialize`).
    init(adopting fs: ext2_filsys, path: String) {
        self.fs = fs
        self.path = path
        self.writable = true
    }

    /// Flushes (when writable) and frees. Safe to call twice.
    func close() throws {
        guard fs != nil else { return }
        var handle: ext2_filsys? = fs
        fs = nil
        try Ext3.check(ext2fs_close_free(&handle), "close filesystem", path: path)
    }

    /// Frees without flushing anything the caller did not flush (for error paths).
    func abandon() {
        guard let handle = fs else { return }
        fs = nil
        ext2fs_free(handle)
    }

    deinit {
        if fs != nil { abandon() }
    }
}
