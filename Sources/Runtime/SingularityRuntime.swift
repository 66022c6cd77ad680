import LinuxSupport
import Overlay

#if canImport(Glibc)
import Glibc
#endif

/// Runs a job with Singularity/Apptainer: checks the images the way Apptainer will, tests their
/// locks, builds the command line and execs it, so the process becomes Singularity and signals
/// and the exit status are its own.
///
///     apptainer exec [runtime options] --overlay A --overlay B:ro ... [-B binds] IMAGE /bin/bash FILE
///     apptainer exec ... IMAGE CMD ARGS...          (run-overlay -- CMD ARGS)
///     apptainer shell ... IMAGE                     (mount-overlay)
///
/// The environment is passed on as it is, so `APPTAINER_*`/`SINGULARITY_*` settings reach it.
public struct SingularityRuntime: Runtime {
    /// The executable found on PATH (`/usr/bin/apptainer`).
    public let executable: String

    public init(executable: String) { self.executable = executable }

    /// `apptainer` or `singularity`: the program's own name.
    public var name: String { String(executable.split(separator: "/").last ?? "singularity") }

    /// The full command line, the executable first.
    public func arguments(for job: Job) -> [String] {
        var argv = [executable]
        switch job.command {
        case .interactiveShell: argv.append("shell")
        case .file, .argv: argv.append("exec")
        }
        // Options the user passes through (--nv, --fakeroot, --contain, ...) come first, right
        // after the verb, where Singularity reads its options.
        argv += job.runtimeOptions
        // Apptainer stacks later overlays above earlier ones, as our rule does: keep the order.
        // Only the first may be writable; every read-only one says so with `:ro`.
        for spec in job.stack.specs {
            argv += ["--overlay", spec.isWritable ? spec.path : "\(spec.path):ro"]
        }
        // Snapshots: writes without a writable overlay go to a tmpfs thrown away at the end,
        // and $HOME and the working directory are not bound live where a snapshot shows them.
        if job.scratch && job.stack.writable == nil { argv.append("--writable-tmpfs") }
        if !job.frozenPaths.isEmpty {
            var skipped: [String] = []
            if let home = environmentValue("HOME"), job.touchesFrozen(home) { skipped.append("home") }
            if job.touchesFrozen(job.workingDirectory) { skipped.append("cwd") }
            if job.touchesFrozen("/tmp") { skipped.append("tmp") }
            if !skipped.isEmpty { argv += ["--no-mount", skipped.joined(separator: ",")] }
        }
        for bind in job.binds {
            argv += ["-B", bind.description]
        }
        argv.append(job.container.path)
        switch job.command {
        case let .file(file): argv += ["/bin/bash", file]
        case let .argv(command): argv += command
        case .interactiveShell: break
        }
        return argv
    }

    /// One line: the exact command, shell-quoted. The images are checked (nothing is locked or
    /// started), so a dry run reports what a real run would refuse.
    public func plan(for job: Job) throws -> [String] {
        for spec in job.stack.specs { try ImageCheck.validate(spec) }
        return [ShellQuote.line(arguments(for: job))]
    }

    /// Checks every image, tests its lock (write for the writable one, read for the others)
    /// and releases it, then execs Singularity. Returns only when it could not be started.
    public func run(_ job: Job) throws -> Int32 {
        for spec in job.stack.specs {
            try ImageCheck.validate(spec)
        }
        // Only test: Apptainer takes the same OFD locks itself, and would fail against ours.
        for spec in job.stack.specs {
            try ImageLock.test(spec.path, spec.isWritable ? .write : .read)
        }
        let argv = arguments(for: job)
        fflush(nil)
        let code = ProgramRunner.exec(argv[0], argv)
        throw RuntimeError.failed("cannot start \(executable): \(code)")
    }
}

extension RuntimeSelection {
    /// Whether `kind` runs with Singularity/Apptainer here (`auto` does when one is on PATH).
    public static func choosesSingularity(_ kind: RuntimeKind) -> Bool {
        switch kind {
        case .singularity, .apptainer: return true
        case .native: return false
        case .auto: return findExecutable("apptainer") != nil || findExecutable("singularity") != nil
        }
    }
}
