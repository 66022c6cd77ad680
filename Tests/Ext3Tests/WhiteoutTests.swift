import Foundation
import Testing
import TestSupport
@testable import Ext3

/// Ext3.Whiteouts.normalize on images holding every form of whiteout and opaque directory
/// fuse-overlayfs writes (made with mke2fs + debugfs), judged by debugfs and e2fsck.
@Suite(.requires(executable: "debugfs"), .requires(executable: "mke2fs"), .requires(executable: "e2fsck"))
struct WhiteoutTests {
    /// upper/data (uid 1234) as fuse-overlayfs leaves it after deleting gone.txt, replacing
    /// dir (both forms of its opaque marker), with kept.txt written again after its deletion,
    /// and directories opaque by one attribute each; plus things that must stay as they are.
    static func fuseWritten(at path: String) throws {
        let made = try run(["mke2fs", "-q", "-F", "-t", "ext3", "-b", "4096", "-I", "256", "-m", "0", path, "16M"])
        try #require(made.status == 0, "\(made)")
        let dir = try TempDirectory("whiteout-src")
        let text = dir.file("text")
        try "text\n".write(toFile: text, atomically: true, encoding: .utf8)
        let empty = dir.file("empty")
        _ = FileManager.default.createFile(atPath: empty, contents: Data())
        let commands = [
            "mkdir upper", "mkdir work", "mkdir upper/data",
            "set_inode_field upper/data uid 1234", "set_inode_field upper/data gid 5678",
            "write \(empty) upper/data/.wh.gone.txt",
            "write \(text) upper/data/kept.txt", "write \(empty) upper/data/.wh.kept.txt",
            "mkdir upper/data/dir", "write \(text) upper/data/dir/f", "write \(empty) upper/data/dir/.wh..wh..opq",
            "cd upper/data/dir", "mknod .wh..opq c 0 0", "cd /",
            "ea_set upper/data/dir user.fuseoverlayfs.opaque y",
            "mkdir upper/data/kernel", "ea_set upper/data/kernel trusted.overlay.opaque y",
            "mkdir upper/data/user", "ea_set upper/data/user user.overlay.opaque y",
            "mkdir upper/data/canonical", "ea_set upper/data/canonical trusted.overlay.opaque y",
            "ea_set upper/data/canonical user.overlay.opaque y",
            // Already a whiteout, and one named like a marker: both stay.
            "cd upper/data", "mknod old c 0 0", "mknod .wh.odd c 0 0", "cd /",
            // A directory named like a marker, and a link out of the tree: left alone.
            "mkdir upper/data/.wh.tree", "write \(text) upper/data/.wh.tree/inside",
            "cd upper/data", "symlink link /",
            // A file named like a marker but not a regular file: left alone.
            "mknod .wh.fifo p", "cd /",
            // Outside upper/: never touched.
            "write \(empty) work/.wh.outside",
        ]
        let script = dir.file("cmds")
        try commands.joined(separator: "\n").write(toFile: script, atomically: true, encoding: .utf8)
        let result = try run(["debugfs", "-w", "-f", script, path])
        try #require(result.status == 0, "\(result)")
    }

    static func names(_ image: String, _ path: String) throws -> [String] {
        let result = try run(["debugfs", "-R", "ls \"\(path)\"", image])
        return result.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" })
            .filter { !$0.hasPrefix("(") && Int($0) == nil && $0 != "." && $0 != ".." }.map(String.init).sorted()
    }

    static func attributes(_ image: String, _ path: String) throws -> String {
        try run(["debugfs", "-R", "ea_list \"\(path)\"", image]).stdout
    }

    static func debugfsStat(_ image: String, _ path: String) throws -> String {
        try run(["debugfs", "-R", "stat \"\(path)\"", image]).stdout
    }

