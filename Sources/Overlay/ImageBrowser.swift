import Ext3
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// `overlay ls` and `overlay cat` without the printing: paths are as inside the image, from its
/// root (`/upper/opt/x`; the leading `/` is optional), never relative to `upper/`, and symbolic
/// links are shown, never followed.
public final class ImageBrowser {
    public let path: String
    let image: Ext3.Image

    /// Opens `path` read-only. Throws ``OverlayError/message(_:)`` with one line.
    public init(_ path: String) throws {
        self.path = path
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw OverlayError.message("\(path): \(Errno.last): give an overlay image file")
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw OverlayError.message("\(path) is not a file: give an ext3 overlay image")
        }
        do {
            image = try Ext3.Image(path: path)
        } catch let error as Ext3.Error {
            throw OverlayError.message(ImageInfo.explain(error, path))
        }
    }

    deinit { try? image.close() }

    /// A warning to print first when a job has the image mounted writable (what is on disk may
    /// lag behind what that job sees), or nil.
    public var staleWarning: String? {
        guard (try? ImageLock.state(of: path)) == .writeLocked else { return nil }
        return "warning: \(path) is mounted writable now; what it shows may be out of date until that job ends"
    }

    /// The lines `overlay ls` prints for `inside`: a directory's entries (all but . and ..,
    /// sorted by name), or the entry itself when it is not a directory. Under /upper, what the
    /// overlay readers take as a deletion or an opaque directory is shown as such (see
    /// ``Shown``): `NAME (deleted)`, `dir/ (opaque: hides what lies below)`, opaque markers hidden.
    public func list(_ inside: String, long: Bool) throws -> [String] {
        try translating(inside) {
            let entry = try image.lookup(inside)
            let named: [Ext3.DirectoryEntry]
            if entry.kind == .directory {
                named = try image.children(of: entry)
            } else {
                named = [Ext3.DirectoryEntry(name: Self.normalized(inside), entry: entry)]
            }
            let shown = try Self.isUnderUpper(inside) ? overlayView(named) : named.map { Shown(item: $0, name: $0.name) }
            guard long else { return shown.map { Self.printable($0.name) + $0.suffix } }
            return try longLines(shown)
        }
    }

    /// Streams the content of the regular file at `inside` to `body`.
    public func cat(_ inside: String, _ body: ([UInt8]) throws -> Void) throws {
        try translating(inside) {
            let entry = try image.lookup(inside)
            switch entry.kind {
            case .regular:
                try image.read(entry, chunk: body)
            case .directory:
                throw OverlayError.message("\(path): \(Self.normalized(inside)) is a directory inside the image: list it with overlay ls \(path) \(Self.normalized(inside))")
            case .symlink:
                let target = try image.symlinkTarget(entry)
                throw OverlayError.message("\(path): \(Self.normalized(inside)) is a symbolic link to \(target) inside the image (links are not followed): cat the path it points to")
            default:
                throw OverlayError.message("\(path): \(Self.normalized(inside)) is not a regular file inside the image (\(entry.kind.rawValue))")
            }
        }
    }

    // MARK: - Pieces

    /// Runs `body`, turning library errors into one line; a missing path that exists under
    /// /upper gets a hint (the container's files live there).
    func translating<T>(_ inside: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as Ext3.Error {
            if case .noSuchPath = error {
                let normalized = Self.normalized(inside)
                var line = "\(path): no such path inside the image: \(normalized)"
                if !normalized.hasPrefix("/upper"), normalized != "/", (try? image.lookup("/upper" + normalized)) != nil {
                    line += " (paths start at the image root; the container's files are under /upper: /upper\(normalized))"
                }
                throw OverlayError.message(line)
            }
            throw OverlayError.message(ImageInfo.explain(error, path))
        }
    }

    /// `inside` as an absolute path without repeated or trailing slashes.
    static func normalized(_ inside: String) -> String {
        "/" + inside.split(separator: "/").joined(separator: "/")
    }

    func longLines(_ shown: [Shown]) throws -> [String] {
        var rows: [[String]] = []
        for item in shown {
            let e = item.item.entry
            if item.deleted {
                rows.append(["w---------", "\(e.linkCount)", "\(e.uid)", "\(e.gid)", "0", Self.time(e.modificationTime),
                             Self.printable(item.name) + item.suffix])
                continue
            }
            let size = (e.kind == .characterDevice || e.kind == .blockDevice) ? "\(e.deviceMajor), \(e.deviceMinor)" : "\(e.size)"
            var name = Self.printable(item.name) + item.suffix
            if e.kind == .symlink {
                do {
                    name += " -> " + Self.printable(try image.symlinkTarget(e))
                } catch let error as Ext3.Error {
                    throw OverlayError.message(ImageInfo.explain(error, path))
                }
            }
            rows.append([Self.modeString(e), "\(e.linkCount)", "\(e.uid)", "\(e.gid)", size, Self.time(e.modificationTime), name])
        }
        let widths = (1...4).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            var line = row[0]
            for column in 1...4 {
                line += " " + String(repeating: " ", count: widths[column - 1] - row[column].count) + row[column]
            }
            return line + " " + row[5] + " " + row[6]
        }
    }

    /// `drwxr-xr-x`, with s/S and t/T, as ls -l writes it.
    public static func modeString(_ entry: Ext3.Entry) -> String {
        let type: Character
        switch entry.kind {
        case .regular: type = "-"
        case .directory: type = "d"
        case .symlink: type = "l"
        case .characterDevice: type = "c"
        case .blockDevice: type = "b"
        case .fifo: type = "p"
        case .socket: type = "s"
        case .unknown: type = "?"
        }
        let p = entry.permissions
        func bit(_ mask: UInt16, _ c: Character) -> Character { p & mask != 0 ? c : "-" }
        func exec(_ mask: UInt16, _ special: UInt16, _ on: Character, _ off: Character) -> Character {
            switch (p & mask != 0, p & special != 0) {
            case (true, true): return on
            case (false, true): return off
            case (true, false): return "x"
            case (false, false): return "-"
            }
        }
        return String([type, bit(0o400, "r"), bit(0o200, "w"), exec(0o100, 0o4000, "s", "S"),
                       bit(0o040, "r"), bit(0o020, "w"), exec(0o010, 0o2000, "s", "S"),
                       bit(0o004, "r"), bit(0o002, "w"), exec(0o001, 0o1000, "t", "T")])
    }

    /// `2024-05-01 12:34` in local time (ls --time-style=long-iso).
    static func time(_ stamp: Ext3.Timestamp) -> String {
        var seconds = time_t(truncatingIfNeeded: stamp.seconds)
        var parts = tm()
        guard localtime_r(&seconds, &parts) != nil else { return "\(stamp.seconds)" }
        var buffer = [CChar](repeating: 0, count: 64)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M", &parts)
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A name with control characters written as \ooo, so one entry stays one line.
    static func printable(_ name: String) -> String {
        var out = ""
        for scalar in name.unicodeScalars {
            if scalar.value < 0x20 || scalar.value == 0x7f {
                let octal = String(scalar.value, radix: 8)
                out += "\\" + String(repeating: "0", count: 3 - octal.count) + octal
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
