import Foundation
import Testing
import TestSupport
@testable import Runtime

/// The FUSE-mode cut of job snapshots checks that fuse2fs answered no request while the image
/// was copied by its write-call count; a count that cannot be read would leave the copy
/// unchecked.
@Suite("Job snapshots through fuse2fs")
struct Fuse2fsFlushTests {
    @Test func theWriteCallCountOfAProcessGrowsWithItsWrites() throws {
        let before = try #require(Fuse2fsFlush.writeCalls(of: getpid()), "/proc/PID/io gives no syscw")
        let null = open("/dev/null", O_WRONLY)
        defer { close(null) }
        var byte: UInt8 = 0
        for _ in 0..<3 { #expect(write(null, &byte, 1) == 1) }
        let after = try #require(Fuse2fsFlush.writeCalls(of: getpid()))
        #expect(after >= before + 3, "\(before) -> \(after)")
        #expect(Fuse2fsFlush.writeCalls(of: 0) == nil)
    }

    @Test func theDriverIsTheFuse2fsWhoseCommandLineNamesTheMountPoint() throws {
        // Stand-ins with fuse2fs's command lines (bash's exec -a sets argv[0]); tail waits
        // on /dev/null and only warns about the missing mount point.
        func start(_ mountPoint: String) throws -> SpawnedProcess {
            try SpawnedProcess(["/bin/bash", "-c", "exec -a fuse2fs tail -f /dev/null \(mountPoint) 2>/dev/null"])
        }
        let other = try start("/run/overlay-toolkit/image1")
        let writable = try start("/run/overlay-toolkit/image0")
        defer {
            for process in [other, writable] {
                process.signal(SIGKILL)
                _ = process.wait(timeout: 10)
            }
        }
        func started(_ pid: Int32) -> Bool {
            (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8))?.hasPrefix("fuse2fs") == true
        }
        for _ in 0..<250 where !(started(other.pid) && started(writable.pid)) { usleep(20_000) }
        let pids = [other.pid, writable.pid]
        #expect(Fuse2fsFlush.driver(among: pids, mountPoint: "/run/overlay-toolkit/image0") == writable.pid)
        #expect(Fuse2fsFlush.driver(among: pids, mountPoint: "/run/overlay-toolkit/image2") == nil)
    }
}
