import ArgumentParser
import Overlay

/// `overlay check`: e2fsck an image, read-only unless --repair.
public struct CheckCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check an image with e2fsck (read-only unless --repair) and say in one line.",
        discussion: """
        Runs e2fsck -fn (with --repair: e2fsck -fy, then e2fsck -fn to confirm). Refuses while a \
        job has the image mounted writable, and with --repair also while one has it mounted \
        read-only; holds the same lock as such a job while it runs. Exits non-zero when problems \
        remain.
        """
    )

    public init() {}

    @Argument(help: ArgumentHelp("The overlay image.", valueName: "image"), completion: .overlayImage)
    public var image: String

    @Flag(help: "Fix what e2fsck finds (e2fsck -fy).")
    public var repair = false

    public func run() throws {
        let report = try ImageMaintenance.check(image, repair: repair)
        guard report.clean else { throw CommandFailure(report.line) }
        print(report.line)
    }
}
