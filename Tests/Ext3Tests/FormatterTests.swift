import Foundation
import Testing
import TestSupport
@testable import Ext3
import LinuxSupport

/// Images of several geometries, judged by e2fsprogs.
@Suite(.serialized, .requires(executable: "e2fsck"), .requires(executable: "dumpe2fs"), .requires(executable: "debugfs"))
struct FormatterTests {
    static let mebibyte: UInt64 = 1 << 20

    struct Shape: Sendable, CustomTestStringConvertible {
        let size: UInt64
        let inodes: UInt64?
        /// Most bytes the new image may take on disk.
        let allocatedAtMost: UInt64
        var testDescription: String {
            "\(Units.humanBytes(size)) / \(inodes.map { "\($0) inodes" } ?? "default inodes")"
        }
    }

    static let shapes: [Shape] = [
        Shape(size: 64 * mebibyte, inodes: nil, allocatedAtMost: 1 * mebibyte),
        Shape(size: 64 * mebibyte, inodes: Ext3.Geometry.maximumInodes(sizeBytes: 64 * mebibyte), allocatedAtMost: 2 * mebibyte),
        Shape(size: 500 * mebibyte, inodes: 700_000, allocatedAtMost: 2 * mebibyte),
        Shape(size: 5 << 30, inodes: 3_200_000, allocatedAtMost: 16 * mebibyte),
        Shape(size: 50 << 30, inodes: nil, allocatedAtMost: 16 * mebibyte),
    ]

    static let ext3Features = "has_journal ext_attr resize_inode dir_index filetype sparse_super large_file"

    @Test(arguments: shapes)
    func imageIsCleanExt3AsPredicted(_ shape: Shape) throws {
        let directory = try TempDirectory("ext3-format")
        let image = directory.file("image.ext3")
        let formatter = try Ext3.Formatter(.init(sizeBytes: shape.size, minimumInodes: shape.inodes))
        let summary = try formatter.format(into: image)
        let geometry = formatter.geometry

        let fsck = try Oracle.fsck(image)
        #expect(fsck.status == 0, "\(fsck)")

        let sb = try Oracle.superblock(image)
        #expect(sb["Filesystem features"] == Self.ext3Features)
        #expect(sb["Block size"] == "4096")
        #expect(sb["Inode size"] == "256")
        #expect(sb["Reserved block count"] == "0")
        #expect(sb["Filesystem revision #"] == "1 (dynamic)")
        #expect(sb["Maximum mount count"] == "-1")
        #expect(sb["Journal backup"] == "inode blocks")
        let inodeCount = try #require(sb["Inode count"].flatMap { UInt64($0) })
        #expect(inodeCount >= shape.inodes ?? (shape.size / 16384))
        #expect(inodeCount == summary.inodeCount)
        #expect(inodeCount == geometry.inodeCount)
        #expect(sb["Block count"] == "\(geometry.blockCount)")
        #expect(sb["Blocks per group"] == "\(geometry.blocksPerGroup)")
        #expect(sb["Inodes per group"] == "\(geometry.inodesPerGroup)")
        #expect(sb["Inode blocks per group"] == "\(geometry.inodeTableBlocksPerGroup)")
        #expect(sb["Reserved GDT blocks"] == "\(geometry.reservedDescriptorBlocks)")
        #expect(sb["Total journal blocks"] == "\(geometry.journalBlocks)")
        #expect(sb["Free blocks"] == "\(geometry.freeBlocks())")
        #expect(sb["Free blocks"] == "\(summary.dataBytes / 4096)")
        #expect(summary.journalBytes == geometry.journalBytes)
        #expect(summary.inodeTableBytes == geometry.inodeTableBytes)

        #expect(Oracle.fileSize(image) == shape.size)
        let allocated = Oracle.allocatedBytes(image)
        #expect(allocated == summary.allocatedBytes)
        #expect(allocated <= shape.allocatedAtMost, "\(allocated) bytes allocated")

        let rule = try Oracle.apptainerAccepts(image)
        #expect(rule.ok, "\(rule.why)")

        // The journal: inode 8, its data a hole but mapped, as e2fsck just confirmed.
        let journal = try #require(try Oracle.stat(image, "<8>"))
        #expect(journal.size == geometry.journalBytes)
        #expect(journal.mode == 0o600)
    }

