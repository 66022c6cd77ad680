import Foundation
import Testing
import TestSupport

/// Batch jobs under a real single-node SLURM (Scripts/slurm-local: slurm-wlm and munge),
/// submitted with `sbatch --wait` through Templates/run-overlay.sbatch, as users submit them.
///
/// Two kinds of jobs: with the native runtime, the overlays are really mounted (these need the
/// native runtime in this tree); with the stand-in Apptainer (see SingularityStandIn), which runs
/// the command file without mounting anything, the SLURM side is checked on its own: the
/// template, run-overlay found through $OVERLAY_BIN, array tasks, the exit status.
@Suite("SLURM batch jobs", .serialized, .requiresRoot,
       .requires(executable: "sbatch", "slurm-wlm"), .requires(executable: "slurmctld", "slurm-wlm"),
       .requires(executable: "munged", "munge"), .requires(executable: "mke2fs"), .requires(executable: "debugfs"))
struct SlurmTests {
    // MARK: SLURM plumbing, with the stand-in runtime

    @Test func startingAgainLeavesTheRunningDaemonsAlone() throws {
        _ = try SlurmCluster()
        let script = "\(SlurmCluster.packageRoot)/Scripts/slurm-local"
        let before = try run([script, "status"])
        let again = try run([script, "start"])
        #expect(again.status == 0, "\(again)")
        #expect(again.stdout.contains("already running: node "), "\(again)")
        let after = try run([script, "status"])
        #expect(after.stdout == before.stdout)
        #expect(before.stdout.contains("slurmctld: running ("), "\(before)")
        #expect(before.stdout.contains("slurmd: running ("), "\(before)")
        #expect(before.stdout.contains(" debug* idle "), "\(before)")
    }

    @Test func aJobWhoseCommandFileExits7MakesSbatchExit7() throws {
        let cluster = try SlurmCluster()
        let scene = try SingularityScene()
        try scene.overlay("env.ext3")
        try "echo \"inside job $SLURM_JOB_ID\"\nexit 7\n".write(toFile: scene.file("job.txt"), atomically: true, encoding: .utf8)
        let result = try cluster.sbatchWait(in: scene.directory, [
            cluster.template, "--runtime", "apptainer", "-c", "docker://alpine", "-o", "env.ext3:ro", "-f", "job.txt"],
            environment: ["PATH": scene.standIn.path + ":" + SlurmCluster.path, "STANDIN_RUN": "1"])
        #expect(result.status == 7, "\(result)")
        #expect(scene.standIn.arguments() == ["exec", "--overlay", "env.ext3:ro", "docker://alpine", "/bin/bash", "job.txt"])
        let log = try cluster.logs(in: scene.directory)
        #expect(log.count == 1)
        #expect(log.first?.contains("inside job ") == true, "\(log)")
        #expect(log.first?.contains("run-overlay --runtime apptainer -c docker://alpine -o env.ext3:ro -f job.txt") == true, "\(log)")
    }

    @Test func arrayTasksEachRunWithTheirIndex() throws {
        let cluster = try SlurmCluster()
        let scene = try SingularityScene()
        try scene.overlay("env.ext3")
        try "echo \"task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID\" > \"out-$SLURM_ARRAY_TASK_ID.txt\"\n"
            .write(toFile: scene.file("job.txt"), atomically: true, encoding: .utf8)
        let result = try cluster.sbatchWait(in: scene.directory, [
            "--array=1-4", "--output=%x-%A_%a.out",
            cluster.template, "--runtime", "apptainer", "-c", "docker://alpine", "-o", "env.ext3:ro", "-f", "job.txt"],
            environment: ["PATH": scene.standIn.path + ":" + SlurmCluster.path, "STANDIN_RUN": "1"])
        #expect(result.status == 0, "\(result)")
        for task in 1...4 {
            let text = try? String(contentsOfFile: scene.file("out-\(task).txt"), encoding: .utf8)
            #expect(text?.hasPrefix("task \(task) of ") == true, "task \(task): \(text ?? "no output")")
        }
        #expect(try cluster.logs(in: scene.directory).count == 4)
    }

    @Test func theTemplateSaysWhenItCannotFindRunOverlay() throws {
        let cluster = try SlurmCluster()
        let dir = try TempDirectory("slurm")
        let result = try cluster.sbatchWait(in: dir, [cluster.template, "-o", "env.ext3:ro", "--", "true"],
                                            environment: ["OVERLAY_BIN": dir.file("nowhere")])
        #expect(result.status == 127, "\(result)")
        #expect(try cluster.logs(in: dir).first?.contains("run-overlay not found: put it on PATH or set OVERLAY_BIN") == true)
    }

