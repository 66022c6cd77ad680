#if canImport(Glibc)
import Glibc
#endif

/// Open-file-description byte-range locks over a whole file (F_OFD_SETLK / F_OFD_GETLK): held
/// by the open file description, so they follow it into forks and children that inherit the
/// descriptor, and are released when the last copy closes.
public enum FileLock {
    public enum Kind: Sendable, Equatable { case read, write }
    /// What other open file descriptions hold on a file.
    public enum Holder: Sendable, Equatable { case none, readers, writer }

    // Linux fcntl commands (not always exported by the Glibc module).
    static let getCommand: Int32 = 36  // F_OFD_GETLK
    static let setCommand: Int32 = 37  // F_OFD_SETLK

    private static func wholeFile(_ type: Int32) -> flock {
        var lock = flock()
        lock.l_type = Int16(type)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = 0
        lock.l_len = 0
        lock.l_pid = 0
        return lock
    }

    /// Takes the lock on `fd` now; false when another holder conflicts (EAGAIN/EACCES).
    public static func tryLock(_ fd: Int32, _ kind: Kind, path: String = "") throws(SystemError) -> Bool {
        var lock = wholeFile(kind == .write ? F_WRLCK : F_RDLCK)
        if fcntl(fd, setCommand, &lock) == 0 { return true }
        let code = Errno.last
        if code == .resourceTemporarilyUnavailable || code == .permissionDenied { return false }
        throw SystemError("lock", path: path, errno: code)
    }

    /// What others hold on `fd`'s file: the conflicting lock a write lock would meet.
    public static func holder(_ fd: Int32, path: String = "") throws(SystemError) -> Holder {
        var lock = wholeFile(F_WRLCK)
        guard fcntl(fd, getCommand, &lock) == 0 else { throw SystemError("test the lock", path: path) }
        switch Int32(lock.l_type) {
        case Int32(F_UNLCK): return .none
        case Int32(F_RDLCK): return .readers
        default: return .writer
        }
    }
}
