import Foundation
import Testing
import TestSupport

/// `run-overlay --snapshot-to` with `--writable-dir`: the live host directories a job writes
/// into are in its snapshots, at the same instant as its writable overlay, and a resume leaves
/// them alone.
@Suite("Job snapshots with writable dirs (root)", .serialized, .requiresRoot, .requires(executable: "e2fsck"),
       .requires(executable: "python3", "the test job is a Python script"))
struct JobSnapshotWritableDirTests {
    /// Keeps a counter in the overlay's /jobdata/a and the writable dir's b, b written right
    /// after a: every snapshot must show a == b or a == b + 1.
    static let lockstep = """
        import os, signal, sys
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        d = sys.argv[1]
        os.makedirs('/jobdata', exist_ok=True)
        os.makedirs(d + '/sub', exist_ok=True)
        for name, text in [('x.tmp', 'x'), ('sub/skip', 's'), ('sub/keep', 'k')]:
            with open(d + '/' + name, 'w') as f:
                f.write(text)
        a = os.open('/jobdata/a', os.O_WRONLY | os.O_CREAT, 0o644)
        b = os.open(d + '/b', os.O_WRONLY | os.O_CREAT, 0o644)
        i = 0
        while True:
            i += 1
            os.pwrite(a, b'%010d' % i, 0)
            os.pwrite(b, b'%010d' % i, 0)
            if i == 1:
                print('ready', flush=True)
        """

    static func resolved(_ path: String) -> String {
        guard let real = realpath(path, nil) else { return path }
        defer { free(real) }
        return String(cString: real)
    }

    @Test func writableDirsAreInEachSnapshotAtTheSameInstantFilteredAndResumeLeavesThemAlone() throws {
        let s = try JobSnapshotScene()
        let results = s.scene.file("results")
        try FileManager.default.createDirectory(atPath: results, withIntermediateDirectories: true)
        let dir = Self.resolved(results)
        let script = try s.write("lockstep.py", Self.lockstep)
        let job = try s.start(["--snapshot-to", s.snapshots, "--writable-dir", "results",
                               "--snapshot-exclude", #".*\.tmp"#, "--snapshot-exclude", "sub/skip",
                               "-o", s.image, "--", "python3", script, dir])
        #expect(job.readLine(timeout: 60) == "ready")
        job.signal(SIGUSR1)
        for _ in 0..<400 where s.taken().isEmpty { usleep(50_000) }
        job.signal(SIGTERM)
        let result = job.wait(timeout: 120)
        #expect(result.status == 0, "\(result)")
        let taken = s.taken()
        try #require(taken.count == 2, "\(taken) \(result)")
        for snapshot in taken {
            #expect(try FixtureImage.isClean(snapshot), "\(snapshot) is not e2fsck-clean")
            let a = try s.cat(snapshot, "/jobdata/a").flatMap { Int($0) }
            let b = try s.cat(snapshot, dir + "/b").flatMap { Int($0) }
            try #require(a != nil && b != nil, "\(snapshot): a=\(String(describing: a)) b=\(String(describing: b))")
            #expect(a! == b! || a! == b! + 1, "\(snapshot): a=\(a!) b=\(b!), a state the job never had")
            // Filters apply to the writable dir with paths relative to it.
            #expect(try s.cat(snapshot, dir + "/sub/keep") == "k")
            #expect(try s.cat(snapshot, dir + "/sub/skip") == nil)
            #expect(try s.cat(snapshot, dir + "/x.tmp") == nil)
            let info = try s.run("overlay", ["snapshot", "info", "--json", snapshot])
            #expect(info.stdout.contains("\"path\":\"\(dir)\",\"kind\":\"directory\""), "\(info)")
        }
        // Resumed: the overlay goes back, the writable dir is left as it is and stderr says
        // how to get the snapshot's copy back by hand; the overlay does not take it in.
        let before = try FileManager.default.attributesOfItem(atPath: s.image)[.size] as? Int ?? 0
        try "later\n".write(toFile: dir + "/later", atomically: false, encoding: .utf8)
        let resumed = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "--resume", "--writable-dir", "results", "-o", s.image, "--",
                                                "sh", "-c", "cat \(dir)/later; test -e /jobdata/a && echo has-a; true"])
        #expect(resumed.status == 0 && resumed.stdout == "later\nhas-a\n", "\(resumed)")
        #expect(resumed.stderr.contains("left as it is") && resumed.stderr.contains("mount -o loop,ro"), "\(resumed)")
        #expect(FileManager.default.fileExists(atPath: dir + "/x.tmp"))
        #expect(try s.cat(s.image, dir + "/b") == nil, "the resumed overlay took in the writable dir")
        #expect(try s.cat(s.image, "/jobdata/a") != nil)
        #expect(try FixtureImage.isClean(s.image), "the resumed overlay is not e2fsck-clean")
        #expect(try FileManager.default.attributesOfItem(atPath: s.image)[.size] as? Int == before)
        let left = try FileManager.default.contentsOfDirectory(atPath: s.snapshots).filter { $0.hasPrefix(".") }
        #expect(left.isEmpty, "\(left)")
    }

    @Test func whatAKilledRunLeftWhileCopyingIsRemovedByTheNextRun() throws {
        let s = try JobSnapshotScene()
        // A pid no process has (above the kernel's limit), and this test's own, alive.
        let abandoned = s.snapshots + "/.20261202T000000Z.dirs.2147483647"
        let alive = s.snapshots + "/.20261202T000000Z.dirs.\(getpid())"
        for path in [abandoned + "/0", alive + "/0"] {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            try "x".write(toFile: path + "/f", atomically: false, encoding: .utf8)
        }
        let result = try s.run("run-overlay", ["--snapshot-to", s.snapshots, "-o", s.image, "--", "true"])
        #expect(result.status == 0, "\(result)")
        #expect(!FileManager.default.fileExists(atPath: abandoned))
        #expect(FileManager.default.fileExists(atPath: alive + "/0/f"))
    }
}
