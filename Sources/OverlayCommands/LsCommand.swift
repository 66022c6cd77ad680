import ArgumentParser
import Overlay

/// `overlay ls`: list a directory inside an image without mounting it.
public struct LsCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List a directory inside an image.",
        discussion: """
        Paths are as inside the image, from its root: the container's files are under /upper \
        (e.g. /upper/opt/conda); the leading / is optional. Lists every entry but . and .., \
        sorted by name; a path that is not a directory lists itself. Symbolic links are shown, \
        never followed. -l prints mode, links, owner uid and gid, size, modification time and \
        name (-> target), like ls -ln --time-style=long-iso. Under /upper, a file a job \
        deleted from a lower layer is shown as 'NAME (deleted)' (mode w--------- in the long \
        form) and a directory that hides what lies below it (one a job replaced) as \
        'dir/ (opaque: hides what lies below)', whichever form (kernel overlayfs or \
        fuse-overlayfs) recorded them; the markers themselves are not listed.
        """
    )

    public init() {}

    @Argument(help: ArgumentHelp("The overlay image.", valueName: "image"), completion: .overlayImage)
    public var image: String

    @Argument(help: ArgumentHelp("The directory to list, from the image root.", valueName: "path"))
    public var path: String = "/"

    @Flag(name: .customShort("l"), help: "Use the long form.")
    public var long = false

    public func run() throws {
        let browser = try ImageBrowser(image)
        if let warning = browser.staleWarning { printError(warning) }
        for line in try browser.list(path, long: long) { print(line) }
    }
}
