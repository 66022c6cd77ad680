import ArgumentParser
import Ext3
import LinuxSupport
import Overlay

#if canImport(Glibc)
import Glibc
#endif

/// `create-overlay`: build a sized, sparse ext3 overlay with libext2fs.
public struct CreateOverlay: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "create-overlay",
        abstract: "Create a sized, sparse ext3 overlay image, empty or packed from a tree.",
        usage: """
        create-overlay -s <size> [-n <thousands>] [-o <path> | <path>] [--create-dir <path> ...] [--fakeroot] [--json]
        create-overlay --from <src> [--to <path> | --root-tree] [-s <size>] [-n <thousands>] [-o <path> | <path>] [--create-dir <path> ...] [--fakeroot] [--json]
        """,
        discussion: """
        The image is exactly the size asked for but takes almost no disk space until files are \
        written into it. upper/ and work/ belong to you (to root with --fakeroot; under sudo, to \
        the user who ran it). Sizes are MiB (1,048,576 bytes), as Apptainer's --size; the \
        units M, G and T are binary however written (5G, 5GB and 5GiB are all 5120 MiB), and a \
        size is whole MiB (-s 1.5G is refused: use 1536M). The image path may also come last, \
        as with apptainer overlay create (create-overlay -s 1024 my.img). Shell completion \
        (installed by Scripts/install) offers images (.ext3, .img) for -o and directories and \
        archives (.tar, .gz, .tgz) for --from. Examples:
          create-overlay -s 500 -n 700       # overlay-500M-700K.ext3, 700,000 files
          create-overlay -s 5G -n 3200 -o env.ext3 --create-dir opt/conda
          create-overlay --from env/ --to /opt/env   # env.ext3, sized from the tree, at /opt/env
        From a directory or a tar archive: --from packs SRC (a directory, a tar archive or a \
        gzip-compressed one, told apart by content) into upper/: files, directories, symlinks, \
        hard links, devices, FIFOs, sockets, permission bits, owners, times to the nanosecond, \
        extended attributes; a directory's sparse files stay sparse. Without -s, the size is the smallest \
        whole MiB with room for a quarter more data than the tree plus 64 MiB; without -n, room \
        for a quarter more files plus 1,000 (with -s alone, at least one per 16 KiB). The choice \
        is printed. A tree that does not fit the -s/-n given is refused, saying what it needs. \
        The default name is SRC's name with .ext3 (env/ -> env.ext3, data.tar.gz -> \
        data.ext3). A file that cannot be read is named and nothing is written.
        """,
        version: ToolVersion.line("create-overlay")
    )

    public init() {}

    @Option(name: .shortAndLong, parsing: .unconditional,
            help: ArgumentHelp("Make the image this big: MiB, or with a unit (500M, 5G, 1T; binary: 5G = 5GB = 5120 MiB). With --from: default, from the tree.",
                               valueName: "size"),
            transform: { try ImageSize(parsing: $0) })
    public var size: ImageSize?

    @Option(name: [.customShort("n"), .customLong("files")], parsing: .unconditional,
            help: ArgumentHelp("Make room for this many thousand files (-n 700: 700,000). Default: one per 16 KiB; with --from, from the tree.",
                               valueName: "thousands"),
            transform: { try FileCount(parsing: $0) })
    public var files: FileCount?

    @Option(name: [.customShort("o"), .customLong("output")],
            help: ArgumentHelp("Write the image here (default: overlay-<size>M-<files>K.ext3, the size in MiB and the files in thousands; with --from, <src name>.ext3).",
                               valueName: "path"),
            completion: .overlayImage)
    public var output: String?

    @Argument(help: ArgumentHelp("The image path, as apptainer overlay create takes it: the same as -o.", valueName: "path"),
              completion: .overlayImage)
    public var imagePath: String?

    @Option(name: .customLong("from"),
            help: ArgumentHelp("Pack this directory or tar archive (plain or gzip) into upper/.", valueName: "src"),
            completion: .file(extensions: ["tar", "gz", "tgz"]))
    public var from: String?

    @Option(name: .customLong("to"),
            help: ArgumentHelp("With --from: put the packed tree at this absolute path inside the container (under upper/), e.g. /opt/env. Default: the tree's top level at / (refused when it holds bin/, lib/, usr/... without --root-tree).",
                               valueName: "path"))
    public var to: String?

    @Flag(name: .customLong("root-tree"),
          help: "With --from: the tree is a whole root tree meant to lie over the container's /, bin/, lib/ and usr/ included.")
    public var rootTree = false

    @Option(name: .customLong("create-dir"), parsing: .singleValue,
            help: ArgumentHelp("Also make this directory under upper/ (nested paths are fine). Repeatable.",
                               valueName: "path"))
    public var createDirectories: [String] = []

    @Flag(name: [.customShort("f"), .customLong("fakeroot")],
          help: "Give upper/ and work/ to root (uid 0), for containers run with --fakeroot.")
    public var fakeroot = false

    @Flag(name: [.customShort("S"), .customLong("sparse")],
          help: "Accepted as apptainer overlay create takes it: images are always sparse, so it changes nothing.")
    public var sparse = false

    @Flag(help: "Print the result as one JSON object.")
    public var json = false

    /// Where the image goes: -o, else the path given last, else nil (the default name).
    var target: String? { output ?? imagePath }

    public func validate() throws {
        if let output, let imagePath {
            throw UsageError("the image path is given twice (-o \(output) and \(imagePath)): give it once, with -o or last")
        }
        if let output = target, output.isEmpty || output.hasSuffix("/") {
            throw UsageError("-o '\(output)' names no file: give the image's file name, e.g. -o env.ext3")
        }
        if from?.isEmpty == true {
            throw UsageError("--from needs a directory or a tar archive to pack")
        }
        if from == nil, to != nil || rootTree {
            throw UsageError("\(to != nil ? "--to" : "--root-tree") goes with --from: it says where the packed tree lies")
        }
        if let to, !to.hasPrefix("/") {
            throw UsageError("--to \(to): give an absolute path inside the container, such as /opt/env")
        }
        if to != nil && rootTree {
            throw UsageError("give either --to PATH or --root-tree, not both")
        }
    }

    public func run() throws {
        if sparse { printError("note: images are always sparse (they take disk space only as files are written); -S/--sparse changes nothing") }
        if let from { return try pack(from) }
        // Checked here rather than in validate(), so that a mistyped option is named first.
        let formatter = try formatter()
        let size = ImageSize(bytes: formatter.configuration.sizeBytes, typed: self.size?.typed)
        let target = self.target ?? OverlayName.defaultName(size: size, files: files, inodes: formatter.geometry.inodeCount)
        let summary: Ext3.Summary
        do {
            try CreateOverlay.checkFree(target)
            summary = try withProgress("creating \(target) (\(size))") { try formatter.create(at: target) }
        } catch let error as Ext3.Error {
            throw CommandFailure(CreateOverlay.explain(error, target: target))
        }
        print(json ? summary.json : CreateOverlay.line(for: summary))
    }

    // MARK: - Pieces the tests reach

    /// The validated formatter for these options (no I/O). Throws ``UsageError`` for a missing
    /// size and for what does not fit.
    func formatter(environment: [String: String] = currentEnvironment()) throws -> Ext3.Formatter {
        guard let size else {
            throw UsageError("no size given: give the image size with -s, e.g. -s 500 for 500 MiB (or pack a tree with --from)")
        }
        let owner = CreateOverlay.owner(fakeroot: fakeroot, environment: environment)
        let configuration = Ext3.Formatter.Configuration(
            sizeBytes: size.bytes, minimumInodes: files?.inodes, owner: owner.layout,
            directories: createDirectories, imageOwner: owner.image)
        do {
            return try Ext3.Formatter(configuration)
        } catch let error as Ext3.Error {
            if case .invalidConfiguration = error, let files {
                let most = Ext3.Geometry.maximumInodes(sizeBytes: size.bytes)
                if most < files.inodes {
                    throw UsageError(CreateOverlay.tooManyFiles(files, size: size, most: most))
                }
            }
            throw UsageError(error.description)
        }
    }

    static func tooManyFiles(_ count: FileCount, size: ImageSize, most: UInt64) -> String {
        let wanted = "-n \(count.typed): \(grouped(count.inodes)) files do not fit in \(size)"
        if most < 1000 {
            return "\(wanted): it holds at most \(grouped(most)); make the image larger with -s"
        }
        return "\(wanted): it holds at most \(grouped(most)) (-n \(most / 1000)); make the image larger with -s or ask for fewer files with -n"
    }

    /// Who owns upper/ and work/ (and, under sudo, the image file): root with --fakeroot; the
    /// user who ran sudo when root via sudo; else whoever runs this.
    static func owner(fakeroot: Bool, environment: [String: String]) -> (layout: Ext3.Owner, image: Ext3.Owner?) {
        var caller = Ext3.Owner.current
        var image: Ext3.Owner? = nil
        if geteuid() == 0, let uid = environment["SUDO_UID"].flatMap(UInt32.init),
           let gid = environment["SUDO_GID"].flatMap(UInt32.init) {
            caller = Ext3.Owner(uid: uid, gid: gid)
            image = caller
        }
        return (fakeroot ? .root : caller, image)
    }

    /// `overlay-500M-700K.ext3: 500 MiB, 700,416 files; inode tables take 171 MiB and the
    /// journal 16 MiB, 305 MiB left for data (2.1 MiB on disk now)`.
    static func line(for summary: Ext3.Summary) -> String {
        let size = ImageSize.human(summary.sizeBytes)
        return "\(summary.path): \(size), \(grouped(summary.inodeCount)) files; "
            + "inode tables take \(ImageSize.human(summary.inodeTableBytes)) and the journal \(ImageSize.human(summary.journalBytes)), "
            + "\(ImageSize.human(summary.dataBytes)) left for data (\(ImageSize.human(summary.allocatedBytes)) on disk now)"
    }

    /// One line for a failure, naming the thing and what to do.
    static func explain(_ error: Ext3.Error, target: String) -> String {
        switch error {
        case let .cannotCreate(_, code):
            let directory = directory(of: target)
            switch code {
            case ENOENT:
                return "cannot create \(target): directory \(directory) does not exist; create it or choose another place with -o"
            case EACCES, EPERM, EROFS:
                return "cannot create \(target): directory \(directory) is not writable (\(Ext3.errnoString(code))); choose another place with -o"
            default:
                return "cannot create \(target) in \(directory): \(Ext3.errnoString(code))"
            }
        case .exists:
            var info = stat()
            return lstat(target, &info) == 0 ? existing(target, mode: info.st_mode) : error.description
        case let .system(_, _, code) where code == ENOSPC || code == EDQUOT:
            return noSpace(target, code)
        case let .library(_, _, code, _) where code == Int64(ENOSPC) || code == Int64(EDQUOT):
            return noSpace(target, Int32(code))
        case let .system(operation, _, code):
            // The path is the hidden temporary file, which is gone: name the target instead.
            return "cannot create \(target): \(operation): \(Ext3.errnoString(code))"
        case let .library(operation, _, _, message):
            return "cannot create \(target): \(operation): \(message)"
        default:
            return error.description
        }
    }

    /// Refuses a target that exists, before anything is read or written; a directory or a
    /// device is named as what it is (it is not to be removed).
    static func checkFree(_ target: String) throws {
        var info = stat()
        guard lstat(target, &info) == 0 else { return }
        throw CommandFailure(existing(target, mode: info.st_mode))
    }

    static func existing(_ target: String, mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR:
            return "\(target) is a directory: give the image's file name, e.g. -o \(target.hasSuffix("/") ? target : target + "/")env.ext3"
        case S_IFREG, S_IFLNK:
            return "\(target) already exists; choose another name with -o or remove it first"
        case S_IFCHR, S_IFBLK:
            return "\(target) is a device, not a file: choose the image's file name with -o"
        default:
            return "\(target) exists and is not a regular file: choose the image's file name with -o"
        }
    }

    /// The directory `target` would be created in, as the user would name it.
    static func directory(of target: String) -> String {
        guard let slash = target.lastIndex(of: "/") else { return "." }
        let directory = String(target[..<slash])
        return directory.isEmpty ? "/" : directory
    }

    static func noSpace(_ target: String, _ code: Int32) -> String {
        "cannot create \(target): \(Ext3.errnoString(code)); free some space or create it elsewhere with -o"
    }

    static func grouped(_ value: UInt64) -> String { Units.grouped(value) }

    /// Parses and runs; every failure is one line on stderr.
    public static func main() {
        OneLineErrors.main(Self.self)
    }
}
