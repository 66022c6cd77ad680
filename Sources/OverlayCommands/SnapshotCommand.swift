import ArgumentParser
import Ext3
import LinuxSupport
import Overlay
import Snapshot

#if canImport(Glibc)
import Glibc
#endif

/// `overlay snapshot`: frozen, read-only copies of a job's inputs, one overlay image each.
public struct SnapshotCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Make, list, describe and remove snapshots: read-only overlay images that freeze a job's inputs.",
        discussion: """
        Snapshots live in the store: $OVERLAY_SNAPSHOTS, else snapshots in the config file, else \
        ${XDG_DATA_HOME:-~/.local/share}/overlay/snapshots (see overlay config). Each is one file, \
        <store>/NAME.ext3, usable as run-overlay --snapshot NAME or -o <store>/NAME.ext3:ro.
        """,
        subcommands: [SnapshotCreate.self, SnapshotList.self, SnapshotInfo.self, SnapshotRemove.self, SnapshotNow.self]
    )
    public init() {}

    static func store() throws -> SnapshotStore {
        try SnapshotStore.locate(environment: currentEnvironment())
    }
}

/// `overlay snapshot create NAME [PATH ...]`, `overlay snapshot create --git [NAME]`.
public struct SnapshotCreate: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Freeze directories, an overlay image or a git working tree into the snapshot NAME.",
        discussion: """
        A directory is captured whole at its absolute path (shown to a job exactly as it is now); \
        an overlay image (.ext3) is copied (a reflink where the filesystem can, else only the \
        blocks its filesystem uses). With --git, the working tree (committed, staged, unstaged and \
        untracked files that are not ignored) is recorded as a commit on a new branch NAME \
        (default slurm-job-<UTC YYYYmmdd-HHMMSS>, -2, -3... if taken) without touching the work \
        tree, the index, HEAD or the stash, and the snapshot holds that commit's tree. Examples:
          overlay snapshot create inputs-v1 ~/project /scratch/me/config
          overlay snapshot create --git --quiet
        """
    )

    public init() {}

    @Argument(help: ArgumentHelp("The snapshot's name: letters, digits, '.', '_', '-', '+' (optional with --git).", valueName: "name"))
    public var name: String?

    @Argument(help: ArgumentHelp("Directories (default: the current one), or one overlay image, to capture.", valueName: "path"))
    public var paths: [String] = []

    @Flag(help: "Record the git working tree as a commit on a new branch and snapshot that commit's tree.")
    public var git = false

    @Option(help: ArgumentHelp("With --git: start the default branch name with this (default: slurm-job-).", valueName: "prefix"))
    public var branchPrefix: String?

    @Flag(help: "With --git: also push the new branch to the current branch's remote (else origin).")
    public var push = false

    @Flag(name: .shortAndLong, help: "Print only the snapshot's name.")
    public var quiet = false

    public func validate() throws {
        if git && !paths.isEmpty {
            throw UsageError("--git snapshots the repository of the current directory: give at most a NAME, no PATH")
        }
        if !git && (branchPrefix != nil || push) {
            throw UsageError("--branch-prefix and --push go with --git")
        }
        if !git && name == nil { throw UsageError("give the snapshot a NAME (or use --git for a generated one)") }
        if let name { try SnapshotStore.validate(name: git ? GitSnapshot.snapshotName(forBranch: name) : name) }
    }

    public func run() throws {
        let environment = currentEnvironment()
        let owner = CreateOverlay.owner(fakeroot: false, environment: environment)
        let store = try SnapshotCommand.store()
        let now = SnapshotCreate.utcNow()
        let host = SnapshotCreate.hostName()
        let user = SnapshotCreate.userName(owner.layout.uid, environment: environment)
        let description: SnapshotDescription
        if git {
            let request = GitSnapshot(directory: currentDirectory(), branch: name, prefix: branchPrefix ?? GitSnapshot.defaultPrefix, push: push)
            description = try request.capture(store: store, owner: owner.layout, imageOwner: owner.image, stamp: now.stamp,
                                               created: now.iso, host: host, user: user)
        } else {
            guard let name else { throw UsageError("give the snapshot a NAME") }
            let capture = try SnapshotCapture(store: store, name: name, owner: owner.layout, imageOwner: owner.image)
            let classified = try (paths.isEmpty ? ["."] : paths).map(SnapshotCapture.classify)
            let images = classified.filter { $0.kind == .image }
            if let image = images.first {
                guard classified.count == 1 else {
                    throw UsageError("\(image.path) is an overlay image: capture it alone (one snapshot per image), directories in another snapshot")
                }
                description = try capture.capture(image: image.path, created: now.iso, host: host, user: user)
            } else {
                description = try capture.capture(directories: classified.map(\.path), created: now.iso, host: host, user: user)
            }
        }
        if quiet {
            print(description.name)
            return
        }
        let what = description.captured.map { Escaped.terminal($0.path) }.joined(separator: ", ")
        var line = "\(description.name): captured \(what) (\(SnapshotInfo.contents(description))) in \(Escaped.terminal(store.path(of: description.name)))"
        if let record = description.git {
            line += "; branch \(record.branch) at \(record.commit.prefix(12))\(record.pushed ? " (pushed)" : "")"
        }
        print(line)
    }

    static func utcNow() -> (iso: String, stamp: String) {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let year = "\(parts.tm_year + 1900)"
        let date = [year, two(parts.tm_mon + 1), two(parts.tm_mday)]
        let clock = [two(parts.tm_hour), two(parts.tm_min), two(parts.tm_sec)]
        return (date.joined(separator: "-") + "T" + clock.joined(separator: ":") + "Z", date.joined() + "-" + clock.joined())
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func userName(_ uid: UInt32, environment: [String: String]) -> String {
        if let entry = getpwuid(uid), let name = entry.pointee.pw_name { return String(cString: name) }
        return environment["USER"] ?? "\(uid)"
    }
}

