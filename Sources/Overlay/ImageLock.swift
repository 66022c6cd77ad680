import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// Open-file-description byte-range locks over a whole image (``FileLock``), as Apptainer
/// takes them: a write lock while mounted writable, a read lock while mounted read-only.
/// (flock(2) does not interoperate with these; never use it.)
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

    public let path: String
    public let kind: Kind
    /// The open file description that holds the lock; nil once released.
    private var descriptor: OwnedDescriptor?

    private init(path: String, kind: Kind, descriptor: consuming OwnedDescriptor) {
        self.path = path
        self.kind = kind
        self.descriptor = consume descriptor
    }

    /// Takes the lock now or fails at once with ``OverlayError/imageInUse``.
    public static func acquire(_ path: String, _ kind: Kind) throws -> ImageLock {
        let descriptor: OwnedDescriptor
        do { descriptor = try OwnedDescriptor(opening: path, kind == .write ? O_RDWR : O_RDONLY) } catch {
            throw OverlayError.lockFailed(path: path, errno: error.errno.rawValue)
        }
        let taken: Bool
        do { taken = try FileLock.tryLock(descriptor.rawValue, kind == .write ? .write : .read, path: path) } catch {
            throw OverlayError.lockFailed(path: path, errno: error.errno.rawValue)
        }
        guard taken else {
            descriptor.close()
            let holder = (try? state(of: path, asking: kind)) ?? .writeLocked
            throw OverlayError.imageInUse(path: path, heldForWriting: holder == .writeLocked, wantWrite: kind == .write)
        }
        return ImageLock(path: path, kind: kind, descriptor: descriptor)
    }

    /// Checks that the lock could be taken, then releases it (before handing the image to a
    /// program that takes the lock itself, e.g. Apptainer).
    public static func test(_ path: String, _ kind: Kind) throws {
        try acquire(path, kind).release()
    }

    /// What other processes hold on `path` now (F_OFD_GETLK).
    public static func state(of path: String, asking kind: Kind = .write) throws -> State {
        do {
            let descriptor = try OwnedDescriptor(opening: path, O_RDONLY)
            switch try FileLock.holder(descriptor.rawValue, path: path) {
            case .none: return .unlocked
            case .readers: return .readLocked
            case .writer: return .writeLocked
            }
        } catch {
            throw OverlayError.lockFailed(path: path, errno: error.errno.rawValue)
        }
    }

    /// The descriptor holding the lock (to pass to a child that must keep it); -1 once released.
    public var fileDescriptor: Int32 {
        switch descriptor {
        case let .some(held): return held.rawValue
        case .none: return -1
        }
    }

    public func release() {
        descriptor.take()?.close()
    }
}
