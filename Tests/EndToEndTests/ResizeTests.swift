import Foundation
import Testing
import TestSupport

/// `overlay resize` keeps an image's share of inodes: in place where resize2fs brings them,
/// else by rebuilding the image, which must carry everything over. Judged by dumpe2fs, e2fsck,
/// debugfs and, as root, a read-only kernel mount listed with find and getfattr.
@Suite(.serialized, .requires(executable: "debugfs"), .requires(executable: "e2fsck"), .requires(executable: "dumpe2fs"),
       .requires(executable: "resize2fs"))
struct ResizeTests {
    func overlay(_ arguments: [String]) throws -> ProcessResult {
        try run([product("overlay")] + arguments, environment: ["PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"], timeout: 300)
    }

    func inodeCount(_ image: String) throws -> Int {
        try #require(Int(try CreateOracle.superblock(image)["Inode count"] ?? ""))
    }

    func sha256(_ path: String) throws -> String {
        try run(["sha256sum", path]).stdout.split(separator: " ").first.map(String.init) ?? ""
    }

    /// stderr is one line naming `mention`, and the image's bytes are what they were.
    func expectRefused(_ result: ProcessResult, mentioning mention: String, image: String, hash: String,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(result.status != 0, "\(result)", sourceLocation: sourceLocation)
        #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stderr.contains(mention), "\(result.stderr)", sourceLocation: sourceLocation)
        #expect(try sha256(image) == hash, "the image is unchanged", sourceLocation: sourceLocation)
    }

    /// mount -o loop, tried again a few times: with other tests setting up loop devices at the
    /// same time, mount can pick one that is taken just then ("already mounted or busy").
    func mountLoop(_ image: String, at mountPoint: String, options: String) throws {
        var mounted = try run(["mount", "-o", "loop,\(options)", image, mountPoint])
        for _ in 0..<5 where mounted.status != 0 && mounted.stderr.contains("busy") {
            usleep(500_000)
            mounted = try run(["mount", "-o", "loop,\(options)", image, mountPoint])
        }
        try #require(mounted.status == 0, "\(mounted)")
    }

    /// Everything a user can see of the image, through a read-only kernel mount without atime
    /// updates: every entry's type, mode, owner, size, links, times, allocated blocks and link
    /// target; every extended attribute; every file's bytes (as a hash).
    func view(_ image: String, at mountPoint: String) throws -> (listing: String, xattrs: String, contents: String) {
        try mountLoop(image, at: mountPoint, options: "ro,noatime")
        defer { _ = try? run(["umount", mountPoint]) }
        let listing = try run(["find", ".", "-printf", "%p %y %m %U %G %s %n %T@ %A@ %C@ %b %l\n"], currentDirectory: mountPoint)
        let xattrs = try run(["getfattr", "-h", "-R", "-d", "-m", "-", "-e", "hex", "."], currentDirectory: mountPoint)
        let contents = try run(["sh", "-c", "find . -type f -exec sha256sum {} + | sort; find . \\( -type f -o -type d \\) -exec lsattr -d {} + | sort"],
                               currentDirectory: mountPoint)
        let blocks = xattrs.stdout.components(separatedBy: "\n\n").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        return (listing.stdout.split(separator: "\n").sorted().joined(separator: "\n"),
                blocks.filter { !$0.isEmpty }.sorted().joined(separator: "\n\n"), contents.stdout)
    }

