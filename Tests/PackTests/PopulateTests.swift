import Foundation
import Testing
import TestSupport
@testable import Ext3
@testable import Pack

#if canImport(Glibc)
import Glibc
#endif

/// Packing through the library, judged by e2fsck and debugfs (no mount, no root).
@Suite(.serialized, .requires(executable: "e2fsck"), .requires(executable: "debugfs"))
struct PopulateTests {
    static func write(_ path: String, _ bytes: [UInt8]) throws {
        try FileManager.default.createDirectory(atPath: URL(fileURLWithPath: path).deletingLastPathComponent().path,
                                                withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    static func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ ($0 >> 12)) }
    }

    /// Packs `source` with the size chosen from the tree; returns the image path.
    static func pack(_ source: String, into directory: TempDirectory, name: String = "packed.ext3") throws -> String {
        let packSource = try Ext3.PackSource(path: source)
        let plan = try packSource.plan(sizeBytes: nil, inodes: nil)
        let formatter = try Ext3.Formatter(.init(sizeBytes: plan.sizeBytes, minimumInodes: plan.inodes))
        let image = directory.file(name)
        _ = try formatter.create(at: image, packing: packSource)
        return image
    }

    static func debugfs(_ image: String, _ request: String) throws -> String {
        let result = try run(["debugfs", "-R", request, image], timeout: 60)
        return result.stdout
    }

    @Test func chosenSizeLeavesHeadroomAndGivenSizeMustFit() throws {
        let directory = try TempDirectory("populate-plan")
        let source = directory.file("src")
        for index in 0..<50 { try Self.write("\(source)/d\(index % 5)/f\(index)", Self.pattern(index * 100, seed: 1)) }
        try Self.write("\(source)/big", Self.pattern(6 << 20, seed: 2))
        let packSource = try Ext3.PackSource(path: source)
        #expect(packSource.inodesNeeded == 56)  // 50 files, 5 directories, big
        #expect(packSource.blocksNeeded >= 1536 + 1)

        let plan = try packSource.plan(sizeBytes: nil, inodes: nil)
        #expect(plan.sizeChosen && plan.inodesChosen)
        #expect(plan.sizeBytes % (1 << 20) == 0)
        let geometry = try Ext3.Geometry(sizeBytes: plan.sizeBytes, inodes: plan.inodes)
        #expect(geometry.freeBlocks() >= packSource.blocksNeeded + packSource.blocksNeeded / 4 + (64 << 20) / 4096)
        #expect(geometry.inodeCount >= 56 + 13 + 14 + 1000)
        // The smallest such size: 1 MiB less does not leave that room.
        let smaller = try? Ext3.Geometry(sizeBytes: plan.sizeBytes - (1 << 20), inodes: plan.inodes)
        #expect((smaller?.freeBlocks() ?? 0) < packSource.blocksNeeded + packSource.blocksNeeded / 4 + (64 << 20) / 4096)

        #expect(throws: Ext3.Error.self) { try packSource.plan(sizeBytes: 8 << 20, inodes: 1000) }
        do {
            _ = try packSource.plan(sizeBytes: 8 << 20, inodes: 1000)
        } catch {
            #expect("\(error)".contains("needs room for 56 files and 6."), "\(error)")
        }
        // Too few inodes for the tree (64 after rounding up to whole table blocks; 69 needed).
        #expect(throws: Ext3.Error.self) { try packSource.plan(sizeBytes: 64 << 20, inodes: 50) }
    }

    @Test func largeAndSparseFilesMapThroughEveryIndirectionLevel() throws {
        let directory = try TempDirectory("populate-map")
        let source = directory.file("src")
        // 1,300 blocks: direct, single and double indirect; read back whole through debugfs.
        let large = Self.pattern(1300 * 4096 + 77, seed: 3)
        try Self.write("\(source)/large", large)
        // 5 GiB with data only past 4 GiB + 4 MiB: reached through the triple indirect block.
        let sparse = "\(source)/sparse"
        let fd = open(sparse, O_CREAT | O_WRONLY, 0o644)
        #expect(fd >= 0)
        let tail = Self.pattern(4096, seed: 4)
        let offset = (4 << 30) + (5 << 20)
        _ = tail.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
        #expect(ftruncate(fd, 5 << 30) == 0)
        close(fd)

        let image = try Self.pack(source, into: directory)
        #expect(try FixtureImage.isClean(image))
        let dumped = directory.file("large.out")
        _ = try Self.debugfs(image, "dump /upper/large \(dumped)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dumped)) == Data(large))

        // The block debugfs maps the sparse file's data to holds the data.
        let answer = try Self.debugfs(image, "bmap /upper/sparse \(offset / 4096)")
        let physical = try #require(UInt64(answer.trimmingCharacters(in: .whitespacesAndNewlines)), "bmap said: \(answer)")
        #expect(physical > 0)
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: image))
        try handle.seek(toOffset: physical * 4096)
        #expect(try handle.read(upToCount: 4096) == Data(tail))
        try handle.close()
        let hole = try Self.debugfs(image, "bmap /upper/sparse 1000")
        #expect(hole.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "a hole stays a hole: \(hole)")
        let entry = try #require(try Ext3.Image(path: image).entry(at: "/upper/sparse"))
        #expect(entry.size == 5 << 30)
    }

    /// Inodes are written a group's table at a time, around what libext2fs made and cached
    /// before (the first table block) and what it writes after (upper/, extended attributes):
    /// entries spread over several groups, with attributes on inodes in the first and last
    /// blocks of each group's part, all come out whole.
    @Test(.requires(executable: "setfattr")) func inodesAcrossGroupsKeepTheirAttributes() throws {
        let directory = try TempDirectory("populate-inodes")
        let source = directory.file("src")
        try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
        let count = 2500
        var tagged: [Int] = []
        for index in 0..<count {
            let path = String(format: "%@/f%04d", source, index)
            #expect(FileManager.default.createFile(atPath: path, contents: Data(Self.pattern(index % 7 * 100, seed: 5))))
            if index % 97 == 0 || index % 100 == 99 || index == count - 1 {
                let set = try run(["setfattr", "-h", "-n", "user.n", "-v", "value \(index)", path], timeout: 30)
                #expect(set.status == 0, "\(set)")
                tagged.append(index)
            }
        }
        let packSource = try Ext3.PackSource(path: source)
        // 600 MiB: five groups of about 600 inodes each.
        let plan = try packSource.plan(sizeBytes: 600 << 20, inodes: 3000)
        let formatter = try Ext3.Formatter(.init(sizeBytes: plan.sizeBytes, minimumInodes: plan.inodes))
        #expect(formatter.geometry.groupCount >= 4)
        let image = directory.file("groups.ext3")
        _ = try formatter.create(at: image, packing: packSource)
        #expect(try FixtureImage.isClean(image), "e2fsck -fn \(image)")
        for index in tagged {
            let name = String(format: "f%04d", index)
            let value = try Self.debugfs(image, "ea_get /upper/\(name) user.n")
            #expect(value.contains("value \(index)"), "\(name): \(value)")
        }
        let last = try #require(try Ext3.Image(path: image).entry(at: String(format: "/upper/f%04d", count - 1)))
        #expect(last.size == UInt64((count - 1) % 7 * 100))
    }

    @Test(.requires(executable: "tar")) func gnuLongNamesAndPaxTimesFromTar() throws {
        let directory = try TempDirectory("populate-tar")
        let source = directory.file("src")
        let deep = (0..<6).map { "directory-number-\($0)-with-a-longish-name" }.joined(separator: "/")
        let longName = String(repeating: "n", count: 200)
        try Self.write("\(source)/\(deep)/\(longName)", Array("deep\n".utf8))
        try Self.write("\(source)/stamped", Array("t\n".utf8))
        var times = [timespec(tv_sec: 1_700_000_000, tv_nsec: 123_456_789), timespec(tv_sec: 1_700_000_000, tv_nsec: 123_456_789)]
        #expect(utimensat(AT_FDCWD, "\(source)/stamped", &times, 0) == 0)
        #expect(symlink(String(repeating: "t", count: 150), "\(source)/long-target") == 0)
        // Before 1970: GNU tar writes a negative base-256 number, pax a negative decimal.
        try Self.write("\(source)/old", Array("o\n".utf8))
        var old = [timespec(tv_sec: -303_101_511, tv_nsec: 500_000_000), timespec(tv_sec: -303_101_511, tv_nsec: 500_000_000)]
        #expect(utimensat(AT_FDCWD, "\(source)/old", &old, 0) == 0)

        for format in ["gnu", "pax"] {
            let archive = directory.file("\(format).tar")
            let made = try run(["tar", "--format=\(format)", "-C", source, "-cf", archive, "."], timeout: 60)
            #expect(made.status == 0, "\(made)")
            let image = try Self.pack(archive, into: directory, name: "\(format).ext3")
            #expect(try FixtureImage.isClean(image))
            let file = try #require(try Ext3.Image(path: image).entry(at: "/upper/\(deep)/\(longName)"), "\(format): long path")
            #expect(file.size == 5 && file.kind == .regular)
            let link = try #require(try Ext3.Image(path: image).entry(at: "/upper/long-target"))
            #expect(link.kind == .symlink && link.size == 150)
            // debugfs prints mtime as seconds:extra in hex; the extra word holds ns << 2.
            let stat = try Self.debugfs(image, "stat /upper/stamped")
            let line = try #require(stat.split(separator: "\n").first { $0.contains("mtime:") }, "\(stat)")
            let fields = line.split(separator: " ")[1].split(separator: ":")
            #expect(UInt32(fields[0].dropFirst(2), radix: 16) == 1_700_000_000)
            let expectedNanoseconds: UInt32 = format == "pax" ? 123_456_789 : 0  // gnu keeps whole seconds
            #expect(fields.count == 2 && UInt32(fields[1], radix: 16).map { $0 >> 2 } == expectedNanoseconds, "\(line)")
            let oldStat = try Self.debugfs(image, "stat /upper/old")
            let oldLine = try #require(oldStat.split(separator: "\n").first { $0.contains("mtime:") }, "\(oldStat)")
            let oldFields = oldLine.split(separator: " ")[1].split(separator: ":")
            #expect(UInt32(oldFields[0].dropFirst(2), radix: 16) == UInt32(bitPattern: -303_101_511), "\(oldLine)")
            #expect(oldFields.count == 2 && UInt32(oldFields[1], radix: 16).map { $0 >> 2 } == (format == "pax" ? 500_000_000 : 0),
                    "\(oldLine)")
        }
    }
}