    // MARK: Overlays really mounted, with the native runtime

    @Test(.enabled(if: SlurmCluster.nativeRuntimeBuilt, "the native runtime is not built in this tree"))
    func aJobRunsTheCommandFileInTheOverlaysAndItsWritePersists() throws {
        let cluster = try SlurmCluster()
        let dir = try TempDirectory("slurm")
        try FixtureImage.ext3(at: dir.file("env.ext3"), mebibytes: 32, files: ["opt/overlaytest/greeting.txt": "hello from env\n"])
        try FixtureImage.ext3(at: dir.file("data.ext3"), mebibytes: 32, files: ["srv/overlaytest-data/input.txt": "data line\n"])
        try """
            cat /opt/overlaytest/greeting.txt
            cat /srv/overlaytest-data/input.txt
            echo "written by job $SLURM_JOB_ID" > /opt/overlaytest/result.txt

            """.write(toFile: dir.file("job.txt"), atomically: true, encoding: .utf8)
        let result = try cluster.sbatchWait(in: dir, [
            cluster.template, "--runtime", "native", "-o", "env.ext3", "-o", "data.ext3", "-f", "job.txt"])
        #expect(result.status == 0, "\(result)")
        let log = try cluster.logs(in: dir).first ?? ""
        #expect(log.contains("hello from env\ndata line\n"), "\(log)")
        #expect(try FixtureImage.cat(dir.file("env.ext3"), "upper/opt/overlaytest/result.txt")?.hasPrefix("written by job ") == true)
        #expect(try FixtureImage.isClean(dir.file("env.ext3")))
        #expect(try FixtureImage.isClean(dir.file("data.ext3")))
    }

    @Test(.enabled(if: SlurmCluster.nativeRuntimeBuilt, "the native runtime is not built in this tree"))
    func aNativeJobExiting7MakesSbatchExit7() throws {
        let cluster = try SlurmCluster()
        let dir = try TempDirectory("slurm")
        try FixtureImage.ext3(at: dir.file("env.ext3"), mebibytes: 32)
        try "test -d /proc\nexit 7\n".write(toFile: dir.file("job.txt"), atomically: true, encoding: .utf8)
        let result = try cluster.sbatchWait(in: dir, [cluster.template, "--runtime", "native", "-o", "env.ext3:ro", "-f", "job.txt"])
        #expect(result.status == 7, "\(result)")
    }

    @Test(.enabled(if: SlurmCluster.nativeRuntimeBuilt, "the native runtime is not built in this tree"))
    func fourArrayTasksShareOneReadOnlyOverlay() throws {
        let cluster = try SlurmCluster()
        let dir = try TempDirectory("slurm")
        try FixtureImage.ext3(at: dir.file("shared.ext3"), mebibytes: 32, files: ["srv/overlaytest-shared/input.txt": "shared input\n"])
        // The working directory is bound inside, so each task's output lands here.
        try """
            { cat /srv/overlaytest-shared/input.txt; echo "task $SLURM_ARRAY_TASK_ID"; } > "result-$SLURM_ARRAY_TASK_ID.txt"

            """.write(toFile: dir.file("job.txt"), atomically: true, encoding: .utf8)
        let result = try cluster.sbatchWait(in: dir, [
            "--array=1-4", "--output=%x-%A_%a.out",
            cluster.template, "--runtime", "native", "-o", "shared.ext3:ro", "-f", "job.txt"])
        #expect(result.status == 0, "\(result)")
        for task in 1...4 {
            let text = try? String(contentsOfFile: dir.file("result-\(task).txt"), encoding: .utf8)
            #expect(text == "shared input\ntask \(task)\n", "task \(task)")
        }
        #expect(try FixtureImage.isClean(dir.file("shared.ext3")))
    }

    // MARK: Requeued jobs that resume (native runtime, job snapshots)

