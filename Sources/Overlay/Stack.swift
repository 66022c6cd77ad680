#if canImport(Glibc)
import Glibc
#endif

/// One `-o` argument: an image path and how it is mounted.
public struct OverlaySpec: Equatable, Sendable, CustomStringConvertible {
    public enum Mode: String, Sendable { case writable = "rw", readOnly = "ro" }

    public var path: String
    public var mode: Mode
    /// Whether the user wrote `:ro`/`:rw` (otherwise the position decided).
    public var explicit: Bool

    public init(path: String, mode: Mode, explicit: Bool = true) {
        self.path = path
        self.mode = mode
        self.explicit = explicit
    }

    /// Parses `IMG`, `IMG:ro`, `IMG:rw`. The mode is nil when not given.
    public static func parse(_ text: String) throws -> (path: String, mode: Mode?) {
        guard !text.isEmpty else { throw OverlayError.invalidOverlaySpec(text) }
        if text.hasSuffix(":ro") { return try (nonEmpty(String(text.dropLast(3)), text), .readOnly) }
        if text.hasSuffix(":rw") { return try (nonEmpty(String(text.dropLast(3)), text), .writable) }
        return (text, nil)
    }

    private static func nonEmpty(_ path: String, _ text: String) throws -> String {
        guard !path.isEmpty else { throw OverlayError.invalidOverlaySpec(text) }
        return path
    }

    public var isWritable: Bool { mode == .writable }
    public var description: String { mode == .readOnly ? "\(path):ro" : path }
}

/// One `-o` argument as written: `IMG`, `IMG:ro` or `IMG:rw`; the mode is nil when not given
/// (the position in the stack decides).
public struct OverlayArgument: Equatable, Sendable {
    public var path: String
    public var mode: OverlaySpec.Mode?

    public init(parsing text: String) throws {
        (path, mode) = try OverlaySpec.parse(text)
    }
}

/// The overlays of one run, validated by Apptainer's stacking rule: the first `-o` is writable
/// unless it says `:ro`; every later one is read-only; a later one asking for `:rw` is an error.
public struct OverlayStack: Equatable, Sendable {
    /// In the order given on the command line.
    public let specs: [OverlaySpec]

    public init(arguments: [String]) throws {
        try self.init(parsed: arguments.map(OverlayArgument.init(parsing:)))
    }

    /// The stack for `-o` arguments already parsed one by one.
    public init(parsed arguments: [OverlayArgument]) throws {
        guard !arguments.isEmpty else { throw OverlayError.noOverlays }
        var specs: [OverlaySpec] = []
        for (index, argument) in arguments.enumerated() {
            let (path, mode) = (argument.path, argument.mode)
            if index == 0 {
                specs.append(OverlaySpec(path: path, mode: mode ?? .writable, explicit: mode != nil))
            } else {
                if mode == .writable { throw OverlayError.secondWritable(path) }
                specs.append(OverlaySpec(path: path, mode: .readOnly, explicit: mode != nil))
            }
        }
        self.specs = specs
    }

    public init(specs: [OverlaySpec]) throws {
        guard !specs.isEmpty else { throw OverlayError.noOverlays }
        for spec in specs.dropFirst() where spec.isWritable {
            throw OverlayError.secondWritable(spec.path)
        }
        self.specs = specs
    }

    /// Refuses an image file given twice, by the same path or by two paths to one file (a
    /// symbolic or hard link): mounted twice it would be two filesystems over one file. Images
    /// that do not exist are left for the runtime's checks to name.
    public func checkDistinctImages() throws {
        var seen: [(device: UInt64, inode: UInt64, path: String)] = []
        for spec in specs {
            var info = stat()
            guard stat(spec.path, &info) == 0 else { continue }
            let key = (device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
            if let first = seen.first(where: { $0.device == key.device && $0.inode == key.inode }) {
                throw OverlayError.sameImageTwice(first: first.path, second: spec.path)
            }
            seen.append((key.device, key.inode, spec.path))
        }
    }

    /// The writable overlay, if the first one is writable.
    public var writable: OverlaySpec? { specs.first.flatMap { $0.isWritable ? $0 : nil } }

    /// Read-only overlays, topmost first: later ones sit above earlier ones (as Apptainer
    /// stacks them), so this is the command-line order reversed.
    public var readOnlyTopmostFirst: [OverlaySpec] { specs.filter { !$0.isWritable }.reversed() }
}

/// A bind mount, `SRC[:DST[:ro]]` as Singularity's `-B`.
public struct Bind: Equatable, Sendable, CustomStringConvertible {
    public var source: String
    public var destination: String
    public var readOnly: Bool