    /// Side by side with mke2fs on the same geometry: the same superblock (but for what is
    /// random, timed, or taken by upper/ and work/), lost+found and journal.
    @Test(.requires(executable: "mke2fs")) func sameAsMke2fs() throws {
        let directory = try TempDirectory("ext3-mke2fs")
        let ours = directory.file("ours.ext3"), theirs = directory.file("theirs.ext3")
        _ = try Ext3.Formatter(.init(sizeBytes: 500 * Self.mebibyte, minimumInodes: 700_000)).format(into: ours)
        try #require(try run(["truncate", "-s", "500M", theirs]).status == 0)
        let made = try run(["mke2fs", "-q", "-F", "-t", "ext3", "-b", "4096", "-I", "256", "-N", "700000", "-m", "0", theirs])
        try #require(made.status == 0, "\(made)")

        var a = try Oracle.superblock(ours), b = try Oracle.superblock(theirs)
        #expect(Int(a["Free blocks"] ?? "") == Int(b["Free blocks"] ?? "").map { $0 - 2 }, "upper/ and work/ take a block each")
        #expect(Int(a["Free inodes"] ?? "") == Int(b["Free inodes"] ?? "").map { $0 - 2 })
        for key in ["Filesystem UUID", "Directory Hash Seed", "Filesystem created", "Last write time", "Last mount time",
                    "Last checked", "Free blocks", "Free inodes", "Journal checksum", "Journal sequence"] {
            a[key] = nil
            b[key] = nil
        }
        #expect(a == b)

        let lostFound = try #require(try Oracle.stat(ours, "/lost+found")), theirsLostFound = try #require(try Oracle.stat(theirs, "/lost+found"))
        #expect(lostFound.mode == theirsLostFound.mode && lostFound.size == theirsLostFound.size && lostFound.links == theirsLostFound.links)
        func journalBlocks(_ image: String) throws -> String {
            let text = try run(["debugfs", "-R", "stat <8>", image]).stdout
            return String(text[(text.range(of: "BLOCKS:")?.upperBound ?? text.endIndex)...])
        }
        #expect(try journalBlocks(ours) == journalBlocks(theirs))
        #expect(try Oracle.stat(ours, "/")?.mode == Oracle.stat(theirs, "/")?.mode)
    }

    @Test func layoutOwnersAndModes() throws {
        let directory = try TempDirectory("ext3-layout")
        let image = directory.file("image.ext3")
        // Ids above 65535 check the high 16 bits are stored too.
        let owner = Ext3.Owner(uid: 100_123, gid: 70_007)
        let formatter = try Ext3.Formatter(.init(sizeBytes: 64 * Self.mebibyte, owner: owner,
                                                 directories: ["/opt/conda", "opt", "data/in/", "data/out"],
                                                 label: "overlay"))
        _ = try formatter.format(into: image)
        #expect(try Oracle.fsck(image).status == 0)
        #expect(try Oracle.superblock(image)["Filesystem volume name"] == "overlay")
        #expect(try Oracle.list(image, "/") == [".", "..", "lost+found", "upper", "work"])
        #expect(try Oracle.list(image, "/upper") == [".", "..", "data", "opt"])

        let root = try #require(try Oracle.stat(image, "/"))
        #expect(root.type == "directory" && root.mode == 0o755 && root.uid == 0 && root.gid == 0)
        let lostFound = try #require(try Oracle.stat(image, "/lost+found"))
        #expect(lostFound.mode == 0o700 && lostFound.uid == 0 && lostFound.size == 16384)

        for path in ["/upper", "/work", "/upper/opt", "/upper/opt/conda", "/upper/data", "/upper/data/in", "/upper/data/out"] {
            let node = try #require(try Oracle.stat(image, path), "\(path) missing")
            #expect(node.type == "directory", "\(path)")
            #expect(node.mode == 0o755, "\(path) mode \(String(node.mode, radix: 8))")
            #expect(node.uid == owner.uid && node.gid == owner.gid, "\(path) owned by \(node.uid):\(node.gid)")
        }
    }

