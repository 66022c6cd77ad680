import Checkpoint
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The setup process's last stage when resuming: instead of starting the command, the
/// processes of a checkpoint of an earlier run of the same job (dumped from its PID-namespace
/// init, inside its mount namespace) are restored into the mounts just rebuilt at the same
/// paths. The restored init is this process's child, as a started job's would be, with this
/// process's standard streams; signals, the exit status and the teardown work as for a job.
/// When they cannot be restored, the setup process tears the mounts down and exits with
/// ``JobResume/processRestoreFailedStatus`` (CRIU removes what it restored of the tree).
extension Setup {
    func restoreJob(from directory: String) throws(Failure) -> Int32 {
        let failed = JobResume.processRestoreFailedStatus
        let manifest: CheckpointManifest
        do { manifest = try Checkpoint.manifest(in: directory) } catch { throw Failure(text: error.description, status: failed) }
        guard manifest.pidNamespace && manifest.mountNamespace else {
            throw Failure(text: "the checkpoint in \(Escaped.terminal(directory)) is not of a native-runtime job (dumped from its PID-namespace init, in its mount namespace): it cannot be resumed in the job's mounts", status: failed)
        }
        let restored: RestoredTree
        do { restored = try Checkpoint.restore(from: directory) } catch { throw Failure(text: error.description, status: failed) }
        // The job's /proc belonged to its old PID namespace: mount one for the new namespace,
        // from a process inside it.
        let proc = plan.root + "/proc"
        var spec = ChildSpec(argv: ["nsenter", "--pid=/proc/\(restored.pid)/ns/pid", "--", "mount", "-t", "proc",
                                    "-o", "nosuid,nodev,noexec", "proc", proc])
        spec.deathSignal = SIGKILL
        if case let .started(pid)? = try? spec.spawn(), Children.wait(pid)?.shellStatus == 0 {
        } else {
            IO.writeLine("warning: the restored job has no /proc (cannot mount one at \(proc) in its PID namespace)")
        }
        // A job dumped while frozen for a job snapshot comes back stopped, as it was dumped.
        if let namespace = JobFreezer.namespace(of: restored.pid) {
            for pid in JobFreezer.members(of: namespace) { kill(pid, SIGCONT) }
        }
        return restored.pid
    }
}

extension JobResume {
    /// run-overlay's status when `--resume --checkpoint` restored the writable overlay but CRIU
    /// could not restore the job's processes: nothing of the job runs, its mounts are gone, the
    /// overlay keeps the snapshot's files (the instant the checkpoint belongs to), and the
    /// checkpoint is kept.
    public static let processRestoreFailedStatus: Int32 = 179
}

/// `--resume --checkpoint`: the job's processes could not be restored (see
/// ``JobResume/processRestoreFailedStatus``); one line with CRIU's reason and what to do.
public struct ProcessRestoreFailed: UserFacingError, Equatable {
    public let reason: String
    public var exitStatus: Int32 { JobResume.processRestoreFailedStatus }
    public var description: String {
        "the job's processes were not restored (\(reason)): nothing of the job runs; the overlay holds the files of the snapshot the checkpoint belongs to; run again with --resume --checkpoint, or with --resume alone to start the command afresh on those files"
    }
}
