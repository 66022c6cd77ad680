import Checkpoint
import Foundation
import LinuxSupport
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Real CRIU on real process trees started here: dumped, killed, restored, and going on from
/// where they were. Each case ends with nothing of its own left running.
@Suite("Checkpoint", .serialized, .requiresRoot, .requiresCRIU)
struct CheckpointTests {
    /// Counts in memory (the counter is never written to a file), printing each value.
    static let counter = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done"

    @Test func aCountingProcessIsDumpedKilledRestoredAndCountsOn() throws {
        let dir = try TempDirectory("checkpoint")
        let original = try SpawnedProcess(["/bin/sh", "-c", Self.counter], newSession: true)
        let before = try readNumbers(original, atLeast: 5)
        let manifest = try Checkpoint.dump(root: original.pid, to: dir.file("ck"), leaveRunning: false, belongsTo: "test")
        // What it printed before it stopped, still in the pipe.
        let last = (before + (try readNumbers(original, atLeast: 0))).last!
        #expect(original.wait(timeout: 10).signal == SIGKILL, "the dumped process was not killed")
        #expect(manifest.rootPID == original.pid)
        #expect(manifest.command == ["/bin/sh", "-c", Self.counter])
        #expect(manifest.belongsTo == "test")
        #expect(!manifest.pidNamespace && !manifest.mountNamespace)
        #expect(try Checkpoint.manifest(in: dir.file("ck")) == manifest, "manifest.json does not read back")

        let output = try LinuxSupport.Pipe()
        let tree = try Checkpoint.restore(from: dir.file("ck"), stdio: (nullFD, output.writeEnd.rawValue, nullFD))
        output.writeEnd.close()
        let after = try readNumbers(fd: output.readEnd.rawValue, atLeast: 5)
        #expect(after.first == last + 1, "restored count \(after.prefix(3)) does not follow \(last)")
        #expect(after == Array(after.first!...(after.first! + after.count - 1)), "\(after)")
        kill(tree.pid, SIGKILL)
        #expect(tree.wait() == .signaled(SIGKILL))
        #expect(noProcess(runs: Self.counter))
    }

    @Test func aParentAndChildWithAPipeBetweenThemAreRestoredTogether() throws {
        let dir = try TempDirectory("checkpoint")
        let script = "(\(Self.counter)) | while read n; do echo got $n; done"
        let original = try SpawnedProcess(["/bin/sh", "-c", script], newSession: true)
        _ = try readNumbers(original, atLeast: 5, prefix: "got ")
        // The producer and the consumer, the root's children (the producer's sleeps, its own
        // children, come and go).
        let childrenBefore = processChildren(of: original.pid).count
        #expect(childrenBefore == 2, "the tree should have a producer and a consumer")
        try Checkpoint.dump(root: original.pid, to: dir.file("ck"), leaveRunning: false)
        let last = try readNumbers(original, atLeast: 0, prefix: "got ").last
        #expect(original.wait(timeout: 10).signal == SIGKILL)

        let output = try LinuxSupport.Pipe()
        let tree = try Checkpoint.restore(from: dir.file("ck"), stdio: (nullFD, output.writeEnd.rawValue, nullFD))
        output.writeEnd.close()
        let after = try readNumbers(fd: output.readEnd.rawValue, atLeast: 5, prefix: "got ")
        #expect(after.first! > 1, "the count started again from zero: \(after)")
        if let last { #expect(after.first == last + 1, "\(after.prefix(3)) after \(last)") }
        #expect(processChildren(of: tree.pid).count == childrenBefore, "not every process of the tree came back")
        kill(-tree.pid, SIGKILL)
        for pid in processDescendants(of: tree.pid) { kill(pid, SIGKILL) }
        kill(tree.pid, SIGKILL)
        _ = tree.wait()
        #expect(noProcess(runs: Self.counter))
    }

    @Test(.requires(executable: "python3"))
    func aDumpCRIUCannotDoLeavesTheProcessRunningAndSaysSo() throws {
        let dir = try TempDirectory("checkpoint")
        // A stream socket connected to a process outside the tree: CRIU refuses to dump half a
        // connection unless told it is external.
        let name = "overlaytest-" + (dir.path.split(separator: ".").last.map(String.init) ?? "x")
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
        let original = try SpawnedProcess(["python3", "-u", "-c", """
            import socket, time
            s = socket.socket(socket.AF_UNIX)
            s.connect("\\0\(name)")
            i = 0
            while True:
                i += 1
                print(i)
                time.sleep(0.05)
            """], newSession: true)
        _ = try readNumbers(original, atLeast: 3)
        #expect {
            try Checkpoint.dump(root: original.pid, to: dir.file("ck"), leaveRunning: false)
        } throws: { error in
            guard let error = error as? CheckpointError, case let .dumpFailed(pid, reason, running) = error else { return false }
            let line = error.description
            return pid == original.pid && running && reason.contains("socket") && !line.contains("\n")
                && line.hasPrefix("cannot checkpoint process \(original.pid): ") && line.hasSuffix("it is still running, untouched")
        }
        // Still counting, and nothing left in the directory.
        #expect(try readNumbers(original, atLeast: 3).count >= 3)
        #expect(!original.hasExited)
        #expect(!FileManager.default.fileExists(atPath: dir.file("ck")), "the failed dump left \(dir.file("ck"))")
        original.signal(SIGKILL)
        _ = original.wait(timeout: 10)
    }

