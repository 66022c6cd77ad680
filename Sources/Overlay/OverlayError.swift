import LinuxSupport

/// Errors of the overlay domain. Each description is one line that names the thing and says
/// what to do.
public enum OverlayError: UserFacingError, Equatable, Sendable {
    case invalidSize(String)
    case invalidFileCount(String)
    case invalidOverlaySpec(String)
    case secondWritable(String)
    case noOverlays
    case invalidBind(String)
    case imageInUse(path: String, heldForWriting: Bool, wantWrite: Bool)
    case lockFailed(path: String, errno: Int32)
    case containerNotFound(String)
    case unknownContainer(String)
    case commandFileMissing(String)
    /// One image file given twice in a stack (by the same path, or two paths to one file).
    case sameImageTwice(first: String, second: String)
    /// A command file that cannot be run as one: what it is instead.
    case unusableCommandFile(path: String, why: String)
    case message(String)

    public var description: String {
        switch self {
        case let .invalidSize(text):
            return "invalid size '\(text)': give a positive number of MiB such as 500, or with a unit: 500M, 5G"
        case let .invalidFileCount(text):
            return "invalid file count '\(text)': give a positive number of thousands of files, e.g. -n 700 for 700,000"
        case let .invalidOverlaySpec(text):
            return "invalid overlay '\(text)': write IMAGE, IMAGE:ro or IMAGE:rw"
        case let .secondWritable(path):
            return "\(path): only the first overlay may be writable; add ':ro' to it (e.g. -o \(path):ro)"
        case .noOverlays:
            return "no overlay given: name one with -o IMAGE (create one with create-overlay), or a snapshot with --snapshot NAME"
        case let .invalidBind(text):
            return "invalid bind '\(text)': write SRC, SRC:DST or SRC:DST:ro with absolute paths"
        case let .imageInUse(path, heldForWriting, wantWrite):
            if heldForWriting {
                return "\(path) is in use: another job has it mounted writable; wait for it to finish (nobody can mount it until then)"
            } else if wantWrite {
                return "\(path) is in use: other jobs have it mounted read-only; mount it read-only with '\(path):ro', or wait for them to finish to write"
            } else {
                return "\(path) is in use"
            }
        case let .lockFailed(path, code):
            return "\(path): cannot lock the image: \(Errno(rawValue: code))"
        case let .containerNotFound(path):
            return "container '\(path)' not found: give a SIF file, a squashfs image, a sandbox directory or / with -c"
        case let .unknownContainer(path):
            return "container '\(path)' is not a SIF file, a squashfs image or a directory"
        case let .commandFileMissing(path):
            return "command file '\(path)' not found: give an existing file with -f"
        case let .sameImageTwice(first, second):
            let named = first == second ? "'\(first)' is given twice" : "'\(first)' and '\(second)' are the same image file"
            return "\(named): an image can be in a stack only once; give it with a single -o"
        case let .unusableCommandFile(path, why):
            return "command file '\(path)' \(why): give a text file of shell commands with -f"
        case let .message(text):
            return text
        }
    }
}
