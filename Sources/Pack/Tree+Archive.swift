import Ext3
import TarArchive

#if canImport(Glibc)
import Glibc
#endif

extension Ext3.Tree {
    /// Reads a tar archive's headers into a tree (data is read later, by the packer). Entries
    /// named more than once: the last one wins, as when GNU tar extracts (it removes what is
    /// there first), also when a file, symlink or FIFO is followed by a directory of the same
    /// name, whose entries then go into it; a directory followed by anything but a directory is
    /// refused. Directories an entry needs but the archive does not list are made with mode
    /// 0755, owned by whoever runs this.
    public static func scan(archive path: String, kind: Ext3.SourceKind) throws -> Ext3.Tree {
        try reportingArchiveErrors { try scan(archive: TarReader.open(path, format: kind.archiveFormat)) }
    }

    /// The tree of the archive `reader` reads (from its start). Throws ``Ext3/Error`` for what
    /// ext3 cannot hold and ``ArchiveError`` for what cannot be read.
    static func scan(archive reader: TarReader) throws -> Ext3.Tree {
        let path = reader.path
        let now = Ext3.Timestamp.now
        let implicit = Node(kind: .directory, permissions: 0o755, uid: getuid(), gid: getgid(), atime: now, mtime: now, ctime: now)
        var tree = Ext3.Tree(root: implicit)
        var lookup: [[UInt8]: Int] = [[]: 0]  // path (components joined by /) -> node
        var childIndex: [Int: [[UInt8]: Int]] = [0: [:]]  // directory -> name -> position in children

        func components(_ raw: [UInt8]) throws -> [[UInt8]] {
            let parts = raw.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true).map(Array.init)
                .filter { $0 != [UInt8(ascii: ".")] }
            if parts.contains([46, 46]) {
                throw Ext3.Error.invalidConfiguration("\(path): entry '\(display(raw))' leaves the tree with '..'; refusing the archive")
            }
            for part in parts { try checkName(part, in: display(raw)) }
            return parts
        }

        /// The directory node at `parts`, made when missing.
        func directory(_ parts: [[UInt8]]) throws -> Int {
            var current = 0
            var key: [UInt8] = []
            for part in parts {
                key += key.isEmpty ? part : [UInt8(ascii: "/")] + part
                if let found = lookup[key] {
                    guard tree.nodes[found].kind == .directory else {
                        throw Ext3.Error.invalidConfiguration("\(path): '\(display(key))' is not a directory, yet entries are inside it")
                    }
                    current = found
                    continue
                }
                let index = tree.nodes.count
                tree.nodes.append(implicit)
                childIndex[index] = [:]
                childIndex[current]![part] = tree.nodes[current].children.count
                tree.nodes[current].children.append((part, index))
                lookup[key] = index
                current = index
            }
            return current
        }

        while let entry = try reader.next() {
            let parts = try components(entry.path)
            let key = parts.joined(separator: [UInt8(ascii: "/")]).map { $0 }
            let mtime = Ext3.Timestamp(entry.mtime)
            var node = Node(kind: .regular, permissions: entry.mode, uid: entry.uid, gid: entry.gid,
                            atime: entry.atime.map(Ext3.Timestamp.init) ?? mtime, mtime: mtime,
                            ctime: entry.ctime.map(Ext3.Timestamp.init) ?? mtime)
            node.xattrs = entry.xattrs
            switch entry.kind {
            case .regular:
                node.size = entry.size
                node.content = .stream(ordinal: entry.ordinal)
            case .directory: node.kind = .directory
            case .symlink:
                node.kind = .symlink
                node.target = entry.linkPath
                node.size = UInt64(entry.linkPath.count)
                if entry.linkPath.count >= Ext3.blockSize {
                    throw Ext3.Error.invalidConfiguration("\(path): '\(display(entry.path))': symbolic link target longer than \(Ext3.blockSize - 1) bytes")
                }
            case .characterDevice, .blockDevice:
                node.kind = entry.kind == .characterDevice ? .characterDevice : .blockDevice
                node.major = entry.major
                node.minor = entry.minor
            case .fifo: node.kind = .fifo
            case .hardLink: break
            case .other(let flag):
                throw Ext3.Error.invalidConfiguration("\(path): entry '\(display(entry.path))' has a type ('\(Character(Unicode.Scalar(flag)))') this reader does not know")
            }
            if parts.isEmpty { continue }  // the archive's root: upper/ keeps its own metadata
            let parent = try directory(Array(parts.dropLast()))
            let name = parts.last!

            // What the entry points at: a new inode, or (hard link) an earlier one.
            var target: Int
            if entry.kind == .hardLink {
                let targetKey = try components(entry.linkPath).joined(separator: [UInt8(ascii: "/")]).map { $0 }
                guard let found = lookup[targetKey], tree.nodes[found].kind != .directory else {
                    throw Ext3.Error.invalidConfiguration(
                        "\(path): hard link '\(display(entry.path))' points to '\(display(entry.linkPath))', which is not an earlier file in the archive")
                }
                target = found
            } else {
                target = -1
            }

            // The entry's inode: a new node, or one more name for the hard link's target.
            func place() throws -> Int {
                if target < 0 {
                    tree.nodes.append(node)
                    if node.kind == .directory { childIndex[tree.nodes.count - 1] = [:] }
                    return tree.nodes.count - 1
                }
                tree.nodes[target].links += 1
                if tree.nodes[target].links > linkLimit {
                    throw Ext3.Error.invalidConfiguration("\(path): '\(display(entry.linkPath))' has more than \(linkLimit) hard links, which ext3 cannot hold")
                }
                return target
            }

            if let existing = lookup[key] {
                if tree.nodes[existing].kind == .directory && node.kind == .directory {
                    let children = tree.nodes[existing].children
                    tree.nodes[existing] = node
                    tree.nodes[existing].children = children
                    continue
                }
                if tree.nodes[existing].kind == .directory {
                    throw Ext3.Error.invalidConfiguration("\(path): '\(display(entry.path))' appears as a directory and again as something else")
                }
                if existing == target { continue }
                // Replace, as GNU tar does when it extracts (it removes the file first): the old
                // inode loses this name. A directory replacing a file, symlink or FIFO takes the
                // entries that follow.
                tree.nodes[existing].links -= 1
                target = try place()
                let position = childIndex[parent]![name]!
                tree.nodes[parent].children[position].node = target
                lookup[key] = target
                continue
            }
            target = try place()
            childIndex[parent]![name] = tree.nodes[parent].children.count
            tree.nodes[parent].children.append((name, target))
            lookup[key] = target
        }
        tree.dropUnlinked()
        return tree
    }

    /// Removes inodes that lost every name (entries replaced later in an archive), renumbering
    /// the rest.
    mutating func dropUnlinked() {
        guard nodes.dropFirst().contains(where: { $0.links == 0 }) else { return }
        var newIndex = [Int](repeating: -1, count: nodes.count)
        var kept: [Node] = []
        for (index, node) in nodes.enumerated() where index == 0 || node.links > 0 {
            newIndex[index] = kept.count
            kept.append(node)
        }
        for index in kept.indices {
            kept[index].children = kept[index].children.map { ($0.name, newIndex[$0.node]) }
        }
        nodes = kept
    }
}

extension Ext3.Timestamp {
    init(_ time: TarTime) {
        self.init(seconds: time.seconds, nanoseconds: time.nanoseconds)
    }
}