    /// SIGUSR1 to the batch shell takes a snapshot; `scontrol requeue` ends the run (SIGTERM,
    /// a last snapshot, SIGKILL after KillWait: this job ignores SIGTERM) and the requeued run
    /// (SLURM_RESTART_COUNT=1) starts on the overlay put back to the last snapshot.
    @Test(.enabled(if: SlurmCluster.nativeRuntimeBuilt, "the native runtime is not built in this tree"),
          .requires(executable: "e2fsck"))
    func aRequeuedJobResumesFromItsLastSnapshot() throws {
        let cluster = try SlurmCluster()
        let dir = try TempDirectory("slurm")
        try FixtureImage.ext3(at: dir.file("scratch.ext3"), mebibytes: 32, files: ["srv/overlaytest-requeue/log.txt": "begin\n"])
        try FileManager.default.createDirectory(atPath: dir.file("snaps"), withIntermediateDirectories: false)
        let log = "/srv/overlaytest-requeue/log.txt"
        try """
            if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
                echo "run $SLURM_RESTART_COUNT after $(tail -n 1 \(log))" >> \(log)
                exit 0
            fi
            trap '' TERM
            i=0
            while [ $i -lt 900 ]; do i=$((i+1)); echo "line $i" >> \(log); echo "line $i" >> written.txt; sleep 0.1; done

            """.write(toFile: dir.file("job.txt"), atomically: true, encoding: .utf8)
        let job = try cluster.sbatch(in: dir, ["--requeue", "--open-mode=append", cluster.template, "--runtime", "native",
                                               "--snapshot-to", dir.file("snaps"), "-o", "scratch.ext3", "-f", "job.txt"])
        defer { cluster.cancel(job) }
        try cluster.poll("the job to write 10 lines") { Self.lines(inFile: dir.file("written.txt")).count >= 10 }

        #expect(try cluster.command(["scancel", "--signal=USR1", "--batch", job]).status == 0)
        try cluster.poll("the snapshot SIGUSR1 asked for") { FileManager.default.fileExists(atPath: dir.file("snaps/latest")) }
        let first = try FileManager.default.destinationOfSymbolicLink(atPath: dir.file("snaps/latest"))
        let inFirst = try FixtureImage.cat(dir.file("snaps/" + first), "upper" + log).map { Self.lines(of: $0) } ?? []
        #expect(inFirst.count >= 11, "\(inFirst)")

        try cluster.requeueAndStartAtOnce(job)
        let state = try cluster.waitUntilDone(job)
        #expect(state.jobState == "COMPLETED" && state.restarts == 1 && state.exitCode == "0:0", "\(state)")

        let written = Self.lines(inFile: dir.file("written.txt"))
        let image = try FixtureImage.cat(dir.file("scratch.ext3"), "upper" + log).map { Self.lines(of: $0) } ?? []
        let ours = image.dropLast()
        // What the first snapshot held is there; the lines written after the last cut are not.
        #expect(Array(ours.prefix(inFirst.count)) == inFirst)
        #expect(Array(ours) == ["begin"] + written.prefix(ours.count - 1), "\(image)")
        #expect(ours.count - 1 < written.count, "nothing was rolled back: \(image.count) lines, \(written.count) written")
        #expect(image.last == "run 1 after \(ours.last ?? "")", "\(image)")
        let text = try cluster.logs(in: dir).joined()
        #expect(text.contains("(demand, job paused "), "\(text)")
        #expect(text.contains("(interruption, job paused "), "\(text)")
        #expect(text.contains("resumed: \(dir.file("scratch.ext3")) restored to the snapshot "), "\(text)")
        #expect(try FixtureImage.isClean(dir.file("scratch.ext3")))
    }

