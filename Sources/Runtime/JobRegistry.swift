import Ext3
import LinuxSupport
import Overlay
import Snapshot

#if canImport(Glibc)
import Glibc
#endif

/// This user's running jobs with snapshots on this machine: one file per run,
/// `$XDG_RUNTIME_DIR/overlay/jobs/<id>.json` (else `/tmp/overlay-<uid>/jobs/<id>.json`), written
/// when the run starts and removed when it ends; entries whose process is gone (a run killed
/// with SIGKILL) are skipped and removed when listed.
public struct JobEntry: Equatable, Sendable {
    public var id: String
    public var pid: Int32
    public var host: String
    public var images: [String]
    public var snapshotTo: String
    public var everySeconds: Int?
    public var keep: Int?

    public init(id: String, pid: Int32, host: String, images: [String], snapshotTo: String, everySeconds: Int?, keep: Int?) {
        self.id = id
        self.pid = pid
        self.host = host
        self.images = images
        self.snapshotTo = snapshotTo
        self.everySeconds = everySeconds
        self.keep = keep
    }

    public var json: String {
        let q = Ext3.jsonQuoted
        var fields = ["\"id\":\(q(id))", "\"pid\":\(pid)", "\"host\":\(q(host))",
                      "\"images\":[" + images.map(q).joined(separator: ",") + "]", "\"snapshotTo\":\(q(snapshotTo))"]
        if let everySeconds { fields.append("\"snapshotEvery\":\(everySeconds)") }
        if let keep { fields.append("\"snapshotKeep\":\(keep)") }
        return "{" + fields.joined(separator: ",") + "}"
    }

    init?(json text: String) {
        guard case let .object(object)? = try? JSONValue.parse(text),
              case let .string(id)? = object["id"], case let .number(pid)? = object["pid"],
              case let .string(to)? = object["snapshotTo"], pid > 0, pid < 1e9 else { return nil }
        var images: [String] = []
        if case let .array(items)? = object["images"] {
            for case let .string(image) in items { images.append(image) }
        }
        var host = ""
        if case let .string(value)? = object["host"] { host = value }
        var every: Int?
        if case let .number(value)? = object["snapshotEvery"], value > 0, value < 1e9 { every = Int(value) }
        var keep: Int?
        if case let .number(value)? = object["snapshotKeep"], value > 0, value < 1e9 { keep = Int(value) }
        self.init(id: id, pid: Int32(pid), host: host, images: images, snapshotTo: to, everySeconds: every, keep: keep)
    }
}

public enum JobRegistry {
    public static func directory(environment: [String: String]) -> String {
        if let runtime = environment["XDG_RUNTIME_DIR"], runtime.hasPrefix("/") {
            var info = stat()
            if stat(runtime, &info) == 0, info.st_uid == getuid() { return runtime + "/overlay/jobs" }
        }
        return "/tmp/overlay-\(getuid())/jobs"
    }

    /// Writes the entry (making the directories, private to this user); returns its path.
    public static func add(_ entry: JobEntry, environment: [String: String]) throws -> String {
        let directory = directory(environment: environment)
        var path = ""
        for part in directory.split(separator: "/") {
            path += "/" + part
            mkdir(path, 0o700)
        }
        var info = stat()
        guard lstat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR, info.st_uid == getuid() else {
            throw RuntimeError.failed("\(directory) is not a directory of yours: remove it, or set XDG_RUNTIME_DIR")
        }
        let file = directory + "/" + entry.id + ".json"
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw RuntimeError.failed("cannot write \(file): \(Errno.last)") }
        defer { close(fd) }
        try? IO.writeAll(fd, Array((entry.json + "\n").utf8))
        return file
    }

    /// The running jobs, by id.
    public static func list(environment: [String: String]) -> [JobEntry] {
        let directory = directory(environment: environment)
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var entries: [JobEntry] = []
        while let item = readdir(dir) {
            let name = withUnsafeBytes(of: item.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasSuffix(".json"), !name.hasPrefix(".") else { continue }
            let path = directory + "/" + name
            let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { continue }
            let bytes = (try? IO.readAll(fd)) ?? []
            close(fd)
            guard let entry = JobEntry(json: String(decoding: bytes, as: UTF8.self)) else { continue }
            if kill(entry.pid, 0) != 0 && errno == ESRCH {
                unlink(path)
                continue
            }
            entries.append(entry)
        }
        return entries.sorted { $0.id < $1.id }
    }
}
