import Foundation
import Testing
import TestSupport

/// Damaged and hostile images (people share these files) fed to `overlay info`, `ls` and `cat`:
/// each run exits (status 0 or a one-line error), is never killed by a signal and never hangs.
@Suite(.serialized, .requires(executable: "debugfs"), .requires(executable: "mke2fs"))
struct HostileImageTests {
    var tool: String { product("overlay") }

    /// Every command on the image behaves: exits by itself within the limit, with one error line
    /// when it fails.
    func expectBehaves(_ image: String, _ label: String) throws {
        let commands: [[String]] = [
            ["info", image], ["info", "--json", image], ["ls", image, "/"], ["ls", "-l", image, "/upper/opt/tool"],
            ["cat", image, "/upper/opt/tool/data.bin"], ["cat", image, "/upper/opt/tool/readme.txt"],
        ]
        for arguments in commands {
            // stdout to /dev/null (exec: the status and any signal are the tool's own).
            let result = try run(["/bin/sh", "-c", "exec \"$0\" \"$@\" >/dev/null", tool] + arguments, timeout: 20)
            let what = "\(label): overlay \(arguments.joined(separator: " "))"
            #expect(!result.timedOut, "\(what) hung")
            #expect(result.signal == nil, "\(what) crashed: \(result)")
            if result.status != 0 {
                let lines = result.stderr.split(separator: "\n")
                #expect(lines.count == 1, "\(what): one error line, got \(result.stderr)")
            }
        }
    }

    /// Where the pieces of the fixture live: group descriptors, inode table, a directory block.
    struct Layout {
        var descriptors: Range<Int>
        var inodeTable: Range<Int>
        var directoryBlock: Range<Int>
    }

    func layout(_ image: String) throws -> Layout {
        let dump = try run(["dumpe2fs", image]).stdout
        guard let line = dump.split(separator: "\n").first(where: { $0.contains("Inode table at ") }),
              let start = line.split(separator: " ").last(where: { $0.contains("-") })?.split(separator: "-").first.flatMap({ Int($0) })
        else { throw StandInError(description: "no inode table in dumpe2fs output") }
        let blocks = try run(["debugfs", "-R", "blocks /upper/opt/tool", image]).stdout
        guard let dirBlock = blocks.split(whereSeparator: { $0 == " " || $0 == "\n" }).first.flatMap({ Int($0) }) else {
            throw StandInError(description: "no directory block: \(blocks)")
        }
        // Inodes 1-32 (root is 2, the fixture's files follow 11).
        return Layout(descriptors: 4096..<4096 + 64, inodeTable: start * 4096..<start * 4096 + 32 * 256,
                      directoryBlock: dirBlock * 4096..<dirBlock * 4096 + 4096)
    }

    @Test func corruptedImagesNeverCrashOrHang() throws {
        let dir = try TempDirectory("hostile")
        let pristine = dir.file("pristine.ext3")
        try TreeFixture.make(at: pristine)
        let original = try [UInt8](Data(contentsOf: URL(fileURLWithPath: pristine)))
        let pieces = try layout(pristine)
        var random = SeededGenerator(seed: 20_240_501)  // the same corruptions on every run
        let image = dir.file("damaged.ext3")

        // Each case: a length to cut the image to, or bytes to flip (offset, xor mask).
        var cases: [(label: String, length: Int, flips: [(Int, UInt8)])] = []
        for length in [0, 1000, 2048, 3 * 4096, original.count / 2, original.count - 4096] {
            cases.append(("truncated to \(length) bytes", length, []))
        }
        let regions: [(String, Range<Int>, Int)] = [
            ("superblock", 1024..<2048, 8), ("group descriptors", pieces.descriptors, 6),
            ("inode table", pieces.inodeTable, 8), ("directory block", pieces.directoryBlock, 6),
        ]
        for (name, region, count) in regions {
            for index in 0..<count {
                let flips = (0...random.below(8)).map { _ in
                    (region.lowerBound + random.below(region.count), UInt8(truncatingIfNeeded: 1 + random.below(255)))
                }
                cases.append(("\(name) #\(index) (bytes \(flips.map(\.0)))", original.count, flips))
            }
        }
        for (label, length, flips) in cases {
            var bytes = Array(original[0..<length])
            for (offset, mask) in flips { bytes[offset] ^= mask }
            try Data(bytes).write(to: URL(fileURLWithPath: image))
            try expectBehaves(image, label)
        }
    }

    struct Hostile: Sendable, CustomTestStringConvertible {
        let name: String
        /// debugfs commands that make the image hostile.
        let commands: [String]
        let command: [String]
        let mentions: String
        var testDescription: String { name }
    }

    static let hostile: [Hostile] = [
        Hostile(name: "directory of 2^40 bytes", commands: ["set_inode_field upper/opt/tool size 0x10000000000"],
                command: ["ls", "/upper/opt/tool"], mentions: "directory inode"),
        Hostile(name: "file claiming 2^40 bytes", commands: ["set_inode_field upper/opt/tool/data.bin size 0x10000000000"],
                command: ["cat", "/upper/opt/tool/data.bin"], mentions: "more than the whole filesystem holds"),
        Hostile(name: "directory with more blocks than its size", commands: ["set_inode_field upper/opt/tool size 0"],
                command: ["ls", "/upper/opt/tool"], mentions: "claims 0 bytes"),
        Hostile(name: "symlink claiming a huge target", commands: ["set_inode_field upper/opt/tool/long size 0x100000"],
                command: ["ls", "-l", "/upper/opt/tool"], mentions: "-byte target"),
        Hostile(name: "hard link to a file claiming 128 TiB", commands: ["unlink upper/opt/tool/readme.txt", "link upper/opt/tool/data.bin upper/opt/tool/readme.txt", "set_inode_field upper/opt/tool/data.bin size 0x7fffffffffff"],
                command: ["cat", "/upper/opt/tool/readme.txt"], mentions: "is damaged"),
        Hostile(name: "symlink loop", commands: ["cd upper", "symlink loop loop"],
                command: ["ls", "/upper/loop/x"], mentions: "is a symbolic link to loop"),
        Hostile(name: "directory that contains itself", commands: ["link upper/opt upper/opt/tool/again"],
                command: ["ls", "/upper/opt/tool/again/tool/again/tool"], mentions: ""),
    ]

    @Test(arguments: hostile)
    func hostileImagesGetOneLine(_ case: Hostile) throws {
        let dir = try TempDirectory("hostile-one")
        let image = dir.file("hostile.ext3")
        try TreeFixture.make(at: image)
        let script = dir.file("cmds")
        try `case`.commands.joined(separator: "\n").write(toFile: script, atomically: true, encoding: .utf8)
        let edited = try run(["debugfs", "-w", "-f", script, image])
        try #require(edited.status == 0, "\(edited)")
        let result = try run([tool, `case`.command[0], image] + `case`.command.dropFirst(), timeout: 20)
        #expect(!result.timedOut && result.signal == nil, "\(result)")
        if `case`.mentions.isEmpty {
            #expect(result.status == 0, "\(result)")
        } else {
            #expect(result.status != 0, "\(result)")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
            #expect(result.stderr.contains(`case`.mentions), "\(result.stderr)")
        }
        try expectBehaves(image, `case`.name)
    }
}