/// `overlay snapshot list [--json]`.
public struct SnapshotList: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "list", abstract: "List the snapshots in the store.")
    public init() {}

    @Flag(help: "Print a JSON array, one object a snapshot.")
    public var json = false

    public func run() throws {
        let store = try SnapshotCommand.store()
        var objects: [String] = []
        for name in store.names() {
            let path = store.path(of: name)
            let description = try? SnapshotStore.describe(path)
            if json {
                objects.append(description.map { SnapshotInfo.json($0, file: path) }
                               ?? "{\"name\":\(Ext3.jsonQuoted(name)),\"file\":\(Ext3.jsonQuoted(path)),\"damaged\":true}")
                continue
            }
            guard let description else {
                print("\(name)  (no readable description: see overlay snapshot info \(name))")
                continue
            }
            let what = description.captured.map { Escaped.terminal($0.path) }.joined(separator: ", ")
            let git = description.git.map { " (git \(Escaped.terminal($0.branch)) \($0.commit.prefix(12)))" } ?? ""
            print("\(name)  \(Escaped.terminal(description.created))  \(Units.humanBytes(description.sizeBytes))  \(what)\(git)")
        }
        if json { print("[" + objects.joined(separator: ",") + "]") }
    }
}

/// `overlay snapshot info NAME [--json]`.
public struct SnapshotInfo: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "info", abstract: "Show what a snapshot captured, from where, when, its git commit and branch, and its size.")
    public init() {}

    @Argument(help: ArgumentHelp("A snapshot's name, or the path of its file.", valueName: "name"))
    public var name: String

    @Flag(help: "Print one JSON object.")
    public var json = false

    public func run() throws {
        let store = try SnapshotCommand.store()
        let path = try store.resolve(name)
        let description = try SnapshotStore.describe(path)
        if json {
            print(SnapshotInfo.json(description, file: path))
            return
        }
        let e = Escaped.terminal
        print("\(e(description.name)): \(e(path))")
        print("created: \(e(description.created)) on \(e(description.host)) by \(e(description.user))")
        for item in description.captured { print("captured: \(e(item.path)) (\(e(item.kind)))") }
        if let git = description.git {
            print("git: branch \(e(git.branch)), commit \(e(git.commit)), repository \(e(git.repository))\(git.pushed ? ", pushed" : "")")
        }
        if let job = description.job {
            let tenths = Int((job.pauseMilliseconds * 10).rounded())
            print("job: \(e(job.id)), trigger \(e(job.trigger)), paused \(tenths / 10).\(tenths % 10) ms")
        }
        print("contents: \(SnapshotInfo.contents(description)); image \(Units.humanBytes(description.sizeBytes))")
        let lock = (try? ImageLock.state(of: path)) ?? .unlocked
        print("in use: " + (lock == .unlocked ? "no" : "yes, by a running job"))
    }

    /// `2,412 entries, 48.3 MiB` (directories, git), `an image copy, 1.0 GiB allocated` (image).
    static func contents(_ description: SnapshotDescription) -> String {
        if description.captured.contains(where: { $0.kind == "image" }) {
            return "an image copy, \(Units.humanBytes(description.dataBytes)) allocated"
        }
        return "\(Units.grouped(description.entries)) entries, \(Units.humanBytes(description.dataBytes))"
    }

    static func json(_ description: SnapshotDescription, file: String) -> String {
        let body = description.json
        return "{\"file\":\(Ext3.jsonQuoted(file))," + body.dropFirst()
    }
}

/// `overlay snapshot rm NAME`.
public struct SnapshotRemove: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "rm", abstract: "Remove a snapshot no running job uses (its git branch is kept).")
    public init() {}

    @Argument(help: ArgumentHelp("A snapshot's name, or the path of its file.", valueName: "name"))
    public var name: String

    public func run() throws {
        let store = try SnapshotCommand.store()
        let path = try store.resolve(name)
        if path != store.path(of: name) {
            // A file named by its path is removed only when it is a snapshot (it describes
            // itself); one in the store, by its name, even when its description is damaged.
            _ = try SnapshotStore.describe(path)
        }
        try SnapshotStore.remove(path)
        print("removed \(Escaped.terminal(name))")
    }
}
