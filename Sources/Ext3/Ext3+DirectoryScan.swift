import LinuxSupport
import CExt2fs
import Dispatch
#if canImport(Glibc)
import Glibc
#endif

extension Ext3.Tree {
    /// Reads the tree under `root` (not following symlinks): every entry's type, mode, owner,
    /// times to the nanosecond, size, symlink target, device numbers and extended attributes;
    /// hard links within the tree as one inode; the data ranges of sparse files. Nothing is
    /// read from regular files except where they are sparse. Entries are sorted by name.
    ///
    /// Directories are read on a few threads at once, this one included (each entry costs a
    /// few system calls, all relative to the open directory); this thread puts the tree
    /// together as the listings come in, in depth-first name order, exactly as a one-thread
    /// walk would have: the same node order, hard links and errors.
    ///
    /// Files and directories this process cannot read are collected and reported together.
    public static func scan(directory root: String) throws -> Ext3.Tree {
        try scan(directory: root, xattrCalls: .relativeWhereAvailable)
    }

    /// How extended attributes are read.
    enum XattrCalls: Sendable {
        /// listxattrat/getxattrat relative to the open directory (Linux 6.13+), or by full path
        /// (llistxattr/lgetxattr) when the kernel does not have them.
        case relativeWhereAvailable
        /// Always by full path, as on a kernel without the relative calls.
        case byPath
    }

    /// `threads`: how many read directories (default: one a core, at most 4).
    static func scan(directory root: String, xattrCalls: XattrCalls, threads: Int? = nil) throws -> Ext3.Tree {
        var info = stat()
        guard lstat(root, &info) == 0 else {
            throw Ext3.Error.system(operation: "read", path: root, errno: errno)
        }
        var base = Array(root.utf8CString.dropLast())
        while base.count > 1, base.last == slash { base.removeLast() }
        base.append(0)

        // Asked once: a kernel without listxattrat says ENOSYS (a seccomp filter may say EPERM).
        let relative = xattrCalls == .relativeWhereAvailable
            && (FileCalls.listxattrat(AT_FDCWD, base, nil, 0) >= 0 || (errno != ENOSYS && errno != EPERM))
        let euid = geteuid()
        let threads = max(1, threads ?? min(Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), 4))
        // The directories are read on the other threads and on this one, which puts the tree
        // together from the listings as they come.
        let reader = DirectoryReader(root: base, helpers: threads - 1) {
            readDirectory($0, descriptor: $1, euid: euid, relativeXattrs: relative, openSubdirectories: $2)
        }
        defer { reader.stop() }

