import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// A sequential source of bytes: a file, a gzip stream over one, or bytes in memory.
protocol ByteStream: AnyObject {
    /// Reads up to `count` bytes into `buffer`; 0 at the end.
    func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int
}

/// A file read from its start.
final class FileStream: ByteStream {
    let path: String
    private let descriptor: OwnedDescriptor

    init(path: String) throws {
        self.path = path
        do throws(SystemError) {
            descriptor = try OwnedDescriptor(opening: path, O_RDONLY)
        } catch {
            throw ArchiveError.system(error)
        }
    }

    func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int {
        do throws(SystemError) {
            return try IO.read(descriptor.rawValue, into: buffer, count: count, path: path)
        } catch {
            throw ArchiveError.system(error)
        }
    }
}

/// Bytes in memory, handed out at most `chunk` at a time (to stand in for short reads).
final class MemoryStream: ByteStream {
    private let bytes: [UInt8]
    private let chunk: Int
    private var offset = 0

    init(_ bytes: [UInt8], chunk: Int = .max) {
        self.bytes = bytes
        self.chunk = max(1, chunk)
    }

    func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int {
        let length = min(count, chunk, bytes.count - offset)
        guard length > 0 else { return 0 }
        bytes.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress! + offset, byteCount: length) }
        offset += length
        return length
    }
}