    /// With --checkpoint: a job counting in memory is checkpointed on SIGUSR1 and requeued; the
    /// requeued run restores its processes, which count on from the checkpoint, not from 1.
    /// SLURM's SIGTERM reaches every process of the job at once, so at that SIGTERM the job is
    /// not dumped again: the checkpoint SIGUSR1 took is the one restored.
    @Test(.enabled(if: SlurmCluster.nativeRuntimeBuilt, "the native runtime is not built in this tree"),
          .requiresCRIU, .requires(executable: "e2fsck"))
    func aRequeuedCheckpointedJobCountsOnFromItsCheckpoint() throws {
        let cluster = try SlurmCluster()
        let dir = try TempDirectory("slurm")
        try FixtureImage.ext3(at: dir.file("scratch.ext3"), mebibytes: 32)
        try FileManager.default.createDirectory(atPath: dir.file("snaps"), withIntermediateDirectories: false)
        try """
            n=0
            while [ $n -lt 150 ]; do n=$((n+1)); echo "count $n"; sleep 0.1; done

            """.write(toFile: dir.file("count.sh"), atomically: true, encoding: .utf8)
        let job = try cluster.sbatch(in: dir, ["--requeue", "--open-mode=append", cluster.template, "--runtime", "native",
                                               "--snapshot-to", dir.file("snaps"), "--checkpoint", "-o", "scratch.ext3",
                                               "--", "bash", dir.file("count.sh")])
        defer { cluster.cancel(job) }
        try cluster.poll("the job to count to 10") { (try? cluster.logs(in: dir).joined())?.contains("count 10\n") == true }
        #expect(try cluster.command(["scancel", "--signal=USR1", "--batch", job]).status == 0)
        try cluster.poll("the checkpoint SIGUSR1 asked for") {
            guard let name = try? FileManager.default.destinationOfSymbolicLink(atPath: dir.file("snaps/latest")) else { return false }
            return FileManager.default.fileExists(atPath: dir.file("snaps/" + name.replacingOccurrences(of: ".ext3", with: ".criu")))
        }
        let checkpoint = try FileManager.default.destinationOfSymbolicLink(atPath: dir.file("snaps/latest"))
            .replacingOccurrences(of: ".ext3", with: ".criu")

        try cluster.requeueAndStartAtOnce(job)
        let state = try cluster.waitUntilDone(job)
        let text = try cluster.logs(in: dir).joined()
        #expect(state.jobState == "COMPLETED" && state.restarts == 1 && state.exitCode == "0:0", "\(state)\n\(text)")

        let runs = text.components(separatedBy: "run-overlay.sbatch: job ")
        try #require(runs.count == 3, "\(text)")
        func counts(_ part: String) -> [Int] {
            part.split(separator: "\n").compactMap { $0.hasPrefix("count ") ? Int($0.dropFirst(6)) : nil }
        }
        let before = counts(runs[1])
        let after = counts(runs[2])
        // SLURM's SIGTERM reaches the job's processes as it reaches run-overlay: the last
        // snapshot is taken with the job paused, or after it ended of that signal.
        #expect((runs[1].contains("(interruption, job paused ") || runs[1].contains("(interruption, taken after the job ended)"))
                && runs[1].contains("under SLURM this SIGTERM reached every process of the job"), "\(runs[1])")
        #expect(runs[2].contains("resuming the job's processes from \(dir.file("snaps/" + checkpoint)) in place of the command"), "\(runs[2])")
        // Counting on from the checkpoint taken after count 10, up to the end, one by one.
        let resumedAt = try #require(after.first, "\(runs[2])")
        #expect(resumedAt > 10 && resumedAt <= (before.last ?? 0) + 1, "first count after the requeue: \(resumedAt); before: \(before)")
        #expect(after == Array(resumedAt...150), "\(after)")
        #expect(try FixtureImage.isClean(dir.file("scratch.ext3")))
    }

    static func lines(inFile path: String) -> [String] {
        lines(of: (try? String(contentsOfFile: path, encoding: .utf8)) ?? "")
    }

    static func lines(of text: String) -> [String] {
        text.split(separator: "\n").map(String.init)
    }
}

/// The local SLURM of Scripts/slurm-local, started once (starting is idempotent and quick when
/// it already runs).
struct SlurmCluster {
    static let path = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"

