import ArgumentParser
import Ext3
import LinuxSupport
import Overlay
import Runtime

#if canImport(Glibc)
import Glibc
#endif

/// `overlay jobs [--json]`: this user's running jobs with snapshots on this machine.
public struct JobsCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "jobs",
        abstract: "List your running jobs on this machine that take snapshots (run-overlay --snapshot-to): id, pid, images, settings.")
    public init() {}

    @Flag(help: "Print one JSON array.")
    public var json = false

    public func run() throws {
        let entries = JobRegistry.list(environment: currentEnvironment())
        if json {
            print("[" + entries.map(\.json).joined(separator: ",") + "]")
            return
        }
        let e = Escaped.terminal
        for entry in entries {
            let every = entry.everySeconds.map { ", every \($0) s" } ?? ""
            let keep = entry.keep.map { ", keep \($0)" } ?? ""
            print("\(e(entry.id))  pid \(entry.pid)  \(entry.images.map(e).joined(separator: " "))  -> \(e(entry.snapshotTo))\(every)\(keep)")
        }
    }
}

/// `overlay snapshot now [JOB]`: a snapshot of a running job, now.
public struct SnapshotNow: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "now",
        abstract: "Take a snapshot of a running job now (its id from overlay jobs, or its writable image; the only one when not given) and print its file.")
    public init() {}

    @Argument(help: ArgumentHelp("The job: its id, or the path of an image it runs with.", valueName: "job"))
    public var job: String?

    @Option(help: ArgumentHelp("Wait at most this many seconds for the snapshot (default: 120).", valueName: "seconds"))
    public var timeout: Int = 120

    public func run() throws {
        let entries = JobRegistry.list(environment: currentEnvironment())
        var matching = entries
        if let job {
            let resolved = realpath(job, nil).map { pointer -> String in
                defer { free(pointer) }
                return String(cString: pointer)
            }
            matching = entries.filter { entry in entry.id == job || (resolved.map { entry.images.contains($0) } ?? false) }
        }
        guard !matching.isEmpty else {
            throw CommandFailure(job.map { "no running job of yours with id or image \($0) on this machine: see overlay jobs" }
                                 ?? "no running job of yours takes snapshots on this machine: start one with run-overlay --snapshot-to DIR")
        }
        guard matching.count == 1, let entry = matching.first else {
            throw CommandFailure("\(matching.count) running jobs: name one (overlay jobs lists their ids)")
        }
        let before = Set(JobSnapshotter.snapshotNames(in: entry.snapshotTo))
        guard kill(entry.pid, SIGUSR1) == 0 else {
            throw CommandFailure("cannot signal job \(entry.id) (pid \(entry.pid)): \(Errno.last)")
        }
        let deadline = MonotonicClock.milliseconds + timeout * 1000
        while MonotonicClock.milliseconds < deadline {
            let new = JobSnapshotter.snapshotNames(in: entry.snapshotTo).filter { !before.contains($0) }
            if let name = new.last {
                print(Escaped.terminal(entry.snapshotTo + "/" + name))
                return
            }
            if kill(entry.pid, 0) != 0 && errno == ESRCH {
                throw CommandFailure("job \(entry.id) ended before its snapshot was made")
            }
            usleep(20_000)
        }
        throw CommandFailure("job \(entry.id) made no snapshot within \(timeout) s (its messages on stderr say why)")
    }
}
