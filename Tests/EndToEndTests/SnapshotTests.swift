import Foundation
import Testing
import TestSupport

/// `overlay snapshot` and `run-overlay --snapshot/--writable-dir`, as built executables, with
/// real git and (as root, or as an ordinary user through fuse2fs/fuse-overlayfs) real mounts.
struct SnapshotScene {
    let directory: TempDirectory
    /// The project a job works in (the working directory), and the store, kept apart.
    let project: String
    let store: String

    init() throws {
        directory = try TempDirectory("snapshot")
        project = directory.file("project")
        store = directory.file("store")
        try FileManager.default.createDirectory(atPath: project + "/sub", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: project + "/out", withIntermediateDirectories: true)
        try "v1\n".write(toFile: project + "/a.txt", atomically: false, encoding: .utf8)
        try "gone later\n".write(toFile: project + "/sub/b.txt", atomically: false, encoding: .utf8)
    }

    func environment(_ extra: [String: String] = [:]) -> [String: String] {
        var env = ["PATH": NativeScene.path, "HOME": directory.path, "LANG": "C.UTF-8", "OVERLAY_SNAPSHOTS": store,
                   "XDG_CONFIG_HOME": directory.file(".config"), "OVERLAY_SYSTEM_CONFIG": directory.file(".system-config"),
                   "OVERLAY_RUNTIME": "native"]
        for (key, value) in extra { env[key] = value }
        return env
    }

    @discardableResult
    func run(_ tool: String, _ arguments: [String], in cwd: String? = nil, environment extra: [String: String] = [:]) throws -> ProcessResult {
        try TestSupport.run([product(tool)] + arguments, environment: environment(extra), currentDirectory: cwd ?? project, timeout: 60)
    }

    /// The host changes after the snapshot: an edit, a new file, a deletion.
    func changeTheHost() throws {
        try "v2\n".write(toFile: project + "/a.txt", atomically: false, encoding: .utf8)
        try "late\n".write(toFile: project + "/new.txt", atomically: false, encoding: .utf8)
        try FileManager.default.removeItem(atPath: project + "/sub/b.txt")
    }

    func storeFiles() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: store)) ?? []).filter { $0 != ".jobs" }.sorted()
    }

    func jobFiles() -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: store + "/.jobs")) ?? []
    }

    func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }
    func read(_ path: String) -> String? { try? String(contentsOfFile: path, encoding: .utf8) }

    /// What the job prints: a.txt, the project's entries, sub/b.txt; then it writes inside and
    /// outside the writable dir.
    static let jobScript = "cat a.txt; ls -A; cat sub/b.txt; echo job > job.txt; echo kept > out/result.txt"
    static let jobSees = "v1\na.txt\nout\nsub\ngone later\n"
}

@Suite("Snapshots: frozen inputs (root)", .serialized, .requiresRoot,
       .requires(executable: "e2fsck"), .requires(executable: "debugfs"))
