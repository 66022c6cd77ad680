import Foundation
import Testing
import TestSupport
import Ext3
@testable import Snapshot

/// A job snapshot's copy staged in memory (StagedCopy): read while the job is stopped, written
/// after it goes on. It must be the copy the direct way gives, byte for byte, of the instant
/// of the read, whether everything fits in memory or only part of it does.
@Suite("Staged image copies", .requires(executable: "mke2fs"), .requires(executable: "debugfs"),
       .requires(executable: "e2fsck"))
struct StagedCopyTests {
    /// An image with three files of 2 MiB (more than the smallest budget).
    static func image(in directory: String) throws -> String {
        let path = directory + "/work.ext3"
        var files: [String: String] = [:]
        for index in 0..<3 {
            files["data/f\(index)"] = String(repeating: "file \(index) line of text\n", count: (2 << 20) / 19)
        }
        try FixtureImage.ext3(at: path, mebibytes: 64, files: files)
        return path
    }

    static func scratch() throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("staged-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }

    @Test(arguments: [Int64(1) << 30, Int64(1) << 20])
    func aStagedCopyIsTheDirectCopyOfTheInstantOfTheRead(budget: Int64) throws {
        let directory = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let original = try Self.image(in: directory)
        let input = open(original, O_RDONLY | O_CLOEXEC)
        #expect(input >= 0)
        defer { close(input) }
        let size = Int64(try FileManager.default.attributesOfItem(atPath: original)[.size] as! UInt64)

        let direct = open(directory + "/direct.ext3", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        defer { close(direct) }
        try SnapshotCapture.copyAllocated(from: input, to: direct, size: size, path: original)

        let staged = try #require(StagedCopy.prepare(input: input, size: size, budget: budget))
        let output = open(directory + "/staged.ext3", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        defer { close(output) }
        try staged.read(from: input, into: output, size: size, path: original)
        // The job goes on between the read and the write-out: that must not reach the copy.
        #expect(try run(["debugfs", "-w", "-R", "rm upper/data/f1", original]).status == 0)
        try staged.writeOut(to: output, path: original)

        let copied = try Data(contentsOf: URL(fileURLWithPath: directory + "/staged.ext3"))
        let expected = try Data(contentsOf: URL(fileURLWithPath: directory + "/direct.ext3"))
        #expect(copied.count == expected.count)
        #expect(copied == expected, "the staged copy differs from the direct one")
        #expect(try FixtureImage.isClean(directory + "/staged.ext3"))
        #expect(try FixtureImage.cat(directory + "/staged.ext3", "upper/data/f1")?.hasPrefix("file 1 line") == true)
        #expect(try FixtureImage.cat(original, "upper/data/f1") == nil)
    }

    /// The description is written into the copy through an editor opened once the copy's
    /// superblock and descriptors are out, before the rest.
    @Test func theCopyOpenedEarlyTakesARootFile() throws {
        let directory = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let original = try Self.image(in: directory)
        let input = open(original, O_RDONLY | O_CLOEXEC)
        defer { close(input) }
        let size = Int64(try FileManager.default.attributesOfItem(atPath: original)[.size] as! UInt64)
        let staged = try #require(StagedCopy.prepare(input: input, size: size, budget: 1 << 30))
        let output = open(directory + "/staged.ext3", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        defer { close(output) }
        try staged.read(from: input, into: output, size: size, path: original)
        let editor = try #require(try staged.writeOut(to: output, path: original, openingCopy: true))
        try editor.add(Ext3.RootFile(name: "snapshot.json", contents: Array("{}\n".utf8), owner: .root), replacing: true)
        #expect(try FixtureImage.isClean(directory + "/staged.ext3"))
        #expect(try FixtureImage.cat(directory + "/staged.ext3", "snapshot.json") == "{}\n")
        #expect(try FixtureImage.cat(directory + "/staged.ext3", "upper/data/f2")?.hasPrefix("file 2 line") == true)
    }

    @Test func noBudgetMeansNoStaging() throws {
        let directory = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let original = try Self.image(in: directory)
        let input = open(original, O_RDONLY | O_CLOEXEC)
        defer { close(input) }
        #expect(StagedCopy.prepare(input: input, size: 64 << 20, budget: 0) == nil)
    }

    @Test func theBoundIsTheLeastOfTheSettingAQuarterOfWhatIsAvailableAndHalfTheCgroupsHeadroom() {
        let gib: Int64 = 1 << 30
        #expect(StagedCopy.budget(setting: nil, available: 64 * gib, headroom: nil) == 4 * gib)
        #expect(StagedCopy.budget(setting: nil, available: 8 * gib, headroom: nil) == 2 * gib)
        #expect(StagedCopy.budget(setting: nil, available: 64 * gib, headroom: 3 * gib) == 3 * gib / 2)
        #expect(StagedCopy.budget(setting: nil, available: 64 * gib, headroom: -gib) == 0)
        #expect(StagedCopy.budget(setting: "16384", available: 128 * gib, headroom: nil) == 16 * gib)
        #expect(StagedCopy.budget(setting: "16384", available: 8 * gib, headroom: nil) == 2 * gib)
        #expect(StagedCopy.budget(setting: "0", available: 64 * gib, headroom: nil) == 0)
        #expect(StagedCopy.budget(setting: "lots", available: 64 * gib, headroom: nil) == 0)
        #expect(StagedCopy.budget(setting: nil, available: nil, headroom: nil) == 0)
        #expect(StagedCopy.budget(setting: "", available: 64 * gib, headroom: nil) == 4 * gib, "empty: as if unset")
    }
}
