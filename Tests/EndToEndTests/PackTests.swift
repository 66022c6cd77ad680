import Foundation
import Testing
import TestSupport
import Ext3

#if canImport(Glibc)
import Glibc
#endif

/// create-overlay --from as a user runs it: pack a tree with every kind of entry, mount the
/// image with the kernel and compare entry by entry; e2fsck and Apptainer's feature rule judge
/// the image; refusals leave nothing behind.
@Suite(.serialized, .requires(executable: "e2fsck"), .requires(executable: "getfattr"), .requires(executable: "setfattr"))
struct PackTests {
    var tool: String { product("create-overlay") }

    /// Packs `source` into `image` and compares the mounted upper/ with `expected`. (A tar
    /// archive made without --sparse holds a sparse file's holes as zeros: `sparseKept: false`.)
    func packAndCompare(_ source: String, image: String, expected: [String: PackFixture.Entry], sparseKept: Bool = true,
                        in directory: TempDirectory) throws -> (ProcessResult, [String: PackFixture.Entry]) {
        let result = try run([tool, "--from", source, "-o", image], currentDirectory: directory.path, timeout: 120)
        #expect(result.status == 0, "\(result)")
        #expect(try FixtureImage.isClean(image), "e2fsck -fn \(image)")
        #expect(try Ext3.Superblock(path: image).apptainerRefusals.isEmpty)
        let mount = try ReadOnlyMount(image, at: directory.file("mnt-" + URL(fileURLWithPath: image).lastPathComponent))
        var packed: [String: PackFixture.Entry] = [:]
        do {
            packed = try PackFixture.snapshot(mount.point + "/upper")
            #expect(Set(packed.keys) == Set(expected.keys), "missing: \(Set(expected.keys).subtracting(packed.keys)), extra: \(Set(packed.keys).subtracting(expected.keys))")
            for (path, entry) in expected.sorted(by: { $0.key < $1.key }) {
                #expect(packed[path] == entry, "\(path)\n source: \(entry)\n  image: \(packed[path].map(\.description) ?? "missing")")
            }
            // upper/ itself: the overlay's owner (root here), 0755.
            var info = stat()
            #expect(lstat(mount.point + "/upper", &info) == 0 && info.st_uid == getuid() && info.st_mode & 0o7777 == 0o755)
            if sparseKept, let sparse = packed["sparse.img"] {
                // The hole stayed a hole: two data ranges, not 8 MiB.
                #expect(sparse.size == 8 << 20)
                #expect(PackFixture.allocated(mount.point + "/upper/sparse.img") <= 64 << 10,
                        "sparse.img allocates \(PackFixture.allocated(mount.point + "/upper/sparse.img")) bytes")
            }
        } catch {
            try? mount.close()
            throw error
        }
        try mount.close()
        #expect(mount.loopDevices.isEmpty, "loop device left: \(mount.loopDevices)")
        return (result, packed)
    }

    @Test(.requiresRoot) func directoryRoundTripKeepsEveryEntry() throws {
        let directory = try TempDirectory("pack-dir")
        let source = directory.file("my tree")
        try PackFixture.make(source)
        let expected = try PackFixture.snapshot(source)
        #expect(expected.count > 250)
        // The oracle sees the fixture's attributes (in the inode, in a block, non-ASCII names).
        #expect(expected["one block"]?.xattrs.count == 2)
        #expect(expected["many/a"]?.xattrs.first?.hasPrefix("user.big=0x7878") == true)
        #expect(expected["dir with spaces/ünïcödé ✓/naïve file"]?.xattrs.count == 1)
        let (result, _) = try packAndCompare(source, image: directory.file("tree.ext3"), expected: expected, in: directory)
        let lines = result.stdout.split(separator: "\n")
        #expect(lines.first?.hasPrefix("sized from the tree: -s ") == true, "\(result.stdout)")
        #expect(lines.contains { $0.hasPrefix(directory.file("tree.ext3") + ": packed ") }, "\(result.stdout)")
        #expect(result.stderr.isEmpty, "no progress line when stderr is not a terminal: \(result.stderr)")
    }

    @Test(.requiresRoot, .requires(executable: "tar"), .requires(executable: "gzip"))
    func tarAndGzipTarGiveTheSameTreeAsTheDirectory() throws {
        let directory = try TempDirectory("pack-tar")
        let source = directory.file("tree")
        try PackFixture.make(source, sockets: false)  // tar cannot hold a socket
        let expected = try PackFixture.snapshot(source)
        let tar = try run(["tar", "--xattrs", "--xattrs-include=*", "--format=pax", "-C", source, "-cf", directory.file("tree.tar"), "."],
                          timeout: 60)
        #expect(tar.status == 0, "\(tar)")
        #expect(try run(["sh", "-c", "gzip -c tree.tar > 'tree data.tgz'"], currentDirectory: directory.path, timeout: 60).status == 0)

        let (_, fromTar) = try packAndCompare(directory.file("tree.tar"), image: directory.file("from-tar.ext3"),
                                              expected: expected, sparseKept: false, in: directory)
        let (_, fromGzip) = try packAndCompare(directory.file("tree data.tgz"), image: directory.file("from-gzip.ext3"),
                                               expected: expected, sparseKept: false, in: directory)
        #expect(fromTar == fromGzip)
        // The default name comes from the archive's name.
        let named = try run([tool, "--from", "tree data.tgz", "--json"], currentDirectory: directory.path, timeout: 120)
        #expect(named.status == 0, "\(named)")
        #expect(FileManager.default.fileExists(atPath: directory.file("tree data.ext3")))
    }

    /// Many directories with one file each, small (batched) and large (copied), packed with a
    /// low open-file limit: packing must not hold a descriptor per directory.
    @Test func manyDirectoriesStayWithinALowOpenFileLimit() throws {
        let directory = try TempDirectory("pack-fds")
        let source = directory.file("src")
        for index in 0..<300 {
            for (kind, size) in [("small", 8000), ("large", 65536)] {
                let dir = "\(source)/\(kind)/d\(index)"
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                try PackFixture.write(dir + "/f", [UInt8](repeating: UInt8(0x41 + index % 26), count: size))
            }
        }
        let result = try run(["/bin/sh", "-c", "ulimit -n 128 && exec \"$0\" --from src -o many.ext3", tool],
                             currentDirectory: directory.path, timeout: 120)
        #expect(result.status == 0, "\(result)")
        #expect(try FixtureImage.isClean(directory.file("many.ext3")))
        let last = try FixtureImage.cat(directory.file("many.ext3"), "upper/large/d299/f")
        #expect(last == String(repeating: "N", count: 65536))  // 0x41 + 299 % 26
    }

    @Test func givenSizeTooSmallIsRefusedSayingWhatItNeeds() throws {
        let directory = try TempDirectory("pack-fit")
        let source = directory.file("src")
        try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
        try PackFixture.write(source + "/big", [UInt8](repeating: 0x5A, count: 12 << 20))
        let before = try directory.listing()
        let result = try run([tool, "--from", source, "-s", "12", "-n", "1", "-o", "small.ext3"], currentDirectory: directory.path)
        #expect(result.status != 0)
        let line = result.stderr.trimmingCharacters(in: .newlines)
        #expect(!line.contains("\n"), "one line: \(result.stderr)")
        #expect(line.contains("\(source) needs room for 1 files and 12"), "\(line)")
        #expect(line.contains("make it at least -s "), "\(line)")
        #expect(try directory.listing() == before)

        // What the line asks for is enough.
        let size = try #require(line.split(separator: " ").drop { $0 != "-s" }.dropFirst().first.map(String.init))
        let retry = try run([tool, "--from", source, "-s", size, "-n", "1", "-o", "small.ext3"], currentDirectory: directory.path)
        #expect(retry.status == 0, "\(retry)")
        #expect(try FixtureImage.isClean(directory.file("small.ext3")))
    }

    @Test(.requires(executable: "tar"), .requires(executable: "gzip")) func missingUnknownOrDamagedSourceIsRefused() throws {
        let directory = try TempDirectory("pack-missing")
        try PackFixture.write(directory.file("notes.txt"), Array(String(repeating: "just text\n", count: 100).utf8))
        let made = try run(["sh", "-c", "printf garbage | gzip > bad.tar.gz && tar cf full.tar notes.txt && head -c 700 full.tar > cut.tar"],
                           currentDirectory: directory.path, timeout: 30)
        #expect(made.status == 0, "\(made)")
        let before = try directory.listing()
        for (source, mention) in [("nothere", "nothere does not exist"),
                                  ("notes.txt", "notes.txt is neither a directory nor a tar archive"),
                                  ("bad.tar.gz", "bad.tar.gz does not hold a tar archive"),
                                  ("cut.tar", "cut.tar: the archive ends in the middle of an entry")] {
            let result = try run([tool, "--from", source], currentDirectory: directory.path)
            #expect(result.status != 0)
            #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
            #expect(result.stderr.contains(mention), "\(result.stderr)")
            #expect(try directory.listing() == before)
        }
    }

    @Test(.requiresRoot) func fullDiskHalfWayLeavesNothingBehind() throws {
        let directory = try TempDirectory("pack-full")
        let source = directory.file("src")
        try FileManager.default.createDirectory(atPath: source + "/small", withIntermediateDirectories: true)
        for index in 0..<100 { try PackFixture.write("\(source)/small/\(index)", [UInt8](repeating: UInt8(index), count: 5000)) }
        try PackFixture.write(source + "/large", [UInt8](repeating: 0xA5, count: 12 << 20))
        let disk = directory.file("disk")
        try FileManager.default.createDirectory(atPath: disk, withIntermediateDirectories: true)
        let mounted = try run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", disk], timeout: 30)
        try #require(mounted.status == 0, "\(mounted)")
        defer { _ = try? run(["umount", disk], timeout: 30) }
        let result = try run([tool, "--from", source, "-o", disk + "/packed.ext3"], timeout: 120)
        #expect(result.status != 0)
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        #expect(result.stderr.contains("No space left on device"), "\(result.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: disk).isEmpty)
    }

    @Test(.requiresRoot) func unreadableFileAsOrdinaryUserIsNamedAndNothingIsLeft() throws {
        let user = try TestUser.ensure()
        let directory = try TempDirectory("pack-user")
        let home = directory.file("home")
        try FileManager.default.createDirectory(atPath: home + "/tree/sub", withIntermediateDirectories: true)
        try PackFixture.write(home + "/tree/readable", Array("yes\n".utf8))
        try PackFixture.write(home + "/tree/sub/secret", Array("no\n".utf8))
        #expect(chmod(home + "/tree/sub/secret", 0o000) == 0)
        for path in [home, home + "/tree", home + "/tree/sub", home + "/tree/readable", home + "/tree/sub/secret"] {
            #expect(chown(path, user.uid, user.gid) == 0)
        }
        let tool = self.tool
        let refused = try user.run([tool, "--from", "tree", "-o", "tree.ext3"], currentDirectory: home)
        #expect(refused.status != 0)
        #expect(refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
        #expect(refused.stderr.contains("cannot read tree/sub/secret: Permission denied"), "\(refused.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: home) == ["tree"])

        // Readable again: the user's own ids, as in the source.
        #expect(chmod(home + "/tree/sub/secret", 0o400) == 0)
        let packed = try user.run([tool, "--from", "tree"], currentDirectory: home)
        #expect(packed.status == 0, "\(packed)")
        let image = try Ext3.Image(path: home + "/tree.ext3")
        defer { try? image.close() }
        for path in ["/upper", "/upper/sub", "/upper/sub/secret", "/upper/readable"] {
            let entry = try #require(try image.entry(at: path), "\(path)")
            #expect(entry.uid == user.uid && entry.gid == user.gid, "\(path): \(entry)")
        }
        #expect(try image.entry(at: "/upper/sub/secret")?.permissions == 0o400)
    }
}
