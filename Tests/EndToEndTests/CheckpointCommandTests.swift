import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `overlay checkpoint` on a native-runtime job (real loop, ext3 and overlayfs mounts, real
/// CRIU), and `overlay doctor`.
@Suite("Checkpoint commands", .serialized, .requiresRoot, .requiresCRIU,
       .requires(executable: "mke2fs"), .requires(executable: "e2fsck"))
struct CheckpointCommandTests {
    @Test func aNativeJobIsDumpedAndRestoredIntoRebuiltMountsAndCountsOn() throws {
        let scene = try NativeScene()
        try scene.overlay("env.ext3")
        // Counts in memory; each value goes to stdout and, as a file, into the writable overlay.
        let counter = "i=0; while :; do i=$((i+1)); echo $i; echo $i > /count.txt; sleep 0.05; done"
        let job = try scene.start(["-o", "env.ext3", "--", "sh", "-c", counter])
        var seen: [Int] = []
        while seen.count < 5, let line = job.readLine(timeout: 30) { if let n = Int(line) { seen.append(n) } }
        #expect(seen == [1, 2, 3, 4, 5], "\(seen)")

        let dumped = try overlay(scene, ["checkpoint", "dump", "--job", "\(job.pid)", scene.file("ck"), "--belongs-to", "env.ext3"])
        #expect(dumped.status == 0, "\(dumped)")
        #expect(dumped.stdout.hasPrefix("dumped process "), "\(dumped)")
        while let line = job.readLine(timeout: 0.5) { if let n = Int(line) { seen.append(n) } }
        let ended = job.wait(timeout: 30)
        #expect(ended.status == 128 + SIGKILL, "run-overlay should end as its killed job: \(ended)")
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
        let manifest = try String(contentsOfFile: scene.file("ck/manifest.json"), encoding: .utf8)
        #expect(manifest.contains("\"pidNamespace\":true") && manifest.contains("\"mountNamespace\":true"), "\(manifest)")
        #expect(manifest.contains("\"belongsTo\":\"env.ext3\""), "\(manifest)")
        let last = seen.last!

        // The same options from the same directory: the mounts are rebuilt, the job goes on.
        let restored = try SpawnedProcess([product("overlay"), "checkpoint", "restore-job", scene.file("ck"), "--runtime", "native",
                                           "-o", "env.ext3"], environment: scene.environment(), currentDirectory: scene.directory.path)
        var after: [Int] = []
        while after.count < 5, let line = restored.readLine(timeout: 30) { if let n = Int(line) { after.append(n) } }
        #expect(after.first == last + 1, "restored count \(after) does not follow \(last)")
        #expect(after.count == 5 && after == Array((last + 1)...(last + 5)), "\(after)")
        // Signals reach the restored job as they reached the first; the status is its own.
        restored.signal(SIGTERM)
        let finished = restored.wait(timeout: 30)
        #expect(finished.status == 128 + SIGTERM, "\(finished)")
        #expect(scene.leftovers().isEmpty, "\(scene.leftovers())")
        #expect(try FixtureImage.isClean(scene.file("env.ext3")))
        let written = try FixtureImage.cat(scene.file("env.ext3"), "upper/count.txt").flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        #expect((written ?? 0) > last, "the restored job did not write to the rebuilt overlay: \(String(describing: written))")
        #expect(!FileManager.default.fileExists(atPath: "/count.txt"), "the write reached the host")
    }

    @Test func aDumpOfSomethingThatIsNoJobIsRefusedInOneLine() throws {
        let scene = try NativeScene()
        let sleeper = try SpawnedProcess(["/bin/sleep", "60"])
        defer { sleeper.signal(SIGKILL); _ = sleeper.wait(timeout: 10) }
        let result = try overlay(scene, ["checkpoint", "dump", "--job", "\(sleeper.pid)", scene.file("ck")])
        #expect(result.status == 1, "\(result)")
        #expect(result.stderr == "error: process \(sleeper.pid) runs no native-runtime job: give the pid of a run-overlay or mount-overlay using the native runtime\n", "\(result)")
        #expect(!sleeper.hasExited)
        #expect(!FileManager.default.fileExists(atPath: scene.file("ck")))
        let restore = try overlay(scene, ["checkpoint", "restore", scene.file("nothing")])
        #expect(restore.status == 1, "\(restore)")
        #expect(restore.stderr.contains("holds no checkpoint"), "\(restore)")
    }

    @Test func doctorSaysWhatWorksOneLineEach() throws {
        let scene = try NativeScene()
        let result = try overlay(scene, ["doctor"])
        #expect(result.status == 0, "\(result)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        for name in ["kernel mounts (root)", "user namespaces", "/dev/fuse", "fuse2fs", "fuse-overlayfs", "squashfuse",
                     "apptainer/singularity", "criu", "criu check", "criu capabilities", "checkpoints"] {
            #expect(lines.contains { $0.hasPrefix("ok      \(name): ") || $0.hasPrefix("missing \(name): ") }, "no line for \(name): \(result)")
        }
        #expect(lines.contains { $0.hasPrefix("ok      kernel mounts (root): ") }, "\(result)")
        #expect(lines.contains { $0.hasPrefix("ok      criu check: Looks good") }, "\(result)")
        #expect(lines.last?.hasPrefix("summary: jobs can run with the native runtime with kernel mounts") == true, "\(result)")

        let json = try overlay(scene, ["doctor", "--json"])
        #expect(json.status == 0, "\(json)")
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(object?["ok"] as? Bool == true, "\(json)")
        let checks = object?["checks"] as? [[String: Any]] ?? []
        #expect(checks.count == lines.count - 1, "\(json)")
        #expect(checks.contains { $0["name"] as? String == "checkpoints" && $0["ok"] as? Bool == true }, "\(json)")

        let only = try overlay(scene, ["doctor", "--checkpoint"])
        #expect(only.status == 0, "\(only)")
        #expect(only.stdout.hasPrefix("ok      checkpoints: criu ") && only.stdout.split(separator: "\n").count == 1, "\(only)")
    }

    @Test(.requires(executable: "runuser"))
    func doctorForAnOrdinaryUserSaysWhatCheckpointsLack() throws {
        let scene = try NativeScene()
        // nobody: not root, and the built criu carries no file capability.
        let result = try TestSupport.run(["runuser", "-u", "nobody", "--", product("overlay"), "doctor", "--checkpoint"],
                                         environment: scene.environment(), currentDirectory: "/", timeout: 60)
        #expect(result.status == 1, "\(result)")
        #expect(result.stdout.hasPrefix("missing checkpoints: ") && result.stdout.contains("CAP_CHECKPOINT_RESTORE"), "\(result)")
    }
}

/// Runs the built `overlay` with the scene's environment, from its directory.
private func overlay(_ scene: NativeScene, _ arguments: [String]) throws -> ProcessResult {
    try TestSupport.run([product("overlay")] + arguments, environment: scene.environment(),
                        currentDirectory: scene.directory.path, timeout: 60)
}
