import Ext3
import TarArchive

#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// What a source path holds, judged by its content (not its name).
    public enum SourceKind: String, Sendable {
        case directory, tar, gzipTar

        /// Looks at `path`: a directory, a tar archive (ustar, GNU or pax; or old-style with a
        /// valid header checksum), or gzip (assumed to hold a tar archive, checked when read).
        public static func detect(_ path: String) throws -> SourceKind {
            var info = stat()
            guard stat(path, &info) == 0 else {
                let code = errno
                if code == ENOENT { throw Error.invalidConfiguration("\(path) does not exist: give a directory or a tar archive to pack") }
                throw Error.system(operation: "read", path: path, errno: code)
            }
            if info.st_mode & S_IFMT == S_IFDIR { return .directory }
            switch try reportingArchiveErrors({ try ArchiveFormat.detect(path) }) {
            case .tar: return .tar
            case .gzip: return .gzipTar
            }
        }

        /// The archive format of a tar or gzip source.
        var archiveFormat: ArchiveFormat { self == .gzipTar ? .gzip : .tar }
    }
}

/// Runs `body`, reporting a failure to read an archive as ``Ext3/Error`` with the same one-line
/// text: damage as ``Ext3/Error/invalidConfiguration(_:)`` (what to give instead), a failed
/// system call as ``Ext3/Error/system(operation:path:errno:)``. Callers of this module (the
/// create-overlay command) tell Ext3's errors apart by case.
func reportingArchiveErrors<Result>(_ body: () throws -> Result) throws -> Result {
    do {
        return try body()
    } catch let error as ArchiveError {
        if case let .system(failure) = error { throw Ext3.Error(failure) }
        throw Ext3.Error.invalidConfiguration(error.description)
    }
}
