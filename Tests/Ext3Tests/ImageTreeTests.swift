import Foundation
import Testing
import TestSupport
@testable import Ext3

/// Ext3.Tree.read(image:) and ImageFileData: an image's tree and data as the writer takes them,
/// judged against the fixture debugfs made and, after writing the tree into a new image, e2fsck.
@Suite(.requires(executable: "debugfs"), .requires(executable: "mke2fs"), .requires(executable: "e2fsck"))
struct ImageTreeTests {
    /// The fixture plus a hard link, extended attributes, a whiteout and a sparse file.
    func makeImage(in dir: TempDirectory) throws -> String {
        let path = dir.file("tree.ext3")
        try TreeFixture.make(at: path)
        let sparse = dir.file("sparse")
        let fd = open(sparse, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        try #require(fd >= 0)
        try #require(pwrite(fd, "tail", 4, 5 << 20) == 4)
        close(fd)
        let commands = ["ln upper/opt/tool/readme.txt upper/again", "set_inode_field upper/opt/tool/readme.txt links_count 2",
                        "ea_set upper/opt user.note hello", "ea_set upper/opt trusted.overlay.opaque y",
                        "write \(sparse) upper/sparse", "cd upper", "mknod gone c 0 0"].joined(separator: "\n")
        try commands.write(toFile: dir.file("cmds"), atomically: true, encoding: .utf8)
        let result = try run(["debugfs", "-w", "-f", dir.file("cmds"), path])
        try #require(result.status == 0 && (try FixtureImage.isClean(path)), "\(result)")
        return path
    }

    func node(_ tree: Ext3.Tree, _ path: String) throws -> Ext3.Tree.Node {
        var index = 0
        for name in path.split(separator: "/") {
            index = try #require(tree.nodes[index].children.first { $0.name == Array(name.utf8) }?.node, "\(path)")
        }
        return tree.nodes[index]
    }

    @Test func readsEveryKindWithItsMetadata() throws {
        let dir = try TempDirectory("image-tree")
        let image = try Ext3.Image(path: try makeImage(in: dir))
        defer { try? image.close() }
        let tree = try Ext3.Tree.read(image: image)

        let readme = try node(tree, "opt/tool/readme.txt")
        #expect(readme.kind == .regular && readme.permissions == 0o4755 && readme.uid == 1234 && readme.gid == 5678)
        #expect(readme.mtime == Ext3.Timestamp(seconds: TreeFixture.readmeSeconds, nanoseconds: TreeFixture.readmeNanoseconds))
        #expect(readme.links == 2)
        let again = try #require(tree.nodes[0].children.first { $0.name == Array("again".utf8) })
        #expect(tree.nodes[again.node].size == readme.size && tree.nodes[again.node].links == 2, "one node, two names")
        #expect(try node(tree, "opt/tool/long").target == Array(TreeFixture.longTarget.utf8))
        #expect(try node(tree, "opt/tool/short").target == Array("readme.txt".utf8))
        let null = try node(tree, "opt/tool/null")
        #expect(null.kind == .characterDevice && null.major == 1 && null.minor == 3 && null.permissions == 0o666)
        let gone = try node(tree, "gone")
        #expect(gone.kind == .characterDevice && gone.major == 0 && gone.minor == 0)
        #expect(try node(tree, "opt/tool/fifo").kind == .fifo)
        let opt = try node(tree, "opt")
        #expect(opt.permissions == 0o1777)
        let xattrs = Dictionary(uniqueKeysWithValues: opt.xattrs.map { ($0.name, $0.value) })
        #expect(xattrs["user.note"] == Array("hello".utf8) && xattrs["trusted.overlay.opaque"] == Array("y".utf8))
        let sparse = try node(tree, "sparse")
        #expect(sparse.size == (5 << 20) + 4)
        let expected: [Range<UInt64>] = [(5 << 20)..<((5 << 20) + 4)]
        #expect(sparse.content.segments == expected, "only the data block, holes left out")
        var alone = Ext3.Tree(root: tree.nodes[0])
        alone.nodes[0].children = [(Array("sparse".utf8), 1)]
        alone.nodes.append(sparse)
        #expect(alone.blocksNeeded < 8, "a sparse file needs only its data block and its map")

        // The data as the writer gets it: offsets and bytes of every file.
        let data = try Ext3.ImageFileData(image: image, tree: tree)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        var files: [Int: [UInt64: [UInt8]]] = [:]
        while let item = try data.nextItem() {
            try data.readData(into: buffer) { chunk, offset in files[item.ordinal, default: [:]][offset] = Array(chunk) }
        }
        let bigNode = try node(tree, "opt/tool/data.bin")
        guard case let .stream(bigOrdinal, _) = bigNode.content, case let .stream(sparseOrdinal, _) = sparse.content else {
            Issue.record("files are streamed from the image")
            return
        }
        let big = (files[bigOrdinal] ?? [:]).sorted { $0.key < $1.key }
        #expect(big.first?.key == 0 && big.flatMap(\.value) == TreeFixture.bigContent())
        #expect(files[sparseOrdinal] == [5 << 20: Array("tail".utf8)])
    }

    @Test func aDirectoryWithTwoNamesIsDamage() throws {
        let dir = try TempDirectory("image-tree-loop")
        let path = dir.file("tree.ext3")
        try TreeFixture.make(at: path)
        let linked = try run(["debugfs", "-w", "-R", "ln upper/opt upper/opt/tool/back", path])
        try #require(linked.status == 0)
        let image = try Ext3.Image(path: path)
        defer { try? image.close() }
        #expect(throws: Ext3.Error.self) { _ = try Ext3.Tree.read(image: image) }
        do {
            _ = try Ext3.Tree.read(image: image)
        } catch let error as Ext3.Error {
            #expect(error.description.contains("has more than one name"), "\(error)")
        }
    }
}
