import Foundation
import Testing
import TestSupport

/// `run-overlay --snapshot-to`: snapshots of a running job, as built executables, with real
/// loop mounts (root), e2fsck as the oracle and the images read back with `overlay cat`.
struct JobSnapshotScene {
    let scene: NativeScene
    let image: String
    let snapshots: String

    init() throws {
        scene = try NativeScene()
        image = try scene.overlay("work.ext3")
        snapshots = scene.file("snaps")
        try FileManager.default.createDirectory(atPath: snapshots, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: scene.file("run"), withIntermediateDirectories: true)
    }

    /// More for the tools' environment.
    var extra: [String: String] = [:]

    /// The scene's environment, with a runtime directory of its own (the job registry).
    var environment: [String: String] { scene.environment(["XDG_RUNTIME_DIR": scene.file("run")].merging(extra) { $1 }) }

    @discardableResult
    func run(_ tool: String, _ arguments: [String], timeout: TimeInterval = 120) throws -> ProcessResult {
        try TestSupport.run([product(tool)] + arguments, environment: environment,
                            currentDirectory: scene.directory.path, timeout: timeout)
    }

    func start(_ arguments: [String]) throws -> SpawnedProcess {
        try SpawnedProcess([product("run-overlay")] + arguments, environment: environment,
                           currentDirectory: scene.directory.path)
    }

    /// The job snapshots in the directory, oldest first (names sort by time, then -n).
    func taken() -> [String] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: snapshots)) ?? []).filter { $0.hasSuffix(".ext3") }
        func key(_ name: String) -> (String, Int) {
            let base = name.dropLast(5)
            let parts = base.split(separator: "-")
            return (String(parts[0]), parts.count > 1 ? Int(parts[1]) ?? 0 : 1)
        }
        return names.sorted { key($0) < key($1) }.map { snapshots + "/" + $0 }
    }

    func cat(_ snapshot: String, _ path: String) throws -> String? {
        let result = try run("overlay", ["cat", snapshot, "/upper" + path])
        return result.status == 0 ? result.stdout : nil
    }

    func write(_ name: String, _ text: String) throws -> String {
        let path = scene.file(name)
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        return path
    }
}

@Suite("Job snapshots (root)", .serialized, .requiresRoot, .requires(executable: "e2fsck"),
       .requires(executable: "python3", "the test job is a Python script"))
struct JobSnapshotTests {
    /// Two processes of the job: one keeps `a` and `b` in lockstep (b written right after a,
    /// same counter), one rewrites a 1 MiB file block by block, each block its generation.
    /// Every snapshot must show one instant: a == b or a == b + 1, and the big file's blocks a
    /// run of generation g+1 followed by generation g.
    static let lockstep = """
        import os, time
        os.makedirs('/jobdata', exist_ok=True)
        a = os.open('/jobdata/a', os.O_WRONLY | os.O_CREAT, 0o644)
        b = os.open('/jobdata/b', os.O_WRONLY | os.O_CREAT, 0o644)
        end = time.time() + 4.5
        i = 0
        while time.time() < end:
            i += 1
            os.pwrite(a, b'%010d' % i, 0)
            os.pwrite(b, b'%010d' % i, 0)
        """
    static let blocks = """
        import os, time
        os.makedirs('/jobdata', exist_ok=True)
        f = os.open('/jobdata/big', os.O_WRONLY | os.O_CREAT, 0o644)
        end = time.time() + 4.5
        g = 0
        while time.time() < end:
            g += 1
            for i in range(256):
                os.pwrite(f, (b'%07d\\n' % g) * 512, i * 4096)
        """

