import LinuxSupport

/// What went wrong reading an archive: each case names the archive (its path as given) and
/// what is wrong with it. `description` is the one line a user sees.
public enum ArchiveError: UserFacingError, Equatable, Sendable {
    /// The file starts like a compressed file this reader does not undo.
    case compressed(path: String, Compression)
    /// The file is neither a tar archive nor gzip.
    case notAnArchive(path: String)
    /// The (decompressed) data does not start with a tar header.
    case notTar(path: String)
    /// The tar data is damaged: what is wrong, and the byte of the (decompressed) stream
    /// reached when it was found.
    case damaged(path: String, Damage, at: UInt64)
    /// The gzip data cannot be decompressed.
    case gzip(path: String, GzipProblem)
    /// Opening or reading the file failed.
    case system(SystemError)

    /// Compressions recognised by their magic bytes, to say what to do with them.
    public enum Compression: String, Sendable, CaseIterable {
        case bzip2, xz, zstd

        /// The magic bytes a file of this kind starts with.
        var magic: [UInt8] {
            switch self {
            case .bzip2: [0x42, 0x5A, 0x68]
            case .xz: [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]
            case .zstd: [0x28, 0xB5, 0x2F, 0xFD]
            }
        }

        /// The program that undoes it.
        var undo: String {
            switch self {
            case .bzip2: "bunzip2"
            case .xz: "unxz"
            case .zstd: "unzstd"
            }
        }
    }

    /// What is wrong with damaged tar data.
    public enum Damage: Equatable, Sendable, CustomStringConvertible {
        /// Not one header before the end.
        case empty
        /// The data ends inside a header or an entry's data.
        case truncated
        /// A header's checksum does not match its bytes.
        case badChecksum
        /// A header's size field is not a number, or is negative or too large.
        case badSize
        /// A pax `size` record that is not a size (or too large for one).
        case badPaxSize(String)
        /// An extended header (GNU long name or link, pax) too large to be one.
        case extendedHeaderTooLarge(UInt64)
        /// A GNU (type S) or pax sparse entry.
        case gnuSparse, paxSparse
        /// A pax record that is not `<length> <key>=<value>\n`.
        case malformedPax
        /// A pax time record that is not a time.
        case badPaxTime(key: String, value: String)

        public var description: String {
            switch self {
            case .empty: "the archive is empty"
            case .truncated: "the archive ends in the middle of an entry"
            case .badChecksum: "a header's checksum is wrong"
            case .badSize: "a header has a bad size field"
            case let .badPaxSize(value): "pax size '\(value)' is not a size"
            case let .extendedHeaderTooLarge(size): "an extended header of \(size) bytes"
            case .gnuSparse: "GNU sparse entries are not supported: make the archive without --sparse"
            case .paxSparse: "pax sparse entries are not supported: make the archive without --sparse"
            case .malformedPax: "a pax extended header is malformed"
            case let .badPaxTime(key, value): "pax \(key) '\(value)' is not a time"
            }
        }
    }

    /// Why gzip data cannot be decompressed.
    public enum GzipProblem: Equatable, Sendable {
        /// zlib would not start.
        case cannotStart
        /// The data ends inside a member.
        case truncated
        /// zlib refused the data, with this status.
        case damaged(status: Int32)
    }

    public var description: String {
        switch self {
        case let .compressed(path, compression):
            return "\(path) is compressed with \(compression.rawValue) (\(compression.undo) it first): only plain and gzip-compressed tar archives are read"
        case let .notAnArchive(path):
            return "\(path) is neither a directory nor a tar archive (plain or gzip): give one of those"
        case let .notTar(path):
            return "\(path) does not hold a tar archive: give a directory or a tar archive (plain or gzip)"
        case let .damaged(path, damage, position):
            return "\(path): \(damage) (at byte \(position)); the archive is damaged or not a tar archive"
        case let .gzip(path, .cannotStart):
            return "\(path): cannot start gzip decompression"
        case let .gzip(path, .truncated):
            return "\(path): the gzip data ends early (truncated file?)"
        case let .gzip(path, .damaged(status)):
            return "\(path): the gzip data is damaged (zlib status \(status))"
        case let .system(error):
            return error.description
        }
    }
}
