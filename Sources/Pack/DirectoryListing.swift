import Ext3
import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

/// Reading one directory of the tree: its entries, their metadata and sparse files' holes.
extension Ext3.Tree {
    /// Lists the directory at `directoryPath` (NUL-terminated; read from `descriptor` unless it
    /// is -1) and reads each entry: stat, extended attributes, symlink target and holes of
    /// sparse files, all relative to the open directory (extended attributes by full path where
    /// `relativeXattrs` is false). Opens up to `openSubdirectories` of its first subdirectories
    /// (by name) into their entries' `descriptor`.
    static func readDirectory(_ directoryPath: [CChar], descriptor: Int32 = -1, euid: uid_t, relativeXattrs: Bool,
                              openSubdirectories: Int = 0) -> Listing {
        var listing = Listing(path: directoryPath)
        var opened: OpaquePointer? = nil
        if descriptor >= 0 {
            opened = fdopendir(descriptor)
            if opened == nil { close(descriptor) }
        }
        guard let stream = opened ?? opendir(directoryPath) else {
            listing.errno = errno
            return listing
        }
        defer { closedir(stream) }
        let directoryFD = dirfd(stream)
        // Every name with its NUL, one after another in one buffer.
        var names: [UInt8] = []
        var spans: [(start: Int, count: Int)] = []
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        while let entry = readdir(stream) {
            let name = UnsafeRawPointer(entry) + nameOffset
            let count = strlen(name.assumingMemoryBound(to: CChar.self))
            if name.load(as: UInt8.self) == 46 && (count == 1 || (count == 2 && name.load(fromByteOffset: 1, as: UInt8.self) == 46)) {
                continue
            }
            spans.append((names.count, count))
            names.append(contentsOf: UnsafeRawBufferPointer(start: name, count: count + 1))
        }
        guard !spans.isEmpty else { return listing }

        listing.entries.reserveCapacity(spans.count)
        names.withUnsafeBytes { bytes in
            let start = bytes.baseAddress!
            // Last name first (byte order, as strcmp compares: a name never holds a NUL).
            spans.sort { strcmp((start + $0.start).assumingMemoryBound(to: CChar.self),
                                (start + $1.start).assumingMemoryBound(to: CChar.self)) > 0 }
            // Subdirectories (entry index, name), last name first.
            var directories: [(entry: Int, name: UnsafePointer<CChar>)] = []
            defer {
                // The first names are read first: open those ahead. One that cannot be opened
                // here is opened by its path later, which reports why.
                for (index, name) in directories.suffix(openSubdirectories) {
                    listing.entries[index].descriptor = openat(directoryFD, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                }
            }
            for span in spans {
                let nameBytes = UnsafeRawBufferPointer(rebasing: bytes[span.start..<(span.start + span.count)])
                let name = (start + span.start).assumingMemoryBound(to: CChar.self)
                var entry = ListedEntry(name: Array(nameBytes))
                if span.count > 255 {
                    do {
                        try checkName(entry.name, in: display(directoryPath, entry.name))
                    } catch {
                        entry.problem = .failed(error as? Ext3.Error ?? .other("\(error)"))
                        listing.entries.append(entry)
                        continue
                    }
                }
                var info = stat()
                guard fstatat(directoryFD, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
                    entry.problem = .unreadable(errno)
                    listing.entries.append(entry)
                    continue
                }
                if info.st_mode & S_IFMT != S_IFDIR && info.st_nlink > 1 {
                    entry.hardLink = HardLinkKey(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
                }
                do throws(ListedEntry.Problem) {
                    entry.node = try readEntry(info, in: directoryPath, directoryFD: directoryFD, name: name, nameBytes: nameBytes,
                                               euid: euid, relativeXattrs: relativeXattrs)
                    entry.isDirectory = info.st_mode & S_IFMT == S_IFDIR
                    if entry.isDirectory { directories.append((listing.entries.count, name)) }
                } catch {
                    entry.problem = error
                }
                listing.entries.append(entry)
            }
        }
        return listing
    }

    /// The node for the entry `name` of the open directory `directoryFD`, whose stat is `info`.
    private static func readEntry(_ info: stat, in directoryPath: [CChar], directoryFD: Int32,
                                  name: UnsafePointer<CChar>, nameBytes: UnsafeRawBufferPointer,
                                  euid: uid_t, relativeXattrs: Bool) throws(ListedEntry.Problem) -> Node {
        var node = node(from: info)
        // The full path: a regular file's content is opened by it later.
        var path: [CChar]? = node.kind == .regular ? join(directoryPath, nameBytes) : nil
        func shown() -> String { display(path ?? join(directoryPath, nameBytes)) }
        do {
            if relativeXattrs {
                node.xattrs = try readXattrs(.relative(directory: directoryFD, name: name), display: shown())
            } else {
                if path == nil { path = join(directoryPath, nameBytes) }
                node.xattrs = try path!.withUnsafeBufferPointer { try readXattrs(.path($0.baseAddress!), display: shown()) }
            }
        } catch let failure as Ext3.Error {
            throw .failed(failure)
        } catch {
            throw .failed(.other("\(error)"))
        }
        switch node.kind {
        case .regular:
            if !canRead(info, euid: euid) && faccessat(directoryFD, name, R_OK, AT_EACCESS) != 0 {
                throw .unreadable(EACCES)
            }
            var segments: [Range<UInt64>]? = nil
            if UInt64(info.st_blocks) * 512 < UInt64(info.st_size) {
                let fd = openat(directoryFD, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
                guard fd >= 0 else { throw .unreadable(errno) }
                segments = dataSegments(fd, size: UInt64(info.st_size))
                close(fd)
            }
            node.content = .file(path: path!, segments: segments)
        case .symlink:
            let capacity = Int(PATH_MAX) + 1
            let target: [UInt8]? = withUnsafeTemporaryAllocation(of: CChar.self, capacity: capacity) { buffer in
                let length = readlinkat(directoryFD, name, buffer.baseAddress!, capacity)
                guard length >= 0 else { return nil }
                return Array(UnsafeRawBufferPointer(start: buffer.baseAddress!, count: length))
            }
            guard let target else { throw .unreadable(errno) }
            node.target = target
            node.size = UInt64(target.count)
            if target.count >= Ext3.blockSize {
                throw .failed(.invalidConfiguration("\(shown()): symbolic link target longer than \(Ext3.blockSize - 1) bytes"))
            }
        default:
            break
        }
        return node
    }

    struct HardLinkKey: Hashable, Sendable {
        var device: UInt64
        var inode: UInt64
    }

    /// Whether the mode bits alone say this process can read the file (no system call).
    private static func canRead(_ info: stat, euid: uid_t) -> Bool {
        if euid == 0 { return true }
        return info.st_uid == euid && info.st_mode & S_IRUSR != 0
    }

    static func node(from info: stat) -> Node {
        let kind: Ext3.EntryKind
        switch info.st_mode & S_IFMT {
        case S_IFREG: kind = .regular
        case S_IFDIR: kind = .directory
        case S_IFLNK: kind = .symlink
        case S_IFCHR: kind = .characterDevice
        case S_IFBLK: kind = .blockDevice
        case S_IFIFO: kind = .fifo
        case S_IFSOCK: kind = .socket
        default: kind = .unknown
        }
        var node = Node(
            kind: kind, permissions: UInt16(info.st_mode & 0o7777), uid: info.st_uid, gid: info.st_gid,
            atime: Ext3.Timestamp(seconds: Int64(info.st_atim.tv_sec), nanoseconds: UInt32(info.st_atim.tv_nsec)),
            mtime: Ext3.Timestamp(seconds: Int64(info.st_mtim.tv_sec), nanoseconds: UInt32(info.st_mtim.tv_nsec)),
            ctime: Ext3.Timestamp(seconds: Int64(info.st_ctim.tv_sec), nanoseconds: UInt32(info.st_ctim.tv_nsec)))
        if kind == .regular { node.size = UInt64(info.st_size) }
        if kind == .characterDevice || kind == .blockDevice {
            node.major = UInt32(FileCalls.major(UInt64(info.st_rdev)))
            node.minor = UInt32(FileCalls.minor(UInt64(info.st_rdev)))
        }
        return node
    }

    /// The data ranges of the open file `fd`, by SEEK_DATA/SEEK_HOLE.
    static func dataSegments(_ fd: Int32, size: UInt64) -> [Range<UInt64>] {
        var segments: [Range<UInt64>] = []
        var offset: off_t = 0
        while UInt64(offset) < size {
            let data = off_t(FileCalls.seekData(fd, Int64(offset)))
            if data < 0 {
                if errno == ENXIO { break }
                return [0..<size]  // no SEEK_DATA here: treat as dense
            }
            var hole = off_t(FileCalls.seekHole(fd, Int64(data)))
            if hole < 0 { hole = off_t(size) }
            let end = min(UInt64(hole), size)
            if end > UInt64(data) { segments.append(UInt64(data)..<end) }
            offset = hole
        }
        return segments
    }
}
