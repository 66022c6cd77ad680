internal import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// File calls glibc only declares under _GNU_SOURCE, or not at all yet.
public enum FileCalls {
    /// rename(2) that refuses to replace an existing target; false with errno ENOSYS/EINVAL
    /// where the filesystem or kernel cannot.
    public static func renameNoReplace(_ from: String, _ to: String) -> Int32 { clinux_rename_noreplace(from, to) }
    public static func seekData(_ fd: Int32, _ offset: Int64) -> Int64 { clinux_seek_data(fd, offset) }
    public static func seekHole(_ fd: Int32, _ offset: Int64) -> Int64 { clinux_seek_hole(fd, offset) }
    public static func major(_ device: UInt64) -> UInt32 { clinux_major(device) }
    public static func minor(_ device: UInt64) -> UInt32 { clinux_minor(device) }
    /// listxattrat(2) (Linux 6.13), not following symlinks; -1 with ENOSYS where missing.
    public static func listxattrat(_ directory: Int32, _ name: UnsafePointer<CChar>, _ list: UnsafeMutablePointer<CChar>?,
                                   _ size: Int) -> Int { Int(clinux_listxattrat(directory, name, list, size)) }
    /// getxattrat(2) (Linux 6.13), not following symlinks; -1 with ENOSYS where missing.
    public static func getxattrat(_ directory: Int32, _ name: UnsafePointer<CChar>, _ attribute: UnsafePointer<CChar>,
                                  _ value: UnsafeMutableRawPointer?, _ size: Int) -> Int {
        Int(clinux_getxattrat(directory, name, attribute, value, size))
    }
    /// fallocate(2) mode 0: 0, or -1 with errno set.
    public static func fallocate(_ fd: Int32, offset: Int64, length: Int64) -> Int32 { clinux_fallocate(fd, offset, length) }
    /// copy_file_range(2): bytes copied, or -1 with errno set.
    public static func copyFileRange(_ input: Int32, _ inOffset: inout Int64, _ output: Int32, _ outOffset: inout Int64,
                                     _ length: Int) -> Int64 {
        clinux_copy_file_range(input, &inOffset, output, &outOffset, length)
    }
    /// An unnamed file in `directory` (O_TMPFILE, read-write, close-on-exec), or -1 with errno.
    public static func openUnnamed(in directory: String, mode: Int32 = 0o644) -> Int32 { clinux_open_tmpfile(directory, mode) }
    /// Gives an unnamed file a name; fails (EEXIST) when `target` exists. 0, or -1 with errno.
    public static func linkUnnamed(_ fd: Int32, to target: String) -> Int32 { clinux_link_tmpfile(fd, target) }
    /// Makes `destination` a reflink copy of `source` (FICLONE): 0, or -1 with errno set where
    /// the filesystem cannot share blocks.
    public static func cloneFile(_ destination: Int32, from source: Int32) -> Int32 { clinux_ficlone(destination, source) }
    /// FICLONERANGE of `length` bytes at `offset`, to the same offset: 0, or -1 with errno set.
    public static func cloneRange(_ destination: Int32, from source: Int32, offset: Int64, length: Int64) -> Int32 {
        clinux_ficlonerange(destination, source, offset, length)
    }
    /// FIFREEZE / FITHAW on a descriptor of a mount point (root only): 0, or -1 with errno set.
    public static func freezeFilesystem(_ fd: Int32) -> Int32 { clinux_fifreeze(fd) }
    public static func thawFilesystem(_ fd: Int32) -> Int32 { clinux_fithaw(fd) }
    /// syncfs(2) on the filesystem holding `fd`: 0, or -1 with errno set.
    public static func syncFilesystem(_ fd: Int32) -> Int32 { clinux_syncfs(fd) }
    /// llistxattr(2), lgetxattr(2): by path, not following a symlink.
    public static func llistxattr(_ path: UnsafePointer<CChar>, _ list: UnsafeMutablePointer<CChar>?, _ size: Int) -> Int {
        Int(clinux_llistxattr(path, list, size))
    }
    public static func lgetxattr(_ path: UnsafePointer<CChar>, _ name: UnsafePointer<CChar>, _ value: UnsafeMutableRawPointer?,
                                 _ size: Int) -> Int {
        Int(clinux_lgetxattr(path, name, value, size))
    }
}