    /// The checks on one snapshot of the `lockstep` and `blocks` jobs: `a` and `b` in a relation
    /// the job really had, the counter not gone back from `previous`, every block of `big` whole
    /// and at most one generation behind. The counter `a`, or nil when the job had not made
    /// its files yet. `cat` reads a path below the overlay's top in the snapshot.
    static func expectOneInstant(_ snapshot: String, after previous: Int, cat: (String) throws -> String?) throws -> Int? {
        guard let a = try cat("/jobdata/a").flatMap({ Int($0) }), let b = try cat("/jobdata/b").flatMap({ Int($0) }) else {
            return nil
        }
        #expect(a == b || a == b + 1, "\(snapshot): a=\(a) b=\(b), a state the job never had")
        #expect(a >= previous, "\(snapshot): the counter went back from \(previous) to \(a)")
        if let big = try cat("/jobdata/big") {
            let generations = stride(from: 0, to: big.utf8.count, by: 4096).map { offset -> Int in
                let block = Array(big.utf8.dropFirst(offset).prefix(4096))
                let first = Array(block.prefix(8))
                #expect(block == Array([[UInt8]](repeating: first, count: block.count / 8).joined()), "\(snapshot): a torn block")
                return Int(String(decoding: first.prefix(7), as: UTF8.self)) ?? -1
            }
            let top = generations.first ?? 0
            let switched = generations.firstIndex { $0 != top } ?? generations.count
            #expect(generations[switched...].allSatisfy { $0 == top - 1 }, "\(snapshot): generations \(Set(generations))")
        }
        return a
    }

