import ArgumentParser
import Overlay

/// `overlay resize`: grow an image, or give it more inodes, while nobody uses it.
public struct ResizeCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "resize",
        abstract: "Grow an image, or give it more inodes, while no job has it mounted.",
        discussion: """
        Takes a write lock on the image (refused while a job has it mounted). The image keeps \
        its share of inodes: it gets at least its inodes x new size / old size, and at least -n \
        thousand. Where resize2fs gives that (it adds block groups of 128 MiB, each with as many \
        inodes as the old ones), e2fsck -fp runs as resize2fs requires, the file is lengthened \
        and resize2fs grows it in place, in moments. Otherwise the image is rebuilt: the old \
        image must pass e2fsck -fn and is only read; a new image of the new size and inode count \
        is made beside it, every file, directory, link, device, whiteout, owner, mode, time, \
        extended attribute and chattr flag is copied over (sparse files stay sparse), the new \
        image is checked with e2fsck -fn and renamed over the old one, keeping the file's mode \
        and owner. A rebuild takes time in proportion to the data in the image and needs that \
        much free space beside it. On any failure the image is left as it was. Shrinking is refused.
        """
    )

    public init() {}

    @Argument(help: ArgumentHelp("The overlay image.", valueName: "image"), completion: .overlayImage)
    public var image: String

    @Option(name: .shortAndLong, help: ArgumentHelp("Make the image this big: MiB, or with a unit (500M, 5G). Default: its size now.", valueName: "size"),
            transform: { try ImageSize(parsing: $0) })
    public var size: ImageSize?

    @Option(name: [.customShort("n"), .customLong("files")],
            help: ArgumentHelp("Make room for at least this many thousand files (-n 700: 700,000 inodes).", valueName: "thousands"),
            transform: { try FileCount(parsing: $0) })
    public var files: FileCount?

    public func validate() throws {
        if size == nil && files == nil {
            throw ValidationError("give the new size with -s, or more files with -n (or both)")
        }
    }

    public func run() throws {
        print(try ImageMaintenance.resize(image, to: size, files: files?.inodes))
    }
}
