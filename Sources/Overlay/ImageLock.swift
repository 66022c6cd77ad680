#if canImport(Glibc)
import Glibc
#endif

/// Open-file-description byte-range locks over a whole image, as Apptainer takes them: a write
/// lock while mounted writable, a read lock while mounted read-only. (flock(2) does not
/// interoperate with these; never use it.)
///
/// A held lock lives as long as this value: `release()` or deinit closes the descriptor.
public final class ImageLock: @unchecked Sendable {
    public enum Kind: Sendable, Equatable { case read, write }
    /// What another process holds on an image right now.
    public enum State: Sendable, Equatable, CustomStringConvertible {
        case unlocked, readLocked, writeLocked
        public var description: String {
            switch self {
            case .unlocked: return "not locked"
            case .readLocked: return "locked for reading (mounted read-only)"
            case .writeLocked: return "locked for writing (mounted writable)"
            }
        }
    }

    // Linux fcntl commands for OFD locks (not always exported by the Glibc module).
    static let F_OFD_GETLK: Int32 = 36
    static let F_OFD_SETLK: Int32 = 37

    public let path: String
    public let kind: Kind
    private var fd: Int32

    private init(path: String, kind: Kind, fd: Int32) {
        self.path = path
        self.kind = kind
        self.fd = fd
    }

    /// Takes the lock now or fails at once with ``OverlayError/imageInUse``.
    public static func acquire(_ path: String, _ kind: Kind) throws -> ImageLock {
        let fd = open(path, (kind == .write ? O_RDWR : O_RDONLY) | O_CLOEXEC)
        guard fd >= 0 else { throw OverlayError.lockFailed(path: path, errno: errno) }
        var lock = flock()
        lock.l_type = Int16(kind == .write ? F_WRLCK : F_RDLCK)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = 0
        lock.l_len = 0
        lock.l_pid = 0
        if fcntl(fd, F_OFD_SETLK, &lock) != 0 {
            let code = errno
            close(fd)
            if code == EAGAIN || code == EACCES {
                let holder = (try? state(of: path, asking: kind)) ?? .writeLocked
                throw OverlayError.imageInUse(path: path, heldForWriting: holder == .writeLocked, wantWrite: kind == .write)
            }
            throw OverlayError.lockFailed(path: path, errno: code)
        }
        return ImageLock(path: path, kind: kind, fd: fd)
    }

    /// Checks that the lock could be taken, then releases it (before handing the image to a
    /// program that takes the lock itself, e.g. Apptainer).
    public static func test(_ path: String, _ kind: Kind) throws {
        try acquire(path, kind).release()
    }

    /// What other processes hold on `path` now (F_OFD_GETLK).
    public static func state(of path: String, asking kind: Kind = .write) throws -> State {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw OverlayError.lockFailed(path: path, errno: errno) }
        defer { close(fd) }
        var lock = flock()
        lock.l_type = Int16(F_WRLCK)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = 0
        lock.l_len = 0
        lock.l_pid = 0
        guard fcntl(fd, F_OFD_GETLK, &lock) == 0 else { throw OverlayError.lockFailed(path: path, errno: errno) }
        switch Int32(lock.l_type) {
        case Int32(F_UNLCK): return .unlocked
        case Int32(F_RDLCK): return .readLocked
        default: return .writeLocked
        }
    }

    /// The descriptor holding the lock (to pass to a child that must keep it).
    public var fileDescriptor: Int32 { fd }

    public func release() {
        if fd >= 0 {
            close(fd)
            fd = -1
        }
    }

    deinit { release() }
}