    @Test(.requiresRoot, .requires(executable: "getfattr"), .requires(executable: "setfattr"), .requires(executable: "python3"))
    func aRebuildKeepsEveryFileAndItsMetadata() throws {
        let dir = try TempDirectory("resize-rebuild")
        let image = dir.file("env.ext3")
        let made = try run([product("create-overlay"), "-s", "64", "-n", "1", "-o", image])
        try #require(made.status == 0, "\(made)")
        let mountPoint = dir.file("m")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        // What overlayfs and a job leave in a writable image: all kinds of inodes, whiteouts,
        // an opaque directory, hard links, xattrs, a sparse file, odd modes and owners.
        let script = """
            set -e
            cd "$2/upper"
            head -c 3000000 /dev/urandom > big
            printf hello > f; chmod 4755 f; chown 1234:567 f; ln f hard; mkdir d; ln f d/third
            setfattr -n user.note -v value f; setfattr -n security.label -v sec f
            ln -s f short; ln -s "$(printf 'p%.0s' $(seq 1 200))" long; chown -h 42:43 long
            mknod gone c 0 0; mknod disk b 8 1; mkfifo fifo
            python3 -c "import socket; socket.socket(socket.AF_UNIX).bind('sock')"
            mkdir -p opaque/inner; setfattr -n trusted.overlay.opaque -v y opaque; chmod 1777 opaque
            setfattr -n user.overlay.opaque -v y opaque
            truncate -s 10M sparse; printf data | dd of=sparse bs=4096 seek=100 conv=notrunc 2>/dev/null
            printf log > log; chattr +a log; chattr +d big; chattr +i d
            touch -h -d '2001-02-03 04:05:06.123456789' f short
            chmod 0700 "$2/work"; chown 7:8 "$2/upper"; chmod 0750 "$2/upper"
            mkdir -p "$2/work/work"; chmod 000 "$2/work/work"
            cd /; umount "$2"
            """
        try mountLoop(image, at: mountPoint, options: "noatime")
        let filled = try run(["sh", "-c", script, "sh", image, mountPoint])
        if filled.status != 0 { _ = try? run(["umount", mountPoint]) }
        try #require(filled.status == 0, "\(filled)")
        try #require(chmod(image, 0o640) == 0 && chown(image, 1234, 567) == 0)
        let before = try view(image, at: mountPoint)
        let inodesBefore = try inodeCount(image)

        let resized = try overlay(["resize", image, "-s", "128M"])
        #expect(resized.status == 0, "\(resized)")
        #expect(resized.stdout.contains("grown from 64 MiB to 128 MiB and rebuilt"), "\(resized.stdout)")
        #expect(resized.stdout.contains("inodes 1,008 -> "), "\(resized.stdout)")
        #expect(try inodeCount(image) >= 2 * inodesBefore)
        #expect(try CreateOracle.superblock(image)["Block count"] == "\(128 * 256)")
        #expect(try CreateOracle.fsckClean(image))
        let after = try view(image, at: mountPoint)
        #expect(after.listing == before.listing)
        #expect(after.xattrs == before.xattrs)
        #expect(after.contents == before.contents)
        #expect(before.listing.contains("./upper/sparse f 644 0 0 10485760 1"), "\(before.listing)")
        #expect(before.listing.contains("./upper/gone c 644"), "\(before.listing)")
        #expect(before.xattrs.contains("trusted.overlay.opaque=0x79"), "\(before.xattrs)")
        let flags = before.contents.split(separator: "\n").first { $0.hasSuffix(" ./upper/log") }.map { $0.prefix(while: { $0 != " " }) }
        #expect(flags?.contains("a") == true, "append-only, as chattr set it: \(before.contents)")
        let file = try #require(CreateOracle.fileStat(image))
        #expect(file.st_mode & 0o7777 == 0o640 && file.st_uid == 1234 && file.st_gid == 567)
        #expect(try dir.listing() == ["env.ext3", "m"], "nothing left beside the image")
    }

