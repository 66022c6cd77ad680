import ArgumentParser
import LinuxSupport
import Overlay

#if canImport(Glibc)
import Glibc
#endif

/// `overlay cat`: print a file inside an image without mounting it.
public struct CatCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "cat",
        abstract: "Print a file inside an image.",
        discussion: """
        Paths are as inside the image, from its root (e.g. /upper/opt/conda/bin/activate). \
        Symbolic links are not followed: cat the path they point to.
        """
    )

    public init() {}

    @Argument(help: ArgumentHelp("The overlay image.", valueName: "image"), completion: .overlayImage)
    public var image: String

    @Argument(help: ArgumentHelp("The file to print.", valueName: "path"))
    public var path: String

    public func run() throws {
        let browser = try ImageBrowser(image)
        if let warning = browser.staleWarning { printError(warning) }
        try browser.cat(path) { bytes in
            do {
                try IO.writeAll(1, bytes)
            } catch let error as SystemError {
                throw CommandFailure("cannot write to standard output: \(error.errno)")
            }
        }
    }
}

/// A line on standard error.
func printError(_ line: String) {
    IO.writeLine(line)
}
