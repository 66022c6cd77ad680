import Ext3
import LinuxSupport
import Overlay
#if canImport(Glibc)
import Glibc
#endif

/// Where snapshots live: `$OVERLAY_SNAPSHOTS`, else `snapshots` in a configuration file, else
/// `${XDG_DATA_HOME:-~/.local/share}/overlay/snapshots`. Each snapshot is one file,
/// `<store>/NAME.ext3`, an ordinary read-only overlay image.
public struct SnapshotStore: Sendable {
    public let directory: String
    public let setting: Configuration.Setting

    public init(directory: String, setting: Configuration.Setting) {
        self.directory = directory
        self.setting = setting
    }

    /// The store the configuration names.
    public static func locate(environment: [String: String]) throws -> SnapshotStore {
        let configuration = try Configuration.load(environment: environment)
        guard let directory = configuration.snapshots.value else {
            throw SnapshotError("no snapshot store: set $OVERLAY_SNAPSHOTS or snapshots in ~/.config/overlay/config (neither $HOME nor $XDG_DATA_HOME is set)")
        }
        return SnapshotStore(directory: directory, setting: configuration.snapshots)
    }

    public static let suffix = ".ext3"

    /// A NAME is letters, digits, `.`, `_`, `-` and `+`, at most 200 of them, not starting with
    /// a dot or a dash.
    public static func validate(name: String) throws {
        let allowed = name.unicodeScalars.allSatisfy { scalar in
            scalar.isASCII && (("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar)
                               || scalar == "." || scalar == "_" || scalar == "-" || scalar == "+")
        }
        guard !name.isEmpty, name.utf8.count <= 200, allowed, !name.hasPrefix("."), !name.hasPrefix("-") else {
            throw SnapshotError("snapshot name '\(name)' is not usable: use letters, digits, '.', '_', '-' and '+' (no '/', not starting with '.' or '-', at most 200)")
        }
    }

    /// `<store>/NAME.ext3`.
    public func path(of name: String) -> String {
        directory + "/" + name + SnapshotStore.suffix
    }

    /// Makes the store directory (and its parents) when missing.
    public func create() throws {
        var prefix = directory.hasPrefix("/") ? "" : "."
        for part in directory.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw SnapshotError("cannot make the snapshot store \(directory) (\(Errno.last)): set $OVERLAY_SNAPSHOTS to a directory you can write")
            }
        }
    }

    /// The file of a snapshot given by NAME (in this store) or by a path to a snapshot file (it
    /// has a `/` or ends in `.ext3` and exists).
    public func resolve(_ reference: String) throws -> String {
        var info = stat()
        if reference.contains("/") || (reference.hasSuffix(SnapshotStore.suffix) && stat(reference, &info) == 0) {
            guard stat(reference, &info) == 0 else {
                throw SnapshotError("snapshot file \(reference) not found: give a snapshot's name (overlay snapshot list) or the path of its file")
            }
            guard (info.st_mode & S_IFMT) == S_IFREG else {
                throw SnapshotError("\(reference) is not a snapshot file: give a snapshot's name or the path of its .ext3 file")
            }
            return reference
        }
        try SnapshotStore.validate(name: reference)
        let path = path(of: reference)
        guard stat(path, &info) == 0 else {
            throw SnapshotError("no snapshot named '\(reference)' in \(directory): see overlay snapshot list")
        }
        return path
    }

    /// The names of the snapshots in the store, sorted.
    public func names() -> [String] {
        guard let handle = opendir(directory) else { return [] }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name.hasSuffix(SnapshotStore.suffix), !name.hasPrefix(".") else { continue }
            let base = String(name.dropLast(SnapshotStore.suffix.count))
            if (try? SnapshotStore.validate(name: base)) != nil { names.append(base) }
        }
        return names.sorted()
    }

    /// Reads a snapshot file's description (its `snapshot.json`).
    public static func describe(_ path: String) throws -> SnapshotDescription {
        let image: Ext3.Image
        do { image = try Ext3.Image(path: path) } catch {
            throw SnapshotError("\(path) is not a snapshot: \(error)")
        }
        defer { try? image.close() }
        guard let entry = try? image.lookup("/" + SnapshotDescription.fileName), entry.kind == .regular else {
            throw SnapshotError("\(path) is an overlay image without a snapshot description (/\(SnapshotDescription.fileName))")
        }
        guard entry.size <= 1 << 20 else { throw SnapshotError("\(path): its snapshot description is too large") }
        var bytes: [UInt8] = []
        try image.read(entry) { bytes += $0 }
        do {
            return try SnapshotDescription(json: String(decoding: bytes, as: UTF8.self))
        } catch {
            throw SnapshotError("\(path): its snapshot description is damaged (\(error))")
        }
    }

    /// Removes a snapshot nobody uses: takes a write lock (a job holds a read lock on its
    /// snapshot for the whole run), refusing at once when a job has it.
    public static func remove(_ path: String) throws {
        var info = stat()
        guard stat(path, &info) == 0 else { throw SnapshotError("snapshot file \(path) not found") }
        // The file is read-only; a write lock needs a descriptor open for writing.
        let madeWritable = (info.st_mode & 0o200) == 0 && chmod(path, mode_t(info.st_mode & 0o7777) | 0o200) == 0
        let lock: ImageLock
        do {
            lock = try ImageLock.acquire(path, .write)
        } catch OverlayError.imageInUse {
            if madeWritable { chmod(path, mode_t(info.st_mode & 0o7777)) }
            throw SnapshotError("snapshot \(path) is in use by a running job: wait for the job to end, then remove it")
        } catch {
            if madeWritable { chmod(path, mode_t(info.st_mode & 0o7777)) }
            throw SnapshotError("cannot remove \(path): \(error)")
        }
        defer { lock.release() }
        guard unlink(path) == 0 else {
            let code = Errno.last
            if madeWritable { chmod(path, mode_t(info.st_mode & 0o7777)) }
            throw SnapshotError("cannot remove \(path): \(code)")
        }
    }
}