    public init(source: String, destination: String, readOnly: Bool = false) {
        self.source = source
        self.destination = destination
        self.readOnly = readOnly
    }

    public init(parsing text: String) throws {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard (1...3).contains(parts.count), !parts[0].isEmpty else { throw OverlayError.invalidBind(text) }
        source = parts[0]
        destination = parts.count >= 2 && !parts[1].isEmpty ? parts[1] : parts[0]
        if parts.count == 3 {
            switch parts[2] {
            case "ro": readOnly = true
            case "rw": readOnly = false
            default: throw OverlayError.invalidBind(text)
            }
        } else {
            readOnly = false
        }
        guard destination.hasPrefix("/") else { throw OverlayError.invalidBind(text) }
    }

    public var description: String {
        source == destination && !readOnly ? source : "\(source):\(destination)\(readOnly ? ":ro" : "")"
    }
}

/// What runs inside the container.
public enum JobCommand: Equatable, Sendable {
    /// `-f FILE`: `/bin/bash FILE` inside the container.
    case file(String)
    /// `-- CMD ARGS`: run directly.
    case argv([String])
    /// mount-overlay: an interactive shell.
    case interactiveShell
}

/// Everything a runtime needs to run one job: validated by the command, run by a Runtime.
public struct Job: Equatable, Sendable {
    public var stack: OverlayStack
    public var container: ContainerReference
    public var binds: [Bind]
    public var command: JobCommand
    /// The invoking directory; bound and used as the working directory inside.
    public var workingDirectory: String
    /// Extra options passed to Singularity/Apptainer verbatim (ignored by the native runtime).
    public var runtimeOptions: [String]
    /// Directories a snapshot in the stack shows as captured (`--snapshot`): never bound live
    /// (not as the working directory, not as or around `$HOME`).
    public var frozenPaths: [String] = []
    /// No writable overlay, but the job may write: its changes go to a private scratch layer
    /// thrown away when it ends (`--snapshot` without a writable first `-o`).
    public var scratch = false
    /// Snapshots of the running job (`--snapshot-to`), nil when none are asked for.
    public var snapshots: JobSnapshotSettings?

    /// Whether `path` is one of ``frozenPaths``, lies inside one, or holds one (a bind there
    /// would hide the snapshot's directory).
    public func touchesFrozen(_ path: String) -> Bool {
        frozenPaths.contains { frozen in
            path == frozen || path.hasPrefix(frozen + "/") || frozen.hasPrefix(path == "/" ? "/" : path + "/")
        }
    }

    public init(stack: OverlayStack, container: ContainerReference, binds: [Bind] = [],
                command: JobCommand, workingDirectory: String, runtimeOptions: [String] = []) {
        self.stack = stack
        self.container = container
        self.binds = binds
        self.command = command
        self.workingDirectory = workingDirectory
        self.runtimeOptions = runtimeOptions
    }
}

/// `--snapshot-to DIR` and its companions: where a running job's snapshots go and what takes
/// them besides SIGUSR1 and SIGTERM.
public struct JobSnapshotSettings: Codable, Equatable, Sendable {
    /// Absolute path of an existing directory the invoking user can write.
    public var directory: String
    /// `--snapshot-every SECONDS` (nil: none on a timer).
    public var everySeconds: Int?
    /// `--snapshot-keep N`: keep the newest N job snapshots in the directory (nil: all).
    public var keep: Int?
    /// The run's id, recorded in each snapshot.
    public var id: String
    /// `--snapshot-include` and `--snapshot-exclude` regexes (none: the whole image is copied).
    public var include: [String]
    public var exclude: [String]
    /// `--checkpoint`: each snapshot also dumps the job's processes with CRIU, into
    /// `<snapshot>.criu/` beside the snapshot file.
    public var checkpoint = false
    /// The `--writable-dir` directories (absolute, resolved): each snapshot also holds them,
    /// at their paths.
    public var writableDirs: [String] = []
    /// `--snapshot-timeout SECONDS`: the most the snapshot at interruption (SIGTERM) may take.
    public var timeoutSeconds: Double = JobSnapshotSettings.defaultTimeoutSeconds
    /// Below SLURM's default KillWait (30 s between SIGTERM and SIGKILL at a time limit), with
    /// time left for the job to end.
    public static let defaultTimeoutSeconds: Double = 20

    public init(directory: String, everySeconds: Int?, keep: Int?, id: String, include: [String] = [], exclude: [String] = []) {
        self.directory = directory
        self.everySeconds = everySeconds
        self.keep = keep
        self.id = id
        self.include = include
        self.exclude = exclude
    }
}
