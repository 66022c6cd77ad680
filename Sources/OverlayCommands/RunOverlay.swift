import ArgumentParser
import Overlay

/// `run-overlay`: run a command file (or a command) in the container with the overlays.
public struct RunOverlay: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "run-overlay",
        abstract: "Run a command file or a command in a container with overlays; its exit status passes through.",
        discussion: """
        The first -o is writable unless it ends in :ro; later ones are read-only, later ones above \
        earlier ones. Examples:
          run-overlay -o env.ext3:ro -f job.txt
          run-overlay -o scratch.ext3 -o env.ext3:ro -c image.sif -- python train.py
        """,
        version: ToolVersion.line("run-overlay")
    )

    public init() {}

    @OptionGroup public var stack: StackOptions

    @Option(name: .shortAndLong, help: ArgumentHelp("Run this file with /bin/bash inside the container.", valueName: "file"))
    public var file: String?

    @Argument(parsing: .postTerminator, help: ArgumentHelp("Command and arguments to run (after --).", valueName: "command"))
    public var command: [String] = []

    public func validate() throws {
        switch (file, command.isEmpty) {
        case (nil, true): throw UsageError("nothing to run: give a command file with -f FILE, or a command after --")
        case (.some, false): throw UsageError("give either -f FILE or a command after --, not both")
        default: break
        }
    }

    public func run() throws {
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
        Examples:
          mount-overlay -o env.ext3            # install things into env.ext3
          mount-overlay -o data.ext3:ro -o env.ext3:ro -c image.sif
        """,
        version: ToolVersion.line("mount-overlay")
    )

    public init() {}

    @OptionGroup public var stack: StackOptions

    public func run() throws {
        try stack.execute(.interactiveShell)
    }
}

