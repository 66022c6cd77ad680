import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `run-overlay --snapshot-to DIR --checkpoint`: every job snapshot also dumps the job's
/// processes with CRIU (real loop mounts, real CRIU, root), and `--resume --checkpoint` puts
/// them back in place of the command.
@Suite("Job checkpoints (root)", .serialized, .requiresRoot, .requiresCRIU, .requires(executable: "e2fsck"))
struct JobCheckpointTests {
    /// Reads numbers from the job's stdout until it has `count` of them.
    static func numbers(_ job: SpawnedProcess, count: Int, timeout: TimeInterval = 30) -> [Int] {
        var seen: [Int] = []
        let deadline = Date().addingTimeInterval(timeout)
        while seen.count < count, Date() < deadline, let line = job.readLine(timeout: 5) {
            if let n = Int(line) { seen.append(n) }
        }
        return seen
    }

    /// The `.criu` directories and hidden leftovers in the snapshot directory.
    static func entries(_ s: JobSnapshotScene) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: s.snapshots)) ?? []).sorted()
    }

    @Test func aCountInMemoryGoesOnFromTheCheckpointAfterSigterm() throws {
        let s = try JobSnapshotScene()
        // The count lives only in the shell's memory; each value goes to stdout.
        let counter = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done"
        let job = try s.start(["--snapshot-to", s.snapshots, "--checkpoint", "-o", s.image, "--", "sh", "-c", counter])
        var seen = Self.numbers(job, count: 5)
        #expect(seen == [1, 2, 3, 4, 5], "\(seen)")
        job.signal(SIGTERM)
        let ended = job.wait(timeout: 60)
        seen += ended.stdout.split(separator: "\n").compactMap { Int($0) }
        #expect(ended.status == 177, "\(ended)")
        #expect(ended.stderr.contains("(interruption, job paused") && ended.stderr.contains(".criu"), "\(ended)")
        let taken = s.taken()
        #expect(taken.count == 1, "\(taken)")
        let latest = try FileManager.default.destinationOfSymbolicLink(atPath: s.snapshots + "/latest")
        let criu = s.snapshots + "/" + latest.dropLast(5) + ".criu"
        #expect(FileManager.default.fileExists(atPath: criu + "/manifest.json"), "\(Self.entries(s))")
        #expect(Self.entries(s).allSatisfy { !$0.hasPrefix(".") }, "\(Self.entries(s))")
        #expect(s.scene.leftovers().isEmpty, "\(s.scene.leftovers())")
        let last = seen.last ?? 0

        let resumed = try s.start(["--snapshot-to", s.snapshots, "--checkpoint", "--resume", "-o", s.image, "--", "sh", "-c", counter])
        let after = Self.numbers(resumed, count: 5)
        #expect(after == Array((last + 1)...(last + 5)), "resumed count \(after) does not follow \(last)")
        resumed.signal(SIGTERM)
        let finished = resumed.wait(timeout: 60)
        #expect(finished.status == 177, "\(finished)")
        #expect(finished.stderr.contains("resuming the job's processes from "), "\(finished)")
        #expect(s.taken().count == 2)
        #expect(s.scene.leftovers().isEmpty, "\(s.scene.leftovers())")
        #expect(try FixtureImage.isClean(s.image))
    }

    @Test func linesAppendedToTheOverlayResumeWithNoneRepeatedOrLost() throws {
        let s = try JobSnapshotScene()
        let appender = "i=0; while :; do i=$((i+1)); echo $i >> /lines; sleep 0.02; done"
        let arguments = ["--snapshot-to", s.snapshots, "--checkpoint", "-o", s.image, "--", "sh", "-c", appender]
        let job = try s.start(arguments)
        usleep(700_000)
        job.signal(SIGUSR1)
        #expect(waitFor(timeout: 30) { s.taken().count == 1 }, "\(s.taken())")
        usleep(500_000)
        job.signal(SIGTERM)
        let ended = job.wait(timeout: 60)
        #expect(ended.status == 177, "\(ended)")
        let firstRun = try s.cat(s.taken().last!, "/lines").map { $0.split(separator: "\n").compactMap { Int($0) } } ?? []
        #expect(firstRun.count > 5, "\(firstRun)")

        let resumed = try s.start(["--resume"] + arguments)
        usleep(1_000_000)
        resumed.signal(SIGTERM)
        let finished = resumed.wait(timeout: 60)
        #expect(finished.status == 177, "\(finished)")
        let lines = try FixtureImage.cat(s.image, "upper/lines").map { $0.split(separator: "\n").compactMap { Int($0) } } ?? []
        #expect(lines.count > firstRun.count + 5, "the resumed job did not go on appending: \(lines.count) after \(firstRun.count)")
        #expect(lines == Array(1...max(1, lines.count)), "lines repeated or lost: \(lines)")
        #expect(s.scene.leftovers().isEmpty, "\(s.scene.leftovers())")
        #expect(try FixtureImage.isClean(s.image))
    }

    @Test(.requires(executable: "python3", "the test job is a Python script"))
    func aDumpThatFailsKeepsTheSnapshotFileAndTheJobRunning() throws {
        let s = try JobSnapshotScene()
        // A stream socket connected to a process outside the job: CRIU refuses to dump it.
        let name = "overlaytest-ckpt-\(getpid())"
        let server = try SpawnedProcess(["python3", "-u", "-c", """
            import socket, time
            s = socket.socket(socket.AF_UNIX)
            s.bind("\\0\(name)")
            s.listen()
            print("listening")
            c, _ = s.accept()
            time.sleep(60)
            """])
        defer { server.signal(SIGKILL); _ = server.wait(timeout: 10) }
        #expect(server.readLine(timeout: 20) == "listening")
        let client = try s.write("client.py", """
            import socket, time
            s = socket.socket(socket.AF_UNIX)
            s.connect("\\0\(name)")
            i = 0
            while True:
                i += 1
                print(i, flush=True)
                time.sleep(0.05)
            """)
        let job = try s.start(["--snapshot-to", s.snapshots, "--checkpoint", "-o", s.image, "--", "python3", client])
        #expect(Self.numbers(job, count: 3).count == 3)
        job.signal(SIGUSR1)
        #expect(waitFor(timeout: 30) { s.taken().count == 1 }, "\(s.taken())")
        // Still counting after the failed dump.
        #expect(Self.numbers(job, count: 5).count == 5)
        #expect(!job.hasExited)
        #expect(Self.entries(s).allSatisfy { !$0.hasSuffix(".criu") && !$0.hasPrefix(".") }, "\(Self.entries(s))")
        job.signal(SIGTERM)
        let ended = job.wait(timeout: 60)
        #expect(ended.status == 178, "\(ended)")
        let warnings = ended.stderr.split(separator: "\n").filter { $0.hasPrefix("warning: the job's processes were not dumped") }
        #expect(warnings.count == 2 && warnings.allSatisfy { $0.contains("socket") }, "\(ended)")
        #expect(s.taken().count == 2)
        #expect(Self.entries(s).allSatisfy { !$0.hasSuffix(".criu") && !$0.hasPrefix(".") }, "\(Self.entries(s))")
        #expect(s.scene.leftovers().isEmpty, "\(s.scene.leftovers())")
    }

    /// As under SLURM, where a requeue or a time limit sends SIGTERM to every process of the
    /// job and not only to run-overlay: the job's process already has SIGTERM pending when it
    /// is to be dumped, so a dump would end as soon as it was restored. None is kept, and
    /// DIR/latest goes on naming the earlier snapshot whose processes were dumped.
    @Test(.requires(executable: "python3", "the test job is a Python script"))
    func aDumpHoldingASigtermFromOutsideIsNotKept() throws {
        let s = try JobSnapshotScene()
        let script = try s.write("count.py", """
            import signal, sys, time
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
            i = 0
            while True:
                i += 1
                print(i, flush=True)
                time.sleep(0.05)
            """)
        // --snapshot-keep 1 never removes the snapshot DIR/latest names.
        let arguments = ["--snapshot-to", s.snapshots, "--snapshot-keep", "1", "--checkpoint", "-o", s.image, "--", "python3", script]
        let job = try s.start(arguments)
        #expect(Self.numbers(job, count: 3).count == 3)
        job.signal(SIGUSR1)
        #expect(waitFor(timeout: 30) { Self.entries(s).contains { $0.hasSuffix(".criu") } }, "\(Self.entries(s))")
        let first = try FileManager.default.destinationOfSymbolicLink(atPath: s.snapshots + "/latest")
        let seen = Self.numbers(job, count: 3)
        #expect(seen.count == 3)

        // SIGTERM reaches the job's process while it is stopped, so it stays pending there.
        let found = try run(["pgrep", "-x", "-f", "python3 \(script)"])
        let pid = try #require(Int32(found.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), "\(found)")
        kill(pid, SIGSTOP)
        #expect(waitFor(timeout: 10) { (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8))?.contains(") T ") == true })
        kill(pid, SIGTERM)
        job.signal(SIGTERM)
        let ended = job.wait(timeout: 60)
        #expect(ended.status == 178, "\(ended)")
        // CRIU may refuse the dump itself ("Unexpected ... task interruption"), or make it and
        // leave the signal pending, which run-overlay then finds: either way nothing is kept.
        #expect(ended.stderr.contains("warning: the job's processes were not dumped") && ended.stderr.contains("/latest still names "), "\(ended)")
        #expect(s.taken().count == 2, "\(s.taken())")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: s.snapshots + "/latest") == first)
        #expect(Self.entries(s).filter { $0.hasSuffix(".criu") } == [first.dropLast(5) + ".criu"], "\(Self.entries(s))")
        #expect(Self.entries(s).allSatisfy { !$0.hasPrefix(".") }, "\(Self.entries(s))")

        // The resume restores the earlier snapshot's processes: they count on from there.
        let resumed = try s.start(["--resume"] + arguments)
        let after = Self.numbers(resumed, count: 3)
        #expect(after.count == 3 && after[0] > 3 && after[0] <= (seen.last ?? 0), "resumed at \(after), before: \(seen)")
        resumed.signal(SIGTERM)
        let finished = resumed.wait(timeout: 60)
        #expect(finished.status == 177, "\(finished)")
        #expect(finished.stderr.contains("resuming the job's processes from "), "\(finished)")
        #expect(s.scene.leftovers().isEmpty, "\(s.scene.leftovers())")
        #expect(try FixtureImage.isClean(s.image))
    }

    /// A checkpoint CRIU cannot restore (its process tree image damaged after the dump): the
    /// overlay is restored to the snapshot, then the restore fails: status 179, one error
    /// line, the files of the snapshot kept, the checkpoint kept, nothing left running or
    /// mounted.
    @Test func aRestoreThatFailsEndsWith179AndLeavesTheSnapshotsFiles() throws {
        let s = try JobSnapshotScene()
        let appender = "i=0; while :; do i=$((i+1)); echo $i >> /lines; sleep 0.02; done"
        let arguments = ["--snapshot-to", s.snapshots, "--checkpoint", "-o", s.image, "--", "sh", "-c", appender]
        let job = try s.start(arguments)
        usleep(700_000)
        job.signal(SIGTERM)
        let ended = job.wait(timeout: 60)
        #expect(ended.status == 177, "\(ended)")
        let snapshot = try #require(s.taken().last)
        let criu = String(snapshot.dropLast(5)) + ".criu"
        let tree = criu + "/images/pstree.img"
        #expect(FileManager.default.fileExists(atPath: tree), "\(Self.entries(s))")
        try Data("damaged".utf8).write(to: URL(fileURLWithPath: tree))
        // The overlay moves on after the snapshot, so that its restore shows.
        let later = try s.run("run-overlay", ["-o", s.image, "--", "sh", "-c", "echo later >> /lines"])
        #expect(later.status == 0, "\(later)")
        let snapshotLines = try #require(try s.cat(snapshot, "/lines"))
        #expect(snapshotLines.split(separator: "\n").count > 5, "\(snapshotLines)")

        let resumed = try s.run("run-overlay", ["--resume"] + arguments, timeout: 60)
        #expect(resumed.status == 179, "\(resumed)")
        let errors = resumed.stderr.split(separator: "\n").filter { $0.hasPrefix("error: ") }
        #expect(errors.count == 1 && errors[0].hasPrefix("error: the job's processes were not restored (cannot restore the checkpoint in ")
                && errors[0].contains("nothing of the job runs"), "\(resumed)")
        #expect(resumed.stdout.isEmpty, "\(resumed)")
        #expect(try FixtureImage.cat(s.image, "upper/lines") == snapshotLines)
        #expect(try FixtureImage.isClean(s.image))
        #expect(FileManager.default.fileExists(atPath: criu + "/manifest.json"))
        #expect(s.scene.leftovers().isEmpty, "\(s.scene.leftovers())")
    }

    @Test func checkpointWithoutSnapshotToIsRefusedInOneLine() throws {
        let s = try JobSnapshotScene()
        let result = try s.run("run-overlay", ["--checkpoint", "-o", s.image, "--", "true"])
        #expect(result.status != 0, "\(result)")
        #expect(result.stderr.contains("--checkpoint dumps the job's processes with each job snapshot: give --snapshot-to DIR too")
                && result.stderr.split(separator: "\n").count == 1, "\(result)")
    }
}
