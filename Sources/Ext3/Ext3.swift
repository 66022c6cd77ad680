import LinuxSupport
import CExt2fs
import LinuxSupport

/// Swift API over libext2fs for ext3 overlay images: format, populate, read, inspect.
///
/// No C type appears in the public API. Everything that touches libext2fs goes through
/// `Ext3.check(_:_:)`, which turns an `errcode_t` into an ``Ext3/Error`` carrying the
/// operation's name and com_err's message.
public enum Ext3 {
    /// Block size of every image we make (mke2fs's ext3 profile).
    public static let blockSize = 4096
    /// On-disk inode size of every image we make.
    public static let inodeSize = 256

    /// Errors from this library. Each case names the thing it is about.
    public enum Error: UserFacingError, Equatable, Sendable {
        /// A libext2fs call failed: the operation, the path it was about, and com_err's message.
        case library(operation: String, path: String, code: Int64, message: String)
        /// The configuration is not one we can build (why, in words a user can act on).
        case invalidConfiguration(String)
        /// The file is not an ext2/3/4 filesystem.
        case notExt(path: String)
        /// The target already exists; we never touch it.
        case exists(path: String)
        /// The file is shorter than the filesystem in it says it is (a copy cut short).
        case truncated(path: String, filesystemBytes: UInt64, fileBytes: UInt64)
        /// The image file could not be created in its directory.
        case cannotCreate(path: String, errno: Int32)
        /// A system call failed.
        case system(operation: String, path: String, errno: Int32)
        /// A path inside the image does not exist.
        case noSuchPath(image: String, path: String)
        /// The image is damaged (or hostile): what is wrong with it.
        case damaged(image: String, what: String)
        /// A path inside the image names something that is not a directory where one is needed.
        case notADirectory(image: String, path: String)
        /// A path inside the image goes through a symbolic link (never followed).
        case symlinkInPath(image: String, path: String, target: String)
        /// Anything else, said plainly.
        case other(String)

        public var description: String {
            switch self {
            case let .library(operation, path, _, message):
                return path.isEmpty ? "\(operation): \(message)" : "\(path): \(operation): \(message)"
            case let .invalidConfiguration(why):
                return why
            case let .notExt(path):
                return "\(path): not an ext2/ext3/ext4 filesystem image"
            case let .exists(path):
                return "\(path) already exists; choose another name with -o or remove it first"
            case let .truncated(path, filesystemBytes, fileBytes):
                return "\(path) is truncated: its filesystem takes \(Units.humanBytes(filesystemBytes)) but the file holds only "
                    + "\(Units.humanBytes(fileBytes)) (a copy cut short?): copy it again from the original; without one, "
                    + "'truncate -s \(filesystemBytes) \(path)' and 'overlay check --repair \(path)' save what they can"
            case let .cannotCreate(path, code):
                return "\(path): create the image file: \(Ext3.errnoString(code))"
            case let .system(operation, path, code):
                return "\(path): \(operation): \(Ext3.errnoString(code))"
            case let .noSuchPath(image, path):
                return "\(image): no such path inside the image: \(path)"
            case let .damaged(image, what):
                return "\(image) is damaged: \(what)"
            case let .notADirectory(image, path):
                return "\(image): \(path) is not a directory inside the image"
            case let .symlinkInPath(image, path, target):
                return "\(image): \(path) is a symbolic link to \(target) inside the image (links are not followed): give the path it points to"
            case let .other(text):
                return text
            }
        }
    }

    private static let initOnce: Void = {
        initialize_ext2_error_table()
    }()

    /// com_err's message for a libext2fs error code (error table initialised once).
    public static func message(for code: Int64) -> String {
        _ = initOnce
        guard let text = error_message(errcode_t(code)) else { return "error \(code)" }
        return String(cString: text)
    }

    /// Throws ``Error/library`` when `code` is not zero.
    @inline(__always)
    static func check(_ code: errcode_t, _ operation: @autoclosure () -> String, path: String = "") throws {
        if code != 0 {
            throw Error.library(operation: operation(), path: path, code: Int64(code), message: message(for: Int64(code)))
        }
    }

    /// strerror for an errno value.
    public static func errnoString(_ code: Int32) -> String { Errno(rawValue: code).description }

    /// Writes all of `bytes` at `offset` of `fd` (the image at `path`).
    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64, path: String) throws {
        do throws(SystemError) {
            try IO.writeAll(fd, bytes, at: offset, path: path)
        } catch {
            throw Error(error)
        }
    }
}

extension Ext3.Error {
    /// A failed system call as this library reports one: ``system(operation:path:errno:)``,
    /// with the same one-line text.
    package init(_ failure: SystemError) {
        self = .system(operation: failure.operation, path: failure.path, errno: failure.errno.rawValue)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension Ext3.Error {
    /// The file is shorter than its filesystem.
    public var isTruncated: Bool {
        if case .truncated = self { return true }
        return false
    }
}
