import Checkpoint
import LinuxSupport
import Overlay

#if canImport(Glibc)
import Glibc
#endif

/// `--snapshot-timeout SECONDS`: the snapshot at interruption (SIGTERM) is taken within a
/// bound, so the job still gets SIGTERM in time to end before the batch system's SIGKILL. It
/// is taken in a child process of the setup process; when the bound passes first, the child
/// (and what it started, such as cp or criu) is killed, the job's filesystem thawed and its
/// processes continued, and whatever of the snapshot was made is removed.
extension Setup {
    /// Runs `take` (one snapshot; false: it failed and said so) in a child process and waits
    /// for it at most `seconds`. True when it worked; false when it failed or the bound
    /// passed (then nothing of it is left and one line on stderr says so). With
    /// `checkpoints`, the child's dump outcome is brought back into it.
    /// With `inJobNamespace` (FUSE mode) the child is forked into the job's PID namespace.
    func boundedSnapshot(within seconds: Double, job: Int32, jobEnded: Bool = false, mountPoint: String, directory: String,
                         checkpoints: JobCheckpoints?, inJobNamespace: Bool = false, take: () -> Bool) -> Bool {
        let deadline = MonotonicClock.milliseconds + Int((seconds * 1000).rounded(.up))
        let before = Set(JobSnapshotter.snapshotNames(in: directory))
        // Once the job has ended (and maybe been reaped) there is nothing of it to continue.
        let namespace = jobEnded ? nil : JobFreezer.namespace(of: job)
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else {
            IO.writeLine("warning: snapshot (interruption) failed, nothing kept: cannot make a pipe: \(Errno.last)", to: 2)
            return false
        }
        // The child in this process's own PID namespace, not the job's (which the freeze scans).
        // In FUSE mode (a user namespace, which cannot go back to its own PID namespace) it is
        // a process of the job's: the freeze leaves it out and signals by /proc descriptors.
        let child: Int32
        do {
            let fork = { () throws -> Int32 in
                do { return try Children.fork() } catch { throw RuntimeError.failed("cannot fork: \(error)") }
            }
            child = try inJobNamespace ? fork() : JobSnapshotter.inOwnPIDNamespace(fork)
        } catch {
            close(ends[0])
            close(ends[1])
            IO.writeLine("warning: snapshot (interruption) failed, nothing kept: \(error)", to: 2)
            return false
        }
        if child == 0 {
            close(ends[0])
            Children.setParentDeathSignal(SIGKILL)
            // A process group of its own, so that what it starts is killed with it.
            setpgid(0, 0)
            let worked = take()
            try? IO.writeAll(ends[1], Array((checkpoints?.failure ?? "").utf8))
            _exit(worked ? 0 : 1)
        }
        close(ends[1])
        defer { close(ends[0]) }
        var status: WaitStatus?
        Children.reap([child], until: deadline, ended: { _, ended in status = ended })
        if let status {
            let failure = String(decoding: (try? IO.readAll(ends[0])) ?? [], as: UTF8.self)
            checkpoints?.failure = failure.isEmpty ? nil : failure
            return status.shellStatus == 0
        }
        kill(-child, SIGKILL)
        kill(child, SIGKILL)
        _ = Children.wait(child)
        // Thawed and continued, whatever stage it reached (FITHAW of a filesystem that is not
        // frozen and SIGCONT to a running process change nothing).
        let mount = open(mountPoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if mount >= 0 {
            _ = FileCalls.thawFilesystem(mount)
            close(mount)
        }
        if let namespace {
            for pid in JobFreezer.members(of: namespace) { kill(pid, SIGCONT) }
        }
        // A snapshot that got as far as DIR/latest is complete: kept. Anything else it made goes.
        let latest = Self.latestName(in: directory)
        let made = Set(JobSnapshotter.snapshotNames(in: directory)).subtracting(before)
        if let latest, made.contains(latest) {
            Self.removeLeftovers(of: child, in: directory)
            IO.writeLine("snapshot \(Escaped.terminal(directory + "/" + latest)) (interruption, finished as the \(Self.shown(seconds)) s of --snapshot-timeout ran out)", to: 2)
            return true
        }
        for name in made {
            unlink(directory + "/" + name)
            Checkpoint.removeTree(JobSnapshotter.checkpointDirectory(of: directory + "/" + name))
        }
        Self.removeLeftovers(of: child, in: directory)
        IO.writeLine("error: the snapshot at interruption did not finish within \(Self.shown(seconds)) s (--snapshot-timeout): nothing of it kept, the job gets SIGTERM now", to: 2)
        return false
    }

    /// What `DIR/latest` names (a file name in DIR), if anything.
    static func latestName(in directory: String) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink(directory + "/latest", &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Removes the hidden files and directories a snapshot made by process `pid` leaves in
    /// `directory` while it works (`.<stamp>.dirs.<pid>`, `.<stamp>.criu.<pid>`, `.latest.<pid>`).
    static func removeLeftovers(of pid: Int32, in directory: String) {
        guard let dir = opendir(directory) else { return }
        var found: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix("."), name.hasSuffix(".\(pid)"),
               name.hasPrefix(".latest.") || name.contains(".dirs.") || name.contains(".criu.") {
                found.append(name)
            }
        }
        closedir(dir)
        for name in found { Checkpoint.removeTree(directory + "/" + name) }
    }

    /// Removes what snapshots of runs that were killed (SIGKILL) left while they worked:
    /// the hidden `.<stamp>.dirs.<pid>`, `.<stamp>.criu.<pid>` and `.latest.<pid>` of processes
    /// that no longer exist.
    static func removeAbandoned(in directory: String) {
        guard let dir = opendir(directory) else { return }
        var pids: Set<Int32> = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasPrefix("."), name.hasPrefix(".latest.") || name.contains(".dirs.") || name.contains(".criu."),
                  let last = name.split(separator: ".").last, let pid = Int32(last), pid > 0 else { continue }
            pids.insert(pid)
        }
        closedir(dir)
        for pid in pids where kill(pid, 0) != 0 && errno == ESRCH { removeLeftovers(of: pid, in: directory) }
    }

    static func shown(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
    }
}
