import Foundation
import Testing
import TestSupport

/// Job snapshots into a directory on another filesystem than the overlay image (the kernel's
/// copy_file_range refuses to copy between them: the copy reads and writes instead).
@Suite("Job snapshots on another filesystem (root)", .serialized, .requiresRoot, .requires(executable: "e2fsck"))
struct JobSnapshotOtherFilesystemTests {
    @Test func aSnapshotDirectoryOnATmpfsGetsTheSnapshot() throws {
        let s = try JobSnapshotScene()
        let mounted = try TestSupport.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", s.snapshots])
        try #require(mounted.status == 0, "\(mounted)")
        defer { _ = try? TestSupport.run(["umount", s.snapshots]) }
        let job = try s.start(["--snapshot-to", s.snapshots, "-o", s.image, "--", "bash", "-c",
                               "trap 'exit 3' TERM; echo 1 > /n; echo ready; while true; do sleep 0.05; done"])
        #expect(job.readLine(timeout: 60) == "ready")
        job.signal(SIGTERM)
        let result = job.wait(timeout: 60)
        #expect(result.status == 3, "\(result)")
        let taken = s.taken()
        try #require(taken.count == 1, "\(taken) \(result)")
        #expect(try s.cat(taken[0], "/n") == "1\n")
        #expect(try FixtureImage.isClean(taken[0]))
    }
}
