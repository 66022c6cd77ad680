import Foundation
import Testing
import TestSupport
@testable import Ext3
@testable import Pack
@testable import TarArchive

#if canImport(Glibc)
import Glibc
#endif

/// Trees read from archives built in memory: names that leave the tree or name nothing yet,
/// entries that replace earlier ones, and sizes no file has. No root needed.
@Suite struct ArchiveTreeTests {
    static func tree(_ archive: TarBuilder) throws -> Ext3.Tree {
        try Ext3.Tree.scan(archive: TarReader(stream: MemoryStream(archive.bytes), path: "a.tar"))
    }

    /// The tree's paths (a node's first name), each with its kind.
    static func listing(_ tree: Ext3.Tree) -> [String: Ext3.EntryKind] {
        var result: [String: Ext3.EntryKind] = [:]
        var pending = [(0, "")]
        while let (node, path) = pending.popLast() {
            for child in tree.nodes[node].children {
                let childPath = path + "/" + String(decoding: child.name, as: UTF8.self)
                result[childPath] = tree.nodes[child.node].kind
                if tree.nodes[child.node].kind == .directory { pending.append((child.node, childPath)) }
            }
        }
        return result
    }

    /// The text PackSource reports for an archive file holding `archive`.
    static func packFailure(_ archive: TarBuilder, name: String = "a.tar") throws -> String? {
        let directory = try TempDirectory("archive-tree")
        let path = directory.file(name)
        try Data(archive.bytes).write(to: URL(fileURLWithPath: path))
        do {
            _ = try Ext3.PackSource(path: path)
            return nil
        } catch let error as Ext3.Error {
            return error.description.replacingOccurrences(of: directory.path + "/", with: "")
        }
    }

