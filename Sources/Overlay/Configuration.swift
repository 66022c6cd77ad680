import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The user's defaults for run-overlay and mount-overlay: the container image and the runtime.
///
/// Each value is looked up in this order, the first found wins:
///
/// 1. the command-line flag (`-c`, `--runtime`);
/// 2. the environment (`$OVERLAY_CONTAINER`, `$OVERLAY_RUNTIME`);
/// 3. the user's file, `${XDG_CONFIG_HOME:-~/.config}/overlay/config`;
/// 4. the system-wide file an administrator sets, `/etc/overlay/config`
///    (`$OVERLAY_SYSTEM_CONFIG` names another one);
/// 5. the built-in default (runtime `auto`; no container).
///
/// The files hold `key = value` lines; `#` starts a comment; blank lines are ignored:
///
///     # ~/.config/overlay/config
///     container = /project/images/pytorch.sif
///     runtime = apptainer
public struct Configuration: Equatable, Sendable {
    public enum Key: String, CaseIterable, Sendable {
        case container, runtime, snapshots

        /// The environment variable that overrides the files.
        public var environmentVariable: String {
            switch self {
            case .container: return "OVERLAY_CONTAINER"
            case .runtime: return "OVERLAY_RUNTIME"
            case .snapshots: return "OVERLAY_SNAPSHOTS"
            }
        }

        /// The command-line flag that overrides everything.
        public var flag: String {
            switch self {
            case .container: return "-c"
            case .runtime: return "--runtime"
            case .snapshots: return "--store"
            }
        }
    }

    /// Where an effective value came from.
    public enum Source: Equatable, Sendable, CustomStringConvertible {
        case flag(String)
        case environment(String)
        case file(path: String, line: Int)
        case builtIn

        public var description: String {
            switch self {
            case let .flag(flag): return "the \(flag) flag"
            case let .environment(name): return "$\(name)"
            case let .file(path, line): return "\(path):\(line)"
            case .builtIn: return "the built-in default"
            }
        }
    }

    public struct Setting: Equatable, Sendable {
        /// nil when nothing sets it (no container).
        public var value: String?
        public var source: Source
    }

    /// A configuration file and whether it was there.
    public struct File: Equatable, Sendable {
        public var path: String
        public var present: Bool
    }

    public var container: Setting
    public var runtime: Setting
    /// The snapshot store (`overlay snapshot`): always set; the built-in default is
    /// ``defaultSnapshotStore(environment:)``.
    public var snapshots: Setting
    /// The files consulted, system-wide first.
    public var files: [File]

    public subscript(key: Key) -> Setting {
        switch key {
        case .container: return container
        case .runtime: return runtime
        case .snapshots: return snapshots
        }
    }

    /// The built-in runtime when nothing sets one.
    public static let defaultRuntime = "auto"

    /// Where snapshots go when nothing else says: `$XDG_DATA_HOME/overlay/snapshots`, else
    /// `$HOME/.local/share/overlay/snapshots` (nil when neither variable is set).
    public static func defaultSnapshotStore(environment: [String: String]) -> String? {
        if let base = nonEmpty(environment["XDG_DATA_HOME"]) { return "\(base)/overlay/snapshots" }
        if let home = nonEmpty(environment["HOME"]) { return "\(home)/.local/share/overlay/snapshots" }
        return nil
    }

    /// The system-wide file: `$OVERLAY_SYSTEM_CONFIG`, else `/etc/overlay/config`.
    public static func systemPath(environment: [String: String]) -> String {
        nonEmpty(environment["OVERLAY_SYSTEM_CONFIG"]) ?? "/etc/overlay/config"
    }

    /// The user's file: `$XDG_CONFIG_HOME/overlay/config`, else `$HOME/.config/overlay/config`
    /// (nil when neither variable is set).
    public static func userPath(environment: [String: String]) -> String? {
        if let base = nonEmpty(environment["XDG_CONFIG_HOME"]) { return "\(base)/overlay/config" }
        if let home = nonEmpty(environment["HOME"]) { return "\(home)/.config/overlay/config" }
        return nil
    }

    /// Reads the files and the environment and applies `flags`. Throws
    /// ``OverlayError/message(_:)`` naming the file and line for a malformed file.
    public static func load(environment: [String: String], flags: [Key: String] = [:]) throws -> Configuration {
        var files: [File] = []
        var fromFiles: [Key: Setting] = [:]
        var paths = [systemPath(environment: environment)]
        if let user = userPath(environment: environment) { paths.append(user) }
        for path in paths {
            guard let text = try readIfPresent(path) else {
                files.append(File(path: path, present: false))
                continue
            }
            files.append(File(path: path, present: true))
            // Later files (the user's) override earlier ones (the system's).
            for (key, setting) in try parse(text, path: path, home: environment["HOME"]) {
                fromFiles[key] = setting
            }
        }
        func resolve(_ key: Key, builtIn: String?) -> Setting {
            if let value = nonEmpty(flags[key]) { return Setting(value: value, source: .flag(key.flag)) }
            if let value = nonEmpty(environment[key.environmentVariable]) {
                return Setting(value: value, source: .environment(key.environmentVariable))
            }
            return fromFiles[key] ?? Setting(value: builtIn, source: .builtIn)
        }
        return Configuration(container: resolve(.container, builtIn: nil),
                             runtime: resolve(.runtime, builtIn: defaultRuntime),
                             snapshots: resolve(.snapshots, builtIn: defaultSnapshotStore(environment: environment)),
                             files: files)
    }

    /// The settings in one file's text. A leading `~/` in a value is the user's home.
    public static func parse(_ text: String, path: String, home: String? = nil) throws -> [Key: Setting] {
        var result: [Key: Setting] = [:]
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = index + 1
            var line = Substring(rawLine)
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            let content = String(line).trimmingWhitespace()
            if content.isEmpty { continue }
            guard let equals = content.firstIndex(of: "=") else {
                throw OverlayError.message("\(path):\(number): expected 'key = value', found '\(content)'")
            }
            let name = String(content[..<equals]).trimmingWhitespace()
            var value = String(content[content.index(after: equals)...]).trimmingWhitespace()
            guard let key = Key(rawValue: name) else {
                let names = Key.allCases.map(\.rawValue)
                let known = names.dropLast().joined(separator: ", ") + " or " + names.last!
                throw OverlayError.message("\(path):\(number): unknown setting '\(name)': use \(known)")
            }
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first {
                value = String(value.dropFirst().dropLast())
            }
            if value.hasPrefix("~/"), let home = nonEmpty(home) {
                value = home + value.dropFirst()
            }
            guard !value.isEmpty else {
                throw OverlayError.message("\(path):\(number): '\(name)' has no value: write '\(name) = VALUE' or remove the line")
            }
            result[key] = Setting(value: value, source: .file(path: path, line: number))
        }
        return result
    }

    /// The file's text, or nil when there is no such file.
    static func readIfPresent(_ path: String) throws -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let code = errno
            if code == ENOENT || code == ENOTDIR { return nil }
            throw OverlayError.message("cannot read the configuration file \(path): \(Errno(rawValue: code))")
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 {
                if errno == EINTR { continue }
                throw OverlayError.message("cannot read the configuration file \(path): \(Errno.last)")
            }
            if count == 0 { break }
            bytes += buffer[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func nonEmpty(_ text: String?) -> String? {
        guard let text, !text.isEmpty else { return nil }
        return text
    }
}
