import Foundation
import Testing
import TestSupport
@testable import Ext3

/// Ext3.UsedBlocks (the block bitmaps read with pread), judged by dumpe2fs's free block lists.
@Suite(.requires(executable: "mke2fs"), .requires(executable: "dumpe2fs"), .requires(executable: "debugfs"))
struct UsedBlocksTests {
    /// The blocks dumpe2fs lists as free, group by group, and the block count and size.
    static func freeBlocks(_ image: String) throws -> (free: Set<Int64>, count: Int64, size: Int64) {
        let result = try run(["dumpe2fs", image])
        guard result.status == 0 else { throw OracleError(text: "dumpe2fs \(image): \(result)") }
        var free = Set<Int64>()
        var count: Int64 = 0, size: Int64 = 0
        for line in result.stdout.split(separator: "\n") {
            let text = line.trimmingCharacters(in: .whitespaces)
            if text.hasPrefix("Block count:") { count = Int64(text.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) ?? 0 }
            if text.hasPrefix("Block size:") { size = Int64(text.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) ?? 0 }
            guard line.hasPrefix("  Free blocks: ") else { continue }
            for part in text.dropFirst("Free blocks: ".count).split(separator: ",") {
                let bounds = part.trimmingCharacters(in: .whitespaces).split(separator: "-").compactMap { Int64($0) }
                guard let low = bounds.first else { continue }
                for block in low...(bounds.last ?? low) { free.insert(block) }
            }
        }
        return (free, count, size)
    }

    static func used(_ image: String, mergeGap: Int64 = 0) throws -> Ext3.UsedBlocks? {
        let fd = open(image, O_RDONLY)
        guard fd >= 0 else { throw OracleError(text: "cannot open \(image)") }
        defer { close(fd) }
        var info = Glibc.stat()
        fstat(fd, &info)
        return Ext3.UsedBlocks.read(fd: fd, fileSize: Int64(info.st_size), mergeGap: mergeGap)
    }

    /// With 4 KiB and 1 KiB blocks (the boot block before the first data block), after files
    /// are written and one is deleted: exactly the blocks dumpe2fs does not list as free.
    @Test(arguments: [4096, 1024])
    func theRangesAreTheBlocksDumpe2fsDoesNotListAsFree(blockSize: Int) throws {
        let dir = try TempDirectory("used-blocks")
        let image = dir.file("image.ext3")
        let made = try run(["mke2fs", "-q", "-F", "-t", "ext3", "-b", "\(blockSize)", "-I", "256", image, "24M"])
        #expect(made.status == 0, "\(made)")
        let data = dir.file("data")
        try Data((0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) }).write(to: URL(fileURLWithPath: data))
        let script = dir.file("cmds")
        try "mkdir upper\nwrite \(data) upper/kept\nwrite \(data) upper/deleted\nrm upper/deleted\n"
            .write(toFile: script, atomically: true, encoding: .utf8)
        #expect(try run(["debugfs", "-w", "-f", script, image]).status == 0)

        let (free, count, size) = try Self.freeBlocks(image)
        #expect(size == Int64(blockSize) && count > 0)
        let used = try #require(try Self.used(image))
        var fromBitmaps = Set<Int64>()
        for range in used.ranges {
            #expect(range.lowerBound % Int64(blockSize) == 0 || range.lowerBound == 0, "\(range)")
            for block in (range.lowerBound / size)..<((range.upperBound + size - 1) / size) { fromBitmaps.insert(block) }
        }
        let expected = Set((0..<count).filter { !free.contains($0) })
        #expect(fromBitmaps == expected, "\(fromBitmaps.symmetricDifference(expected).sorted().prefix(20))")
        // The deleted file's 3 MiB are free, so not among them.
        #expect(Int64(expected.count) * size < Int64(count) * size - (3 << 20))
        #expect(used.headBytes >= 2048 && used.headBytes <= 4 * size + 1024)
        // Merged, the ranges still cover every used block, in fewer pieces.
        let merged = try #require(try Self.used(image, mergeGap: 1 << 16))
        #expect(merged.ranges.count <= used.ranges.count)
        #expect(used.ranges.allSatisfy { range in merged.ranges.contains { $0.lowerBound <= range.lowerBound && range.upperBound <= $0.upperBound } })
    }

    @Test func aJournalThatNeedsReplayingMeansTheBitmapsAreNotTrusted() throws {
        let dir = try TempDirectory("used-blocks-recover")
        let image = dir.file("image.ext3")
        try FixtureImage.ext3(at: image, mebibytes: 16)
        #expect(try Self.used(image) != nil)
        #expect(try run(["debugfs", "-w", "-R", "feature needs_recovery", image]).status == 0)
        #expect(try Self.used(image) == nil)
    }

    @Test func aFileThatIsNoImageGivesNothing() throws {
        let dir = try TempDirectory("used-blocks-none")
        let path = dir.file("plain")
        try Data(repeating: 0x41, count: 64 << 10).write(to: URL(fileURLWithPath: path))
        #expect(try Self.used(path) == nil)
    }
}
