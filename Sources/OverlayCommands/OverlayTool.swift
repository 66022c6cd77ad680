import ArgumentParser

/// `overlay`: everything about an image without mounting it.
public struct OverlayTool: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "overlay",
        abstract: "Inspect ext3 overlay images without mounting them.",
        discussion: """
        Shell completion (bash, zsh, fish) is installed by Scripts/install, or loaded with \
        source <(overlay --generate-completion-script bash): it completes the commands, and \
        images (.ext3, .img) for IMAGE.
        """,
        version: ToolVersion.line("overlay"),
        subcommands: [InfoCommand.self, LsCommand.self, CatCommand.self, CheckCommand.self, ResizeCommand.self, ConfigCommand.self,
                      SnapshotCommand.self, JobsCommand.self, DoctorCommand.self, CheckpointCommand.self, VersionCommand.self]
    )
    public init() {}
}
