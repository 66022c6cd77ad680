import ArgumentParser
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

    @Argument(help: ArgumentHelp("The overlay image.", valueName: "image"))
    public var image: String

    @Argument(help: ArgumentHelp("The file to print.", valueName: "path"))
    public var path: String

    public func run() throws {
        do {
            let browser = try ImageBrowser(image)
            if let warning = browser.staleWarning { printError(warning) }
            try browser.cat(path) { bytes in
                var offset = 0
                while offset < bytes.count {
                    let n = bytes.withUnsafeBytes { write(1, $0.baseAddress! + offset, $0.count - offset) }
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw OverlayError.message("cannot write to standard output: \(String(cString: strerror(errno)))")
                    }
                    offset += n
                }
            }
        } catch let error as OverlayError {
            throw CommandFailure(error.description)
        }
    }
}

/// A line on standard error.
func printError(_ line: String) {
    var text = Array((line + "\n").utf8)
    _ = write(2, &text, text.count)
}
