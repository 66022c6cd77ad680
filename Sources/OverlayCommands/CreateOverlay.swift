import ArgumentParser

/// `create-overlay`: build a sized, sparse ext3 overlay with libext2fs.
public struct CreateOverlay: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "create-overlay",
        abstract: "Create a sized, sparse ext3 overlay image."
    )
    public init() {}
    public func run() throws {
        throw CommandFailure("not built yet")
    }
}
