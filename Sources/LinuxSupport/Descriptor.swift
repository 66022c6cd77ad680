internal import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// A file descriptor with one owner: closed exactly once, by ``close()`` or when the owner goes
/// away. Hand it on with `consume` (or ``take()`` to give up ownership of the raw number).
public struct OwnedDescriptor: ~Copyable {
    public private(set) var rawValue: Int32

    public init(adopting rawValue: Int32) { self.rawValue = rawValue }

    /// Opens `path` close-on-exec.
    public init(opening path: String, _ flags: Int32, mode: UInt32 = 0o644) throws(SystemError) {
        let fd = try retryingInterrupts("open", path: path) { open(path, flags | O_CLOEXEC, mode) }
        self.rawValue = fd
    }

    /// Gives up ownership: the caller closes the returned descriptor.
    public consuming func take() -> Int32 {
        let fd = rawValue
        discard self
        return fd
    }

    public consuming func close() {
        let fd = rawValue
        discard self
        if fd >= 0 { _ = Glibc.close(fd) }
    }

    deinit {
        if rawValue >= 0 { _ = Glibc.close(rawValue) }
    }
}

/// A pipe whose two ends are close-on-exec, so no child inherits them unless it dup2()s one.
/// Frozen so that other modules may take it apart (`let readEnd = pipe.readEnd`) and hand
/// each end on.
@frozen
public struct Pipe: ~Copyable {
    public var readEnd: OwnedDescriptor
    public var writeEnd: OwnedDescriptor

    public init() throws(SystemError) {
        var ends: [Int32] = [-1, -1]
        guard clinux_pipe_cloexec(&ends) == 0 else { throw SystemError("pipe") }
        readEnd = OwnedDescriptor(adopting: ends[0])
        writeEnd = OwnedDescriptor(adopting: ends[1])
    }
}

/// Reading and writing whole buffers through raw descriptors, across short transfers and EINTR.
public enum IO {
    /// Writes all of `bytes` to `fd` (at `offset` with pwrite, else at the file position).
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64? = nil,
                                path: @autoclosure () -> String = "") throws(SystemError) {
        var done = 0
        while done < bytes.count {
            let rest = bytes.count - done
            let base = bytes.baseAddress! + done
            let written: Int
            if let offset {
                written = try retryingInterrupts("write", path: path()) { pwrite(fd, base, rest, off_t(offset) + off_t(done)) }
            } else {
                written = try retryingInterrupts("write", path: path()) { write(fd, base, rest) }
            }
            if written == 0 { throw SystemError("write", path: path(), errno: .noSpace) }
            done += written
        }
    }

    public static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: @autoclosure () -> String = "") throws(SystemError) {
        var done = 0
        while done < bytes.count {
            let written = try retryingInterrupts("write", path: path()) {
                bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            }
            if written == 0 { throw SystemError("write", path: path(), errno: .noSpace) }
            done += written
        }
    }

    /// Writes `text` to `fd`, ignoring failures (a message on the way out).
    public static func writeLine(_ text: String, to fd: Int32 = 2) {
        let bytes = Array((text.hasSuffix("\n") ? text : text + "\n").utf8)
        try? writeAll(fd, bytes)
    }

    /// Reads up to `count` bytes (fewer at the end); retries EINTR.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int,
                            path: @autoclosure () -> String = "") throws(SystemError) -> Int {
        try retryingInterrupts("read", path: path()) { Glibc.read(fd, buffer, count) }
    }

    /// Everything `fd` yields until its end (a pipe: until every writer has closed it).
    public static func readAll(_ fd: Int32, path: @autoclosure () -> String = "") throws(SystemError) -> [UInt8] {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try retryingInterrupts("read", path: path()) {
                buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            }
            if n == 0 { return data }
            data += buffer[0..<n]
        }
    }
}
