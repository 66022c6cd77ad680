/// A point in time as an archive records it: seconds since the epoch (negative before 1970)
/// and nanoseconds (pax records keep fractions; other fields whole seconds).
public struct TarTime: Sendable, Equatable, Hashable {
    public var seconds: Int64
    public var nanoseconds: UInt32

    public init(seconds: Int64, nanoseconds: UInt32 = 0) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
}

/// One tar archive entry's header, with GNU long names and links and pax records applied.
public struct TarEntry: Sendable {
    /// What an entry is, from its type flag.
    public enum Kind: Equatable, Sendable {
        /// A regular file (`0`, NUL, or `7` for contiguous): the only kind that carries data.
        case regular
        /// Another name for an earlier entry (`1`): ``TarEntry/linkPath`` names it.
        case hardLink
        case symlink
        case characterDevice, blockDevice
        /// A directory (`5`, or GNU's dump directory `D`).
        case directory
        case fifo
        /// A type flag this reader does not know.
        case other(UInt8)

        init(flag: UInt8) {
            switch flag {
            case 0, UInt8(ascii: "0"), UInt8(ascii: "7"): self = .regular
            case UInt8(ascii: "1"): self = .hardLink
            case UInt8(ascii: "2"): self = .symlink
            case UInt8(ascii: "3"): self = .characterDevice
            case UInt8(ascii: "4"): self = .blockDevice
            case UInt8(ascii: "5"), UInt8(ascii: "D"): self = .directory
            case UInt8(ascii: "6"): self = .fifo
            default: self = .other(flag)
            }
        }
    }

    /// The entry's place in the archive: 0 for the first (extended headers are no entries).
    public var ordinal: Int
    /// The name as recorded (no NUL; `/`, `.` and `..` left as they are).
    public var path: [UInt8]
    /// A symlink's target or the entry a hard link names.
    public var linkPath: [UInt8]
    public var kind: Kind
    /// Permission bits, setuid, setgid and sticky (`0o7777` at most).
    public var mode: UInt16
    public var uid: UInt32
    public var gid: UInt32
    /// Bytes of data that follow the header: 0 unless ``kind`` is ``Kind/regular``.
    public var size: UInt64
    public var mtime: TarTime
    /// From pax records only.
    public var atime: TarTime?
    public var ctime: TarTime?
    public var major: UInt32
    public var minor: UInt32
    /// Extended attributes (pax `SCHILY.xattr.*`), sorted by name.
    public var xattrs: [(name: String, value: [UInt8])]
}
