import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3.Tree {
    /// Reads the tree under `root` (not following symlinks): every entry's type, mode, owner,
    /// times to the nanosecond, size, symlink target, device numbers and extended attributes;
    /// hard links within the tree as one inode; the data ranges of sparse files. Nothing is
    /// read from regular files except where they are sparse. Entries are sorted by name.
    ///
    /// Directories are read level by level on a few threads at once (each entry costs a few
    /// system calls); the tree is then put together on this thread, in depth-first name order,
    /// exactly as a one-thread walk would have: the same node order, hard links and errors.
    ///
    /// Files and directories this process cannot read are collected and reported together.
    public static func scan(directory root: String) throws -> Ext3.Tree {
        var info = stat()
        guard lstat(root, &info) == 0 else {
            throw Ext3.Error.system(operation: "read", path: root, errno: errno)
        }
        var base = Array(root.utf8CString.dropLast())
        while base.count > 1, base.last == CChar(UInt8(ascii: "/")) { base.removeLast() }

        // Read every directory, a level at a time.
        var listings: [[CChar]: Listing] = [:]
        var level: [[CChar]] = [base]
        let euid = geteuid()
        let threads = max(1, min(Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), 4))
        while !level.isEmpty {
            let read = Ext3.ParallelWork.map(level, threads: threads) { readDirectory($0, euid: euid) }
            var next: [[CChar]] = []
            for (path, listing) in zip(level, read) {
                listings[path] = listing
                for entry in listing.entries where entry.descend { next.append(entry.path) }
            }
            level = next
        }

        var tree = Ext3.Tree(root: node(from: info))
        var unreadable: [(path: String, errno: Int32)] = []
        var hardLinks: [HardLinkKey: Int] = [:]
        // (directory node, its path without the trailing NUL)
        var pending: [(node: Int, path: [CChar])] = [(0, base)]
        while let (directoryNode, directoryPath) = pending.popLast() {
            let listing = listings.removeValue(forKey: directoryPath) ?? Listing(errno: EIO)
            guard listing.errno == 0 else {
                unreadable.append((display(directoryPath), listing.errno))
                continue
            }
            var subdirectories: UInt32 = 0
            for entry in listing.entries {
                if let failure = entry.nameFailure { throw failure }
                guard entry.statErrno == 0 else {
                    unreadable.append((display(entry.path), entry.statErrno))
                    continue
                }
                if let key = entry.hardLink, let existing = hardLinks[key] {
                    tree.nodes[existing].links += 1
                    if tree.nodes[existing].links > linkLimit {
                        throw Ext3.Error.invalidConfiguration("\(display(entry.path)): more than \(linkLimit) hard links, which ext3 cannot hold")
                    }
                    tree.nodes[directoryNode].children.append((entry.name, existing))
                    continue
                }
                let node: Node
                switch entry.outcome {
                case .failed(let failure): throw failure
                case .unreadable(let code):
                    unreadable.append((display(entry.path), code))
                    continue
                case .node(let read): node = read
                }
                if node.kind == .directory { subdirectories += 1 }
                let index = tree.nodes.count
                tree.nodes.append(node)
                tree.nodes[directoryNode].children.append((entry.name, index))
                if let key = entry.hardLink { hardLinks[key] = index }
                if node.kind == .directory { pending.append((index, entry.path)) }
            }
            if subdirectories + 2 > linkLimit {
                throw Ext3.Error.invalidConfiguration("\(display(directoryPath)): more than \(linkLimit - 2) subdirectories, which ext3 cannot hold")
            }
            // Depth-first, in name order: the reverse of what was pushed for this directory.
            let pushed = tree.nodes[directoryNode].children.filter { tree.nodes[$0.node].kind == .directory }.count
            if pushed > 1 { pending[(pending.count - pushed)...].reverse() }
        }
        if let first = unreadable.first {
            let more = unreadable.count > 1 ? " (and \(unreadable.count - 1) more)" : ""
            throw Ext3.Error.invalidConfiguration(
                "cannot read \(first.path): \(Ext3.errnoString(first.errno))\(more); make it readable or pack a tree without it")
        }
        return tree
    }

    /// One directory as read: its entries in name order, or why it could not be opened.
    struct Listing: Sendable {
        var errno: Int32 = 0
        var entries: [ListedEntry] = []
    }

    /// One entry as read, with everything the tree needs from it, or what went wrong (kept in
    /// the order a one-thread walk would meet it: name, stat, then the rest).
    struct ListedEntry: Sendable {
        enum Outcome: Sendable {
            case node(Node)
            case unreadable(Int32)
            case failed(Ext3.Error)
        }
        var name: [UInt8]
        /// Without the trailing NUL.
        var path: [CChar]
        var nameFailure: Ext3.Error? = nil
        var statErrno: Int32 = 0
        /// Set for a non-directory with more than one name.
        var hardLink: HardLinkKey? = nil
        var outcome: Outcome = .unreadable(EIO)
        /// A directory read without a problem: its own entries are read next.
        var descend: Bool {
            guard nameFailure == nil, statErrno == 0, case .node(let node) = outcome else { return false }
            return node.kind == .directory
        }
    }

    /// Lists the directory at `directoryPath` and reads each entry (stat relative to the open
    /// directory, extended attributes, symlink target, holes of sparse files).
    static func readDirectory(_ directoryPath: [CChar], euid: uid_t) -> Listing {
        guard let stream = opendir(directoryPath + [0]) else { return Listing(errno: errno) }
        defer { closedir(stream) }
        let directoryFD = dirfd(stream)
        var names: [[UInt8]] = []
        while let entry = readdir(stream) {
            let name: [UInt8] = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                let bytes = raw.bindMemory(to: UInt8.self)
                let length = bytes.firstIndex(of: 0) ?? bytes.count
                return Array(bytes[..<length])
            }
            if name == [46] || name == [46, 46] { continue }
            names.append(name)
        }
        names.sort { $0.lexicographicallyPrecedes($1) }

        var listing = Listing()
        listing.entries.reserveCapacity(names.count)
        for name in names {
            let path = directoryPath + [CChar(UInt8(ascii: "/"))] + name.map { CChar(bitPattern: $0) }
            var entry = ListedEntry(name: name, path: path)
            do {
                try checkName(name, in: display(path))
            } catch let failure as Ext3.Error {
                entry.nameFailure = failure
                listing.entries.append(entry)
                continue
            } catch {
                entry.nameFailure = .other("\(error)")
                listing.entries.append(entry)
                continue
            }
            let terminatedName = name.map { CChar(bitPattern: $0) } + [0]
            var info = stat()
            // Relative to the open directory: no walk down the whole path for each entry.
            guard fstatat(directoryFD, terminatedName, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
                entry.statErrno = errno
                listing.entries.append(entry)
                continue
            }
            if info.st_mode & S_IFMT != S_IFDIR && info.st_nlink > 1 {
                entry.hardLink = HardLinkKey(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
            }
            entry.outcome = readEntry(info, path: path, name: terminatedName, directoryFD: directoryFD, euid: euid)
            listing.entries.append(entry)
        }
        return listing
    }

    /// The node for one entry whose stat is `info`.
    private static func readEntry(_ info: stat, path: [CChar], name: [CChar], directoryFD: Int32, euid: uid_t) -> ListedEntry.Outcome {
        let terminated = path + [0]
        var node = node(from: info)
        do {
            node.xattrs = try readXattrs(terminated, display: display(path))
        } catch let failure as Ext3.Error {
            return .failed(failure)
        } catch {
            return .failed(.other("\(error)"))
        }
        switch node.kind {
        case .regular:
            if !canRead(info, euid: euid) && faccessat(directoryFD, name, R_OK, AT_EACCESS) != 0 {
                return .unreadable(EACCES)
            }
            var segments: [Range<UInt64>]? = nil
            if UInt64(info.st_blocks) * 512 < UInt64(info.st_size) {
                do {
                    segments = try dataSegments(terminated, size: UInt64(info.st_size))
                } catch let Ext3.Error.system(_, _, code) {
                    return .unreadable(code)
                } catch {
                    return .unreadable(EIO)
                }
            }
            node.content = .file(path: terminated, segments: segments)
        case .symlink:
            var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
            let length = buffer.withUnsafeMutableBufferPointer { pointer in
                pointer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: pointer.count) {
                    readlinkat(directoryFD, name, $0, pointer.count)
                }
            }
            guard length >= 0 else { return .unreadable(errno) }
            node.target = Array(buffer[..<length])
            node.size = UInt64(length)
            if length >= Ext3.blockSize {
                return .failed(.invalidConfiguration("\(display(path)): symbolic link target longer than \(Ext3.blockSize - 1) bytes"))
            }
        default:
            break
        }
        return .node(node)
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
            node.major = UInt32(cext2fs_major(UInt64(info.st_rdev)))
            node.minor = UInt32(cext2fs_minor(UInt64(info.st_rdev)))
        }
        return node
    }

    /// The data ranges of a file, by SEEK_DATA/SEEK_HOLE.
    static func dataSegments(_ path: [CChar], size: UInt64) throws -> [Range<UInt64>] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw Ext3.Error.system(operation: "open", path: display(path), errno: errno) }
        defer { close(fd) }
        var segments: [Range<UInt64>] = []
        var offset: off_t = 0
        while UInt64(offset) < size {
            let data = off_t(cext2fs_seek_data(fd, Int64(offset)))
            if data < 0 {
                if errno == ENXIO { break }
                return [0..<size]  // no SEEK_DATA here: treat as dense
            }
            var hole = off_t(cext2fs_seek_hole(fd, Int64(data)))
            if hole < 0 { hole = off_t(size) }
            let end = min(UInt64(hole), size)
            if end > UInt64(data) { segments.append(UInt64(data)..<end) }
            offset = hole
        }
        return segments
    }

    /// Every extended attribute of `path` (not following a symlink).
    static func readXattrs(_ path: [CChar], display shown: @autoclosure () -> String) throws -> [(name: String, value: [UInt8])] {
        var length = llistxattr(path, nil, 0)
        if length < 0 {
            if errno == ENOTSUP || errno == ENOSYS { return [] }
            throw Ext3.Error.system(operation: "list extended attributes", path: shown(), errno: errno)
        }
        if length == 0 { return [] }
        var names = [CChar](repeating: 0, count: length)
        length = llistxattr(path, &names, names.count)
        guard length >= 0 else { throw Ext3.Error.system(operation: "list extended attributes", path: shown(), errno: errno) }
        var result: [(name: String, value: [UInt8])] = []
        var start = 0
        while start < length {
            let end = names[start..<length].firstIndex(of: 0) ?? length
            let nameBytes = Array(names[start..<end]) + [0]
            start = end + 1
            let name = String(decoding: nameBytes.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
            var size = lgetxattr(path, nameBytes, nil, 0)
            if size < 0 {
                if errno == ENODATA { continue }
                throw Ext3.Error.system(operation: "read extended attribute \(name)", path: shown(), errno: errno)
            }
            var value = [UInt8](repeating: 0, count: size)
            size = value.withUnsafeMutableBytes { lgetxattr(path, nameBytes, $0.baseAddress, $0.count) }
            guard size >= 0 else {
                throw Ext3.Error.system(operation: "read extended attribute \(name)", path: shown(), errno: errno)
            }
            result.append((name, Array(value[..<size])))
        }
        return result.sorted { $0.name < $1.name }
    }
}
