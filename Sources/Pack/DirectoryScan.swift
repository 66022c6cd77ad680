import Ext3
import LinuxSupport
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

    static let slash = CChar(UInt8(ascii: "/"))

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

}