    /// Both ways of copying the image in the pause: staged in memory (the default where the
    /// memory is there) and straight to the copy (`OVERLAY_SNAPSHOT_MEMORY_MIB=0`).
    @Test(arguments: [nil, "0"])
    func periodicSnapshotsAreCleanInOrderAndEachOneInstant(memory: String?) throws {
        var s = try JobSnapshotScene()
        if let memory { s.extra["OVERLAY_SNAPSHOT_MEMORY_MIB"] = memory }
        let lockstep = try s.write("lockstep.py", Self.lockstep)
        let blocks = try s.write("blocks.py", Self.blocks)
        let result = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "--snapshot-every", "1", "-o", s.image, "--",
                                               "sh", "-c", "python3 \(blocks) & python3 \(lockstep); wait"])
        #expect(result.status == 0, "\(result)")
        let taken = s.taken()
        #expect(taken.count >= 2, "\(taken) \(result)")
        var previous = 0
        for snapshot in taken {
            #expect(try FixtureImage.isClean(snapshot), "\(snapshot) is not e2fsck-clean")
            let info = try s.run("overlay", ["snapshot", "info", "--json", snapshot])
            #expect(info.stdout.contains("\"trigger\":\"interval\""), "\(info)")
            // The first snapshot may come before the job made its files.
            guard let a = try Self.expectOneInstant(snapshot, after: previous, cat: { try s.cat(snapshot, $0) }) else { continue }
            previous = a
        }
        #expect(previous > 0, "no snapshot showed the job's files")
        let latest = try FileManager.default.destinationOfSymbolicLink(atPath: s.snapshots + "/latest")
        #expect(s.snapshots + "/" + latest == taken.last)
        #expect(try FixtureImage.isClean(s.image))
    }

    /// mount-overlay's interactive shell, on a terminal (script(1) gives it one), takes job
    /// snapshots the same way: SIGUSR1 to mount-overlay cuts one of what the shell wrote.
    @Test(.requires(executable: "script", "bsdutils: a terminal for the interactive shell"), .requires(executable: "pgrep", "procps"))
    func mountOverlaysShellTakesASnapshotOnSigusr1() throws {
        let s = try JobSnapshotScene()
        let command = ([product("mount-overlay"), "--runtime", "native", "--snapshot-to", s.snapshots, "-o", s.image])
            .map { "'" + $0 + "'" }.joined(separator: " ")
        let shell = try SpawnedProcess(["script", "-qec", command, "/dev/null"],
                                       environment: s.environment.merging(["SHELL": "/bin/bash"]) { $1 },
                                       currentDirectory: s.scene.directory.path, stdin: .pipe)
        defer { shell.signal(SIGKILL); _ = shell.wait(timeout: 10) }
        shell.write("echo from-the-shell > /typed.txt; echo written\n")
        // Once the shell wrote the file: its own "written" line, after the terminal's codes (the
        // terminal also echoes the command line, which holds the word).
        var written = false
        let deadline = Date().addingTimeInterval(60)
        while !written, Date() < deadline, let line = shell.readLine(timeout: 60) {
            let text = line.trimmingCharacters(in: .whitespacesAndNewlines)
            written = text.hasSuffix("written") && !text.contains("echo")
        }
        try #require(written, "the shell did not run the command")
        let found = try TestSupport.run(["pgrep", "-f", "-x", "-o", command.replacingOccurrences(of: "'", with: "")])
        let pid = try #require(Int32(found.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), "no mount-overlay: \(found)")
        kill(pid, SIGUSR1)
        for _ in 0..<200 where s.taken().isEmpty { usleep(50_000) }
        let taken = s.taken()
        try #require(taken.count == 1, "\(taken)")
        #expect(try s.cat(taken[0], "/typed.txt") == "from-the-shell\n")
        #expect(try FixtureImage.isClean(taken[0]))
        shell.write("exit 3\n")
        #expect(shell.wait(timeout: 60).status == 3)
        #expect(try FixtureImage.isClean(s.image))
    }

    /// A SIGUSR1 that comes before run-overlay has even started (here: sent while blocked by
    /// the process that starts it, so it waits across exec) is a snapshot once the job runs,
    /// not the end of the tool: SIGUSR1's default action would kill it before the job starts.
    @Test func aSigusr1FromBeforeTheStartIsASnapshotOnceTheJobRuns() throws {
        let s = try JobSnapshotScene()
        let starter = try s.write("starter.py", """
            import os, signal, sys
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
            os.kill(os.getpid(), signal.SIGUSR1)
            os.execv(sys.argv[1], sys.argv[1:])
            """)
        let result = try TestSupport.run(["python3", starter, product("run-overlay"), "--snapshot-to", s.snapshots, "-o", s.image,
                                          "--", "sh", "-c", "echo before > /n; sleep 3; echo after > /n"],
                                         environment: s.environment, currentDirectory: s.scene.directory.path, timeout: 120)
        #expect(result.status == 0, "\(result)")
        let taken = s.taken()
        #expect(taken.count == 1, "\(taken) \(result)")
        if let snapshot = taken.first {
            let info = try s.run("overlay", ["snapshot", "info", "--json", snapshot])
            #expect(info.stdout.contains("\"trigger\":\"demand\""), "\(info)")
            #expect(try FixtureImage.isClean(snapshot))
        }
    }

    /// A process of the job waiting in vfork for its child (what posix_spawn and some shells
    /// do) cannot stop while the child is stopped: the snapshot counts it as held instead of
    /// waiting for it until the freeze gives up.
    @Test(.requires(executable: "clang", "the Swift toolchain's C compiler builds the test's vfork program"))
    func aParentWaitingInVforkForAStoppedChildDoesNotHoldTheSnapshotUp() throws {
        let s = try JobSnapshotScene()
        let source = try s.write("vfork.c", """
            #include <stdio.h>
            #include <sys/wait.h>
            #include <unistd.h>
            int main(void) {
                FILE *f = fopen("/vforked", "w");
                fputs("before\\n", f);
                fclose(f);
                printf("ready\\n");
                fflush(stdout);
                pid_t pid = vfork();
                if (pid == 0) { sleep(3); _exit(0); }
                int status;
                waitpid(pid, &status, 0);
                printf("done\\n");
                return 0;
            }
            """)
        let program = s.scene.file("vfork")
        let built = try TestSupport.run(["clang", "-o", program, source])
        try #require(built.status == 0, "\(built)")
        let job = try s.start(["--snapshot-to", s.snapshots, "-o", s.image, "--", program])
        #expect(job.readLine(timeout: 60) == "ready")
        usleep(500_000)  // in vfork: the child sleeps 3 s
        let asked = Date()
        job.signal(SIGUSR1)
        for _ in 0..<200 where s.taken().isEmpty { usleep(50_000) }
        #expect(s.taken().count == 1, "no snapshot")
        #expect(Date().timeIntervalSince(asked) < 5, "the snapshot waited for the vfork parent")
        let result = job.wait(timeout: 60)
        #expect(result.status == 0 && result.stdout.contains("done"), "\(result)")
        #expect(!result.stderr.contains("did not stop"), "\(result)")
        if let snapshot = s.taken().first {
            #expect(try s.cat(snapshot, "/vforked") == "before\n")
            #expect(try FixtureImage.isClean(snapshot))
        }
    }

    @Test func sigusr1TakesOneAndSigtermTakesALastOneBeforeTheJobGetsIt() throws {
        let s = try JobSnapshotScene()
        let marker = s.scene.file("got-term")
        let job = try s.start(["--snapshot-to", s.snapshots, "-o", s.image, "--", "bash", "-c",
                               "trap 'echo term > \(marker); exit 7' TERM; echo 1 > /n; echo ready; while true; do sleep 0.05; done"])
        #expect(job.readLine(timeout: 60) == "ready")
        job.signal(SIGUSR1)
        for _ in 0..<200 where s.taken().isEmpty { usleep(50_000) }
        #expect(s.taken().count == 1)
        job.signal(SIGTERM)
        let result = job.wait(timeout: 60)
        #expect(result.status == 7, "\(result)")
        #expect(FileManager.default.fileExists(atPath: marker), "the job did not get SIGTERM")
        let taken = s.taken()
        #expect(taken.count == 2, "\(taken)")
        let triggers = try taken.map { try s.run("overlay", ["snapshot", "info", "--json", $0]).stdout }
        #expect(triggers.first?.contains("\"trigger\":\"demand\"") == true, "\(triggers)")
        #expect(triggers.last?.contains("\"trigger\":\"interruption\"") == true, "\(triggers)")
        for snapshot in taken {
            #expect(try s.cat(snapshot, "/n") == "1\n")
            #expect(try FixtureImage.isClean(snapshot))
        }
        // Mountable as a read-only layer.
        let shown = try s.run("run-overlay", ["-o", taken[1] + ":ro", "--", "cat", "/n"])
        #expect(shown.status == 0 && shown.stdout == "1\n", "\(shown)")
    }

    /// A batch system's SIGTERM (SLURM's at a time limit, a preemption, a requeue) reaches
    /// every process of the job at once, so the job may end of it before run-overlay reads its
    /// own as a request: the last snapshot is taken all the same. Made certain here: run-overlay's
    /// setup process is stopped while the job's processes get SIGTERM and end, and gets its own
    /// SIGTERM before it goes on.
    @Test func aSigtermThatEndedTheJobFirstStillTakesTheLastSnapshot() throws {
        let s = try JobSnapshotScene()
        let result = try endedBeforeItsSigtermWasRead(s.start(["--snapshot-to", s.snapshots, "-o", s.image, "--", "bash", "-c",
                                                               "echo 1 > /n; echo ready; while true; do sleep 0.05; done"]))
        #expect(result.status == 128 + SIGTERM, "\(result)")
        let taken = s.taken()
        try #require(taken.count == 1, "no last snapshot: \(taken)\n\(result)")
        #expect(result.stderr.contains("(interruption, taken after the job ended)"), "\(result)")
        let info = try s.run("overlay", ["snapshot", "info", "--json", taken[0]]).stdout
        #expect(info.contains("\"trigger\":\"interruption\""), "\(info)")
        #expect(try s.cat(taken[0], "/n") == "1\n")
        #expect(try FixtureImage.isClean(taken[0]))
        #expect(try FixtureImage.isClean(s.image))
    }

    @Test func resumeRestoresTheLatestSnapshotAndSlurmRestartImpliesIt() throws {
        let s = try JobSnapshotScene()
        let fresh = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "--resume", "-o", s.image, "--", "sh", "-c", "echo v1 > /state"])
        #expect(fresh.status == 0 && fresh.stderr.contains("starting fresh"), "\(fresh)")
        let job = try s.start(["--snapshot-to", s.snapshots, "-o", s.image, "--", "bash", "-c",
                               "trap 'exit 9' TERM; echo v2 > /state; echo ready; while true; do sleep 0.05; done"])
        #expect(job.readLine(timeout: 60) == "ready")
        job.signal(SIGTERM)
        #expect(job.wait(timeout: 60).status == 9)
        #expect(s.taken().count == 1)
        // Written after the snapshot: rolled back by --resume.
        #expect(try s.run("run-overlay", ["-o", s.image, "--", "sh", "-c", "echo v3 > /state; echo x > /later"]).status == 0)
        let resumed = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "--resume", "-o", s.image, "--", "sh", "-c",
                                                "cat /state; test -e /later && echo later-survived; true"])
        #expect(resumed.status == 0 && resumed.stdout == "v2\n", "\(resumed)")
        #expect(resumed.stderr.contains("rolled back"), "\(resumed)")
        #expect(try FixtureImage.isClean(s.image))
        #expect(try s.run("overlay", ["snapshot", "info", s.image]).status != 0, "the restored overlay still holds the snapshot's description")
        // A requeued SLURM job resumes without being told.
        #expect(try s.run("run-overlay", ["-o", s.image, "--", "sh", "-c", "echo v4 > /state"]).status == 0)
        let requeued = try TestSupport.run([product("run-overlay"), "--snapshot-to", s.snapshots, "-o", s.image, "--", "cat", "/state"],
                                           environment: s.scene.environment(["SLURM_RESTART_COUNT": "1"]),
                                           currentDirectory: s.scene.directory.path)
        #expect(requeued.status == 0 && requeued.stdout == "v2\n", "\(requeued)")
    }

    @Test func aResumeThatCannotRestoreExits176AndChangesNothing() throws {
        let s = try JobSnapshotScene()
        let other = try s.scene.overlay("other.ext3")
        let job = try s.start(["--snapshot-to", s.snapshots, "-o", other, "--", "bash", "-c",
                               "trap 'exit 9' TERM; echo ready; while true; do sleep 0.05; done"])
        #expect(job.readLine(timeout: 60) == "ready")
        job.signal(SIGTERM)
        #expect(job.wait(timeout: 60).status == 9)
        let before = try Data(contentsOf: URL(fileURLWithPath: s.image))
        let marker = s.scene.file("ran")
        let result = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "--resume", "-o", s.image, "--", "touch", marker])
        #expect(result.status == 176, "\(result)")
        #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.contains("is not a snapshot of"), "\(result)")
        #expect(!FileManager.default.fileExists(atPath: marker))
        #expect(try Data(contentsOf: URL(fileURLWithPath: s.image)) == before)
        let left = try FileManager.default.contentsOfDirectory(atPath: s.scene.directory.path).filter { $0.hasPrefix(".") && $0 != ".config" }
        #expect(left.isEmpty, "\(left)")
    }

    @Test func overlayJobsListsTheRunAndSnapshotNowTakesOne() throws {
        let s = try JobSnapshotScene()
        let none = try s.run("overlay", ["snapshot", "now"])
        #expect(none.status != 0 && none.stderr.contains("no running job"), "\(none)")
        let job = try s.start(["--snapshot-to", s.snapshots, "--snapshot-keep", "4", "-o", s.image, "--", "bash", "-c",
                               "echo 1 > /n; echo ready; sleep 30"])
        defer { job.signal(SIGKILL); _ = job.wait(timeout: 30) }
        #expect(job.readLine(timeout: 60) == "ready")
        let listed = try s.run("overlay", ["jobs", "--json"])
        #expect(listed.status == 0 && listed.stdout.contains("\"pid\":\(job.pid)") && listed.stdout.contains("\"images\":[\"\(s.image)\"]")
                && listed.stdout.contains("\"snapshotKeep\":4"), "\(listed)")
        let byImage = try s.run("overlay", ["snapshot", "now", s.image])
        #expect(byImage.status == 0 && s.taken() == [byImage.stdout.trimmingCharacters(in: .newlines)], "\(byImage) \(s.taken())")
        let byId = try s.run("overlay", ["snapshot", "now", "\(job.pid)"])
        #expect(byId.status == 0 && s.taken().count == 2, "\(byId)")
        #expect(try s.cat(s.taken()[1], "/n") == "1\n")
        let wrong = try s.run("overlay", ["snapshot", "now", "no-such-job"])
        #expect(wrong.status != 0 && wrong.stderr.split(separator: "\n").count == 1, "\(wrong)")
        job.signal(SIGINT)
        _ = job.wait(timeout: 60)
        let after = try s.run("overlay", ["jobs", "--json"])
        #expect(after.stdout == "[]\n", "\(after)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.scene.file("run") + "/overlay/jobs").isEmpty)
    }

    @Test func keepRemovesOnlyTheOldestJobSnapshots() throws {
        let s = try JobSnapshotScene()
        let other = s.snapshots + "/notes.txt"
        try "mine\n".write(toFile: other, atomically: false, encoding: .utf8)
        let result = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "--snapshot-every", "1", "--snapshot-keep", "2",
                                               "-o", s.image, "--", "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo $i > /i; sleep 0.5; done"])
        #expect(result.status == 0, "\(result)")
        let snapshotLines = result.stderr.split(separator: "\n").filter { $0.hasPrefix("snapshot ") }
        #expect(snapshotLines.count >= 3, "\(result)")
        #expect(s.taken().count == 2, "\(s.taken())")
        #expect(FileManager.default.fileExists(atPath: other))
        let latest = try FileManager.default.destinationOfSymbolicLink(atPath: s.snapshots + "/latest")
        #expect(s.snapshots + "/" + latest == s.taken().last)
    }

    /// Every path below `/upper` of `image` (directories with a trailing `/`), read back with
    /// debugfs rdump.
    func upperPaths(_ s: JobSnapshotScene, _ image: String) throws -> [String] {
        let out = s.scene.file("rdump-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: out) }
        let dump = try TestSupport.run(["debugfs", "-R", "rdump /upper \(out)", image])
        #expect(dump.status == 0, "\(dump)")
        let top = out + "/upper"
        var found: [String] = []
        let walker = FileManager.default.enumerator(atPath: top)
        while let path = walker?.nextObject() as? String {
            var isDirectory: ObjCBool = false
            FileManager.default.fileExists(atPath: top + "/" + path, isDirectory: &isDirectory)
            found.append(isDirectory.boolValue ? path + "/" : path)
        }
        return found.sorted()
    }

    @Test func includeAndExcludeTakeWholePathMatchesAndTheDirectoriesLeadingToThem() throws {
        let s = try JobSnapshotScene()
        let job = try s.start(["--snapshot-to", s.snapshots, "--snapshot-include", #"log\..*"#, "--snapshot-include", "keep/.*",
                               "--snapshot-exclude", ".*/y", "--snapshot-exclude", #"processor\d+/.*"#, "-o", s.image, "--", "bash", "-c",
                               "trap 'exit 0' TERM; mkdir -p /processor0 /keep/sub /empty /sub; "
                                   + "echo a > /log.1; echo b > /log.2; echo c > /processor0/data; echo d > /processor0/log.3; "
                                   + "echo e > /keep/x; echo f > /keep/sub/y; echo g > /mylog.1; echo h > /sub/log.4; echo i > /log.; "
                                   + "echo ready; while true; do sleep 0.05; done"])
        #expect(job.readLine(timeout: 60) == "ready")
        job.signal(SIGUSR1)
        for _ in 0..<200 where s.taken().isEmpty { usleep(50_000) }
        job.signal(SIGTERM)
        let result = job.wait(timeout: 60)
        #expect(result.status == 0, "\(result)")
        let taken = s.taken()
        try #require(taken.count == 2, "\(taken) \(result)")
        for snapshot in taken {
            // log.1, log.2, log. match log\..* as a whole; processor0/log.3, sub/log.4 and
            // mylog.1 do not; keep/sub/y is excluded, so keep/sub/ goes; empty/ leads nowhere.
            #expect(try upperPaths(s, snapshot) == ["keep/", "keep/x", "log.", "log.1", "log.2"], "\(snapshot)")
            #expect(try s.cat(snapshot, "/log.1") == "a\n")
            #expect(try s.cat(snapshot, "/keep/x") == "e\n")
            #expect(try FixtureImage.isClean(snapshot), "\(snapshot) is not e2fsck-clean")
            let info = try s.run("overlay", ["snapshot", "info", "--json", snapshot])
            #expect(info.status == 0 && info.stdout.contains("\"trigger\""), "\(info)")
        }
        // The job's own overlay still has everything.
        #expect(try upperPaths(s, s.image).contains("processor0/data"))
        // A filtered snapshot is sized to what it holds, not to the job's overlay.
        let imageSize = try FileManager.default.attributesOfItem(atPath: s.image)[.size] as? Int ?? 0
        let snapshotSize = try FileManager.default.attributesOfItem(atPath: taken[0])[.size] as? Int ?? 0
        #expect(snapshotSize > 0 && snapshotSize < imageSize, "\(snapshotSize) vs \(imageSize)")
        // Mountable as a read-only layer.
        let shown = try s.run("run-overlay", ["-o", taken[1] + ":ro", "--", "cat", "/log.2"])
        #expect(shown.status == 0 && shown.stdout == "b\n", "\(shown)")
        // Resumed from it, the overlay holds what the snapshot kept, at its old size, and takes writes.
        let resumed = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "--resume", "-o", s.image, "--",
                                                "sh", "-c", "cat /log.1 /keep/x; test ! -e /processor0/data && echo gone; echo new > /new.txt"])
        #expect(resumed.status == 0 && resumed.stdout == "a\ne\ngone\n", "\(resumed)")
        let after = try FileManager.default.attributesOfItem(atPath: s.image)[.size] as? Int ?? 0
        #expect(after == imageSize, "\(after) vs \(imageSize)")
        #expect(try FixtureImage.isClean(s.image), "the resumed overlay is not e2fsck-clean")
        #expect(try s.cat(s.image, "/new.txt") == "new\n")
    }

    @Test(arguments: [
        (["--snapshot-every", "0"], "--snapshot-every 0"),
        (["--snapshot-keep", "0"], "--snapshot-keep 0"),
        (["--snapshot-to", "/nonexistent/snaps"], "--snapshot-to /nonexistent/snaps"),
        (["--snapshot-every", "5"], "go with --snapshot-to"),
        (["--resume"], "give --snapshot-to DIR too"),
        (["--snapshot-include", "("], "--snapshot-include '(' is not a valid regular expression"),
        (["--snapshot-include", "log", "--snapshot-exclude", "a[b"], "--snapshot-exclude 'a[b' is not a valid regular expression"),
        (["--snapshot-exclude", "x"], "--snapshot-include and --snapshot-exclude filter job snapshots: give --snapshot-to DIR too"),
    ])
    func badInputIsOneLineBeforeAnythingStarts(arguments: [String], expected: String) throws {
        let s = try JobSnapshotScene()
        let before = try Data(contentsOf: URL(fileURLWithPath: s.image))
        var argv = arguments
        if !arguments.contains("--snapshot-to") { argv = ["--snapshot-to", s.snapshots] + argv }
        if arguments == ["--snapshot-every", "5"] || arguments == ["--resume"] || arguments == ["--snapshot-exclude", "x"] { argv = arguments }
        let marker = s.scene.file("ran")
        let result = try s.run("run-overlay", argv + ["-o", s.image, "--", "touch", marker])
        #expect(result.status != 0, "\(result)")
        #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.contains(expected), "\(result)")
        #expect(!FileManager.default.fileExists(atPath: marker))
        #expect(s.taken().isEmpty)
        #expect(try Data(contentsOf: URL(fileURLWithPath: s.image)) == before)
    }

    @Test(arguments: ["lots", "-1", "1.5"])
    func aBadMemoryBoundIsOneLineBeforeAnythingStarts(value: String) throws {
        var s = try JobSnapshotScene()
        s.extra["OVERLAY_SNAPSHOT_MEMORY_MIB"] = value
        let marker = s.scene.file("ran")
        let result = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "-o", s.image, "--", "touch", marker])
        #expect(result.status == 64, "\(result)")
        #expect(result.stderr == "error: OVERLAY_SNAPSHOT_MEMORY_MIB is '\(value)': give the most MiB a job snapshot may stage in memory (0: none)\n",
                "\(result)")
        #expect(!FileManager.default.fileExists(atPath: marker))
    }

    @Test func aReadOnlyStackOrAnUnwritableDirectoryIsRefused() throws {
        let s = try JobSnapshotScene()
        let readOnly = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "-o", s.image + ":ro", "--", "true"])
        #expect(readOnly.status != 0 && readOnly.stderr.contains("writable first -o"), "\(readOnly)")
        let user = try TestUser.ensure()
        chmod(s.snapshots, 0o755)
        chmod(s.scene.directory.path, 0o755)
        let sudo = try TestSupport.run([product("run-overlay"), "--snapshot-to", s.snapshots, "-o", s.image, "--", "true"],
                                       environment: s.scene.environment(["SUDO_UID": "\(user.uid)", "SUDO_GID": "\(user.gid)"]),
                                       currentDirectory: s.scene.directory.path)
        #expect(sudo.status != 0 && sudo.stderr.contains("cannot write into this directory"), "\(sudo)")
        // An ordinary user (FUSE mode) is told the same about root's directory, before anything starts.
        chmod(s.image, 0o666)
        let ordinary = try user.run([product("run-overlay"), "--snapshot-to", s.snapshots, "-o", s.image, "--", "true"],
                                    currentDirectory: s.scene.directory.path, environment: s.scene.configIsolation)
        #expect(ordinary.status != 0 && ordinary.stderr.contains("cannot write into this directory"), "\(ordinary)")
        #expect(ordinary.stderr.split(separator: "\n").count == 1, "\(ordinary)")
        #expect(s.taken().isEmpty)
    }
}

