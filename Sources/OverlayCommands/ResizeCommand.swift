import ArgumentParser
import Overlay

/// `overlay resize`: grow an image (e2fsck -fp, then resize2fs) while nobody uses it.
public struct ResizeCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "resize",
        abstract: "Grow an image that no job has mounted.",
        discussion: """
        Takes a write lock on the image (refused while a job has it mounted), runs e2fsck -fp as \
        resize2fs requires, lengthens the file and runs resize2fs. Each new block group gets as \
        many inodes as the old ones. Shrinking is refused.
        """
    )

    public init() {}

    @Argument(help: ArgumentHelp("The overlay image.", valueName: "image"), completion: .overlayImage)
    public var image: String

    @Option(name: .shortAndLong, help: ArgumentHelp("Make the image this big: MiB, or with a unit (500M, 5G).", valueName: "size"),
            transform: { try ImageSize(parsing: $0) })
    public var size: ImageSize

    public func run() throws {
        print(try ImageMaintenance.grow(image, to: size))
    }
}