    @Test(.requires(executable: "python3"))
    func moreFilesWithoutGrowingAndRefusalsChangeNothing() throws {
        let dir = try TempDirectory("resize-files")
        let image = dir.file("env.ext3")
        let made = try run([product("create-overlay"), "-s", "64", "-n", "1", "-o", image])
        try #require(made.status == 0, "\(made)")
        let payload = dir.file("payload")
        try Data((0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }).write(to: URL(fileURLWithPath: payload))
        let commands = ["write \(payload) upper/data", "symlink upper/link data", "mkdir upper/sub", "ln upper/data upper/sub/again",
                        "set_inode_field upper/data links_count 2", "cd upper", "mknod gone c 0 0"].joined(separator: "\n")
        try commands.write(toFile: dir.file("cmds"), atomically: true, encoding: .utf8)
        let wrote = try run(["debugfs", "-w", "-f", dir.file("cmds"), image])
        try #require(wrote.status == 0 && (try CreateOracle.fsckClean(image)), "\(wrote)")
        let hash = try sha256(image)

        try expectRefused(try overlay(["resize", image, "-s", "32"]), mentioning: "shrinking is not supported", image: image, hash: hash)
        try expectRefused(try overlay(["resize", image, "-n", "100000"]), mentioning: "it holds at most", image: image, hash: hash)
        try expectRefused(try overlay(["resize", image, "-s", "64", "-n", "50000"]), mentioning: "(-n ", image: image, hash: hash)
        do {
            let writer = try LockHolder(image, write: true)
            try expectRefused(try overlay(["resize", image, "-n", "3"]), mentioning: "mounted writable now", image: image, hash: hash)
            try expectRefused(try overlay(["resize", image, "-s", "128"]), mentioning: "mounted writable now", image: image, hash: hash)
            writer.release()
        }
        try #require(link(image, dir.file("second.ext3")) == 0)
        try expectRefused(try overlay(["resize", image, "-n", "3"]), mentioning: "has 2 names (hard links)", image: image, hash: hash)
        try #require(unlink(dir.file("second.ext3")) == 0)
        #expect(try dir.listing().filter { $0.hasPrefix(".") }.isEmpty)

        let more = try overlay(["resize", image, "-n", "3"])
        #expect(more.status == 0, "\(more)")
        #expect(more.stdout.contains("kept at 64 MiB and rebuilt with more inodes"), "\(more.stdout)")
        #expect(try inodeCount(image) >= 3000)
        #expect(CreateOracle.fileStat(image)?.st_size == 64 << 20)
        #expect(try CreateOracle.fsckClean(image))
        let copied = try run(["debugfs", "-R", "dump upper/sub/again \(dir.file("out"))", image])
        #expect(copied.status == 0)
        #expect(FileManager.default.contentsEqual(atPath: dir.file("out"), andPath: payload))
        let stat = try run(["debugfs", "-R", "stat upper/data", image]).stdout
        #expect(stat.contains("Links: 2"), "\(stat)")
        #expect(try run(["debugfs", "-R", "stat upper/link", image]).stdout.contains("Fast link dest: \"data\""))
        #expect(try run(["debugfs", "-R", "stat upper/gone", image]).stdout.contains("Device major/minor number: 00:00"))
        #expect(try dir.listing().sorted() == ["cmds", "env.ext3", "out", "payload"], "nothing left beside the image")
        let again = try overlay(["resize", image, "-n", "2"])
        #expect(again.status == 0 && again.stdout.contains("nothing to do"), "\(again)")
        // Through a symbolic link, the image it names is rebuilt; the link stays.
        try #require(symlink("env.ext3", dir.file("link.ext3")) == 0)
        let linked = try overlay(["resize", dir.file("link.ext3"), "-n", "4"])
        #expect(linked.status == 0, "\(linked)")
        #expect(try inodeCount(image) >= 4000)
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: dir.file("link.ext3")) == "env.ext3")
    }

    @Test(.requiresRoot)
    func aRebuildWithoutRoomIsRefusedAndLeavesNothing() throws {
        let dir = try TempDirectory("resize-room")
        let small = dir.file("small")
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        let mounted = try run(["mount", "-t", "tmpfs", "-o", "size=14m", "tmpfs", small])
        try #require(mounted.status == 0, "\(mounted)")
        defer { _ = try? run(["umount", small]) }
        let image = small + "/env.ext3"
        let made = try run([product("create-overlay"), "-s", "16", "-n", "1", "-o", image])
        try #require(made.status == 0, "\(made)")
        let payload = dir.file("payload")
        try Data(repeating: 0x5A, count: 9 << 20).write(to: URL(fileURLWithPath: payload))
        let wrote = try run(["debugfs", "-w", "-R", "write \(payload) upper/data", image])
        try #require(wrote.status == 0, "\(wrote)")
        let hash = try sha256(image)
        try expectRefused(try overlay(["resize", image, "-n", "3"]), mentioning: "free some space there first", image: image, hash: hash)
        #expect(try FileManager.default.contentsOfDirectory(atPath: small) == ["env.ext3"])
    }

    /// An ordinary user whose image lies in a directory they cannot write: the rebuild fails
    /// when it makes the new image, in one line, and the image is as it was.
    @Test(.requiresRoot)
    func aRebuildThatCannotWriteBesideTheImageChangesNothing() throws {
        let dir = try TempDirectory("resize-readonly")
        let user = try TestUser.ensure()
        let image = dir.file("env.ext3")
        let made = try run([product("create-overlay"), "-s", "32", "-n", "1", "-o", image])
        try #require(made.status == 0, "\(made)")
        try #require(chown(image, user.uid, user.gid) == 0 && chmod(dir.path, 0o755) == 0)
        let hash = try sha256(image)
        let result = try user.run([product("overlay"), "resize", image, "-n", "3"])
        try expectRefused(result, mentioning: "Permission denied", image: image, hash: hash)
        #expect(result.stderr.contains("the image is unchanged"), "\(result.stderr)")
        #expect(try dir.listing() == ["env.ext3"])
    }

    /// A rebuild killed while it writes the new image: the old image is as it was, and nothing
    /// is left beside it (the new one is an unnamed file until the rename).
    @Test(arguments: [SIGTERM, SIGKILL])
    func aKilledRebuildLeavesTheImageAndNothingElse(_ signalNumber: Int32) throws {
        let dir = try TempDirectory("resize-killed")
        let image = dir.file("env.ext3")
        let made = try run([product("create-overlay"), "-s", "128", "-n", "1", "-o", image])
        try #require(made.status == 0, "\(made)")
        let payload = dir.file("payload")
        let block = Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try #require(FileManager.default.createFile(atPath: payload, contents: nil))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: payload))
        for _ in 0..<48 { handle.write(block) }
        try handle.close()
        let wrote = try run(["debugfs", "-w", "-R", "write \(payload) upper/data", image])
        try #require(wrote.status == 0, "\(wrote)")
        try FileManager.default.removeItem(atPath: payload)

        var caught = 0
        for attempt in 0..<6 where caught == 0 {
            let hash = try sha256(image)
            let tool = try SpawnedProcess([product("overlay"), "resize", image, "-n", "\(3 + attempt)"], captureOutput: false)
            var building = false
            while !tool.hasExited {
                if isBuilding(tool.pid, in: dir.path) {
                    building = true
                    tool.signal(signalNumber)
                    break
                }
                usleep(2_000)
            }
            let result = tool.wait(timeout: 120)
            if building && result.signal == signalNumber {
                caught += 1
                #expect(try sha256(image) == hash, "the image is as it was")
                #expect(try dir.listing() == ["env.ext3"], "nothing left beside it")
                #expect(try CreateOracle.fsckClean(image))
            } else {
                #expect(result.status == 0, "it finished first: \(result)")
                #expect(try dir.listing() == ["env.ext3"])
            }
        }
        #expect(caught > 0, "never caught a rebuild while it wrote the new image")
    }

    /// Whether `pid` has the new image open: an unnamed file in `directory` (`/proc/PID/fd`
    /// shows `DIR/#INODE (deleted)`) or a hidden temporary one.
    func isBuilding(_ pid: pid_t, in directory: String) -> Bool {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        return fds.contains { fd in
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) ?? ""
            return target.hasPrefix(directory + "/#") || target.hasPrefix(directory + "/.env.ext3.tmp-")
        }
    }
}
