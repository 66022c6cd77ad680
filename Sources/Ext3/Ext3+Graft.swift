import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3.Tree {
    /// This tree with `other`'s entries added (both rooted at upper/): where both have a
    /// directory of one name, the two are merged and this tree's keeps its metadata, unless
    /// `other`'s is opaque (``Whiteouts/opaqueAttributes``), which then replaces it whole; any
    /// other entry of `other` replaces this tree's of the same name. Entries left out are not
    /// carried over; a file keeps the names it still has.
    package func grafting(_ other: Ext3.Tree) -> Ext3.Tree {
        var result = Ext3.Tree(root: nodes[0])
        result.nodes[0].children = []
        var mine: [Int: Int] = [:]
        var theirs: [Int: Int] = [:]
        func copy(_ source: Ext3.Tree, _ index: Int, _ memo: inout [Int: Int]) -> Int {
            if let done = memo[index] {
                result.nodes[done].links += 1
                return done
            }
            var node = source.nodes[index]
            let children = node.children
            node.children = []
            if node.kind != .directory { node.links = 1 }
            result.nodes.append(node)
            let new = result.nodes.count - 1
            memo[index] = new
            for child in children { result.nodes[new].children.append((child.name, copy(source, child.node, &memo))) }
            return new
        }
        func opaque(_ node: Node) -> Bool { node.xattrs.contains { Ext3.Whiteouts.opaqueAttributes.contains($0.name) } }
        func merge(into new: Int, mine own: Int, theirs given: Int) {
            let offered = other.nodes[given].children
            for child in nodes[own].children {
                guard let replacement = offered.first(where: { $0.name == child.name }) else {
                    result.nodes[new].children.append((child.name, copy(self, child.node, &mine)))
                    continue
                }
                let both = nodes[child.node].kind == .directory && other.nodes[replacement.node].kind == .directory
                if both && !opaque(other.nodes[replacement.node]) {
                    var node = nodes[child.node]
                    node.children = []
                    result.nodes.append(node)
                    let merged = result.nodes.count - 1
                    result.nodes[new].children.append((child.name, merged))
                    merge(into: merged, mine: child.node, theirs: replacement.node)
                } else {
                    result.nodes[new].children.append((child.name, copy(other, replacement.node, &theirs)))
                }
            }
            for child in offered where !nodes[own].children.contains(where: { $0.name == child.name }) {
                result.nodes[new].children.append((child.name, copy(other, child.node, &theirs)))
            }
        }
        merge(into: 0, mine: 0, theirs: 0)
        return result
    }

    /// This tree without the entries at `paths` (relative to the root, `/` between names), and
    /// without the directories leading to them that are left empty.
    package func removing(_ paths: [String]) -> Ext3.Tree {
        let removed = Set(paths.map { $0.split(separator: "/").joined(separator: "/") })
        var result = Ext3.Tree(root: nodes[0])
        result.nodes[0].children = []
        var memo: [Int: Int] = [:]
        // Whether `index` leads to a removed path (its directory is dropped when left empty).
        func leads(_ prefix: String) -> Bool { removed.contains { $0.hasPrefix(prefix + "/") } }
        func walk(_ index: Int, into new: Int, _ prefix: String) {
            for child in nodes[index].children {
                let path = prefix.isEmpty ? String(decoding: child.name, as: UTF8.self) : prefix + "/" + String(decoding: child.name, as: UTF8.self)
                if removed.contains(path) { continue }
                if let done = memo[child.node] {
                    result.nodes[done].links += 1
                    result.nodes[new].children.append((child.name, done))
                    continue
                }
                var node = nodes[child.node]
                node.children = []
                if node.kind != .directory { node.links = 1 }
                result.nodes.append(node)
                let copied = result.nodes.count - 1
                memo[child.node] = copied
                if node.kind == .directory { walk(child.node, into: copied, path) }
                if node.kind == .directory && result.nodes[copied].children.isEmpty && leads(path) {
                    result.nodes.removeLast()
                    memo[child.node] = nil
                    continue
                }
                result.nodes[new].children.append((child.name, copied))
            }
        }
        walk(0, into: 0, "")
        return result
    }
}

extension Ext3.ImageContents {
    /// These contents with `tree` grafted onto upper/ (``Tree/grafting(_:)``) and work/
    /// emptied (the overlay's scratch space, rebuilt by the kernel at the next mount).
    package func grafting(_ tree: Ext3.Tree) -> Ext3.ImageContents {
        var emptyWork = Ext3.Tree(root: work.nodes[0])
        emptyWork.nodes[0].children = []
        return Ext3.ImageContents(copying: self, upper: upper.grafting(tree), work: emptyWork)
    }

    /// These contents without the entries of upper/ at `paths` (``Tree/removing(_:)``); work/
    /// emptied.
    public func removing(_ paths: [String]) -> Ext3.ImageContents {
        var emptyWork = Ext3.Tree(root: work.nodes[0])
        emptyWork.nodes[0].children = []
        return Ext3.ImageContents(copying: self, upper: upper.removing(paths), work: emptyWork)
    }

}

extension Ext3.Image {
    /// How many inodes the filesystem has in all.
    public var inodeCount: UInt64 {
        guard let fs = handle.fs else { return 0 }
        return UInt64(fs.pointee.super.pointee.s_inodes_count)
    }
}
