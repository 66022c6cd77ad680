import ArgumentParser
import Overlay

/// `overlay info`: what an image holds, whether Apptainer takes it, who holds it, who can share it.
public struct InfoCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show an image's size, usage, features, owners, lock and sharing.",
        discussion: """
        Reads the image without mounting it (no root needed): its size and what it takes on disk, \
        block size, inodes and data bytes used and free, features and whether Apptainer accepts \
        it, the owners of upper/ and work/, whether a job has it mounted now (read or write lock), \
        and whether others can mount it read-only (readable by group or others, reachable, not \
        locked for writing).
        """
    )

    public init() {}

    @Argument(help: ArgumentHelp("The overlay image.", valueName: "image"), completion: .overlayImage)
    public var image: String

    @Flag(help: "Print the result as one JSON object.")
    public var json = false

    public func run() throws {
        let info = try ImageInfo.inspect(image)
        if json {
            print(info.json)
        } else {
            for line in info.lines { print(line) }
        }
    }
}
