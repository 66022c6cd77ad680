import Foundation
import Testing
import TestSupport

/// `run-overlay --snapshot-to` run by an ordinary user (FUSE mode: fuse2fs under
/// fuse-overlayfs in a user namespace): the same job snapshots as root's, cut through fuse2fs.
/// Root makes the user and opens /dev/fuse to users; the runs are the user's.
struct UserJobSnapshotScene {
    let scene: NativeScene
    let user: TestUser
    let image: String
    let snapshots: String

    init() throws {
        user = try TestUser.ensure()
        TestUser.openFuseToUsers()
        scene = try NativeScene()
        snapshots = scene.file("snaps")
        // The user's own directories: the overlay's (--resume renames a restored copy over it),
        // the snapshots', the runtime directory, and one the job writes its markers into.
        for directory in [scene.file("mine"), snapshots, scene.file("run"), scene.file("out")] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            chown(directory, user.uid, user.gid)
        }
        image = try scene.userOverlay("mine/work.ext3", for: user)
    }

    /// What the user's runs get: no configuration of this machine, the native runtime, a
    /// runtime directory of their own (the job registry).
    var environment: [String: String] {
        scene.configIsolation.merging(["XDG_RUNTIME_DIR": scene.file("run")]) { $1 }
    }

    /// Runs a tool as the user.
    @discardableResult
    func run(_ tool: String, _ arguments: [String], environment extra: [String: String] = [:]) throws -> ProcessResult {
        try user.run([product(tool)] + arguments, currentDirectory: scene.directory.path,
                     environment: environment.merging(extra) { $1 }, timeout: 120)
    }

    /// Starts run-overlay as the user in the background; setpriv execs it, so the pid is
    /// run-overlay's own and signals reach it directly.
    func start(_ arguments: [String]) throws -> SpawnedProcess {
        var env = ["HOME": user.home, "USER": user.name, "LOGNAME": user.name, "PATH": NativeScene.path, "LANG": "C.UTF-8"]
        for (key, value) in environment { env[key] = value }
        return try SpawnedProcess(["setpriv", "--reuid=\(user.uid)", "--regid=\(user.gid)", "--init-groups", "/usr/bin/env", "-i"]
                                      + env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                                      + [product("run-overlay")] + arguments,
                                  currentDirectory: scene.directory.path)
    }

    /// The job snapshots, oldest first.
    func taken() -> [String] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: snapshots)) ?? []).filter { $0.hasSuffix(".ext3") }
        func key(_ name: String) -> (String, Int) {
            let parts = name.dropLast(5).split(separator: "-")
            return (String(parts[0]), parts.count > 1 ? Int(parts[1]) ?? 0 : 1)
        }
        return names.sorted { key($0) < key($1) }.map { snapshots + "/" + $0 }
    }

    /// A file below the overlay's top in an image, read back with `overlay cat` (nil: missing).
    func cat(_ image: String, _ path: String) throws -> String? {
        let result = try TestSupport.run([product("overlay"), "cat", image, "/upper" + path], environment: scene.environment())
        return result.status == 0 ? result.stdout : nil
    }

    func write(_ name: String, _ text: String) throws -> String {
        let path = scene.file(name)
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, 0o644)
        return path
    }

    /// What dumpe2fs says of the superblock's state ("clean", "not clean", ...).
    func state(_ image: String) throws -> String {
        let dump = try TestSupport.run(["dumpe2fs", "-h", image])
        let line = dump.stdout.split(separator: "\n").first { $0.hasPrefix("Filesystem state:") } ?? ""
        return line.dropFirst("Filesystem state:".count).trimmingCharacters(in: .whitespaces)
    }

    /// After a run with snapshots: neither the file fuse2fs was flushed through nor what the
    /// FUSE library renames a file removed while open to (`.fuse_hidden...`) is in the overlay.
    func expectNoFlushFile() throws {
        let work = try workEntries(image)
        #expect(!work.contains { $0 == ".overlay-snapshot-sync" || $0.hasPrefix(".fuse_hidden") },
                "the flush file was left in the overlay: \(work)")
    }

    /// The entries of `work/` in an image (debugfs), without `.` and `..` (fuse-overlayfs makes
    /// `work/work`).
    func workEntries(_ image: String) throws -> [String] {
        let listing = try TestSupport.run(["debugfs", "-R", "ls -p work", image])
        return listing.stdout.split(separator: "\n").compactMap { line in
            let name = line.split(separator: "/", omittingEmptySubsequences: false).dropFirst(5).first.map(String.init)
            return name == "." || name == ".." || name?.isEmpty != false ? nil : name
        }
    }
}