struct SnapshotRunTests {
    @Test func theJobSeesTheDirectoryAsCapturedAndOnlyWritableDirsPersist() throws {
        let scene = try SnapshotScene()
        let made = try scene.run("overlay", ["snapshot", "create", "--quiet", "inputs", scene.project])
        #expect(made.status == 0 && made.stdout == "inputs\n", "\(made)")
        let image = scene.store + "/inputs.ext3"
        let before = try Data(contentsOf: URL(fileURLWithPath: image))
        try scene.changeTheHost()
        let result = try scene.run("run-overlay", ["--snapshot", "inputs", "--writable-dir", "out", "--", "sh", "-c", SnapshotScene.jobScript])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == SnapshotScene.jobSees, "\(result)")
        #expect(!scene.exists(scene.project + "/job.txt"), "a write outside the writable dir reached the host")
        #expect(scene.read(scene.project + "/out/result.txt") == "kept\n")
        #expect(scene.read(scene.project + "/a.txt") == "v2\n")
        #expect(try Data(contentsOf: URL(fileURLWithPath: image)) == before, "the snapshot changed")
        #expect(try FixtureImage.isClean(image))
        #expect(scene.storeFiles() == ["inputs.ext3"], "\(scene.storeFiles())")
    }

    @Test func writableDirWritesShowAtOnceAndRemovingTheSnapshotInUseIsRefused() throws {
        let scene = try SnapshotScene()
        #expect(try scene.run("overlay", ["snapshot", "create", "inputs", scene.project]).status == 0)
        let job = try SpawnedProcess([product("run-overlay"), "--snapshot", "inputs", "--writable-dir", scene.project + "/out", "--",
                                      "sh", "-c", "echo live > out/now.txt; echo ready; sleep 60"],
                                     environment: scene.environment(), currentDirectory: scene.project)
        #expect(job.readLine(timeout: 30) == "ready")
        #expect(scene.read(scene.project + "/out/now.txt") == "live\n")
        let removal = try scene.run("overlay", ["snapshot", "rm", "inputs"])
        #expect(removal.status == 1, "\(removal)")
        #expect(removal.stderr.contains("is in use by a running job"), "\(removal)")
        #expect(removal.stderr.split(separator: "\n").count == 1, "\(removal)")
        #expect(scene.exists(scene.store + "/inputs.ext3"))
        job.signal(SIGTERM)
        _ = job.wait(timeout: 30)
        let later = try scene.run("overlay", ["snapshot", "rm", "inputs"])
        #expect(later.status == 0, "\(later)")
        #expect(scene.storeFiles().isEmpty)
    }

    @Test func writableDirAloneSnapshotsTheWorkingDirectoryForTheJob() throws {
        let scene = try SnapshotScene()
        let result = try scene.run("run-overlay", ["--writable-dir", "out", "--", "sh", "-c",
                                                   "echo job > job.txt; echo kept > out/result.txt; cat a.txt"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "v1\n")
        #expect(!scene.exists(scene.project + "/job.txt"))
        #expect(scene.read(scene.project + "/out/result.txt") == "kept\n")
        #expect(scene.jobFiles().isEmpty, "the job's own snapshot was left: \(scene.jobFiles())")
        #expect(scene.storeFiles().isEmpty)
    }

    @Test func anImageSnapshotStaysUnchangedWhileTheOriginalIsWritten() throws {
        let scene = try SnapshotScene()
        let original = scene.directory.file("env.ext3")
        #expect(try scene.run("create-overlay", ["-s", "32", "-o", original]).status == 0)
        let made = try scene.run("overlay", ["snapshot", "create", "frozen-env", original])
        #expect(made.status == 0, "\(made)")
        let written = try scene.run("run-overlay", ["-o", original, "--", "sh", "-c", "mkdir -p /opt/snaptest && echo new > /opt/snaptest/file"])
        #expect(written.status == 0, "\(written)")
        #expect(try FixtureImage.cat(original, "upper/opt/snaptest/file") == "new\n")
        let snapshot = scene.store + "/frozen-env.ext3"
        #expect(try FixtureImage.cat(snapshot, "upper/opt/snaptest/file") == nil, "the snapshot saw a later write")
        #expect(try FixtureImage.isClean(snapshot))
        let info = try scene.run("overlay", ["snapshot", "info", "frozen-env"])
        #expect(info.stdout.contains("captured: \(original) (image)"), "\(info)")
        // While a job has the original mounted writable, it is not captured.
        let job = try SpawnedProcess([product("run-overlay"), "-o", original, "--", "sh", "-c", "echo ready; sleep 60"],
                                     environment: scene.environment(), currentDirectory: scene.project)
        #expect(job.readLine(timeout: 30) == "ready")
        let refused = try scene.run("overlay", ["snapshot", "create", "busy", original])
        #expect(refused.status == 1 && refused.stderr.contains("mounted writable by a running job"), "\(refused)")
        job.signal(SIGTERM)
        _ = job.wait(timeout: 30)
        #expect(scene.storeFiles() == ["frozen-env.ext3"])
    }
}

@Suite("Snapshots: an ordinary user", .serialized, .requiresRoot,
       .requires(executable: "fuse2fs"), .requires(executable: "fuse-overlayfs"), .requires(executable: "runuser"))
struct SnapshotUserTests {
    @Test func anOrdinaryUsersJobSeesTheSnapshotAndKeepsWritableDirs() throws {
        let user = try TestUser.ensure()
        TestUser.openFuseToUsers()
        let scene = try SnapshotScene()
        for path in [scene.directory.path, scene.project, scene.project + "/sub", scene.project + "/out",
                     scene.project + "/a.txt", scene.project + "/sub/b.txt"] {
            chown(path, user.uid, user.gid)
        }
        let env = ["OVERLAY_SNAPSHOTS": scene.store, "XDG_CONFIG_HOME": scene.directory.file(".config"),
                   "OVERLAY_SYSTEM_CONFIG": scene.directory.file(".system-config"), "OVERLAY_RUNTIME": "native"]
        let made = try user.run([product("overlay"), "snapshot", "create", "mine", scene.project], environment: env)
        #expect(made.status == 0, "\(made)")
        try scene.changeTheHost()
        let result = try user.run([product("run-overlay"), "--snapshot", "mine", "--writable-dir", "out", "--",
                                   "sh", "-c", SnapshotScene.jobScript], currentDirectory: scene.project, environment: env, timeout: 60)
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == SnapshotScene.jobSees, "\(result)")
        #expect(!scene.exists(scene.project + "/job.txt"))
        #expect(scene.read(scene.project + "/out/result.txt") == "kept\n")
    }
}