        var tree = Ext3.Tree(root: node(from: info))
        var unreadable: [(path: String, errno: Int32)] = []
        var hardLinks: [HardLinkKey: Int] = [:]
        // (directory node, the number of its listing)
        var pending: [(node: Int, listing: Int)] = [(0, 0)]
        while let (directoryNode, number) = pending.popLast() {
            var listing = reader.take(number)
            guard listing.errno == 0 else {
                unreadable.append((display(listing.path), listing.errno))
                continue
            }
            tree.nodes[directoryNode].children.reserveCapacity(listing.entries.count)
            var subdirectories: UInt32 = 0
            // Entries are kept last name first: taking them off the end goes in name order and
            // moves each one out instead of copying it.
            while var entry = listing.entries.popLast() {
                if let key = entry.hardLink, let existing = hardLinks[key] {
                    tree.nodes[existing].links += 1
                    if tree.nodes[existing].links > linkLimit {
                        throw Ext3.Error.invalidConfiguration("\(display(listing.path, entry.name)): more than \(linkLimit) hard links, which ext3 cannot hold")
                    }
                    tree.nodes[directoryNode].children.append((entry.name, existing))
                    continue
                }
                // Moved out, not copied (a copy retains and releases each of its arrays).
                guard let node = entry.node.take() else {
                    switch entry.problem {
                    case .failed(let failure): throw failure
                    case .unreadable(let code): unreadable.append((display(listing.path, entry.name), code))
                    }
                    continue
                }
                let index = tree.nodes.count
                let isDirectory = node.kind == .directory
                tree.nodes.append(node)
                tree.nodes[directoryNode].children.append((entry.name, index))
                if let key = entry.hardLink { hardLinks[key] = index }
                if isDirectory {
                    subdirectories += 1
                    pending.append((index, entry.listing))
                }
            }
            if subdirectories + 2 > linkLimit {
                throw Ext3.Error.invalidConfiguration("\(display(listing.path)): more than \(linkLimit - 2) subdirectories, which ext3 cannot hold")
            }
            // Depth-first, in name order: the reverse of what was pushed for this directory.
            if subdirectories > 1 { pending[(pending.count - Int(subdirectories))...].reverse() }
        }
        if let first = unreadable.first {
            let more = unreadable.count > 1 ? " (and \(unreadable.count - 1) more)" : ""
            throw Ext3.Error.invalidConfiguration(
                "cannot read \(first.path): \(Ext3.errnoString(first.errno))\(more); make it readable or pack a tree without it")
        }
        return tree
    }

    private static let slash = CChar(UInt8(ascii: "/"))

    /// One directory as read: its entries, last name first, or why it could not be opened.
    struct Listing: Sendable {
        /// NUL-terminated.
        var path: [CChar] = []
        var errno: Int32 = 0
        var entries: [ListedEntry] = []
    }

    /// One entry as read, with everything the tree needs from it, or what went wrong first (in
    /// the order a one-thread walk meets it: name, stat, then the rest).
    struct ListedEntry: Sendable {
        enum Problem: Sendable, Swift.Error {
            case unreadable(Int32)
            case failed(Ext3.Error)
        }
        var name: [UInt8]
        /// The entry as read; nil when `problem` says why not.
        var node: Node? = nil
        var problem: Problem = .unreadable(EIO)
        /// Set for a non-directory with more than one name.
        var hardLink: HardLinkKey? = nil
        /// A directory read without a problem: its own entries are read next...
        var isDirectory = false
        /// ...into the listing with this number...
        var listing = 0
        /// ...from this descriptor, opened relative to its parent (-1: by its path).
        var descriptor: Int32 = -1
    }

    /// Reads every directory of the tree: each thread takes a directory nobody has read yet,
    /// reads it and hands out its subdirectories, so that no thread waits while another still
    /// has directories to give (a level with one big directory does not hold the others up).
    /// The thread that puts the tree together reads too: when the listing it needs next is not
    /// there yet, it reads that directory itself (or another, if someone is already on it)
    /// instead of waiting. Subdirectories are handed out first name first, so they are read
    /// roughly in the order the tree is put together.
    final class DirectoryReader: @unchecked Sendable {
        private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        /// Signalled when there are directories to read, a listing is in, or nothing is left.
        private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        /// Directories not read yet (NUL-terminated paths) and the number of their listing.
        private var waiting: [Job]
        /// A directory to read: its listing's number, NUL-terminated path, and a descriptor
        /// opened relative to its parent while that was read (-1: none).
        typealias Job = (number: Int, path: [CChar], descriptor: Int32)
        /// Descriptors opened ahead for waiting directories, and the most there may be: opening
        /// by name relative to the parent saves the kernel a walk down the whole path, and the
        /// limit keeps a wide tree within a low open-file limit.
        private var held = 0
        private static let holdLimit = 32
        /// Every listing by number (the root is 0): nil until read, and again once taken.
        private var listings: [Listing?] = [nil]
        /// Threads reading a directory now (they may hand out more).
        private var busy = 0
        /// Set by ``stop()``: read nothing more.
        private var stopped = false
        private let read: @Sendable ([CChar], Int32, Int) -> Listing
        private let helpers = DispatchGroup()

        /// Starts reading the tree at `root` (NUL-terminated) on `helpers` threads besides the
        /// one that calls ``take(_:)``.
        /// `read(path, descriptor, n)` reads one directory (from `descriptor` if it is not -1)
        /// and may open up to `n` of its subdirectories ahead (their entries' `descriptor`).
        init(root: [CChar], helpers count: Int, _ read: @escaping @Sendable ([CChar], Int32, Int) -> Listing) {
            waiting = [(0, root, -1)]
            self.read = read
            pthread_mutex_init(lock, nil)
            pthread_cond_init(wake, nil)
            for _ in 0..<max(0, count) {
                DispatchQueue.global().async(group: helpers) { self.work() }
            }
        }

        deinit {
            pthread_cond_destroy(wake)
            pthread_mutex_destroy(lock)
            wake.deallocate()
            lock.deallocate()
        }

        /// The listing with this number (0 is the root; a directory entry's `listing` is its
        /// own), read here if nobody has started on it. Each is taken once.
        func take(_ number: Int) -> Listing {
            pthread_mutex_lock(lock)
            defer { pthread_mutex_unlock(lock) }
            while listings[number] == nil {
                // The one needed if it is still waiting (it was handed out lately: look near
                // the end), else any.
                if let position = waiting.indices.reversed().prefix(64).first(where: { waiting[$0].number == number }) {
                    readLocked(waiting.remove(at: position))
                } else if let job = waiting.popLast() {
                    readLocked(job)
                } else {
                    pthread_cond_wait(wake, lock)
                }
            }
            return listings[number].take()!
        }

        /// Stops handing out directories and waits for the other threads to finish.
        func stop() {
            pthread_mutex_lock(lock)
            stopped = true
            for job in waiting where job.descriptor >= 0 { close(job.descriptor) }
            held = 0
            waiting.removeAll()
            pthread_cond_broadcast(wake)
            pthread_mutex_unlock(lock)
            helpers.wait()
        }

        private func work() {
            pthread_mutex_lock(lock)
            while true {
                if !stopped, let job = waiting.popLast() {
                    readLocked(job)
                } else if stopped || busy == 0 {
                    // Nothing left and nobody can hand out more.
                    pthread_cond_broadcast(wake)
                    pthread_mutex_unlock(lock)
                    return
                } else {
                    pthread_cond_wait(wake, lock)
                }
            }
        }

        /// Reads one directory (unlocked meanwhile), then hands out its subdirectories and
        /// stores its listing. Called and returns with the lock held.
        private func readLocked(_ job: Job) {
            busy += 1
            if job.descriptor >= 0 { held -= 1 }
            let ahead = min(Self.holdLimit - held, 8)
            held += ahead
            pthread_mutex_unlock(lock)
            var listing = read(job.path, job.descriptor, ahead)
            // Entries are last name first: the first subdirectory is pushed last and so is
            // read next, depth first.
            var subdirectories: [(entry: Int, path: [CChar])] = []
            for index in listing.entries.indices where listing.entries[index].isDirectory {
                subdirectories.append((index, Ext3.Tree.join(job.path, listing.entries[index].name)))
            }
            pthread_mutex_lock(lock)
            busy -= 1
            for (index, path) in subdirectories {
                var descriptor = listing.entries[index].descriptor
                listing.entries[index].descriptor = -1
                if descriptor >= 0 && stopped {
                    close(descriptor)  // nobody will read it
                    descriptor = -1
                }
                if descriptor >= 0 { held += 1 }
                listing.entries[index].listing = listings.count
                waiting.append((listings.count, path, descriptor))
                listings.append(nil)
            }
            held -= ahead
            listings[job.number] = listing
            pthread_cond_broadcast(wake)
        }
    }

    /// `directory/name`, NUL-terminated (`directory` is NUL-terminated too).
    static func join(_ directory: [CChar], _ name: UnsafeRawBufferPointer) -> [CChar] {
        let head = directory.count - 1
        return [CChar](unsafeUninitializedCapacity: head + name.count + 2) { buffer, count in
            let raw = UnsafeMutableRawBufferPointer(buffer)
            directory.withUnsafeBytes { raw.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: head) }
            raw[head] = UInt8(ascii: "/")
            if name.count > 0 { (raw.baseAddress! + head + 1).copyMemory(from: name.baseAddress!, byteCount: name.count) }
            raw[head + 1 + name.count] = 0
            count = head + name.count + 2
        }
    }

    static func join(_ directory: [CChar], _ name: [UInt8]) -> [CChar] {
        name.withUnsafeBytes { join(directory, $0) }
    }

    /// `directory/name` as text for messages.
    static func display(_ directory: [CChar], _ name: [UInt8]) -> String {
        display(join(directory, name))
    }

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

    /// Whose extended attributes to read (never following a symlink).
    enum XattrTarget {
        /// The entry `name` of the open directory: listxattrat/getxattrat.
        case relative(directory: Int32, name: UnsafePointer<CChar>)
        /// A NUL-terminated full path: llistxattr/lgetxattr.
        case path(UnsafePointer<CChar>)

        func list(_ buffer: UnsafeMutablePointer<CChar>?, _ size: Int) -> Int {
            switch self {
            case let .relative(directory, name): Int(FileCalls.listxattrat(directory, name, buffer, size))
            case let .path(path): FileCalls.llistxattr(path, buffer, size)
            }
        }

        func get(_ attribute: UnsafePointer<CChar>, _ buffer: UnsafeMutableRawPointer?, _ size: Int) -> Int {
            switch self {
            case let .relative(directory, name): Int(FileCalls.getxattrat(directory, name, attribute, buffer, size))
            case let .path(path): FileCalls.lgetxattr(path, attribute, buffer, size)
            }
        }
    }

    /// Every extended attribute of `target`, sorted by name.
    static func readXattrs(_ target: XattrTarget, display shown: @autoclosure () -> String) throws -> [(name: String, value: [UInt8])] {
        var length = target.list(nil, 0)
        if length < 0 {
            if errno == ENOTSUP || errno == ENOSYS { return [] }
            throw Ext3.Error.system(operation: "list extended attributes", path: shown(), errno: errno)
        }
        if length == 0 { return [] }
        var names = [CChar](repeating: 0, count: length)
        length = target.list(&names, names.count)
        guard length >= 0 else { throw Ext3.Error.system(operation: "list extended attributes", path: shown(), errno: errno) }
        var result: [(name: String, value: [UInt8])] = []
        var start = 0
        while start < length {
            let end = names[start..<length].firstIndex(of: 0) ?? length
            let nameBytes = Array(names[start..<end]) + [0]
            start = end + 1
            let name = String(decoding: nameBytes.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
            var size = target.get(nameBytes, nil, 0)
            if size < 0 {
                if errno == ENODATA { continue }
                throw Ext3.Error.system(operation: "read extended attribute \(name)", path: shown(), errno: errno)
            }
            var value = [UInt8](repeating: 0, count: size)
            size = value.withUnsafeMutableBytes { target.get(nameBytes, $0.baseAddress, $0.count) }
            guard size >= 0 else {
                throw Ext3.Error.system(operation: "read extended attribute \(name)", path: shown(), errno: errno)
            }
            result.append((name, Array(value[..<size])))
        }
        return result.sorted { $0.name < $1.name }
    }
}
