import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The setup process's last stage: the job, as the first process of a PID namespace of its
/// own, in the overlay root, as the user.
extension Setup {
    func startJob() throws -> Int32 {
        var command = plan.command
        if plan.interactive {
            guard let shell = plan.command.first(where: { isExecutableFile(plan.root + $0) }) else {
                throw Failure(text: "no shell in the container: none of \(plan.command.joined(separator: ", ")) is there")
            }
            command = [shell]
        }
        var environment = currentEnvironment()
        for (key, value) in plan.environment { environment[key] = value }
        // The job gets a PID namespace of its own, so whatever it leaves running ends with it.
        do { try Mounts.unshare(.pid) } catch {
            throw Failure(text: "cannot make a PID namespace for the job: \(error.errno)")
        }
        var spec = ChildSpec(argv: command)
        spec.environment = environment
        spec.root = plan.root
        spec.directory = plan.workingDirectory
        if plan.identity.change { spec.identity = (plan.identity.uid, plan.identity.gid, plan.identity.groups) }
        spec.deathSignal = SIGKILL
        spec.initProcess = true
        spec.procTarget = plan.root + "/proc"
        // So that the job can be checkpointed (Checkpoint): init then maps no file through the
        // tool's mount namespace.
        spec.reexecInit = true
        // A batch job (no terminal on its standard streams, not an interactive shell) gets a
        // session of its own, inside its PID namespace, which a checkpoint needs; a job on a
        // terminal keeps the terminal's session, its job control and /dev/tty.
        spec.newSession = !plan.interactive && (0...2).allSatisfy { isatty(Int32($0)) == 0 }
        // An interactive shell leads the terminal's foreground from inside the namespace (dash
        // exits 2 when the group it saved at start lies outside it); the tool takes the
        // terminal back when the job ends.
        spec.foregroundTerminal = plan.interactive
        return try start(spec, what: "cannot run '\(command[0])' in the container", isJob: true)
    }

    /// Starts `spec` (fork + exec, see ``ChildSpec``; fork only, running `body` instead of the
    /// program, when given). `what` says what failed when the program
    /// could not be run; a job that could not be run is reported as a shell would, on standard
    /// error with status 127 for a command not found and 126 for one that cannot run.
    func start(_ spec: ChildSpec, what: String, isJob: Bool = false, running body: (() -> Int32)? = nil) throws -> Int32 {
        let outcome: ChildSpec.Outcome
        do throws(SystemError) {
            if let body { outcome = try spec.fork(running: body) } else { outcome = try spec.spawn() }
        } catch {
            throw Failure(text: "cannot start \(spec.argv[0]): \(error.errno)")
        }
        switch outcome {
        case let .started(pid):
            return pid
        case let .failed(step, code):
            let text: String
            switch step {
            case .root: text = "cannot enter the overlay root \(spec.root ?? "")"
            case .directory: text = "cannot change to \(spec.directory ?? "")"
            case .identity: text = "cannot switch to uid \(plan.identity.uid) gid \(plan.identity.gid)"
            case .capabilities: text = "cannot give \(spec.argv[0]) the capability to mount"
            case .exec: text = what
            }
            if step == .exec && isJob {
                IO.writeLine("error: \(text): \(code)")
                throw JobNotStarted(status: code == .noSuchFileOrDirectory ? 127 : 126)
            }
            throw Failure(text: "\(text): \(code)")
        }
    }

    struct JobNotStarted: Error { let status: Int32 }
}
