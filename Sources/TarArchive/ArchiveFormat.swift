import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// What a file holds, judged by its content (not its name).
public enum ArchiveFormat: String, Sendable {
    /// A tar archive: ustar, GNU or pax, or old-style with a valid header checksum.
    case tar
    /// gzip, assumed to hold a tar archive (checked when read).
    case gzip

    /// Looks at the first bytes of the file at `path` (not a directory). Refuses, saying what
    /// to do, a file compressed some other way or one that is no archive at all.
    public static func detect(_ path: String) throws -> ArchiveFormat {
        var header = [UInt8](repeating: 0, count: 512)
        let count: Int
        do throws(SystemError) {
            count = try readStart(of: path, into: &header)
        } catch {
            throw ArchiveError.system(error)
        }
        return try detect(header: header[..<count], path: path)
    }

    /// Reads the first bytes of the file at `path` (one read, as much as `header` holds).
    private static func readStart(of path: String, into header: inout [UInt8]) throws(SystemError) -> Int {
        let file = try OwnedDescriptor(opening: path, O_RDONLY)
        let count = header.withUnsafeMutableBytes { Glibc.read(file.rawValue, $0.baseAddress, $0.count) }
        guard count >= 0 else { throw SystemError("read", path: path) }
        return count
    }

    /// The format of a file that starts with `header` (its first 512 bytes, or all of it
    /// when shorter).
    static func detect(header: ArraySlice<UInt8>, path: String) throws -> ArchiveFormat {
        if header.starts(with: [0x1F, 0x8B]) { return .gzip }
        if header.count == 512 && TarReader.isHeader(header) { return .tar }
        for compression in ArchiveError.Compression.allCases where header.starts(with: compression.magic) {
            throw ArchiveError.compressed(path: path, compression)
        }
        throw ArchiveError.notAnArchive(path: path)
    }
}
