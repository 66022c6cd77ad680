import ArgumentParser

/// `overlay`: everything about an image without mounting it.
public struct OverlayTool: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "overlay",
        abstract: "Inspect ext3 overlay images without mounting them.",
        subcommands: [InfoCommand.self, LsCommand.self, CatCommand.self, CheckCommand.self, ResizeCommand.self, ConfigCommand.self,
                      SnapshotCommand.self, JobsCommand.self]
    )
    public init() {}
}
