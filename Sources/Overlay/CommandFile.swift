import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The `-f FILE` of run-overlay: checked before anything is mounted, so that a directory, a
/// file nobody can read or a program given by mistake is named in one line instead of being
/// handed to bash inside the container (which would run a binary's bytes as commands).
public enum CommandFile {
    /// Bytes looked at for a NUL, as shells tell a binary file from a script.
    static let sniffBytes = 4096

    public static func check(_ path: String) throws {
        var info = stat()
        guard stat(path, &info) == 0 else {
            if Glibc.errno == ENOENT || Glibc.errno == ENOTDIR { throw OverlayError.commandFileMissing(path) }
            throw OverlayError.unusableCommandFile(path: path, why: "cannot be read (\(Errno.last))")
        }
        switch info.st_mode & S_IFMT {
        case S_IFDIR:
            throw OverlayError.unusableCommandFile(path: path, why: "is a directory")
        case S_IFREG:
            break
        default:
            return  // a pipe (-f <(...)), a device: read as it comes, never looked at here
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw OverlayError.unusableCommandFile(path: path, why: "cannot be read (\(Errno.last))")
        }
        defer { close(fd) }
        var head = [UInt8](repeating: 0, count: sniffBytes)
        let count = (try? IO.read(fd, into: &head, count: head.count)) ?? 0
        if head[..<count].contains(0) {
            throw OverlayError.unusableCommandFile(path: path, why: "is a binary file, not a text file of commands")
        }
    }
}