@Suite("Snapshots: git", .requires(executable: "git"), .requires(executable: "debugfs"))
struct SnapshotGitTests {
    func git(_ arguments: [String], in repository: String) throws -> String {
        let result = try TestSupport.run(["git", "-C", repository] + arguments,
                                         environment: ["PATH": NativeScene.path, "HOME": repository, "GIT_CONFIG_NOSYSTEM": "1"])
        #expect(result.status == 0, "git \(arguments): \(result)")
        return result.stdout
    }

    /// Every non-directory path under `upper/<root>` in the image, as `git ls-tree -r --name-only` lists them.
    func files(in image: String, under root: String) throws -> [String] {
        var found: [String] = []
        func walk(_ inside: String, _ relative: String) throws {
            let listing = try TestSupport.run(["debugfs", "-R", "ls -p \"\(inside)\"", image])
            for line in listing.stdout.split(separator: "\n") {
                let fields = line.split(separator: "/", omittingEmptySubsequences: false)
                guard fields.count >= 7, let mode = Int(fields[2], radix: 8) else { continue }
                let name = String(fields[5])
                guard name != ".", name != ".." else { continue }
                let path = relative.isEmpty ? name : relative + "/" + name
                if mode & 0o170000 == 0o040000 { try walk(inside + "/" + name, path) } else { found.append(path) }
            }
        }
        try walk("upper" + root, "")
        return found.sorted()
    }

    @Test func theBranchHoldsTheDirtyTreeWhileTheRepositoryIsUntouched() throws {
        let scene = try SnapshotScene()
        let repo = scene.project
        _ = try git(["init", "-q"], in: repo)
        _ = try git(["config", "user.email", "ada@example.org"], in: repo)
        _ = try git(["config", "user.name", "Ada"], in: repo)
        try "*.log\n".write(toFile: repo + "/.gitignore", atomically: false, encoding: .utf8)
        _ = try git(["add", "-A"], in: repo)
        _ = try git(["commit", "-q", "-m", "start"], in: repo)
        try "edited\n".write(toFile: repo + "/a.txt", atomically: false, encoding: .utf8)        // unstaged
        try "staged\n".write(toFile: repo + "/staged.txt", atomically: false, encoding: .utf8)
        _ = try git(["add", "staged.txt"], in: repo)                                                // staged
        try "untracked\n".write(toFile: repo + "/sub/new.txt", atomically: false, encoding: .utf8) // untracked
        try "ignored\n".write(toFile: repo + "/run.log", atomically: false, encoding: .utf8)       // ignored
        let status = try git(["status", "--porcelain"], in: repo)
        let index = try Data(contentsOf: URL(fileURLWithPath: repo + "/.git/index"))
        let head = try git(["rev-parse", "HEAD"], in: repo)
        let stash = try git(["stash", "list"], in: repo)

        // Branch names for the next seconds are taken: the snapshot must pick another, never fail.
        var taken: [String] = []
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyyMMdd-HHmmss"
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.locale = Locale(identifier: "en_US_POSIX")
        // One base time, so that the taken seconds leave no gap however slow each `git branch` is.
        let base = Date()
        for offset in -10..<60 {
            let name = "job-" + formatter.string(from: base.addingTimeInterval(Double(offset)))
            _ = try git(["branch", name], in: repo)
            taken.append(name)
        }
        let made = try scene.run("overlay", ["snapshot", "create", "--git", "--branch-prefix", "job-", "--quiet"], in: repo + "/sub")
        #expect(made.status == 0, "\(made)")
        let branch = made.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(branch.hasSuffix("-2") && taken.contains(String(branch.dropLast(2))), "\(branch), taken: \(taken.first ?? "") ...")
        let again = try scene.run("overlay", ["snapshot", "create", "--git", "--branch-prefix", "job-", "--quiet"], in: repo)
        let second = again.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(again.status == 0 && second != branch && !second.isEmpty, "\(again)")

        #expect(try git(["show", "\(branch):a.txt"], in: repo) == "edited\n")
        #expect(try git(["show", "\(branch):staged.txt"], in: repo) == "staged\n")
        #expect(try git(["show", "\(branch):sub/new.txt"], in: repo) == "untracked\n")
        #expect(try git(["rev-parse", "\(branch)^"], in: repo) == head)
        let listed = try git(["ls-tree", "-r", "--name-only", branch], in: repo).split(separator: "\n").map(String.init).sorted()
        #expect(!listed.contains("run.log"))
        let image = scene.store + "/\(branch).ext3"
        #expect(try files(in: image, under: repo) == listed)

        #expect(try git(["status", "--porcelain"], in: repo) == status)
        #expect(try Data(contentsOf: URL(fileURLWithPath: repo + "/.git/index")) == index, "the index changed")
        #expect(try git(["rev-parse", "HEAD"], in: repo) == head)
        #expect(try git(["stash", "list"], in: repo) == stash)
        let info = try scene.run("overlay", ["snapshot", "info", branch])
        #expect(info.stdout.contains("git: branch \(branch), commit "), "\(info)")
    }