/// Ends the run-overlay `job` (its command prints "ready" once it runs) with SIGTERM to every
/// process of it, as SLURM sends it, such that the job ends before run-overlay reads its own:
/// the setup process is stopped meanwhile, and continued once the job's first process (the
/// toolkit's init) is a zombie. Returns how run-overlay ended.
func endedBeforeItsSigtermWasRead(_ job: SpawnedProcess) throws -> ProcessResult {
    defer { job.signal(SIGKILL); _ = job.wait(timeout: 10) }
    #expect(job.readLine(timeout: 60) == "ready")
    let setup = try #require(processChildren(of: job.pid).first, "no setup process")
    let everyProcess = [job.pid] + processDescendants(of: job.pid)
    let initProcess = try #require(processDescendants(of: setup).first { pid in
        ((try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? "").hasPrefix("overlay-toolkit-init")
    }, "no init process")
    kill(setup, SIGSTOP)
    try #require(waitFor(timeout: 10) { processState(of: setup) == "T" }, "the setup process did not stop")
    for pid in everyProcess where pid != setup { kill(pid, SIGTERM) }
    try #require(waitFor(timeout: 10) { processState(of: initProcess) == "Z" }, "the job did not end of SIGTERM")
    kill(setup, SIGTERM)
    kill(setup, SIGCONT)
    return job.wait(timeout: 60)
}
