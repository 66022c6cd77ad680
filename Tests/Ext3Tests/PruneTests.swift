import Foundation
import Testing
import TestSupport
@testable import Ext3

/// ImageContents.pruned(taking:): the tree a filtered job snapshot is built from, written into a
/// new image and judged with debugfs and e2fsck.
@Suite(.requires(executable: "debugfs"), .requires(executable: "mke2fs"), .requires(executable: "e2fsck"))
struct PruneTests {
    /// The names in `directory` of `image`, as debugfs lists them.
    func names(_ image: String, _ directory: String) throws -> [String] {
        let result = try run(["debugfs", "-R", "ls -p \(directory)", image])
        #expect(result.status == 0, "\(result)")
        return result.stdout.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: "/", omittingEmptySubsequences: false)
            guard fields.count >= 6 else { return nil }
            let name = String(fields[5])
            return name == "." || name == ".." ? nil : name
        }.sorted()
    }

    @Test func keepsTakenEntriesAndOnlyTheDirectoriesLeadingToThem() throws {
        let dir = try TempDirectory("prune")
        let image = try Ext3.Image(path: try ImageTreeTests().makeImage(in: dir))
        defer { try? image.close() }
        var asked: [String] = []
        let taken: Set = ["opt/tool/readme.txt", "opt/tool/short", "gone"]
        let pruned = try Ext3.ImageContents(image: image).pruned { path in
            asked.append(path)
            return taken.contains(path)
        }
        // Asked about files, links, devices and whiteouts by their path below upper/, never
        // about directories; each name of a hard-linked file on its own.
        #expect(Set(asked) == ["opt/tool/readme.txt", "opt/tool/data.bin", "opt/tool/short", "opt/tool/long", "opt/tool/fifo",
                               "opt/tool/null", "with space/é.txt", "again", "sparse", "gone"], "\(asked)")
        let output = dir.file("pruned.ext3")
        _ = try Ext3.Formatter(.init(sizeBytes: 16 << 20)).write(pruned, to: output)
        #expect(try FixtureImage.isClean(output), "the pruned image is not e2fsck-clean")
        #expect(try names(output, "/upper") == ["gone", "opt"])
        #expect(try names(output, "/upper/opt") == ["tool"])
        #expect(try names(output, "/upper/opt/tool") == ["readme.txt", "short"])
        #expect(try names(output, "/work") == [])
        let readme = try run(["debugfs", "-R", "cat /upper/opt/tool/readme.txt", output])
        #expect(readme.stdout == "hello from the overlay\n")
        // The whiteout stays a whiteout; the opaque directory stays opaque.
        let gone = try run(["debugfs", "-R", "stat /upper/gone", output])
        #expect(gone.stdout.contains("Type: character special") && gone.stdout.contains("Device major/minor number: 00:00"), "\(gone)")
        let opaque = try run(["debugfs", "-R", "ea_list /upper/opt", output])
        #expect(opaque.stdout.contains("trusted.overlay.opaque"), "\(opaque)")
    }
}