    @Test func pushSendsTheBranchAndAFailedPushLeavesNothing() throws {
        let scene = try SnapshotScene()
        let repo = scene.project
        let remote = scene.directory.file("remote.git")
        _ = try git(["init", "-q", "--bare", remote], in: scene.directory.path)
        _ = try git(["init", "-q"], in: repo)
        _ = try git(["remote", "add", "origin", remote], in: repo)
        let pushed = try scene.run("overlay", ["snapshot", "create", "--git", "--push", "--quiet", "run-1"], in: repo)
        #expect(pushed.status == 0, "\(pushed)")
        #expect(try git(["branch", "--list", "run-1"], in: remote).contains("run-1"))
        let info = try scene.run("overlay", ["snapshot", "info", "run-1", "--json"])
        #expect(info.stdout.contains("\"pushed\":true"), "\(info)")

        _ = try git(["remote", "set-url", "origin", scene.directory.file("missing.git")], in: repo)
        let failed = try scene.run("overlay", ["snapshot", "create", "--git", "--push", "--quiet", "run-2"], in: repo)
        #expect(failed.status == 1, "\(failed)")
        #expect(failed.stderr.hasPrefix("error: --push: cannot push run-2"), "\(failed)")
        #expect(failed.stderr.split(separator: "\n").count == 1, "\(failed)")
        #expect(try git(["branch", "--list", "run-2"], in: repo).isEmpty, "the branch of a failed snapshot was kept")
        #expect(scene.storeFiles() == ["run-1.ext3"], "\(scene.storeFiles())")
    }

    @Test func outsideARepositoryItIsOneLineAndNothingIsLeft() throws {
        let scene = try SnapshotScene()
        let result = try scene.run("overlay", ["snapshot", "create", "--git"], in: scene.directory.path)
        #expect(result.status == 1, "\(result)")
        #expect(result.stderr.hasPrefix("error: --git: ") && result.stderr.contains("not inside a git repository"), "\(result)")
        #expect(result.stderr.split(separator: "\n").count == 1)
        #expect(scene.storeFiles().isEmpty)
    }
}

