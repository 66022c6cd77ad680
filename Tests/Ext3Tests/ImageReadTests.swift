import Foundation
import Testing
import TestSupport
@testable import Ext3

/// Ext3.Image reading a tree made by mke2fs + debugfs, judged by debugfs and dumpe2fs.
@Suite(.requires(executable: "debugfs"), .requires(executable: "mke2fs"))
struct ImageReadTests {
    @Test func entriesMatchDebugfs() throws {
        let dir = try TempDirectory("read-tree")
        let path = dir.file("tree.ext3")
        try TreeFixture.make(at: path)
        let image = try Ext3.Image(path: path)
        defer { try? image.close() }

        let tool = try image.lookup("/upper/opt/tool")
        let names = try image.children(of: tool).map(\.name)
        #expect(names == ["data.bin", "fifo", "long", "null", "readme.txt", "short"])
        #expect(names == (try Oracle.list(path, "/upper/opt/tool")).filter { $0 != "." && $0 != ".." })

        for name in names {
            let entry = try image.lookup("upper/opt/tool/" + name)
            let oracle = try #require(try Oracle.stat(path, "/upper/opt/tool/" + name))
            #expect(UInt32(entry.permissions) == oracle.mode & 0o7777, "\(name)")
            #expect(entry.uid == oracle.uid && entry.gid == oracle.gid, "\(name)")
            #expect(entry.size == oracle.size, "\(name)")
            #expect(Int(entry.linkCount) == oracle.links, "\(name)")
        }
        let readme = try image.lookup("/upper/opt/tool/readme.txt")
        #expect(readme.permissions == 0o4755 && readme.uid == 1234 && readme.gid == 5678)
        #expect(readme.modificationTime == Ext3.Timestamp(seconds: TreeFixture.readmeSeconds, nanoseconds: TreeFixture.readmeNanoseconds))
        #expect(try image.lookup("/upper/opt").permissions == 0o1777)
        let null = try image.lookup("/upper/opt/tool/null")
        #expect(null.kind == .characterDevice && null.deviceMajor == 1 && null.deviceMinor == 3)
        #expect(try image.lookup("/upper/opt/tool/fifo").kind == .fifo)
    }

    @Test func contentsAndSymlinkTargets() throws {
        let dir = try TempDirectory("read-content")
        let path = dir.file("tree.ext3")
        try TreeFixture.make(at: path)
        let image = try Ext3.Image(path: path)
        defer { try? image.close() }
        var big: [UInt8] = []
        var chunks = 0
        try image.read(try image.lookup("/upper/opt/tool/data.bin")) { big += $0; chunks += 1 }
        #expect(big == TreeFixture.bigContent())
        #expect(chunks == 4)
        var small: [UInt8] = []
        try image.read(try image.lookup("upper/with space/é.txt")) { small += $0 }
        #expect(String(decoding: small, as: UTF8.self) == "hello from the overlay\n")
        #expect(String(decoding: small, as: UTF8.self) == (try FixtureImage.cat(path, "/upper/opt/tool/readme.txt")))
        #expect(try image.symlinkTarget(try image.lookup("/upper/opt/tool/short")) == "readme.txt")
        #expect(try image.symlinkTarget(try image.lookup("/upper/opt/tool/long")) == TreeFixture.longTarget)
    }

    @Test func pathsAreWalkedWithoutFollowingLinks() throws {
        let dir = try TempDirectory("read-paths")
        let path = dir.file("tree.ext3")
        try TreeFixture.make(at: path)
        let image = try Ext3.Image(path: path)
        defer { try? image.close() }
        #expect(try image.entry(at: "/upper/missing") == nil)
        #expect(throws: Ext3.Error.noSuchPath(image: path, path: "/upper/missing")) { try image.lookup("/upper/missing/x") }
        #expect(throws: Ext3.Error.notADirectory(image: path, path: "/upper/opt/tool/readme.txt")) {
            try image.lookup("/upper/opt/tool/readme.txt/x")
        }
        #expect(throws: Ext3.Error.symlinkInPath(image: path, path: "/upper/opt/tool/short", target: "readme.txt")) {
            try image.lookup("/upper/opt/tool/short/x")
        }
        #expect(try image.lookup("//upper/./opt/").inode == (try image.lookup("upper/opt")).inode)
    }

    @Test func usageAgreesWithDumpe2fs() throws {
        let dir = try TempDirectory("read-usage")
        let path = dir.file("tree.ext3")
        try FixtureImage.ext3(at: path, mebibytes: 64)
        let fresh = try Ext3.Image(path: path).usage()
        let fields = try Oracle.superblock(path)
        #expect(fresh.blockCount == UInt64(fields["Block count"] ?? ""))
        #expect(fresh.freeBlocks == UInt64(fields["Free blocks"] ?? ""))
        #expect(fresh.inodeCount == UInt64(fields["Inode count"] ?? ""))
        #expect(fresh.freeInodes == UInt64(fields["Free inodes"] ?? ""))
        // root, lost+found (4 blocks), upper, work: everything else is metadata.
        #expect(fresh.usedBytes == 7 * 4096)
        try TreeFixture.make(at: path)
        let filled = try Ext3.Image(path: path).usage()
        #expect(filled.usedBytes >= UInt64(TreeFixture.bigSize))
        #expect(filled.usedBytes < UInt64(TreeFixture.bigSize) + 64 * 4096)
    }
}
