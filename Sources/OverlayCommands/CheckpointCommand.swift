import ArgumentParser
import Checkpoint
import LinuxSupport
import Overlay
import Runtime

/// `overlay checkpoint`: process checkpoints with CRIU.
public struct CheckpointCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Dump a running process tree with CRIU, or restore one.",
        discussion: """
        A checkpoint is a directory: CRIU's images in images/, its log, and manifest.json (CRIU \
        version, time, root pid, command, what it belongs to, the pause). Needs CRIU >= 4.1 and \
        root (or CAP_CHECKPOINT_RESTORE on the criu binary); 'overlay doctor --checkpoint' says \
        what is missing.
        """,
        subcommands: [CheckpointDumpCommand.self, CheckpointRestoreCommand.self, CheckpointRestoreJobCommand.self]
    )
    public init() {}
}

public struct CheckpointDumpCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "dump",
        abstract: "Dump the process tree rooted at PID into DIR.",
        discussion: """
        The tree is killed once dumped, unless --leave-running. With --job, PID is a run-overlay \
        or mount-overlay process using the native runtime, and its job is dumped (its processes, \
        from the first of the job's PID namespace, inside its mount namespace). A dump that fails \
        leaves the tree running and removes what it wrote. Exit status: 0 dumped, 1 not dumped.
        """
    )
    public init() {}

    @Argument(help: ArgumentHelp("The root of the tree (with --job: the run-overlay process).", valueName: "pid"))
    public var pid: Int32

    @Argument(help: ArgumentHelp("The checkpoint directory (made when missing; must hold no checkpoint).", valueName: "dir"))
    public var directory: String

    @Flag(help: "PID is a run-overlay (native runtime): dump its job.")
    public var job = false

    @Flag(help: "Let the tree go on after the dump (default: it is killed).")
    public var leaveRunning = false

    @Option(help: ArgumentHelp("What the checkpoint belongs to, recorded in its manifest.", valueName: "text"))
    public var belongsTo = ""

    public func run() throws {
        var root = pid
        if job {
            guard let found = Checkpoint.nativeJobRoot(runOverlay: pid) else {
                throw CommandFailure("process \(pid) runs no native-runtime job: give the pid of a run-overlay or mount-overlay using the native runtime")
            }
            root = found
        }
        let manifest = try Checkpoint.dump(root: root, to: directory, leaveRunning: leaveRunning, belongsTo: belongsTo)
        print("dumped process \(root) (\(Escaped.terminal(manifest.command.joined(separator: " ")))) to \(Escaped.terminal(directory)) in \(manifest.pauseMilliseconds) ms\(leaveRunning ? "; it goes on" : "; it has been stopped")")
    }
}

public struct CheckpointRestoreCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore the processes dumped in DIR and wait for them.",
        discussion: """
        The restored tree's standard input, output and error are this command's, and its exit \
        status is this command's (128+N for signal N). The tree gets its old pids back, so the \
        dumped processes must be gone. A native-runtime job ('dump --job') is restored with \
        'overlay checkpoint restore-job'.
        """
    )
    public init() {}

    @Argument(help: ArgumentHelp("The checkpoint directory.", valueName: "dir"))
    public var directory: String

    @Flag(help: "Print the restored root's pid and exit 0 once the tree runs, without waiting for it.")
    public var detach = false

    public func run() throws {
        let manifest = try Checkpoint.manifest(in: directory)
        if manifest.pidNamespace && manifest.mountNamespace {
            throw CommandFailure("the checkpoint in \(Escaped.terminal(directory)) is of a native-runtime job: restore it with 'overlay checkpoint restore-job \(Escaped.terminal(directory)) -o IMAGE ...' so its mounts are rebuilt")
        }
        let tree = try Checkpoint.restore(from: directory)
        if detach {
            print(tree.pid)
            return
        }
        let status = tree.wait()?.shellStatus ?? 125
        if status != 0 { throw ExitCode(status) }
    }
}

public struct CheckpointRestoreJobCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "restore-job",
        abstract: "Rebuild a native-runtime job's mounts and restore its processes dumped in DIR.",
        discussion: """
        For a checkpoint made with 'overlay checkpoint dump --job'. The job's mounts are built \
        with the native runtime as run-overlay builds them: give the same -o, -c and -B options \
        and start from the same directory as the dumped run. Then the dumped processes are \
        restored into them in place of a command: their standard input, output and error are \
        this command's, signals reach them as run-overlay passes them on, and the exit status \
        is the job's.
        """
    )
    public init() {}

    @Argument(help: ArgumentHelp("The checkpoint directory.", valueName: "dir"))
    public var directory: String

    @OptionGroup public var stack: StackOptions

    public func run() throws {
        let manifest = try Checkpoint.manifest(in: directory)
        let kind = try stack.runtimeKind()
        guard kind == .native || kind == .auto else {
            throw CommandFailure("a checkpoint is restored by the native runtime, not \(kind.rawValue): leave out --runtime or give --runtime native")
        }
        guard manifest.pidNamespace && manifest.mountNamespace else {
            throw CommandFailure("the checkpoint in \(Escaped.terminal(directory)) is not of a native-runtime job: restore it with 'overlay checkpoint restore \(Escaped.terminal(directory))'")
        }
        if let option = stack.runtimeOptions.first { throw CommandFailure(StackOptions.nativeRefusal(option)) }
        let job = try stack.job(command: .argv(manifest.command.isEmpty ? ["true"] : manifest.command))
        if stack.dryRun {
            for line in try NativeRuntime().plan(for: job).dropLast() { print(line) }
            print("restore the processes of \(Escaped.terminal(directory)) (criu restore) in place of the command")
            return
        }
        if let problem = Checkpoint.missing() { throw CommandFailure("checkpoints are not available: \(problem)") }
        let status = try NativeRuntime(restoringFrom: directory).run(job)
        if status != 0 { throw ExitCode(status) }
    }
}
