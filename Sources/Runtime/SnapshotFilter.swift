import LinuxSupport
import Overlay

/// `--snapshot-include REGEX` and `--snapshot-exclude REGEX`: which files of the writable
/// overlay a job snapshot takes. Each regex must match a whole path (anchored at both ends),
/// the path being relative to the captured root (the overlay's upper/: `results/log.1`, `/`
/// between names, no leading `/`). A file (anything but a directory: symbolic links, devices
/// and whiteouts too) is taken when it matches some include (or no include is given) and no
/// exclude; a directory is kept when it leads to a taken file, and only then.
public struct SnapshotFilter {
    let include: [Regex<AnyRegexOutput>]
    let exclude: [Regex<AnyRegexOutput>]

    /// Compiles the regexes; a bad one is refused with a line naming its option, the regex
    /// and what is wrong.
    public init(include: [String], exclude: [String]) throws {
        func compile(_ pattern: String, _ option: String) throws -> Regex<AnyRegexOutput> {
            do { return try Regex(pattern) } catch {
                let reason = "\(error)".split(whereSeparator: \.isNewline).first.map(String.init) ?? "not a regular expression"
                throw RuntimeError.failed("\(option) '\(pattern)' is not a valid regular expression (\(reason)): correct it (it must match whole paths below the overlay's top, e.g. results/.*)")
            }
        }
        self.include = try include.map { try compile($0, "--snapshot-include") }
        self.exclude = try exclude.map { try compile($0, "--snapshot-exclude") }
    }

    /// The filter of `settings`, nil when it has no regexes (the whole image is copied).
    public static func of(_ settings: JobSnapshotSettings) throws -> SnapshotFilter? {
        guard !settings.include.isEmpty || !settings.exclude.isEmpty else { return nil }
        return try SnapshotFilter(include: settings.include, exclude: settings.exclude)
    }

    /// Whether the file at `path` (relative to the captured root) is taken.
    public func takes(_ path: String) -> Bool {
        func matches(_ regex: Regex<AnyRegexOutput>) -> Bool { ((try? regex.wholeMatch(in: path)) ?? nil) != nil }
        return (include.isEmpty || include.contains(where: matches)) && !exclude.contains(where: matches)
    }
}
