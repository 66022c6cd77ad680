import Foundation
import Testing
import TestSupport

/// `overlay info/ls/cat/check/resize` as a user runs them, judged by dumpe2fs, debugfs, e2fsck
/// and a kernel read-only mount of the same image.
@Suite(.serialized, .requires(executable: "debugfs"), .requires(executable: "e2fsck"), .requires(executable: "dumpe2fs"))
struct OverlayToolTests {
    var tool: String { product("overlay") }

    func overlay(_ arguments: [String], timeout: TimeInterval = 120) throws -> ProcessResult {
        try run([tool] + arguments, environment: ["PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "TZ": "UTC", "LC_ALL": "C"],
                timeout: timeout)
    }

    func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    /// stderr is one line naming `mention`.
    func expectOneLineError(_ result: ProcessResult, mentioning mention: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status != 0, "\(result)", sourceLocation: sourceLocation)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "one line: \(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stderr.contains(mention), "\(result.stderr)", sourceLocation: sourceLocation)
    }

    @Test func infoJSONAgreesWithDumpe2fs() throws {
        let dir = try TempDirectory("info-json")
        let image = dir.file("env.ext3")
        let made = try run([product("create-overlay"), "-s", "96", "-n", "20", "-o", image, "--create-dir", "opt/conda"])
        try #require(made.status == 0, "\(made)")
        let result = try overlay(["info", image, "--json"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout.split(separator: "\n").count == 1)
        let info = try json(result.stdout)
        let fields = try CreateOracle.superblock(image)
        #expect("\(info["blockSize"] ?? "")" == fields["Block size"])
        #expect("\(info["inodeCount"] ?? "")" == fields["Inode count"])
        #expect("\(info["inodesFree"] ?? "")" == fields["Free inodes"])
        #expect("\(info["freeBlocks"] ?? "")" == fields["Free blocks"])
        #expect("\(info["blockCount"] ?? "")" == fields["Block count"])
        #expect((info["features"] as? [String])?.joined(separator: " ") == fields["Filesystem features"])
        #expect(info["apptainerAccepts"] as? Bool == true)
        let stat = try #require(CreateOracle.fileStat(image))
        #expect(info["sizeBytes"] as? Int == 96 << 20)
        #expect(info["allocatedBytes"] as? Int == Int(stat.st_blocks) * 512)
        let upper = try #require(info["upper"] as? [String: Any])
        let owner = try #require(try CreateOracle.owner(image, "/upper"))
        #expect(upper["uid"] as? Int == Int(owner.uid) && upper["gid"] as? Int == Int(owner.gid) && upper["mode"] as? String == "0755")
        #expect(info["lock"] as? String == "none")
        // root, lost+found (4 blocks), upper, work, opt, conda.
        #expect(info["dataBytesUsed"] as? Int == 9 * 4096)
        let free = try #require(Int(fields["Free blocks"] ?? ""))
        #expect(info["dataBytesFree"] as? Int == free * 4096)
    }

    @Test func infoSaysWhyApptainerRefusesAnExt4Image() throws {
        let dir = try TempDirectory("info-ext4")
        let image = dir.file("x.ext4")
        try FixtureImage.mkfs(image, mebibytes: 16, type: "ext4")
        let result = try overlay(["info", image])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout.contains("Apptainer: refuses it: ext4 features Apptainer does not accept: "), "\(result.stdout)")
        #expect(result.stdout.contains("extent"), "\(result.stdout)")
        #expect(result.stdout.contains("upper/: missing"), "\(result.stdout)")
    }

    @Test(.requires(executable: "python3"))
    func infoReportsLocksAndWhetherOthersCanShare() throws {
        let dir = try TempDirectory("info-lock")
        let image = dir.file("env.ext3")
        try FixtureImage.ext3(at: image, mebibytes: 16)
        chmod(image, 0o644)
        do {
            let writer = try LockHolder(image, write: true)
            let info = try json(try overlay(["info", image, "--json"]).stdout)
            #expect(info["lock"] as? String == "write")
            #expect(info["sharedReadOnlyNow"] as? Bool == false)
            let text = try overlay(["info", image]).stdout
            #expect(text.contains("lock: write (mounted writable now"), "\(text)")
            #expect(text.contains("once the writer is done"), "\(text)")
            writer.release()
        }
        do {
            let reader = try LockHolder(image, write: false)
            let info = try json(try overlay(["info", image, "--json"]).stdout)
            #expect(info["lock"] as? String == "read")
            #expect(info["readableBy"] as? String == "everyone")
            #expect(info["sharedReadOnlyNow"] as? Bool == true)
            reader.release()
        }
        chmod(image, 0o640)
        #expect(try json(try overlay(["info", image, "--json"]).stdout)["readableBy"] as? String == "group")
        chmod(image, 0o600)
        let info = try json(try overlay(["info", image, "--json"]).stdout)
        #expect(info["lock"] as? String == "none")
        #expect(info["readableBy"] as? String == "owner")
        #expect(info["sharedReadOnlyNow"] as? Bool == false)
        #expect(try overlay(["info", image]).stdout.contains("chmod o+r"))
    }