    @Test func aPidWithNoProcessIsRefusedInOneLine() throws {
        let dir = try TempDirectory("checkpoint")
        let gone = try SpawnedProcess(["/bin/true"])
        _ = gone.wait(timeout: 10)
        #expect(throws: CheckpointError.noSuchProcess(gone.pid)) {
            try Checkpoint.dump(root: gone.pid, to: dir.file("ck"), leaveRunning: true)
        }
        #expect(!FileManager.default.fileExists(atPath: dir.file("ck")))
        #expect(throws: CheckpointError.notACheckpoint(dir.path)) { try Checkpoint.restore(from: dir.path) }
    }

    @Test func leaveRunningDumpsAndTheProcessGoesOn() throws {
        let dir = try TempDirectory("checkpoint")
        let original = try SpawnedProcess(["/bin/sh", "-c", Self.counter], newSession: true)
        _ = try readNumbers(original, atLeast: 3)
        let manifest = try Checkpoint.dump(root: original.pid, to: dir.file("ck"), leaveRunning: true)
        #expect(manifest.leftRunning)
        #expect(try readNumbers(original, atLeast: 3).count >= 3, "the process stopped counting")
        #expect(!original.hasExited)
        // A second dump into the same directory is refused.
        #expect(throws: CheckpointError.exists(dir.file("ck"))) {
            try Checkpoint.dump(root: original.pid, to: dir.file("ck"), leaveRunning: true)
        }
        original.signal(SIGKILL)
        _ = original.wait(timeout: 10)
    }
}

// MARK: Helpers

private let nullFD: Int32 = open("/dev/null", O_RDWR | O_CLOEXEC)

struct NoOutput: Error, CustomStringConvertible {
    let seen: [Int]
    var description: String { "the process printed too little: \(seen)" }
}

/// Reads numbered lines ("N", or prefix + "N") from the process's stdout until at least
/// `count` have come (count 0: only what is there now).
private func readNumbers(_ process: SpawnedProcess, atLeast count: Int, prefix: String = "") throws -> [Int] {
    var numbers: [Int] = []
    while true {
        guard let line = process.readLine(timeout: count == 0 || numbers.count >= count ? 0.3 : 20) else { break }
        if let n = Int(line.dropFirst(prefix.count)), line.hasPrefix(prefix) { numbers.append(n) }
        if count > 0 && numbers.count >= count { break }
    }
    if numbers.count < count { throw NoOutput(seen: numbers) }
    return numbers
}

/// The same from a descriptor (a restored tree's standard output).
private func readNumbers(fd: Int32, atLeast count: Int, prefix: String = "") throws -> [Int] {
    var numbers: [Int] = []
    var pending: [UInt8] = []
    let deadline = Date().addingTimeInterval(20)
    while numbers.count < count && Date() < deadline {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, 200) > 0 else { continue }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        pending += buffer[..<n]
        while let newline = pending.firstIndex(of: 0x0A) {
            let line = String(decoding: pending[..<newline], as: UTF8.self)
            pending.removeSubrange(...newline)
            if line.hasPrefix(prefix), let value = Int(line.dropFirst(prefix.count)) { numbers.append(value) }
        }
    }
    if numbers.count < count { throw NoOutput(seen: numbers) }
    return numbers
}

/// Whether no process runs `script` (its command line) any more, after a short grace.
private func noProcess(runs script: String) -> Bool {
    for _ in 0..<50 {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        let running = pids.contains { pid in
            guard Int32(pid) != nil, let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            return String(decoding: data, as: UTF8.self).contains(script)
        }
        if !running { return true }
        usleep(20_000)
    }
    return false
}
