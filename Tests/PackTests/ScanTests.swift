import Foundation
import Testing
import TestSupport
@testable import Ext3
@testable import Pack

#if canImport(Glibc)
import Glibc
#endif

/// Reading a directory tree for packing, checked against lstat/readdir walked by hand: the node
/// order of a one-thread depth-first walk, hard links as one node, and extended attributes of
/// every kind of entry, read relative to the open directory and by full path alike.
@Suite(.serialized, .requires(executable: "setfattr"))
struct ScanTests {
    static func write(_ path: String, _ text: String) throws {
        try FileManager.default.createDirectory(atPath: URL(fileURLWithPath: path).deletingLastPathComponent().path,
                                                withIntermediateDirectories: true)
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    }

    /// Sets an attribute on `path` itself (not following a symlink), as setfattr -h does.
    static func setXattr(_ path: String, _ name: String, _ value: [UInt8]) throws {
        let hex = "0x" + value.map { String(format: "%02x", $0) }.joined()
        let result = try run(["setfattr", "-h", "-n", name, "-v", hex, path], timeout: 30)
        #expect(result.status == 0, "setfattr \(name) \(path): \(result)")
    }

    /// Names in a directory, in byte order.
    static func names(_ directory: String) throws -> [[UInt8]] {
        guard let stream = opendir(directory) else { throw CocoaError(.fileReadUnknown) }
        defer { closedir(stream) }
        var result: [[UInt8]] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { Array($0.prefix(while: { $0 != 0 })) }
            if name != [46] && name != [46, 46] { result.append(name) }
        }
        return result.sorted { $0.lexicographicallyPrecedes($1) }
    }

    /// The relative path of every node in the order a one-thread walk numbers them: a
    /// directory's entries in name order (a second name of a hard link adds no node), then its
    /// subdirectories' in name order, depth first.
    static func expectedOrder(_ root: String) throws -> [String] {
        var order = [""]
        var seen = Set<[UInt64]>()
        func visit(_ relative: String) throws {
            var subdirectories: [String] = []
            for name in try names(root + relative) {
                let child = relative + "/" + String(decoding: name, as: UTF8.self)
                var info = stat()
                #expect(lstat(root + child, &info) == 0)
                if info.st_mode & S_IFMT != S_IFDIR && info.st_nlink > 1 {
                    if !seen.insert([UInt64(info.st_dev), UInt64(info.st_ino)]).inserted { continue }
                }
                order.append(child)
                if info.st_mode & S_IFMT == S_IFDIR { subdirectories.append(child) }
            }
            for directory in subdirectories { try visit(directory) }
        }
        try visit("")
        return order
    }

    /// The relative path of each node of `tree` (its first name) and of every name.
    static func paths(_ tree: Ext3.Tree) -> (byNode: [String?], names: [String: Int]) {
        var byNode = [String?](repeating: nil, count: tree.nodes.count)
        byNode[0] = ""
        var names: [String: Int] = [:]
        var pending = [(0, "")]
        while let (node, path) = pending.popLast() {
            var subdirectories: [(Int, String)] = []
            for child in tree.nodes[node].children {
                let childPath = path + "/" + String(decoding: child.name, as: UTF8.self)
                names[childPath] = child.node
                if byNode[child.node] == nil { byNode[child.node] = childPath }
                if tree.nodes[child.node].kind == .directory { subdirectories.append((child.node, childPath)) }
            }
            pending.append(contentsOf: subdirectories.reversed())
        }
        return (byNode, names)
    }

    /// A tree with a deep chain, a wide level, names whose byte order differs from dictionary
    /// order, hard links across directories, and extended attributes on a file, a directory, a
    /// symlink, a FIFO and a device (trusted.*: root only).
    @Test(.requiresRoot) func scanKeepsTheOneThreadOrderHardLinksAndEveryXattr() throws {
        let directory = try TempDirectory("scan-order")
        let root = directory.file("src")
        var deep = root + "/deep"
        for level in 0..<25 {
            deep += "/level \(level)"
            try Self.write(deep + "/file", "\(level)")
        }
        for index in 0..<150 {
            try Self.write(root + "/wide/d\(index)/one", "one")
            try FileManager.default.createDirectory(atPath: root + "/wide/d\(index)/empty", withIntermediateDirectories: true)
        }
        for name in ["B", "a", "_", "Z_", "é", "ä", "a b"] { try Self.write(root + "/names/" + name, name) }
        try Self.write(root + "/names/é dir/inner", "inner")
        #expect(link(root + "/names/a", deep + "/hard a") == 0)
        #expect(link(root + "/names/a", root + "/wide/d7/hard a") == 0)
        #expect(symlink("../names/B", root + "/wide/link") == 0)
        #expect(mkfifo(root + "/fifo", 0o600) == 0)
        #expect(mknod(root + "/null-like", S_IFCHR | 0o666, dev_t((1 << 8) | 3)) == 0)
        let xattrs: [String: (String, [UInt8])] = [
            "/names/B": ("user.file", Array("regular".utf8)),
            "/wide/d3": ("user.dir", [0, 1, 2, 255]),
            "/wide/link": ("trusted.symlink", Array("on the link itself".utf8)),
            "/fifo": ("trusted.fifo", Array("fifo".utf8)),
            "/null-like": ("trusted.device", Array(repeating: 0x78, count: 700)),
        ]
        for (path, (name, value)) in xattrs { try Self.setXattr(root + path, name, value) }
        // The link points at B, which has an attribute of its own: following the link would show B's.
        let expected = try Self.expectedOrder(root)
        #expect(expected.count > 500)

        // As on this machine; by path on one thread; on four threads.
        for (calls, threads) in [(Ext3.Tree.XattrCalls.relativeWhereAvailable, nil), (.byPath, 1), (.relativeWhereAvailable, 4)] {
            let tree = try Ext3.Tree.scan(directory: root + "//", xattrCalls: calls, threads: threads)
            let label = "\(calls), \(threads.map { "\($0) threads" } ?? "a thread a core")"
            let (byNode, names) = Self.paths(tree)
            #expect(byNode.map { $0 ?? "?" } == expected, "\(label)")
            for (index, node) in tree.nodes.enumerated() {
                let path = byNode[index] ?? "?"
                if let (name, value) = xattrs[path] {
                    #expect(node.xattrs.count == 1 && node.xattrs.first?.name == name && node.xattrs.first?.value == value,
                            "\(label) \(path): \(node.xattrs)")
                } else {
                    #expect(node.xattrs.isEmpty, "\(label) \(path): \(node.xattrs)")
                }
            }
            // One node for the three names of `a`, with three links; its content is read by the first path.
            let shared = try #require(names["/names/a"])
            #expect(names[String(deep.dropFirst(root.count)) + "/hard a"] == shared && names["/wide/d7/hard a"] == shared)
            #expect(tree.nodes[shared].links == 3)
            if case let .file(path, segments) = tree.nodes[shared].content {
                #expect(path == Array((root + "/deep/level 0/level 1/level 2/level 3/level 4/level 5/level 6/level 7/level 8/level 9/level 10/level 11/level 12/level 13/level 14/level 15/level 16/level 17/level 18/level 19/level 20/level 21/level 22/level 23/level 24/hard a").utf8CString),
                        "\(label): \(Ext3.Tree.display(path))")
                #expect(segments == nil)
            } else {
                Issue.record("\(label): /names/a is not a file")
            }
            let link = try #require(names["/wide/link"])
            #expect(tree.nodes[link].kind == .symlink && tree.nodes[link].target == Array("../names/B".utf8))
            let device = try #require(names["/null-like"])
            #expect(tree.nodes[device].kind == .characterDevice && tree.nodes[device].major == 1 && tree.nodes[device].minor == 3)
        }
        // No directory of the tree is left open (subdirectories are opened ahead of reading).
        let open = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").compactMap {
            try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + $0)
        }
        #expect(open.filter { $0.hasPrefix(root) }.isEmpty, "\(open)")
    }
}
