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
extension Setup {
    func restoreJob(from directory: String) throws(Failure) -> Int32 {
        let manifest: CheckpointManifest
        do { manifest = try Checkpoint.manifest(in: directory) } catch { throw Failure(text: error.description) }
        guard manifest.pidNamespace && manifest.mountNamespace else {
            throw Failure(text: "the checkpoint in \(Escaped.terminal(directory)) is not of a native-runtime job (dumped from its PID-namespace init, in its mount namespace): it cannot be resumed in the job's mounts")
        }
        let restored: RestoredTree
        do { restored = try Checkpoint.restore(from: directory) } catch { throw Failure(text: error.description) }
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
