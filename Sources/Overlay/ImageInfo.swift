import Ext3
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// Everything `overlay info` says about an image: its geometry and usage (through libext2fs,
/// no mount), whether Apptainer accepts it, who owns upper/ and work/, whether it is locked now,
/// and whether others can use it read-only.
public struct ImageInfo: Sendable, Equatable {
    /// Who may read the image file.
    public enum Readers: String, Sendable {
        case everyone, group, owner
    }

    public var path: String
    /// The file's length.
    public var sizeBytes: UInt64
    /// What the file occupies on its disk (st_blocks x 512).
    public var allocatedBytes: UInt64
    public var usage: Ext3.Usage
    public var features: [String]
    /// Why Apptainer refuses it (empty: it accepts it).
    public var apptainerRefusals: [String]
    public var upper: Ext3.Entry?
    public var work: Ext3.Entry?
    public var lock: ImageLock.State
    /// The image file's permission bits and owner on the host.
    public var fileMode: UInt16
    public var fileUID: UInt32
    public var fileGID: UInt32
    public var readers: Readers
    /// A directory above the file that others cannot pass through (nil: none).
    public var closedDirectory: String?

    /// Whether others can mount it read-only now: readable by them, reachable, not locked for writing.
    public var sharedReadOnlyNow: Bool { readers != .owner && closedDirectory == nil && lock != .writeLocked }

    /// Reads it all. Throws ``OverlayError/message(_:)`` with one line for a missing, unreadable,
    /// non-ext or damaged image.
    public static func inspect(_ path: String) throws -> ImageInfo {
        let info = try ImageMaintenance.regularFile(path)
        let superblock: Ext3.Superblock
        let usage: Ext3.Usage
        var upper: Ext3.Entry?, work: Ext3.Entry?
        do {
            superblock = try Ext3.Superblock(path: path)
            let image = try Ext3.Image(path: path)
            defer { try? image.close() }
            usage = try image.usage()
            upper = try image.entry(at: "upper")
            work = try image.entry(at: "work")
        } catch let error as Ext3.Error {
            throw OverlayError.message(Self.explain(error, path))
        }
        let lock = try ImageLock.state(of: path)
        let mode = UInt16(info.st_mode & 0o7777)
        let readers: Readers = mode & 0o004 != 0 ? .everyone : (mode & 0o040 != 0 ? .group : .owner)
        return ImageInfo(path: path, sizeBytes: UInt64(max(info.st_size, 0)), allocatedBytes: UInt64(max(info.st_blocks, 0)) * 512,
                         usage: usage, features: superblock.featureNames, apptainerRefusals: superblock.apptainerRefusals,
                         upper: upper, work: work, lock: lock, fileMode: mode, fileUID: info.st_uid, fileGID: info.st_gid,
                         readers: readers, closedDirectory: closedDirectory(above: path, for: readers))
    }

    /// One line for an error reading `path` through the Ext3 library.
    public static func explain(_ error: Ext3.Error, _ path: String) -> String {
        switch error {
        case .notExt:
            return "\(path) is not an ext2/ext3/ext4 image: give an overlay made with create-overlay"
        case .damaged, .library:
            let text = error.description.hasPrefix(path) ? error.description : "\(path): \(error.description)"
            return text + "; check it with: overlay check \(path)"
        default:
            return error.description
        }
    }

    /// The first directory above `path` that the readers cannot search (x bit), if any.
    static func closedDirectory(above path: String, for readers: Readers) -> String? {
        guard readers != .owner, let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        var directory = String(cString: resolved)
        while let slash = directory.lastIndex(of: "/") {
            directory = slash == directory.startIndex ? "/" : String(directory[..<slash])
            var info = stat()
            guard stat(directory, &info) == 0 else { return nil }
            let bit: mode_t = readers == .everyone ? 0o001 : 0o010
            if info.st_mode & bit == 0 { return directory }
            if directory == "/" { break }
        }
        return nil
    }

    // MARK: - Output

