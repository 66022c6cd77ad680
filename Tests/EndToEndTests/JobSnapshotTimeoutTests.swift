import Foundation
import Testing
import TestSupport

/// `run-overlay --snapshot-timeout`: the snapshot at SIGTERM is bounded in time.
@Suite("Job snapshot timeout (root)", .serialized, .requiresRoot, .requires(executable: "e2fsck"))
struct JobSnapshotTimeoutTests {
    /// A job whose overlay holds 256 MiB of data cannot be copied in 0.1 s (on a filesystem
    /// that shares blocks, the rebuild the filter asks for cannot either): the snapshot is
    /// dropped whole, the job is thawed and gets SIGTERM, and run-overlay exits with 175.
    @Test func aFinalSnapshotThatOutrunsTheBoundIsDroppedAndTheJobGetsSigterm() throws {
        let s = try JobSnapshotScene()
        let image = s.scene.file("big.ext3")
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
        // One line of the toolkit's (the job's shell may add its own "Terminated").
        let lines = result.stderr.split(separator: "\n").filter { $0.hasPrefix("error:") || $0.hasPrefix("warning:") || $0.hasPrefix("snapshot ") }
        #expect(lines.count == 1 && lines[0].contains("did not finish within 0.1 s (--snapshot-timeout)"), "\(result)")
        // Nothing of the snapshot is left, not even hidden; the job was thawed and got SIGTERM
        // (its trap wrote into the overlay, so its filesystem was thawed too).
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.snapshots).isEmpty)
        #expect(try s.cat(image, "/marker") == "term\n")
        #expect(try FixtureImage.isClean(image))
    }

    @Test(arguments: [
        (["--snapshot-to", "SNAPS", "--snapshot-timeout", "0"], "--snapshot-timeout 0.0: give a number of seconds above 0"),
        (["--snapshot-timeout", "5"], "--snapshot-timeout bounds the last job snapshot at SIGTERM: give --snapshot-to DIR too"),
        (["--snapshot-to", "SNAPS", "--checkpoint", "--snapshot-timeout", "5"], "--snapshot-timeout does not go with --checkpoint"),
    ])
    func badTimeoutsAreOneLineBeforeAnythingStarts(arguments: [String], expected: String) throws {
        let s = try JobSnapshotScene()
        let marker = s.scene.file("ran")
        let argv = arguments.map { $0 == "SNAPS" ? s.snapshots : $0 }
        let result = try s.run("run-overlay", argv + ["-o", s.image, "--", "touch", marker])
        #expect(result.status != 0, "\(result)")
        #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.contains(expected), "\(result)")
        #expect(!FileManager.default.fileExists(atPath: marker))
        #expect(s.taken().isEmpty)
    }
}
