import Ext3
import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

extension Ext3.PackSource {
    /// Places the tree at `path` (absolute) as a snapshot captures a directory: the directory
    /// keeps its own metadata and is marked opaque (so what the host adds there later does not
    /// show through), and each directory leading to it takes the host's own metadata (lstat of
    /// that directory), so stacking the snapshot on the host root changes none of them. With
    /// `hostMetadata`, the directory itself takes the host's too (a tree read from an archive).
    public mutating func placeAsCaptured(at path: String, owner: Ext3.Owner, hostMetadata: Bool = false) throws {
        try place(at: path, owner: owner)
        let names = path.split(separator: "/").map(String.init).filter { $0 != "." }
        var current = 0
        var prefix = ""
        for (position, name) in names.enumerated() {
            let bytes = Array(name.utf8)
            guard let child = tree.nodes[current].children.first(where: { $0.name == bytes }) else { break }
            current = child.node
            prefix += "/" + name
            if position == names.count - 1 && !hostMetadata { break }
            var info = stat()
            guard lstat(prefix, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else { continue }
            tree.nodes[current].permissions = UInt16(info.st_mode & 0o7777)
            tree.nodes[current].uid = info.st_uid
            tree.nodes[current].gid = info.st_gid
            tree.nodes[current].atime = Ext3.Timestamp(seconds: Int64(info.st_atim.tv_sec), nanoseconds: UInt32(info.st_atim.tv_nsec))
            tree.nodes[current].mtime = Ext3.Timestamp(seconds: Int64(info.st_mtim.tv_sec), nanoseconds: UInt32(info.st_mtim.tv_nsec))
            tree.nodes[current].ctime = Ext3.Timestamp(seconds: Int64(info.st_ctim.tv_sec), nanoseconds: UInt32(info.st_ctim.tv_nsec))
        }
        guard current != 0 else { return }
        let opaque = Ext3.Whiteouts.opaqueAttributes
        tree.nodes[current].xattrs.removeAll { opaque.contains($0.name) }
        for name in Ext3.Whiteouts.canonicalOpaqueAttributes { tree.nodes[current].xattrs.append((name, Array("y".utf8))) }
        blocksNeeded = tree.blocksNeeded
    }

    /// Gives every entry of the tree to `owner` (a tree read from `git archive` says root).
    public mutating func giveAll(to owner: Ext3.Owner) {
        for index in tree.nodes.indices {
            tree.nodes[index].uid = owner.uid
            tree.nodes[index].gid = owner.gid
        }
    }

    /// Several placed directory trees as one: the directories leading to each are shared, every
    /// other entry is copied. Trees read from an archive cannot be merged (their data comes
    /// from one stream each); two trees that place something at the same path are refused.
    public static func merging(_ sources: [Ext3.PackSource], path: String) throws -> Ext3.PackSource {
        guard var merged = sources.first else {
            throw Ext3.Error.invalidConfiguration("nothing to pack")
        }
        for source in sources.dropFirst() {
            guard source.kind == .directory, merged.kind == .directory else {
                throw Ext3.Error.invalidConfiguration("\(source.path): only directories can be packed together")
            }
            var copies: [Int: Int] = [:]
            func copy(_ index: Int) -> Int {
                if let done = copies[index] { return done }
                var node = source.tree.nodes[index]
                let children = node.children
                node.children = []
                let new = merged.tree.nodes.count
                merged.tree.nodes.append(node)
                copies[index] = new
                for (name, child) in children { merged.tree.nodes[new].children.append((name, copy(child))) }
                return new
            }
            func merge(_ into: Int, _ from: Int, _ shown: String) throws {
                for (name, child) in source.tree.nodes[from].children {
                    let display = shown + "/" + Ext3.Tree.display(name)
                    if let existing = merged.tree.nodes[into].children.first(where: { $0.name == name }) {
                        let opaque = merged.tree.nodes[existing.node].xattrs.contains { $0.name == "user.overlay.opaque" }
                            || source.tree.nodes[child].xattrs.contains { $0.name == "user.overlay.opaque" }
                        guard merged.tree.nodes[existing.node].kind == .directory, source.tree.nodes[child].kind == .directory, !opaque else {
                            throw Ext3.Error.invalidConfiguration("\(display) is captured twice (from \(merged.path) and \(source.path)): give only one of them")
                        }
                        try merge(existing.node, child, display)
                    } else {
                        merged.tree.nodes[into].children.append((name, copy(child)))
                    }
                }
            }
            try merge(0, 0, "")
        }
        merged = Ext3.PackSource(merged: merged, path: path)
        return merged
    }

    init(merged: Ext3.PackSource, path: String) {
        self.path = path
        kind = merged.kind
        tree = merged.tree
        blocksNeeded = tree.blocksNeeded
    }

    /// The size and inode count of a read-only image of this tree: little headroom (64 files
    /// and 1% plus 1 MiB of data), as nothing is written into it later.
    public func snugPlan() throws -> Plan {
        let inodes = inodesNeeded + Ext3.PackSource.reservedInodes + 64
        let blocks = blocksNeeded + blocksNeeded / 100 + (1 << 20) / UInt64(Ext3.blockSize)
        return Plan(sizeBytes: try Ext3.PackSource.smallestSize(inodes: inodes, freeBlocks: blocks),
                    inodes: inodes, sizeChosen: true, inodesChosen: true)
    }
}
