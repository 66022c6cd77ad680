import ArgumentParser
import Overlay

#if canImport(Glibc)
import Glibc
#endif

/// `run-overlay`: run a command file (or a command) in the container with the overlays.
public struct RunOverlay: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "run-overlay",
        abstract: "Run a command file or a command in a container with overlays; its exit status passes through.",
        discussion: """
        The first -o is writable unless it ends in :ro; later ones are read-only, later ones above \
        earlier ones. Shell completion (installed by Scripts/install, or source <(run-overlay \
        --generate-completion-script bash)) offers images (.ext3, .img) for -o, containers \
        (.sif, .sqsh, .squashfs, .img, directories) for -c, files for -f and the runtimes for \
        --runtime. Examples:
          run-overlay -o env.ext3:ro -f job.txt
          run-overlay -o scratch.ext3 -o env.ext3:ro -c image.sif -- python train.py
          run-overlay --snapshot inputs-v1 --writable-dir results -o env.ext3:ro -f job.txt
        """,
        version: ToolVersion.line("run-overlay")
    )

    public init() {}

    @OptionGroup public var stack: StackOptions

    @Option(name: .shortAndLong, help: ArgumentHelp("Run this file with /bin/bash inside the container.", valueName: "file"),
            completion: .file())
    public var file: String?

    @Argument(parsing: .postTerminator, help: ArgumentHelp("Command and arguments to run (after --).", valueName: "command"))
    public var command: [String] = []

    public func validate() throws {
        if file != nil && !command.isEmpty {
            throw UsageError("give either -f FILE or a command after --, not both")
        }
    }

    public func run() throws {
        // Checked here rather than in validate(), so that a mistyped option is named first.
        if file == nil && command.isEmpty {
            throw UsageError("nothing to run: give a command file with -f FILE, or a command after --")
        }
        if let file {
            // A failure (exit 1), not a usage error: the command line is fine.
            try CommandFile.check(file)
            try stack.execute(.file(file))
        } else {
            try stack.execute(.argv(command))
        }
    }
}

/// `mount-overlay`: an interactive shell in the container with the overlays.
public struct MountOverlay: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "mount-overlay",
        abstract: "Open an interactive shell in a container with overlays (the first writable, the rest read-only).",
        discussion: """
        It needs a terminal: in a batch job, use run-overlay. Shell completion (installed by \
        Scripts/install) offers images for -o, containers for -c and the runtimes for --runtime. \
        Examples:
          mount-overlay -o env.ext3            # install things into env.ext3
          mount-overlay -o data.ext3:ro -o env.ext3:ro -c image.sif
        """,
        version: ToolVersion.line("mount-overlay")
    )

    public init() {}

    @OptionGroup public var stack: StackOptions

    static let needsTerminal = "mount-overlay needs a terminal: it opens an interactive shell; in a batch job (sbatch) or a script "
        + "use run-overlay -o IMAGE -f FILE, or run-overlay -o IMAGE -- COMMAND"

    public func run() throws {
        // Without a terminal (an sbatch script, a pipe) a shell would read nothing and end at
        // once, as if it had worked.
        if !stack.dryRun && isatty(0) != 1 {
            throw CommandFailure(MountOverlay.needsTerminal)
        }
        try stack.execute(.interactiveShell)
    }
}