    @Test func hardLinkToAMissingTarget() throws {
        var archive = TarBuilder()
        archive.file("present", "p")
        archive.hardLink("link", to: "missing")
        archive.end()
        #expect(throws: Ext3.Error.invalidConfiguration(
            "a.tar: hard link 'link' points to 'missing', which is not an earlier file in the archive")) { try Self.tree(archive) }
        // A directory is no target either.
        var directory = TarBuilder()
        directory.directory("d/")
        directory.hardLink("link", to: "d")
        #expect(throws: Ext3.Error.invalidConfiguration(
            "a.tar: hard link 'link' points to 'd', which is not an earlier file in the archive")) { try Self.tree(directory) }
    }

    @Test func namesThatLeaveTheTreeAreRefusedAbsoluteOnesKeptInside() throws {
        var up = TarBuilder()
        up.file("ok", "o")
        up.file("a/../../etc/passwd", "x")
        #expect(throws: Ext3.Error.invalidConfiguration(
            "a.tar: entry 'a/../../etc/passwd' leaves the tree with '..'; refusing the archive")) { try Self.tree(up) }
        var link = TarBuilder()
        link.file("ok", "o")
        link.hardLink("l", to: "../ok")
        #expect(throws: Ext3.Error.self) { try Self.tree(link) }

        // A leading slash (and `.`, repeated slashes) is dropped, as GNU tar does.
        var absolute = TarBuilder()
        absolute.file("/etc/passwd", "root")
        absolute.file("./a//b/./c", "c")
        absolute.directory("/")
        absolute.end()
        let tree = try Self.tree(absolute)
        #expect(Self.listing(tree) == ["/etc": .directory, "/etc/passwd": .regular, "/a": .directory, "/a/b": .directory, "/a/b/c": .regular])
    }

    /// `echo x > d; tar cf a.tar d; rm d; mkdir d; echo y > d/x; tar rf a.tar d`: GNU tar
    /// extracting it removes the file `d` and makes the directory. So does the tree; this
    /// crashed before (the replacing directory had no room for its entries).
    @Test(arguments: ["file", "symlink", "fifo"]) func aDirectoryReplacesAnEarlierEntry(first: String) throws {
        var archive = TarBuilder()
        switch first {
        case "file": archive.file("d", "x\n")
        case "symlink": archive.symlink("d", to: "elsewhere")
        default: archive.fifo("d")
        }
        archive.directory("d/", mode: 0o700)
        archive.file("d/x", "y\n")
        archive.end()
        let tree = try Self.tree(archive)
        #expect(Self.listing(tree) == ["/d": .directory, "/d/x": .regular])
        #expect(tree.inodeCount == 2, "the replaced entry is gone")
        let d = try #require(tree.nodes[0].children.first?.node)
        #expect(tree.nodes[d].permissions == 0o700 && tree.nodes[d].links == 1)
    }

    /// Without a directory entry of its own: the file stays, and an entry inside it is refused.
    @Test func entriesInsideAFileAreRefused() throws {
        var archive = TarBuilder()
        archive.file("d", "x\n")
        archive.file("d/x", "y\n")
        #expect(throws: Ext3.Error.invalidConfiguration("a.tar: 'd' is not a directory, yet entries are inside it")) { try Self.tree(archive) }
        // A directory followed by a file of its name: GNU tar cannot remove a directory with
        // entries either.
        var directory = TarBuilder()
        directory.directory("d/")
        directory.file("d/x", "y\n")
        directory.file("d", "x\n")
        #expect(throws: Ext3.Error.invalidConfiguration("a.tar: 'd' appears as a directory and again as something else")) {
            try Self.tree(directory)
        }
    }

    @Test func aLaterFileReplacesAnEarlierOne() throws {
        var archive = TarBuilder()
        archive.file("f", "old")
        archive.hardLink("g", to: "f")
        archive.file("f", "newer")
        archive.end()
        let tree = try Self.tree(archive)
        #expect(Self.listing(tree) == ["/f": .regular, "/g": .regular])
        #expect(tree.inodeCount == 2)
        #expect(tree.nodes.dropFirst().map(\.size).sorted() == [3, 5])
    }

    /// Through PackSource, as create-overlay --from reads a file: the same one-line texts.
    @Test func hugeSizesAreCleanErrors() throws {
        var pax = TarBuilder()
        pax.pax([("size", "18446744073709551615")])
        pax.file("file", "")
        pax.end()
        #expect(try Self.packFailure(pax)
                == "a.tar: pax size '18446744073709551615' is not a size (at byte 1536); the archive is damaged or not a tar archive")
        var negative = TarBuilder()
        negative.file("first", "1")
        var header = TarHeader("negative")
        header.size = .base256(-4096)
        negative.append(header)
        negative.end()
        #expect(try Self.packFailure(negative)
                == "a.tar: a header has a bad size field (at byte 1536); the archive is damaged or not a tar archive")
        var volume = TarBuilder()
        volume.file("first", "1")
        header = TarHeader("volume", type: "V")
        header.size = .base256Overflowing
        volume.append(header)
        volume.end()
        #expect(try Self.packFailure(volume)
                == "a.tar: a header has a bad size field (at byte 1536); the archive is damaged or not a tar archive")
        var huge = TarBuilder()
        header = TarHeader("huge")
        header.size = .base256(Int64.max)
        huge.append(header)
        huge.end()
        #expect(try Self.packFailure(huge)
                == "a.tar: the archive ends in the middle of an entry (at byte 512); the archive is damaged or not a tar archive")
    }

    @Test(.requires(executable: "tar")) func fileThenDirectoryMadeByTarPacks() throws {
        let directory = try TempDirectory("file-then-directory")
        let script = "cd '\(directory.path)' && echo x > d && tar cf a.tar d && rm d && mkdir d && echo y > d/x && tar rf a.tar d"
        let made = try run(["sh", "-c", script], timeout: 60)
        #expect(made.status == 0, "\(made)")
        let source = try Ext3.PackSource(path: directory.file("a.tar"))
        #expect(source.inodesNeeded == 2 && source.fileCount == 1)
        let plan = try source.plan(sizeBytes: nil, inodes: nil)
        let formatter = try Ext3.Formatter(.init(sizeBytes: plan.sizeBytes, minimumInodes: plan.inodes))
        let image = directory.file("a.ext3")
        _ = try formatter.create(at: image, packing: source)
        let opened = try Ext3.Image(path: image)
        #expect(try opened.entry(at: "/upper/d")?.kind == .directory)
        #expect(try opened.entry(at: "/upper/d/x")?.size == 2)
    }
}
