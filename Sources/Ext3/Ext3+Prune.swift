extension Ext3.Tree {
    /// The tree with only the entries `take` accepts: it is asked about every entry but
    /// directories (files, symbolic links, devices, whiteouts), with the entry's path below the
    /// root (`/` between names, no leading `/`, names decoded as UTF-8); a directory is kept
    /// when it leads to a taken entry, with its own metadata (an opaque directory stays opaque).
    /// A file with several names keeps the names taken.
    package func pruned(taking take: (String) -> Bool) -> Ext3.Tree {
        var keptChildren: [Int: [(name: [UInt8], node: Int)]] = [:]
        func walk(_ index: Int, _ prefix: String) -> Bool {
            var kept: [(name: [UInt8], node: Int)] = []
            for child in nodes[index].children {
                let path = prefix + String(decoding: child.name, as: UTF8.self)
                if nodes[child.node].kind == .directory {
                    if walk(child.node, path + "/") { kept.append(child) }
                } else if take(path) {
                    kept.append(child)
                }
            }
            keptChildren[index] = kept
            return !kept.isEmpty
        }
        _ = walk(0, "")
        var tree = Ext3.Tree(root: nodes[0])
        tree.nodes[0].children = []
        var mapped: [Int: Int] = [0: 0]
        var pending = [0]
        while let old = pending.popLast() {
            let new = mapped[old]!
            for child in keptChildren[old] ?? [] {
                if let existing = mapped[child.node] {
                    tree.nodes[existing].links += 1
                    tree.nodes[new].children.append((child.name, existing))
                    continue
                }
                var node = nodes[child.node]
                node.children = []
                if node.kind != .directory { node.links = 1 }
                tree.nodes.append(node)
                let index = tree.nodes.count - 1
                mapped[child.node] = index
                tree.nodes[new].children.append((child.name, index))
                if node.kind == .directory { pending.append(child.node) }
            }
        }
        return tree
    }
}

extension Ext3.ImageContents {
    /// These contents with upper/ pruned (``Tree/pruned(taking:)``) and work/ emptied (the
    /// overlay's scratch space, rebuilt by the kernel at the next mount).
    public func pruned(taking take: (String) -> Bool) -> Ext3.ImageContents {
        var emptyWork = Ext3.Tree(root: work.nodes[0])
        emptyWork.nodes[0].children = []
        return Ext3.ImageContents(copying: self, upper: upper.pruned(taking: take), work: emptyWork)
    }
}
