import Testing
@testable import Snapshot

/// A snapshot's description as written into the image and read back, names, and what a
/// damaged or hostile description gives.
@Suite struct DescriptionTests {
    let sample = SnapshotDescription(
        name: "inputs-v1", created: "2026-12-02T16:45:00Z", host: "login1", user: "ada",
        captured: [.init(path: "/home/ada/project \"x\"\n", kind: "directory"), .init(path: "/data/set", kind: "directory")],
        git: .init(repository: "/home/ada/project", commit: "4d17fb85d191", branch: "slurm-job-20261202-164500", pushed: true),
        sizeBytes: 8 << 20, entries: 2412, dataBytes: 50_000_000)

    @Test func theDescriptionReadsBackAsWritten() throws {
        #expect(try SnapshotDescription(json: sample.json) == sample)
        var plain = sample
        plain.git = nil
        #expect(try SnapshotDescription(json: plain.json) == plain)
    }

    @Test(arguments: ["", "[]", "{\"name\":\"x\"}", "{\"name\":\"x\" \"created\":\"y\"}", "{\"name\":\"x\",\"created\":\"y\"} tail",
                      String(repeating: "[", count: 100)])
    func aDamagedDescriptionIsAnError(_ text: String) {
        #expect(throws: SnapshotError.self) { try SnapshotDescription(json: text) }
    }

    @Test(arguments: ["inputs-v1", "slurm-job-20261202-164500-2", "a.b_c+d", "X"])
    func usableNames(_ name: String) throws {
        try SnapshotStore.validate(name: name)
    }

    @Test(arguments: ["", "a/b", ".hidden", "-flag", "with space", "tab\there", "é", String(repeating: "a", count: 201)])
    func unusableNames(_ name: String) {
        #expect(throws: SnapshotError.self) { try SnapshotStore.validate(name: name) }
    }

    @Test func aBranchWithSlashesGivesAUsableName() throws {
        #expect(GitSnapshot.snapshotName(forBranch: "jobs/run-1") == "jobs-run-1")
        try SnapshotStore.validate(name: GitSnapshot.snapshotName(forBranch: "jobs/run-1"))
    }
}