@Suite("Snapshots: bad input")
struct SnapshotBadInputTests {
    @Test(arguments: [
        (["snapshot", "info", "nope"], "no snapshot named 'nope'"),
        (["snapshot", "rm", "nope"], "no snapshot named 'nope'"),
        (["snapshot", "create", "x", "does-not-exist"], "does-not-exist does not exist"),
        (["snapshot", "create", "a/b", "."], "snapshot name 'a/b' is not usable"),
        (["snapshot", "create", ".hidden", "."], "snapshot name '.hidden' is not usable"),
    ])
    func isOneLineAndLeavesNothing(arguments: [String], expected: String) throws {
        let scene = try SnapshotScene()
        let result = try scene.run("overlay", arguments)
        #expect(result.status != 0, "\(result)")
        #expect(result.stderr.contains(expected), "\(result)")
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result)")
        #expect(scene.storeFiles().isEmpty, "\(scene.storeFiles())")
    }

    @Test func rmByPathRemovesOnlySnapshots() throws {
        let scene = try SnapshotScene()
        let result = try scene.run("overlay", ["snapshot", "rm", scene.project + "/a.txt"])
        #expect(result.status == 1, "\(result)")
        #expect(result.stderr.contains("is not a snapshot"), "\(result)")
        #expect(scene.exists(scene.project + "/a.txt"))
        #expect(try scene.run("overlay", ["snapshot", "create", "byPath", "sub"]).status == 0)
        let removed = try scene.run("overlay", ["snapshot", "rm", scene.store + "/byPath.ext3"])
        #expect(removed.status == 0, "\(removed)")
        #expect(scene.storeFiles().isEmpty)
    }

    @Test func anUnknownSnapshotIsRefusedBeforeAnythingRuns() throws {
        let scene = try SnapshotScene()
        let result = try scene.run("run-overlay", ["--snapshot", "nope", "--", "touch", scene.project + "/ran"])
        #expect(result.status == 1, "\(result)")
        #expect(result.stderr.contains("no snapshot named 'nope'"), "\(result)")
        #expect(!scene.exists(scene.project + "/ran"))
    }

    @Test func anExistingNameIsRefusedAndKept() throws {
        let scene = try SnapshotScene()
        #expect(try scene.run("overlay", ["snapshot", "create", "one", "."]).status == 0)
        let before = try Data(contentsOf: URL(fileURLWithPath: scene.store + "/one.ext3"))
        let again = try scene.run("overlay", ["snapshot", "create", "one", "sub"])
        #expect(again.status == 1 && again.stderr.contains("snapshot 'one' exists already"), "\(again)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: scene.store + "/one.ext3")) == before)
        let listed = try scene.run("overlay", ["snapshot", "list", "--json"])
        #expect(listed.stdout.contains("\"name\":\"one\""), "\(listed)")
        #expect(listed.stdout.contains("\"path\":\"\(scene.project)\""), "\(listed)")
    }
}

@Suite("Snapshots: image copies", .requires(executable: "debugfs"), .requires(executable: "e2fsck"))
struct SnapshotImageCopyTests {
    static func allocatedBytes(_ path: String) -> Int64 {
        var info = Glibc.stat()
        return stat(path, &info) == 0 ? Int64(info.st_blocks) * 512 : -1
    }

    /// Without reflink (this test's scratch filesystem: ext4 or tmpfs), the copy takes the
    /// blocks the image's bitmaps mark in use: a deleted file's blocks, still allocated in the
    /// image file, are left out, and the copy is the same filesystem.
    @Test func aDeletedFilesBlocksAreNotCopiedAndTheCopyIsTheSameFilesystem() throws {
        let scene = try SnapshotScene()
        let data = scene.directory.file("data")
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        try "kept\n".write(toFile: data + "/keep.txt", atomically: false, encoding: .utf8)
        try Data((0..<(8 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 12) })
            .write(to: URL(fileURLWithPath: data + "/big.bin"))
        let original = scene.directory.file("env.ext3")
        let made = try scene.run("create-overlay", ["--from", data, "--to", "/data", "-s", "64", "-o", original])
        #expect(made.status == 0, "\(made)")
        #expect(try run(["debugfs", "-w", "-R", "rm /upper/data/big.bin", original]).status == 0)
        #expect(try FixtureImage.isClean(original))

        let created = try scene.run("overlay", ["snapshot", "create", "--quiet", "copy", original])
        #expect(created.status == 0 && created.stdout == "copy\n", "\(created)")
        let snapshot = scene.store + "/copy.ext3"
        let before = Self.allocatedBytes(original), after = Self.allocatedBytes(snapshot)
        #expect(before > 8 << 20 && after >= 0 && after < before - (7 << 20), "image \(before) bytes on disk, copy \(after)")
        #expect(try FixtureImage.isClean(snapshot))
        #expect(try FixtureImage.cat(snapshot, "upper/data/keep.txt") == "kept\n")
        #expect(try FixtureImage.cat(snapshot, "upper/data/big.bin") == nil)
        let listed = try scene.run("overlay", ["ls", "-l", snapshot, "/upper/data"])
        let listedOriginal = try scene.run("overlay", ["ls", "-l", original, "/upper/data"])
        #expect(listed.status == 0 && listed.stdout == listedOriginal.stdout, "\(listed) vs \(listedOriginal)")
        let info = try scene.run("overlay", ["snapshot", "info", "copy"])
        #expect(info.status == 0 && info.stdout.contains("captured: \(original) (image)"), "\(info)")
    }
}