    /// What `overlay info` prints.
    public var lines: [String] {
        let u = usage
        var lines: [String] = []
        lines.append("\(path): \(ImageSize.human(sizeBytes)) (\(ImageSize.human(allocatedBytes)) on disk), \(u.blockSize)-byte blocks")
        lines.append("files: \(Self.grouped(u.inodeCount)) inodes, \(Self.grouped(u.usedInodes)) used, \(Self.grouped(u.freeInodes)) free")
        lines.append("data: \(ImageSize.human(u.usedBytes)) used, \(ImageSize.human(u.freeBytes)) free")
        lines.append("features: \(features.joined(separator: " "))")
        lines.append(apptainerRefusals.isEmpty
            ? "Apptainer: accepts it as an overlay"
            : "Apptainer: refuses it: \(apptainerRefusals.joined(separator: "; "))")
        for (name, entry) in [("upper/", upper), ("work/", work)] {
            if let entry, entry.kind == .directory {
                lines.append("\(name): owner \(entry.uid):\(entry.gid), mode \(Self.octal(entry.permissions))")
            } else if name == "upper/" {
                lines.append("upper/: missing (not an overlay: it cannot be mounted, read-only or writable, until it has one)")
            } else {
                lines.append("\(name): missing (the image can only be used read-only)")
            }
        }
        switch lock {
        case .unlocked: lines.append("lock: none (nobody has it mounted)")
        case .readLocked: lines.append("lock: read (mounted read-only now; others can too, nobody can write)")
        case .writeLocked: lines.append("lock: write (mounted writable now; nobody else can mount it)")
        }
        lines.append("sharing: " + sharingText)
        return lines
    }

    var sharingText: String {
        let who: String
        switch readers {
        case .everyone: who = "readable by everyone"
        case .group: who = "readable by group \(fileGID)"
        case .owner: who = "readable only by its owner"
        }
        let file = "\(who) (mode \(Self.octal(fileMode)), owner \(fileUID):\(fileGID))"
        if upper?.kind != .directory {
            return "\(file); not usable as an overlay without upper/"
        }
        if readers == .owner {
            return "\(file); others cannot use it: chmod o+r \(ShellQuote.quote(path)) (or g+r) to share it read-only"
        }
        if let closedDirectory {
            return "\(file), but \(closedDirectory) does not let them through: chmod \(readers == .everyone ? "o" : "g")+x \(ShellQuote.quote(closedDirectory))"
        }
        if lock == .writeLocked {
            return "\(file); others can mount it read-only (--overlay \(ShellQuote.quote(path + ":ro"))) once the writer is done"
        }
        return "\(file); others can mount it read-only now (--overlay \(ShellQuote.quote(path + ":ro")))"
    }

    /// One JSON object on one line.
    public var json: String {
        let u = usage
        func entry(_ e: Ext3.Entry?) -> String {
            guard let e, e.kind == .directory else { return "null" }
            return "{\"uid\":\(e.uid),\"gid\":\(e.gid),\"mode\":\"\(Self.octal(e.permissions))\"}"
        }
        let lockText: String
        switch lock {
        case .unlocked: lockText = "none"
        case .readLocked: lockText = "read"
        case .writeLocked: lockText = "write"
        }
        let fields: [(String, String)] = [
            ("path", Ext3.jsonQuoted(path)),
            ("sizeBytes", "\(sizeBytes)"),
            ("allocatedBytes", "\(allocatedBytes)"),
            ("blockSize", "\(u.blockSize)"),
            ("blockCount", "\(u.blockCount)"),
            ("freeBlocks", "\(u.freeBlocks)"),
            ("inodeCount", "\(u.inodeCount)"),
            ("inodesUsed", "\(u.usedInodes)"),
            ("inodesFree", "\(u.freeInodes)"),
            ("dataBytesUsed", "\(u.usedBytes)"),
            ("dataBytesFree", "\(u.freeBytes)"),
            ("features", "[" + features.map(Ext3.jsonQuoted).joined(separator: ",") + "]"),
            ("apptainerAccepts", "\(apptainerRefusals.isEmpty)"),
            ("apptainerRefusals", "[" + apptainerRefusals.map(Ext3.jsonQuoted).joined(separator: ",") + "]"),
            ("upper", entry(upper)),
            ("work", entry(work)),
            ("lock", Ext3.jsonQuoted(lockText)),
            ("fileMode", Ext3.jsonQuoted(Self.octal(fileMode))),
            ("fileUID", "\(fileUID)"),
            ("fileGID", "\(fileGID)"),
            ("readableBy", Ext3.jsonQuoted(readers.rawValue)),
            ("sharedReadOnlyNow", "\(sharedReadOnlyNow)"),
        ]
        return "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }

    static func octal(_ mode: UInt16) -> String {
        let text = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - text.count)) + text
    }

    static func grouped(_ value: UInt64) -> String { Units.grouped(value) }
}