    @Test(.requiresRoot, .requires(executable: "mount"))
    func lsAndCatAgreeWithAKernelMount() throws {
        let dir = try TempDirectory("ls-mount")
        let image = dir.file("tree.ext3")
        try TreeFixture.make(at: image)
        let mount = try ReadOnlyMount(image, at: dir.file("mnt"))
        defer { try? mount.close() }
        let mountpoint = mount.point

        func normalized(_ text: String) -> [String] {
            text.split(separator: "\n").filter { !$0.hasPrefix("total ") }
                .map { $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
        }
        for inside in ["/", "/upper", "/upper/opt", "/upper/opt/tool", "/upper/with space"] {
            let ours = try overlay(["ls", "-l", image, inside])
            #expect(ours.status == 0, "\(ours)")
            let kernel = try run(["ls", "-lnA", "--time-style=long-iso", mountpoint + inside],
                                 environment: ["TZ": "UTC", "LC_ALL": "C", "PATH": "/usr/bin:/bin"])
            #expect(normalized(ours.stdout) == normalized(kernel.stdout), "\(inside)")
            let short = try overlay(["ls", image, inside])
            let kernelShort = try run(["ls", "-A", mountpoint + inside], environment: ["LC_ALL": "C", "PATH": "/usr/bin:/bin"])
            #expect(short.stdout == kernelShort.stdout, "\(inside)")
        }
        for file in ["/upper/opt/tool/readme.txt", "/upper/opt/tool/data.bin", "/upper/with space/é.txt"] {
            let ours = try run([tool, "cat", image, file])
            #expect(ours.status == 0, "\(ours.stderr)")
            let kernel = try Data(contentsOf: URL(fileURLWithPath: mountpoint + file))
            #expect(Data(ours.stdout.utf8) == kernel || file.hasSuffix(".bin"), "\(file)")
        }
        // Binary content: compare bytes through a file, not a decoded string.
        let out = dir.file("data.out")
        let binary = try run(["/bin/sh", "-c", "\"$0\" cat \"$1\" /upper/opt/tool/data.bin > \"$2\"", tool, image, out])
        #expect(binary.status == 0, "\(binary)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(contentsOf: URL(fileURLWithPath: mountpoint + "/upper/opt/tool/data.bin")))
    }

    @Test func catAgreesWithDebugfs() throws {
        let dir = try TempDirectory("cat-debugfs")
        let image = dir.file("tree.ext3")
        try TreeFixture.make(at: image)
        let ours = try overlay(["cat", image, "upper/opt/tool/readme.txt"])
        #expect(ours.status == 0)
        #expect(ours.stdout == (try FixtureImage.cat(image, "/upper/opt/tool/readme.txt")))
        let listed = try overlay(["ls", image, "/upper/opt/tool"]).stdout.split(separator: "\n").map(String.init)
        // debugfs ls prints "  12  (12) name   13  (20) other ...": names follow the "(rec_len)".
        let tokens = try run(["debugfs", "-R", "ls /upper/opt/tool", image]).stdout.split(whereSeparator: { $0 == " " || $0 == "\n" })
        let names = zip(tokens, tokens.dropFirst()).filter { $0.0.hasPrefix("(") && $0.0.hasSuffix(")") }.map { String($0.1) }
        #expect(listed == names.filter { $0 != "." && $0 != ".." }.sorted())
    }

    @Test func lsAndCatRefuseWithOneLine() throws {
        let dir = try TempDirectory("ls-errors")
        let image = dir.file("tree.ext3")
        try TreeFixture.make(at: image)
        expectOneLineError(try overlay(["ls", image, "/opt/tool"]), mentioning: "the container's files are under /upper: /upper/opt/tool")
        expectOneLineError(try overlay(["cat", image, "/upper/opt"]), mentioning: "/upper/opt is a directory inside the image")
        expectOneLineError(try overlay(["cat", image, "/upper/opt/tool/short"]), mentioning: "symbolic link to readme.txt")
        expectOneLineError(try overlay(["ls", image, "/upper/opt/tool/readme.txt/x"]), mentioning: "is not a directory")
        expectOneLineError(try overlay(["cat", image, "/upper/opt/tool/null"]), mentioning: "not a regular file")
        expectOneLineError(try overlay(["ls", dir.file("missing.ext3")]), mentioning: "missing.ext3")
        expectOneLineError(try overlay(["info", dir.path]), mentioning: "is not a file")
        let text = dir.file("notes.txt")
        try String(repeating: "not an image\n", count: 200).write(toFile: text, atomically: true, encoding: .utf8)
        expectOneLineError(try overlay(["info", text]), mentioning: "not an ext2/ext3/ext4 image")
    }

    @Test func checkFindsDamageAndRepairFixesIt() throws {
        let dir = try TempDirectory("check")
        let image = dir.file("env.ext3")
        try FixtureImage.ext3(at: image, mebibytes: 16, files: ["a.txt": "hello\n"])
        let clean = try overlay(["check", image])
        #expect(clean.status == 0, "\(clean)")
        #expect(clean.stdout.hasPrefix("\(image): clean ("), "\(clean.stdout)")
        #expect(clean.stdout.split(separator: "\n").count == 1)

        _ = try run(["debugfs", "-w", "-R", "set_inode_field upper/a.txt links_count 5", image])
        try #require(!(try FixtureImage.isClean(image)))
        let damaged = try overlay(["check", image])
        expectOneLineError(damaged, mentioning: "damaged: e2fsck found problems")
        #expect(damaged.stderr.contains("overlay check --repair"), "\(damaged.stderr)")
        #expect(!(try FixtureImage.isClean(image)), "check without --repair changed nothing")

        let repaired = try overlay(["check", "--repair", image])
        #expect(repaired.status == 0, "\(repaired)")
        #expect(repaired.stdout.contains("repaired"), "\(repaired.stdout)")
        #expect(try FixtureImage.isClean(image))
        #expect(try FixtureImage.cat(image, "/upper/a.txt") == "hello\n")
    }

    @Test(.requires(executable: "python3"))
    func checkRefusesAnImageInUse() throws {
        let dir = try TempDirectory("check-lock")
        let image = dir.file("env.ext3")
        try FixtureImage.ext3(at: image, mebibytes: 16)
        do {
            let writer = try LockHolder(image, write: true)
            expectOneLineError(try overlay(["check", image]), mentioning: "mounted writable now")
            expectOneLineError(try overlay(["check", "--repair", image]), mentioning: "mounted writable now")
            expectOneLineError(try overlay(["resize", image, "-s", "32"]), mentioning: "mounted writable now")
            writer.release()
        }
        let reader = try LockHolder(image, write: false)
        #expect(try overlay(["check", image]).status == 0)
        expectOneLineError(try overlay(["check", "--repair", image]), mentioning: "mounted read-only now")
        reader.release()
    }

    @Test(.requires(executable: "resize2fs"))
    func resizeGrowsAndRefusesToShrink() throws {
        let dir = try TempDirectory("resize")
        let image = dir.file("env.ext3")
        let made = try run([product("create-overlay"), "-s", "64", "-o", image])
        try #require(made.status == 0, "\(made)")
        _ = try run(["debugfs", "-w", "-R", "mkdir upper/keep", image])
        let before = try CreateOracle.superblock(image)

        let grown = try overlay(["resize", image, "-s", "200M"])
        #expect(grown.status == 0, "\(grown)")
        #expect(grown.stdout.hasPrefix("\(image): grown from 64 MiB to 200 MiB"), "\(grown.stdout)")
        #expect(CreateOracle.fileStat(image)?.st_size == 200 << 20)
        let after = try CreateOracle.superblock(image)
        #expect(after["Block count"] == "\(200 * 256)")
        #expect(Int(after["Inode count"] ?? "") ?? 0 > Int(before["Inode count"] ?? "") ?? 0)
        #expect(after["Filesystem features"] == before["Filesystem features"])
        #expect(try CreateOracle.fsckClean(image))
        #expect(try CreateOracle.owner(image, "/upper/keep") != nil)

        let shrink = try overlay(["resize", image, "-s", "100"])
        expectOneLineError(shrink, mentioning: "shrinking is not supported")
        #expect(CreateOracle.fileStat(image)?.st_size == 200 << 20)
        expectOneLineError(try overlay(["resize", image, "-s", "lots"]), mentioning: "invalid size 'lots'")
    }
}