    @Test func createRenamesIntoPlaceAndLeavesNothingElse() throws {
        let directory = try TempDirectory("ext3-create")
        let target = directory.file("env.ext3")
        let summary = try Ext3.Formatter(.init(sizeBytes: 64 * Self.mebibyte)).create(at: target)
        #expect(summary.path == target)
        #expect(try directory.listing() == ["env.ext3"])
        #expect(try Oracle.fsck(target).status == 0)
    }

    @Test func createRefusesAnExistingTargetAndLeavesItAlone() throws {
        let directory = try TempDirectory("ext3-exists")
        let target = directory.file("env.ext3")
        try Data("precious".utf8).write(to: URL(fileURLWithPath: target))
        #expect(throws: Ext3.Error.exists(path: target)) {
            _ = try Ext3.Formatter(.init(sizeBytes: 64 * Self.mebibyte)).create(at: target)
        }
        #expect(try String(contentsOfFile: target, encoding: .utf8) == "precious")
        #expect(try directory.listing() == ["env.ext3"])
    }

    @Test func createInAMissingDirectoryFailsWithThePath() throws {
        let directory = try TempDirectory("ext3-missing")
        let target = directory.file("no/such/env.ext3")
        let error = #expect(throws: Ext3.Error.self) {
            _ = try Ext3.Formatter(.init(sizeBytes: 64 * Self.mebibyte)).create(at: target)
        }
        guard case let .cannotCreate(_, code) = error else {
            Issue.record("expected a cannot-create error, got \(String(describing: error))")
            return
        }
        #expect(code == ENOENT)
        #expect(try directory.listing() == [])
    }

    /// A directory too small for the metadata: the build fails half-way and removes its file.
    @Test(.requiresRoot) func failureHalfWayLeavesNothing() throws {
        let directory = try TempDirectory("ext3-full")
        let small = directory.file("small")
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: false)
        let mount = try run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", small])
        try #require(mount.status == 0, "\(mount)")
        defer { _ = try? run(["umount", small]) }
        // 500 MiB / 700K needs about 1 MiB of metadata: more than the 256 KiB there is.
        #expect(throws: Ext3.Error.self) {
            _ = try Ext3.Formatter(.init(sizeBytes: 500 * Self.mebibyte, minimumInodes: 700_000)).create(at: small + "/env.ext3")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: small) == [])
    }

    @Test func formatIntoAcceptsAnEmptyReservedFileOnly() throws {
        let directory = try TempDirectory("ext3-into")
        let reserved = directory.file("reserved.ext3")
        _ = FileManager.default.createFile(atPath: reserved, contents: Data())
        let formatter = try Ext3.Formatter(.init(sizeBytes: 16 * Self.mebibyte))
        _ = try formatter.format(into: reserved)
        #expect(try Oracle.fsck(reserved).status == 0)

        let used = directory.file("used")
        try Data("data".utf8).write(to: URL(fileURLWithPath: used))
        #expect(throws: Ext3.Error.exists(path: used)) { _ = try formatter.format(into: used) }
        #expect(try String(contentsOfFile: used, encoding: .utf8) == "data")
    }
}

/// What a killed run left on a filesystem without unnamed files: removed by the next run, unless
/// a live run is still building it (it holds a lock on it).
@Suite struct AbandonedTemporaryTests {
    @Test func onlyUnlockedTemporariesOfThatNameAreRemoved() throws {
        let directory = try TempDirectory("ext3-abandoned")
        let abandoned = directory.file(".env.ext3.tmp-0123456789ab")
        let building = directory.file(".env.ext3.tmp-ba9876543210")
        let other = directory.file(".data.ext3.tmp-0123456789ab")
        for path in [abandoned, building, other] {
            #expect(FileManager.default.createFile(atPath: path, contents: Data("x".utf8)))
        }
        let holder = open(building, O_RDWR | O_CLOEXEC)
        defer { close(holder) }
        #expect(try FileLock.tryLock(holder, .write))
        Ext3.Formatter.removeAbandonedTemporaries(of: "env.ext3", in: directory.path)
        #expect(try directory.listing().sorted() == [".data.ext3.tmp-0123456789ab", ".env.ext3.tmp-ba9876543210"])
    }
}
