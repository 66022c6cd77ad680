internal import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// Starting a program with fork and exec, with what must happen in between done by C code
/// that does not allocate (chroot, chdir, ids, capabilities, parent-death signal), and, for
/// the first process of a new PID namespace, a small init that passes signals on.
public struct ChildSpec: Sendable {
    public var argv: [String]
    /// nil: this process's environment.
    public var environment: [String: String]?
    /// chroot here first.
    public var root: String?
    /// Then chdir here (falling back to /).
    public var directory: String?
    /// setgroups/setgid/setuid to these.
    public var identity: (uid: UInt32, gid: UInt32, groups: [UInt32])?
    /// Keep CAP_SYS_ADMIN across exec (a FUSE driver in a user namespace).
    public var ambientSysAdmin = false
    /// Signal when the parent dies (0: none).
    public var deathSignal: Int32 = 0
    /// Standard input and output to /dev/null (drivers); standard error kept.
    public var nullStandardIO = false
    public var newProcessGroup = false
    /// The first process of the PID namespace this process unshared: an init that mounts the
    /// namespace's /proc at `procTarget`, runs the program as its child, passes SIGINT,
    /// SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 on, reaps orphans and exits with the
    /// program's status (128+N for signal N).
    public var initProcess = false
    public var procTarget: String?
    /// With `initProcess`: init re-executes this program once the job runs, so that its
    /// memory maps only files of the job's mount namespace (what a CRIU dump from inside that
    /// namespace needs); see clinux_spawn.
    public var reexecInit = false
    /// With `initProcess`: init starts a new session (setsid), which the job joins, so that
    /// the namespace holds its session leader (what a CRIU dump needs). It loses its
    /// controlling terminal, so only for jobs without one.
    public var newSession = false
    /// With a terminal on standard input: the child gets a process group of its own and makes
    /// it the terminal's foreground group (an interactive shell in a PID namespace of its own).
    public var foregroundTerminal = false
    /// SIGINT, SIGTERM, SIGQUIT, SIGUSR1 and SIGUSR2 ignored across exec (a FUSE driver, which
    /// must serve the job's files until the job is done; libfuse leaves an ignored signal as it
    /// is and ends on SIGHUP).
    public var ignoreJobSignals = false

    public init(argv: [String]) { self.argv = argv }

    /// The step that failed in the child before its program ran.
    public enum Step: Int32, Sendable {
        case root = 1, directory, identity, capabilities, exec
    }

    public enum Outcome: Sendable {
        case started(Int32)
        /// A step failed in the child, which has been reaped.
        case failed(Step, Errno)
    }

    /// fork + exec. The strings are leaked on purpose: the callers are short-lived setup
    /// processes that exec or exit soon.
    public func spawn() throws(SystemError) -> Outcome {
        try launch(running: nil)
    }

    /// fork, then `body` in the child instead of `argv`'s program (which is not run; `argv[0]`
    /// names it in errors): the child takes the same steps as before an exec, keeps only its
    /// standard streams (descriptors 0-2) and exits with `body`'s status. It saves loading a
    /// program, for code this program already has (the built-in image driver). Not for
    /// `initProcess`; the child's parent-death signal is kept, as without an exec.
    public func fork(running body: () -> Int32) throws(SystemError) -> Outcome {
        precondition(!initProcess, "fork(running:) cannot start an init process")
        return try withoutActuallyEscaping(body) { body throws(SystemError) in try launch(running: body) }
    }

    private func launch(running body: (() -> Int32)?) throws(SystemError) -> Outcome {
        let errors = try Pipe()
        let cArgs = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: argv.count + 1)
        for (i, word) in argv.enumerated() { cArgs[i] = strdup(word) }
        cArgs[argv.count] = nil
        let env = environment ?? currentEnvironment()
        let cEnv = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: env.count + 1)
        for (i, entry) in env.enumerated() { cEnv[i] = strdup("\(entry.key)=\(entry.value)") }
        cEnv[env.count] = nil
        let groups = (identity?.groups ?? []).map { gid_t($0) }
        let cRoot = root.flatMap { strdup($0) }
        let cDirectory = directory.flatMap { strdup($0) }
        let cProc = procTarget.flatMap { strdup($0) }
        let pid = groups.withUnsafeBufferPointer { groupPointer -> Int32 in
            var child = clinux_child()
            child.root = UnsafePointer(cRoot)
            child.cwd = UnsafePointer(cDirectory)
            child.change_ids = identity == nil ? 0 : 1
            child.uid = identity?.uid ?? 0
            child.gid = identity?.gid ?? 0
            child.ngroups = Int32(groups.count)
            child.groups = groupPointer.baseAddress
            child.ambient_sys_admin = ambientSysAdmin ? 1 : 0
            child.death_signal = deathSignal
            child.null_stdio = nullStandardIO ? 1 : 0
            child.new_process_group = newProcessGroup ? 1 : 0
            child.file = UnsafePointer(cArgs[0])
            child.argv = UnsafePointer(cArgs)
            child.envp = cEnv
            child.error_fd = errors.writeEnd.rawValue
            child.init_process = initProcess ? 1 : 0
            child.proc_target = UnsafePointer(cProc)
            child.reexec_init = reexecInit ? 1 : 0
            child.new_session = newSession ? 1 : 0
            child.foreground_terminal = foregroundTerminal ? 1 : 0
            child.ignore_job_signals = ignoreJobSignals ? 1 : 0
            guard let body else { return clinux_spawn(&child) }
            let pid = clinux_fork_prepared(&child)
            if pid == 0 { _exit(body()) }
            return pid
        }
        let readEnd = errors.readEnd
        errors.writeEnd.close()
        let reportFD = readEnd.rawValue
        var report = [Int32](repeating: 0, count: 2)
        let n = pid > 0 ? report.withUnsafeMutableBytes { (try? IO.read(reportFD, into: $0.baseAddress!, count: 8)) ?? 0 } : 0
        readEnd.close()
        guard pid > 0 else { throw SystemError("start", path: argv[0], errno: Errno(rawValue: -pid)) }
        guard n == 8 else { return .started(pid) }
        _ = Children.wait(pid)
        return .failed(Step(rawValue: report[0]) ?? .exec, Errno(rawValue: report[1]))
    }
}