    @Test func everyFuseFormBecomesTheOneAllReadersAgreeOn() throws {
        let dir = try TempDirectory("whiteouts")
        let path = dir.file("fuse.ext3")
        try Self.fuseWritten(at: path)
        let report = try Ext3.Whiteouts.normalize(imagePath: path)
        #expect(report.whiteoutsMade == 1, "\(report)")
        #expect(report.markersRemoved == 3, "\(report)")
        #expect(report.directoriesMarkedOpaque == 3, "\(report)")
        #expect(try Self.names(path, "upper/data") == [".wh.fifo", ".wh.odd", ".wh.tree", "canonical", "dir", "gone.txt", "kept.txt",
                                                        "kernel", "link", "old", "user"])
        #expect(try Self.names(path, "upper/data/dir") == ["f"])
        let gone = try Self.debugfsStat(path, "upper/data/gone.txt")
        #expect(gone.contains("Type: character special    Mode:  0000"), "\(gone)")
        #expect(gone.contains("User:  1234   Group:  5678"), "\(gone)")
        #expect(gone.contains("Device major/minor number: 00:00"), "\(gone)")
        #expect(try FixtureImage.cat(path, "upper/data/kept.txt") == "text\n")
        for opaque in ["dir", "kernel", "user", "canonical"] {
            let listed = try Self.attributes(path, "upper/data/\(opaque)")
            #expect(listed.contains("trusted.overlay.opaque (1) = \"y\""), "\(opaque): \(listed)")
            #expect(listed.contains("user.overlay.opaque (1) = \"y\""), "\(opaque): \(listed)")
        }
        #expect(try Self.names(path, "work") == [".wh.outside"])
        let fsck = try run(["e2fsck", "-fn", path])
        #expect(fsck.status == 0, "\(fsck)")
    }

    @Test func aSecondRunChangesNotAByte() throws {
        let dir = try TempDirectory("whiteouts-again")
        let path = dir.file("fuse.ext3")
        try Self.fuseWritten(at: path)
        try Ext3.Whiteouts.normalize(imagePath: path)
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        let again = try Ext3.Whiteouts.normalize(imagePath: path)
        #expect(!again.changed, "\(again)")
        #expect(again.directories == 7, "\(again)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before)
    }

    @Test func anImageWithNothingToChangeIsNeverOpenedForWriting() throws {
        let dir = try TempDirectory("whiteouts-none")
        let path = dir.file("tree.ext3")
        try TreeFixture.make(at: path)
        chmod(path, 0o444)
        defer { chmod(path, 0o644) }
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        // As root the mode does not stop a write: the bytes tell.
        let report = try Ext3.Whiteouts.normalize(imagePath: path)
        #expect(!report.changed)
        #expect(report.directories > 1)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before)
    }

    @Test func anImageThatNeedsRecoveryIsRefusedUntouched() throws {
        let dir = try TempDirectory("whiteouts-recover")
        let path = dir.file("fuse.ext3")
        try Self.fuseWritten(at: path)
        let set = try run(["debugfs", "-w", "-R", "feature needs_recovery", path])
        try #require(set.status == 0, "\(set)")
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(throws: Ext3.Error.self) { try Ext3.Whiteouts.normalize(imagePath: path) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before)
    }

    @Test func anImageWithoutUpperIsLeftAlone() throws {
        let dir = try TempDirectory("whiteouts-bare")
        let path = dir.file("bare.ext3")
        try FixtureImage.mkfs(path, mebibytes: 8, type: "ext3")
        let report = try Ext3.Whiteouts.normalize(imagePath: path)
        #expect(report == Ext3.Whiteouts.Report())
    }

    @Test func markerNames() {
        func target(_ name: String) -> String? { Ext3.Whiteouts.markerTarget(name) }
        #expect(target(".wh.a") == "a")
        #expect(target(".wh..opq") == ".opq")
        #expect(target(".wh.") == nil)
        #expect(target(".wh..wh..opq") == nil)
        #expect(target(".wh..") == nil)
        #expect(target(".wh...") == nil)
        #expect(target("a") == nil)
        let opq = Array(".wh..opq".utf8)
        #expect(Ext3.Whiteouts.meaning(of: opq, kind: .characterDevice, whiteout: true) == .opaqueMarker)
        #expect(Ext3.Whiteouts.meaning(of: opq, kind: .regular, whiteout: false) == .deletes(Array(".opq".utf8)))
        #expect(Ext3.Whiteouts.meaning(of: Array(".wh.x".utf8), kind: .directory, whiteout: false) == .ordinary)
        #expect(Ext3.Whiteouts.meaning(of: Array("x".utf8), kind: .characterDevice, whiteout: true) == .deletes(Array("x".utf8)))
    }

    /// Normalizing an image of 20,000 files with nothing to change reads only its directories
    /// (and their attributes): tens of milliseconds in a debug build (the bound is loose, for
    /// busy machines).
    @Test func twentyThousandFilesWithNothingToChangeIsQuick() throws {
        let dir = try TempDirectory("whiteouts-many")
        // The 20,000 source files on tmpfs where there is one: made ten times faster there.
        let shm = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm/whiteouts-many-\(UUID().uuidString)" : nil
        let source = shm ?? dir.file("root")
        defer { if let shm { try? FileManager.default.removeItem(atPath: shm) } }
        for d in 0..<200 {
            let sub = "\(source)/upper/d\(d)"
            try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: true)
            for f in 0..<100 { _ = FileManager.default.createFile(atPath: "\(sub)/f\(f)", contents: Data("x".utf8)) }
        }
        try FileManager.default.createDirectory(atPath: "\(source)/work", withIntermediateDirectories: true)
        let path = dir.file("many.ext3")
        let made = try run(["mke2fs", "-q", "-F", "-t", "ext3", "-b", "4096", "-I", "256", "-m", "0", "-N", "30000",
                            "-d", source, path, "256M"], timeout: 120)
        try #require(made.status == 0, "\(made)")
        let start = Date()
        let report = try Ext3.Whiteouts.normalize(imagePath: path)
        let seconds = Date().timeIntervalSince(start)
        #expect(!report.changed)
        #expect(report.directories == 201)
        #expect(seconds < 5, "normalizing 20,000 files took \(seconds) s")
        print("normalize: 20,000 files, nothing to change: \(Int(seconds * 1000)) ms")
    }

    /// 1,000 markers among 20,000 files, half of them in an indexed (htree) directory of 5,500
    /// entries: all rewritten, and e2fsck finds nothing to fix.
    @Test func aThousandMarkersAmongTwentyThousandFiles() throws {
        let dir = try TempDirectory("whiteouts-markers")
        let shm = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm/whiteouts-markers-\(UUID().uuidString)" : nil
        let source = shm ?? dir.file("root")
        defer { if let shm { try? FileManager.default.removeItem(atPath: shm) } }
        for d in 0..<145 {
            let sub = "\(source)/upper/d\(d)"
            try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: true)
            for f in 0..<100 { _ = FileManager.default.createFile(atPath: "\(sub)/f\(f)", contents: Data("x".utf8)) }
        }
        for d in 0..<50 { _ = FileManager.default.createFile(atPath: "\(source)/upper/d\(d)/.wh.gone\(d)", contents: Data()) }
        let big = "\(source)/upper/big"
        try FileManager.default.createDirectory(atPath: big, withIntermediateDirectories: true)
        for f in 0..<5000 { _ = FileManager.default.createFile(atPath: "\(big)/file-with-a-longer-name-\(f)", contents: Data()) }
        for f in 0..<950 { _ = FileManager.default.createFile(atPath: "\(big)/.wh.deleted-\(f)", contents: Data()) }
        try FileManager.default.createDirectory(atPath: "\(source)/work", withIntermediateDirectories: true)
        let path = dir.file("markers.ext3")
        let made = try run(["mke2fs", "-q", "-F", "-t", "ext3", "-b", "4096", "-I", "256", "-m", "0", "-N", "30000",
                            "-d", source, path, "256M"], timeout: 120)
        try #require(made.status == 0, "\(made)")
        // Index the directories (htree), as the kernel does for large ones.
        _ = try run(["e2fsck", "-fyD", path], timeout: 120)
        #expect(try run(["e2fsck", "-fn", path]).status == 0)
        let start = Date()
        let report = try Ext3.Whiteouts.normalize(imagePath: path)
        let seconds = Date().timeIntervalSince(start)
        print("normalize: 20,000 files, 1,000 markers: \(Int(seconds * 1000)) ms")
        #expect(report.whiteoutsMade == 1000, "\(report)")
        let fsck = try run(["e2fsck", "-fn", path])
        #expect(fsck.status == 0, "\(fsck)")
        let gone = try Self.debugfsStat(path, "upper/big/deleted-949")
        #expect(gone.contains("Type: character special"), "\(gone)")
        #expect(try Ext3.Whiteouts.normalize(imagePath: path).changed == false)
    }
}
