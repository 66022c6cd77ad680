@_exported import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

extension Errno {
    /// The calling thread's `errno`, as left by the system call that just failed.
    public static var last: Errno { Errno(rawValue: Glibc.errno) }
}

/// A failed system call: what was attempted, on which path (if any), and errno. Its
/// description is one line: `path: operation: strerror text`.
public struct SystemError: Error, Equatable, Sendable, CustomStringConvertible {
    public var operation: String
    public var path: String
    public var errno: Errno

    /// `errno` defaults to the value the failed call just left.
    public init(_ operation: String, path: String = "", errno: Errno = .last) {
        self.operation = operation
        self.path = path
        self.errno = errno
    }

    public var description: String {
        path.isEmpty ? "\(operation): \(errno)" : "\(path): \(operation): \(errno)"
    }
}

/// Retries `call` while it fails with EINTR; throws ``SystemError`` on any other failure
/// (a negative result). Returns the result.
@discardableResult
public func retryingInterrupts<Result: BinaryInteger>(_ operation: @autoclosure () -> String, path: @autoclosure () -> String = "",
                                                      _ call: () -> Result) throws(SystemError) -> Result {
    while true {
        let result = call()
        if result >= 0 { return result }
        let code = Errno.last
        if code == .interrupted { continue }
        throw SystemError(operation(), path: path(), errno: code)
    }
}
