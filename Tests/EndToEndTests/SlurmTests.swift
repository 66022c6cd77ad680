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
        var env = ["PATH": Self.path, "HOME": directory.path, "LANG": "C.UTF-8", "SLURM_CONF": configuration,
                   "OVERLAY_BIN": productsDirectory.path,
                   "XDG_CONFIG_HOME": directory.file(".config"), "OVERLAY_SYSTEM_CONFIG": directory.file(".system-config")]
        for (key, value) in extra { env[key] = value }
        // A job that never ends must not hang the tests: SLURM's own time limit, and timeout.
        return try run(["timeout", "150", "sbatch", "--wait", "--time=2"] + arguments,
                       environment: env, currentDirectory: directory.path)
    }

    /// The job logs (`*.out`) in `directory`, in name order.
    func logs(in directory: TempDirectory) throws -> [String] {
        try directory.listing().filter { $0.hasSuffix(".out") }
            .map { try String(contentsOfFile: directory.file($0), encoding: .utf8) }
    }
}
