import Foundation
import Testing
import TestSupport
import Ext3

/// create-overlay as a user runs it: the built executable, real e2fsprogs and the kernel.
@Suite(.serialized, .requires(executable: "e2fsck"), .requires(executable: "debugfs"))
struct CreateOverlayTests {
    static let mebibyte: UInt64 = 1 << 20
    var tool: String { product("create-overlay") }

    @Test func defaultNameAndOneLineSayingWhereTheSpaceWent() throws {
        let directory = try TempDirectory("create-default")
        let result = try run([tool, "-s", "500", "-n", "700"], currentDirectory: directory.path)
        #expect(result.status == 0, "\(result)")
        let line = result.stdout.trimmingCharacters(in: .newlines)
        #expect(!line.contains("\n"), "one line: \(result.stdout)")
        #expect(line.hasPrefix("overlay-500M-700K.ext3: 500 MiB, 700,"), "\(line)")
        #expect(line.contains("inode tables take 170.9 MiB"), "\(line)")
        #expect(line.contains("journal 16 MiB"), "\(line)")
        #expect(line.contains("left for data"), "\(line)")
        #expect(result.stderr.isEmpty)
        #expect(try directory.listing() == ["overlay-500M-700K.ext3"])
        let image = directory.file("overlay-500M-700K.ext3")
        #expect(CreateOracle.fileStat(image)?.st_size == 500 << 20)
        #expect(try CreateOracle.fsckClean(image))
        #expect(try CreateOracle.superblock(image)["Filesystem features"]
                == "has_journal ext_attr resize_inode dir_index filetype sparse_super large_file")
    }

    @Test func jsonIsTheSameSummaryAsOneObject() throws {
        let directory = try TempDirectory("create-json")
        let result = try run([tool, "-s", "5G", "-n", "3200", "-o", "env.ext3", "--json"], currentDirectory: directory.path)
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout.split(separator: "\n").count == 1)
        let summary = try JSONDecoder().decode(Ext3.Summary.self, from: Data(result.stdout.utf8))
        #expect(summary.path == "env.ext3")
        #expect(summary.sizeBytes == 5 << 30)
        #expect(summary.inodeCount >= 3_200_000)
        #expect(summary.blockSize == 4096)
        let info = try #require(CreateOracle.fileStat(directory.file("env.ext3")))
        #expect(summary.allocatedBytes == UInt64(info.st_blocks) * 512)
        // The point of it: 5 GiB and 3.2M inodes, yet at most 16 MiB on disk (mke2fs: ~69 MiB).
        #expect(summary.allocatedBytes <= 16 * Self.mebibyte, "\(summary.allocatedBytes) bytes allocated")
        #expect(summary.dataBytes + summary.inodeTableBytes + summary.journalBytes < summary.sizeBytes)
    }

    @Test func createDirAndOwnerAsRoot() throws {
        let directory = try TempDirectory("create-dirs")
        let result = try run([tool, "-s", "64", "-o", "a.ext3", "--create-dir", "/opt/conda", "--create-dir", "data"],
                             currentDirectory: directory.path)
        #expect(result.status == 0, "\(result)")
        let image = directory.file("a.ext3")
        for path in ["/upper", "/work", "/upper/opt", "/upper/opt/conda", "/upper/data"] {
            let owner = try #require(try CreateOracle.owner(image, path), "\(path) missing")
            #expect(owner.uid == getuid() && owner.gid == getgid() && owner.mode == 0o755, "\(path): \(owner)")
        }
    }

    struct BadInput: Sendable, CustomTestStringConvertible {
        let arguments: [String]
        /// What the one line must name.
        let mentions: String
        var testDescription: String { arguments.joined(separator: " ") }
    }

    static let badInputs: [BadInput] = [
        BadInput(arguments: ["-s", "0"], mentions: "invalid size '0'"),
        BadInput(arguments: ["-s=-5"], mentions: "-s -5: a size cannot be negative"),
        BadInput(arguments: ["-s", "-5"], mentions: "-s -5: a size cannot be negative"),
        BadInput(arguments: ["-s", "abc"], mentions: "invalid size 'abc'"),
        BadInput(arguments: ["-s", "4"], mentions: "at least 8 MiB"),
        BadInput(arguments: ["-s", "100", "-n", "0"], mentions: "invalid file count '0'"),
        BadInput(arguments: ["-s", "64", "-n", "700"], mentions: "at most 240,128 (-n 240)"),
        BadInput(arguments: ["-n", "5"], mentions: "no size given: give the image size with -s"),
        BadInput(arguments: ["-s", "64", "-o", "existing.ext3"], mentions: "existing.ext3 already exists"),
        BadInput(arguments: ["-s", "64", "-o", "missing/x.ext3"], mentions: "directory missing does not exist"),
        BadInput(arguments: ["-s", "64", "--create-dir", "../up"], mentions: "'../up'"),
        BadInput(arguments: ["-s", "64", "--bogus"], mentions: "--bogus"),
        BadInput(arguments: ["-s", "64", "-o", ""], mentions: "names no file"),
        BadInput(arguments: ["-s", "64", "-o", "sub/"], mentions: "names no file"),
    ]

    @Test(arguments: badInputs)
    func badInputFailsWithOneLineAndChangesNothing(_ bad: BadInput) throws {
        let directory = try TempDirectory("create-bad")
        let existing = directory.file("existing.ext3")
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: existing))
        let before = CreateOracle.listing(directory.path)

        let result = try run([tool] + bad.arguments, currentDirectory: directory.path)
        #expect(result.status != 0)
        #expect(result.stdout.isEmpty, "\(result)")
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "one line: \(result.stderr)")
        #expect(result.stderr.contains(bad.mentions), "\(result.stderr)")
        #expect(CreateOracle.listing(directory.path) == before)
        #expect(try String(contentsOfFile: existing, encoding: .utf8) == "keep me")
    }

    @Test(.requiresRoot) func unwritableDirectoryFailsCleanly() throws {
        let user = try TestUser.ensure()
        let directory = try TempDirectory("create-unwritable")  // root's, 0755
        let result = try user.run([tool, "-s", "64"], currentDirectory: directory.path)
        #expect(result.status != 0)
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        #expect(result.stderr.contains("overlay-64M-4K.ext3") && result.stderr.contains("not writable"), "\(result.stderr)")
        #expect(try directory.listing() == [])
    }

    /// A filesystem too small for the metadata: one line, and the half-built file is gone.
    @Test(.requiresRoot, .requires(executable: "mount"))
    func fullDiskFailsCleanly() throws {
        let directory = try TempDirectory("create-full")
        let small = directory.file("small")
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: false)
        let mount = try run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", small])
        try #require(mount.status == 0, "\(mount)")
        defer { _ = try? run(["umount", small]) }
        let result = try run([tool, "-s", "500", "-n", "700", "-o", small + "/env.ext3"])
        #expect(result.status != 0)
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        #expect(result.stderr.contains("cannot create \(small)/env.ext3: No space left on device"), "\(result.stderr)")
        #expect(CreateOracle.listing(small) == [])
    }

    /// A directory the test user owns, inside a fresh temporary directory.
    func userDirectory(_ user: TestUser, in parent: TempDirectory) throws -> String {
        let path = parent.file("home")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        #expect(chown(path, user.uid, user.gid) == 0)
        return path
    }

    @Test(.requiresRoot) func ordinaryUserOwnsUpperAndWork() throws {
        let user = try TestUser.ensure()
        let parent = try TempDirectory("create-user")
        let home = try userDirectory(user, in: parent)
        let result = try user.run([tool, "-s", "64", "-n", "10", "--create-dir", "opt/conda"], currentDirectory: home)
        #expect(result.status == 0, "\(result)")
        let image = home + "/overlay-64M-10K.ext3"
        #expect(CreateOracle.fileStat(image)?.st_uid == user.uid)
        for path in ["/upper", "/work", "/upper/opt/conda"] {
            let owner = try #require(try CreateOracle.owner(image, path))
            #expect(owner.uid == user.uid && owner.gid == user.gid && owner.mode == 0o755, "\(path): \(owner)")
        }
        #expect(try CreateOracle.owner(image, "/")?.uid == 0)
        #expect(try CreateOracle.fsckClean(image))
    }

    @Test(.requiresRoot) func fakerootMakesUpperRoots() throws {
        let user = try TestUser.ensure()
        let parent = try TempDirectory("create-fakeroot")
        let home = try userDirectory(user, in: parent)
        let result = try user.run([tool, "-s", "64", "--fakeroot", "-o", "f.ext3"], currentDirectory: home)
        #expect(result.status == 0, "\(result)")
        let owner = try #require(try CreateOracle.owner(home + "/f.ext3", "/upper"))
        #expect(owner.uid == 0 && owner.gid == 0)
        #expect(CreateOracle.fileStat(home + "/f.ext3")?.st_uid == user.uid)
    }

    @Test(.requiresRoot) func underSudoTheCallerOwnsEverything() throws {
        let user = try TestUser.ensure()
        let directory = try TempDirectory("create-sudo")
        let environment = ["PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "SUDO_UID": "\(user.uid)", "SUDO_GID": "\(user.gid)",
                           "SUDO_USER": user.name]
        let result = try run([tool, "-s", "64", "-o", "s.ext3"], environment: environment, currentDirectory: directory.path)
        #expect(result.status == 0, "\(result)")
        let image = directory.file("s.ext3")
        let owner = try #require(try CreateOracle.owner(image, "/upper"))
        #expect(owner.uid == user.uid && owner.gid == user.gid)
        let info = try #require(CreateOracle.fileStat(image))
        #expect(info.st_uid == user.uid && info.st_gid == user.gid)
    }

    /// The kernel's ext3 driver mounts it, takes 5000 files, and leaves it fsck-clean.
    @Test(.requiresRoot, .requires(executable: "mount"))
    func kernelLoopMountTakesThousandsOfFiles() throws {
        let directory = try TempDirectory("create-mount")
        let created = try run([tool, "-s", "256", "-n", "20", "-o", "m.ext3"], currentDirectory: directory.path)
        try #require(created.status == 0, "\(created)")
        let image = directory.file("m.ext3")
        let mountPoint = directory.file("mnt")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: false)
        let mount = try run(["mount", "-o", "loop", "-t", "ext3", image, mountPoint])
        try #require(mount.status == 0, "\(mount)")
        var mounted = true
        defer { if mounted { _ = try? run(["umount", mountPoint]) } }

        let mounts = try String(contentsOfFile: "/proc/mounts", encoding: .utf8)
        #expect(mounts.split(separator: "\n").contains { $0.contains(" \(mountPoint) ext3 ") }, "mounted as ext3")
        let upper = mountPoint + "/upper"
        for index in 0..<5000 {
            let sub = upper + "/d\(index / 500)"
            if index % 500 == 0 { try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: false) }
            #expect(FileManager.default.createFile(atPath: sub + "/f\(index)", contents: Data("file \(index)\n".utf8)))
        }
        #expect(FileManager.default.createFile(atPath: upper + "/big", contents: Data(count: 8 << 20)))
        let umount = try run(["umount", mountPoint])
        #expect(umount.status == 0, "\(umount)")
        mounted = umount.status != 0

        #expect(try CreateOracle.fsckClean(image))
        let sb = try CreateOracle.superblock(image)
        let total = try #require(sb["Inode count"].flatMap { Int($0) })
        let free = try #require(sb["Free inodes"].flatMap { Int($0) })
        #expect(total - free >= 5000 + 10 + 1 + 13)  // files, directories, big, what was there
    }

    /// SIGTERM while the image is being built: the temporary file goes, nothing is left.
    @Test(arguments: [SIGTERM, SIGKILL])
    func interruptedRunLeavesNothing(_ signalNumber: Int32) throws {
        let directory = try TempDirectory("create-interrupt")
        let target = directory.file("big.ext3")
        var interrupted = 0
        for _ in 0..<8 where interrupted < 2 {
            // Big enough that building takes a while after the file being built appears.
            let pid = try spawnWithDefaultSignals([tool, "-s", "50G", "-n", "10000", "-o", target])
            var sawTemporary = false
            var status: Int32 = 0
            while waitpid(pid, &status, WNOHANG) == 0 {
                if isBuilding(pid, in: directory.path) {
                    sawTemporary = true
                    kill(pid, signalNumber)
                    waitpid(pid, &status, 0)
                    break
                }
            }
            let signal = status & 0x7f
            if sawTemporary && signal != 0 {
                #expect(signal == signalNumber)
                #expect(CreateOracle.listing(directory.path) == [], "nothing left after signal \(signalNumber)")
                interrupted += 1
            } else {
                // It finished first: then the image is whole and alone.
                #expect(status == 0)
                #expect(CreateOracle.listing(directory.path) == ["big.ext3"])
                try FileManager.default.removeItem(atPath: target)
            }
        }
        #expect(interrupted > 0, "never caught a run while it was building")
    }

    /// Whether `pid` has the image open while it builds it: a hidden temporary file in
    /// `directory`, or an unnamed one (O_TMPFILE: `/proc/PID/fd` shows `DIR/#INODE (deleted)`).
    func isBuilding(_ pid: pid_t, in directory: String) -> Bool {
        if CreateOracle.listing(directory).contains(where: { $0.hasPrefix(".big.ext3.tmp-") }) { return true }
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        return fds.contains { fd in
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) ?? ""
            return target.hasPrefix(directory + "/#")
        }
    }

    /// posix_spawn with SIGINT/SIGTERM/SIGHUP at their defaults and nothing blocked, as from a
    /// shell (a test runner's children may inherit blocked signals); output to /dev/null.
    func spawnWithDefaultSignals(_ argv: [String]) throws -> pid_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var arguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for argument in arguments { free(argument) } }
        var pid: pid_t = 0
        let code = posix_spawn(&pid, argv[0], &actions, &attributes, &arguments, environ)
        guard code == 0 else { throw SpawnError(description: "posix_spawn \(argv[0]): \(String(cString: strerror(code)))") }
        return pid
    }
}

struct SpawnError: Error, CustomStringConvertible {
    let description: String
}