    /// The package's root: where Package.swift is, above the build products.
    static let packageRoot: String = {
        var dir = productsDirectory
        while dir.path != "/" {
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("Package.swift").path) { return dir.path }
            dir = dir.deletingLastPathComponent()
        }
        return FileManager.default.currentDirectoryPath
    }()

    /// Whether this tree's run-overlay has a native runtime (the SLURM jobs that mount need it).
    static let nativeRuntimeBuilt: Bool = {
        let probe = try? run([product("run-overlay"), "--runtime", "native", "--dry-run", "-o", "/nonexistent.ext3", "--", "true"])
        return !(probe?.stderr.contains("the native runtime is not built yet") ?? true)
    }()

    let configuration: String
    var template: String { "\(Self.packageRoot)/Templates/run-overlay.sbatch" }

    init() throws {
        let started = try run(["\(Self.packageRoot)/Scripts/slurm-local", "start"])
        guard started.status == 0 else { throw StandInError(description: "Scripts/slurm-local start failed: \(started)") }
        let env = try run(["\(Self.packageRoot)/Scripts/slurm-local", "env"])
        configuration = env.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            .replacingOccurrences(of: "export SLURM_CONF=", with: "")
    }

    /// `sbatch --wait ARGUMENTS` from `directory` (the job's working directory and where its
    /// log goes), with run-overlay found through $OVERLAY_BIN and no configuration file of
    /// this machine in play. Its status is the job's.
    func sbatchWait(in directory: TempDirectory, _ arguments: [String], environment extra: [String: String] = [:]) throws -> ProcessResult {
        // A job that never ends must not hang the tests: SLURM's own time limit, and timeout.
        try run(["timeout", "150", "sbatch", "--wait", "--time=2"] + arguments,
                environment: environment(directory, extra), currentDirectory: directory.path)
    }

    func environment(_ directory: TempDirectory, _ extra: [String: String] = [:]) -> [String: String] {
        var env = ["PATH": Self.path, "HOME": directory.path, "LANG": "C.UTF-8", "SLURM_CONF": configuration,
                   "OVERLAY_BIN": productsDirectory.path,
                   "XDG_CONFIG_HOME": directory.file(".config"), "OVERLAY_SYSTEM_CONFIG": directory.file(".system-config")]
        for (key, value) in extra { env[key] = value }
        return env
    }

    /// Submits `sbatch --parsable ARGUMENTS` from `directory` (as ``sbatchWait`` does, without
    /// waiting: a requeued job's first run ending is not the job's end) and returns its id.
    func sbatch(in directory: TempDirectory, _ arguments: [String]) throws -> String {
        let result = try run(["timeout", "30", "sbatch", "--parsable", "--time=3"] + arguments,
                             environment: environment(directory), currentDirectory: directory.path)
        let id = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        guard result.status == 0, !id.isEmpty, id.allSatisfy(\.isNumber) else {
            throw StandInError(description: "sbatch failed: \(result)")
        }
        return id
    }

    /// A SLURM command (scontrol, scancel) against this cluster.
    func command(_ argv: [String]) throws -> ProcessResult {
        try run(["timeout", "30"] + argv, environment: ["PATH": Self.path, "SLURM_CONF": configuration])
    }

    /// Ends the job if it still runs or waits (a failed test leaves nothing behind).
    func cancel(_ job: String) {
        _ = try? command(["scancel", job])
    }

    /// Waits (polling every 0.2 s) until `condition` holds, at most `seconds`.
    func poll(_ what: String, seconds: Double = 60, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while try !condition() {
            guard Date() < deadline else { throw StandInError(description: "timed out after \(Int(seconds)) s waiting for \(what)") }
            usleep(200_000)
        }
    }

    struct JobState: CustomStringConvertible {
        var jobState = "", restarts = -1, exitCode = ""
        var description: String { "JobState=\(jobState) Restarts=\(restarts) ExitCode=\(exitCode)" }
    }

    /// `scontrol show job`: its state, how often it was requeued, its exit code.
    func state(of job: String) throws -> JobState {
        let shown = try command(["scontrol", "show", "job", "-o", job])
        var state = JobState()
        for field in shown.stdout.split(whereSeparator: \.isWhitespace) {
            let parts = field.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            switch parts[0] {
            case "JobState": state.jobState = parts[1]
            case "Restarts": state.restarts = Int(parts[1]) ?? -1
            case "ExitCode": state.exitCode = parts[1]
            default: break
            }
        }
        return state
    }

    /// `scontrol requeue JOB`, then, once the job waits again, makes it eligible at once: a
    /// requeued job otherwise waits about two minutes (its EligibleTime is set 121 s ahead).
    func requeueAndStartAtOnce(_ job: String) throws {
        let requeued = try command(["scontrol", "requeue", job])
        guard requeued.status == 0 else { throw StandInError(description: "scontrol requeue failed: \(requeued)") }
        try poll("job \(job) to be pending again") { try state(of: job).jobState == "PENDING" }
        // Launched again within the second of the requeue, slurmd takes the new run for the old
        // one it killed ("Job credential revoked") and the job fails: wait a little first.
        sleep(2)
        let update = try command(["scontrol", "update", "JobId=\(job)", "StartTime=now"])
        guard update.status == 0 else { throw StandInError(description: "scontrol update StartTime=now failed: \(update)") }
    }

    /// Waits until the job has ended (at most `seconds`) and returns its last state.
    func waitUntilDone(_ job: String, seconds: Double = 90) throws -> JobState {
        var last = JobState()
        try poll("job \(job) to end", seconds: seconds) {
            last = try state(of: job)
            return ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"].contains(last.jobState)
        }
        return last
    }

    /// The job logs (`*.out`) in `directory`, in name order.
    func logs(in directory: TempDirectory) throws -> [String] {
        try directory.listing().filter { $0.hasSuffix(".out") }
            .map { try String(contentsOfFile: directory.file($0), encoding: .utf8) }
    }
}