@Suite("Job snapshots (ordinary user, FUSE mode)", .serialized, .requiresRoot, .requires(executable: "e2fsck"),
       .requires(executable: "fuse2fs"), .requires(executable: "fuse-overlayfs"), .requires(executable: "setpriv"),
       .requires(executable: "python3", "the test job is a Python script"))
struct UserJobSnapshotTests {
    /// The lockstep and block-generation jobs of the root tests (JobSnapshotTests): every
    /// snapshot must show one instant of both, cut through fuse2fs.
    /// Both ways of copying the image in the pause: staged in memory (the default) and straight
    /// to the copy (`OVERLAY_SNAPSHOT_MEMORY_MIB=0`).
    @Test(arguments: [nil, "0"])
    func periodicSnapshotsAreCleanInOrderAndEachOneInstant(memory: String?) throws {
        let s = try UserJobSnapshotScene()
        let lockstep = try s.write("lockstep.py", JobSnapshotTests.lockstep)
        let blocks = try s.write("blocks.py", JobSnapshotTests.blocks)
        let result = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "--snapshot-every", "1", "-o", s.image, "--",
                                               "sh", "-c", "python3 \(blocks) & python3 \(lockstep); wait"],
                               environment: memory.map { ["OVERLAY_SNAPSHOT_MEMORY_MIB": $0] } ?? [:])
        #expect(result.status == 0, "\(result)")
        let taken = s.taken()
        #expect(taken.count >= 2, "\(taken) \(result)")
        var previous = 0
        for snapshot in taken {
            #expect(try FixtureImage.isClean(snapshot), "\(snapshot) is not e2fsck-clean")
            // fuse2fs marks the image not clean while it holds it: the copy says clean again.
            #expect(try s.state(snapshot) == "clean", "\(snapshot)")
            // The file fuse2fs was asked to flush through is not in the snapshot.
            let work = try s.workEntries(snapshot)
            #expect(!work.contains(".overlay-snapshot-sync"), "\(snapshot): work/ holds \(work)")
            let info = try s.run("overlay", ["snapshot", "info", "--json", snapshot])
            #expect(info.stdout.contains("\"trigger\":\"interval\""), "\(info)")
            // The first snapshot may come before the job made its files.
            guard let a = try JobSnapshotTests.expectOneInstant(snapshot, after: previous, cat: { try s.cat(snapshot, $0) }) else { continue }
            previous = a
            // The user's own files, as the job wrote them.
            let owner = try TestSupport.run(["debugfs", "-R", "stat upper/jobdata/a", snapshot])
            #expect(owner.stdout.contains("User:  \(s.user.uid)   Group:  \(s.user.gid)"), "\(owner.stdout)")
        }
        #expect(previous > 0, "no snapshot showed the job's files")
        let latest = try FileManager.default.destinationOfSymbolicLink(atPath: s.snapshots + "/latest")
        #expect(s.snapshots + "/" + latest == taken.last)
        #expect(try FixtureImage.isClean(s.image))
        try s.expectNoFlushFile()
        #expect(s.scene.leftovers(waiting: 5).isEmpty, "\(s.scene.leftovers())")
    }

    @Test func sigusr1AndSigtermTakeSnapshotsAndResumeRestoresTheLatest() throws {
        let s = try UserJobSnapshotScene()
        let marker = s.scene.file("out/got-term")
        let job = try s.start(["--snapshot-to", s.snapshots, "-o", s.image, "--", "bash", "-c",
                               "trap 'echo term > \(marker); exit 7' TERM; echo v2 > /state; echo ready; while true; do sleep 0.05; done"])
        #expect(job.readLine(timeout: 60) == "ready")
        job.signal(SIGUSR1)
        for _ in 0..<200 where s.taken().isEmpty { usleep(50_000) }
        #expect(s.taken().count == 1)
        job.signal(SIGTERM)
        let ended = job.wait(timeout: 60)
        #expect(ended.status == 7, "\(ended)")
        #expect(FileManager.default.fileExists(atPath: marker), "the job did not get SIGTERM")
        let taken = s.taken()
        try #require(taken.count == 2, "\(taken)")
        let triggers = try taken.map { try s.run("overlay", ["snapshot", "info", "--json", $0]).stdout }
        #expect(triggers.first?.contains("\"trigger\":\"demand\"") == true, "\(triggers)")
        #expect(triggers.last?.contains("\"trigger\":\"interruption\"") == true, "\(triggers)")
        for snapshot in taken {
            #expect(try s.cat(snapshot, "/state") == "v2\n")
            #expect(try FixtureImage.isClean(snapshot))
        }
        // Mountable by the user as a read-only layer.
        let shown = try s.run("run-overlay", ["-o", taken[1] + ":ro", "--", "cat", "/state"])
        #expect(shown.status == 0 && shown.stdout == "v2\n", "\(shown)")
        // Written after the last snapshot: rolled back by --resume.
        #expect(try s.run("run-overlay", ["-o", s.image, "--", "sh", "-c", "echo v3 > /state; echo x > /later"]).status == 0)
        let resumed = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "--resume", "-o", s.image, "--", "sh", "-c",
                                                "cat /state; test -e /later && echo later-survived; true"])
        #expect(resumed.status == 0 && resumed.stdout == "v2\n", "\(resumed)")
        #expect(resumed.stderr.contains("rolled back"), "\(resumed)")
        #expect(try FixtureImage.isClean(s.image))
        try s.expectNoFlushFile()
        var info = stat()
        #expect(stat(s.image, &info) == 0 && info.st_uid == s.user.uid, "the restored overlay is not the user's")
        // A requeued SLURM job resumes without being told.
        #expect(try s.run("run-overlay", ["-o", s.image, "--", "sh", "-c", "echo v4 > /state"]).status == 0)
        let requeued = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "-o", s.image, "--", "cat", "/state"],
                                 environment: ["SLURM_RESTART_COUNT": "1"])
        #expect(requeued.status == 0 && requeued.stdout == "v2\n", "\(requeued)")
        #expect(s.scene.leftovers(waiting: 5).isEmpty, "\(s.scene.leftovers())")
    }

    /// A batch system's SIGTERM (SLURM's at a time limit, a preemption, a requeue) reaches every
    /// process of the job at once, the FUSE drivers too: they go on serving the job's files
    /// while its SIGTERM handler saves its work (before, they ended of it: the handler's write
    /// failed, the job died of SIGBUS). The last snapshot is taken before the job gets its
    /// signal.
    @Test func aSigtermToEveryProcessLeavesTheJobItsFilesUntilItEnds() throws {
        let s = try UserJobSnapshotScene()
        let job = try s.start(["--snapshot-to", s.snapshots, "-o", s.image, "--", "bash", "-c",
                               "trap 'sleep 0.3; echo saved > /final; exit 3' TERM; echo v1 > /state; echo ready; while true; do sleep 0.05; done"])
        defer { job.signal(SIGKILL); _ = job.wait(timeout: 10) }
        #expect(job.readLine(timeout: 60) == "ready")
        let everyProcess = [job.pid] + processDescendants(of: job.pid)
        #expect(everyProcess.count >= 6, "the tool, setup, watchdog, drivers, init, job: \(everyProcess)")
        for pid in everyProcess { kill(pid, SIGTERM) }
        let ended = job.wait(timeout: 60)
        #expect(ended.status == 3, "\(ended)")
        #expect(try s.cat(s.image, "/final") == "saved\n", "the job's last write did not reach the image")
        #expect(try FixtureImage.isClean(s.image))
        let taken = s.taken()
        try #require(taken.count == 1, "\(taken)\n\(ended)")
        let info = try s.run("overlay", ["snapshot", "info", "--json", taken[0]]).stdout
        #expect(info.contains("\"trigger\":\"interruption\""), "\(info)")
        #expect(try s.cat(taken[0], "/state") == "v1\n")
        #expect(try FixtureImage.isClean(taken[0]))
        try s.expectNoFlushFile()
        #expect(s.scene.leftovers(waiting: 5).isEmpty, "\(s.scene.leftovers())")
    }

    /// The job ended of that SIGTERM before run-overlay read its own: the last snapshot is
    /// taken after the job's end, through fuse2fs, which the signal left running.
    @Test func aSigtermThatEndedTheJobFirstStillTakesTheLastSnapshot() throws {
        let s = try UserJobSnapshotScene()
        let ended = try endedBeforeItsSigtermWasRead(s.start(["--snapshot-to", s.snapshots, "-o", s.image, "--", "bash", "-c",
                                                             "echo v1 > /state; echo ready; while true; do sleep 0.05; done"]))
        #expect(ended.status == 128 + SIGTERM, "\(ended)")
        #expect(ended.stderr.contains("(interruption, taken after the job ended)"), "\(ended)")
        let taken = s.taken()
        try #require(taken.count == 1, "no last snapshot: \(taken)\n\(ended)")
        #expect(try s.cat(taken[0], "/state") == "v1\n")
        #expect(try FixtureImage.isClean(taken[0]))
        #expect(try FixtureImage.isClean(s.image))
        try s.expectNoFlushFile()
        #expect(s.scene.leftovers(waiting: 5).isEmpty, "\(s.scene.leftovers())")
    }

    /// With a writable dir (copied by a child process, which cannot start once the job's PID
    /// namespace is gone) that snapshot is not taken: one line says why, status 175, nothing
    /// left in the snapshot directory.
    @Test func aSnapshotWithWritableDirsAfterTheJobEndedIsRefusedInOneLine() throws {
        let s = try UserJobSnapshotScene()
        let out = s.scene.file("out")
        let ended = try endedBeforeItsSigtermWasRead(s.start(["--snapshot-to", s.snapshots, "--writable-dir", out, "-o", s.image, "--",
                                                             "bash", "-c", "echo v1 > /state; echo ready; while true; do sleep 0.05; done"]))
        #expect(ended.status == 175, "\(ended)")
        #expect(ended.stderr.contains("the job ended before its last snapshot could pause it"), "\(ended)")
        #expect(s.taken().isEmpty, "\(s.taken())")
        let left = (try? FileManager.default.contentsOfDirectory(atPath: s.snapshots)) ?? []
        #expect(left.isEmpty, "\(left)")
        #expect(try FixtureImage.isClean(s.image))
        #expect(s.scene.leftovers(waiting: 5).isEmpty, "\(s.scene.leftovers())")
    }

    @Test func filtersAndKeepWorkForAnOrdinaryUser() throws {
        let s = try UserJobSnapshotScene()
        let result = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "--snapshot-every", "1", "--snapshot-keep", "2",
                                               "--snapshot-include", #"out/log\..*"#, "-o", s.image, "--", "sh", "-c",
                                               "mkdir -p /out; echo skip > /out/data; for i in 1 2 3 4 5 6 7 8; do echo $i > /out/log.1; sleep 0.5; done"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stderr.split(separator: "\n").filter { $0.hasPrefix("snapshot ") }.count >= 3, "\(result)")
        let taken = s.taken()
        #expect(taken.count == 2, "\(taken)")
        for snapshot in taken {
            #expect(try FixtureImage.isClean(snapshot), "\(snapshot) is not e2fsck-clean")
            #expect(try s.cat(snapshot, "/out/log.1") != nil, "\(snapshot)")
            #expect(try s.cat(snapshot, "/out/data") == nil, "\(snapshot) holds a file the filter leaves out")
        }
        #expect(try s.cat(s.image, "/out/data") == "skip\n")
    }

    @Test func writableDirsAreInAnOrdinaryUsersSnapshots() throws {
        let s = try UserJobSnapshotScene()
        let out = s.scene.file("out")
        let result = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "--snapshot-every", "1", "--writable-dir", out,
                                               "--snapshot-exclude", "skip", "-o", s.image, "--", "sh", "-c",
                                               "echo in-overlay > /o; echo in-dir > \(out)/r; echo no > \(out)/skip; sleep 3"])
        #expect(result.status == 0, "\(result)")
        let last = try #require(s.taken().last, "no snapshot: \(result)")
        #expect(try FixtureImage.isClean(last), "\(last) is not e2fsck-clean")
        #expect(try s.cat(last, "/o") == "in-overlay\n", "\(last)")
        #expect(try s.cat(last, out + "/r") == "in-dir\n", "\(last): the writable dir's file is not at its path")
        #expect(try s.cat(last, out + "/skip") == nil, "\(last): the writable dir's files were not filtered")
        // The live directory keeps what the job wrote; no staging copy is left beside the snapshots.
        #expect((try? String(contentsOfFile: out + "/r", encoding: .utf8)) == "in-dir\n")
        let hidden = ((try? FileManager.default.contentsOfDirectory(atPath: s.snapshots)) ?? []).filter { $0.hasPrefix(".") }
        #expect(hidden.isEmpty, "\(hidden)")
        #expect(s.scene.leftovers(waiting: 5).isEmpty, "\(s.scene.leftovers())")
    }

    /// The bound on the last snapshot holds for an ordinary user too: its process lives in the
    /// job's PID namespace there, and the freeze leaves it out.
    @Test func aFinalSnapshotThatOutrunsTheBoundIsDroppedAndTheJobGetsSigterm() throws {
        let s = try UserJobSnapshotScene()
        let image = s.scene.file("mine/big.ext3")
        let made = try s.run("create-overlay", ["-s", "512", "-n", "1", "-o", image])
        try #require(made.status == 0, "\(made)")
        let job = try s.start(["--snapshot-to", s.snapshots, "--snapshot-timeout", "0.1", "--snapshot-include", ".*",
                               "-o", image, "--", "bash", "-c",
                               "trap 'echo term > /marker; exit 7' TERM; dd if=/dev/urandom of=/big bs=1M count=256 status=none; "
                                   + "echo ready; while true; do sleep 0.05; done"])
        #expect(job.readLine(timeout: 120) == "ready")
        job.signal(SIGTERM)
        let result = job.wait(timeout: 60)
        #expect(result.status == 175, "\(result)")
        let lines = result.stderr.split(separator: "\n").filter { $0.hasPrefix("error:") || $0.hasPrefix("warning:") || $0.hasPrefix("snapshot ") }
        #expect(lines.count == 1 && lines[0].contains("did not finish within 0.1 s (--snapshot-timeout)"), "\(result)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.snapshots).isEmpty)
        #expect(try s.cat(image, "/marker") == "term\n", "the job was not continued, or did not get SIGTERM")
        #expect(try FixtureImage.isClean(image))
        #expect(s.scene.leftovers(waiting: 5).isEmpty, "\(s.scene.leftovers())")
    }

    @Test func checkpointIsRefusedInOneLine() throws {
        let s = try UserJobSnapshotScene()
        let before = try Data(contentsOf: URL(fileURLWithPath: s.image))
        let marker = s.scene.file("ran")
        let result = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "--checkpoint", "-o", s.image, "--", "touch", marker])
        #expect(result.status != 0, "\(result)")
        #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.contains("--checkpoint needs root")
                && result.stderr.contains("leave --checkpoint out"), "\(result)")
        #expect(!FileManager.default.fileExists(atPath: marker))
        #expect(s.taken().isEmpty)
        #expect(try Data(contentsOf: URL(fileURLWithPath: s.image)) == before)
    }
}
