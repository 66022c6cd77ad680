import Foundation
import Testing
import TestSupport
@testable import Ext3

/// ImageContents.grafting(_:) and removing(_:): a job snapshot's writable dirs put into the
/// overlay's tree, and taken out again on resume; written into new images and judged with
/// debugfs and e2fsck.
@Suite(.requires(executable: "debugfs"), .requires(executable: "mke2fs"), .requires(executable: "e2fsck"))
struct GraftTests {
    func directory(opaque: Bool = false) -> Ext3.Tree.Node {
        let now = Ext3.Timestamp.now
        var node = Ext3.Tree.Node(kind: .directory, permissions: 0o750, uid: 0, gid: 0, atime: now, mtime: now, ctime: now)
        if opaque { node.xattrs = [("trusted.overlay.opaque", Array("y".utf8))] }
        return node
    }

    func add(_ node: Ext3.Tree.Node, _ name: String, under parent: Int, to tree: inout Ext3.Tree) -> Int {
        tree.nodes.append(node)
        tree.nodes[parent].children.append((Array(name.utf8), tree.nodes.count - 1))
        return tree.nodes.count - 1
    }

    @Test func graftingAddsHostFilesBesideTheImagesAndRemovingTakesThemOutAgain() throws {
        let dir = try TempDirectory("graft")
        let original = try ImageTreeTests().makeImage(in: dir)
        let host = dir.file("host.txt")
        try "from the host\n".write(toFile: host, atomically: false, encoding: .utf8)
        // opt/results/out.txt (opt/ is in the image: merged) and new/deep/data/out.txt (new).
        var tree = Ext3.Tree(root: directory())
        var file = Ext3.Tree.Node(kind: .regular, permissions: 0o644, uid: 0, gid: 0, atime: .now, mtime: .now, ctime: .now)
        file.size = 14
        file.content = .file(path: Array(host.utf8CString), segments: nil)
        let opt = add(directory(), "opt", under: 0, to: &tree)
        let results = add(directory(opaque: true), "results", under: opt, to: &tree)
        _ = add(file, "out.txt", under: results, to: &tree)
        let deep = add(directory(), "deep", under: add(directory(), "new", under: 0, to: &tree), to: &tree)
        _ = add(file, "out.txt", under: add(directory(opaque: true), "data", under: deep, to: &tree), to: &tree)

        let image = try Ext3.Image(path: original)
        let grafted = dir.file("grafted.ext3")
        _ = try Ext3.Formatter(.init(sizeBytes: 16 << 20)).write(try Ext3.ImageContents(image: image).grafting(tree), to: grafted)
        try image.close()
        #expect(try FixtureImage.isClean(grafted), "the grafted image is not e2fsck-clean")
        let prune = PruneTests()
        #expect(try prune.names(grafted, "/upper") == (try prune.names(original, "/upper") + ["new"]).sorted())
        #expect(try prune.names(grafted, "/upper/opt") == ["results", "tool"])
        for path in ["/upper/opt/results/out.txt", "/upper/new/deep/data/out.txt"] {
            #expect(try run(["debugfs", "-R", "cat \(path)", grafted]).stdout == "from the host\n", "\(path)")
        }
        #expect(try run(["debugfs", "-R", "cat /upper/opt/tool/readme.txt", grafted]).stdout == "hello from the overlay\n")

        let back = try Ext3.Image(path: grafted)
        let removed = dir.file("removed.ext3")
        _ = try Ext3.Formatter(.init(sizeBytes: 16 << 20)).write(
            try Ext3.ImageContents(image: back).removing(["opt/results", "/new/deep/data"]), to: removed)
        try back.close()
        #expect(try FixtureImage.isClean(removed), "the image without them is not e2fsck-clean")
        // The directories left empty that led only to them go too; opt/ holds more: it stays.
        #expect(try prune.names(removed, "/upper") == (try prune.names(original, "/upper")))
        #expect(try prune.names(removed, "/upper/opt") == ["tool"])
        #expect(try run(["debugfs", "-R", "cat /upper/opt/tool/readme.txt", removed]).stdout == "hello from the overlay\n")
    }
}
