import ArgumentParser

/// The toolkit's version, and the git commit it was built from (recorded before each build by
/// the VersionStamp plugin; empty when built outside a git checkout).
public enum ToolVersion {
    /// The release number; raised when a release is made.
    public static let number = "0.1.0"
    /// The abbreviated commit, or "" outside a checkout.
    public static let commit = buildCommit
    /// Whether tracked files differed from that commit when it was built.
    public static let modified = buildCommitModified

    /// `0.1.0 (commit 17390ed4a1b2)`, `0.1.0 (commit 17390ed4a1b2, modified)`, or `0.1.0`:
    /// what `--version` prints after the command's name.
    public static var text: String {
        guard !commit.isEmpty else { return number }
        return "\(number) (commit \(commit)\(modified ? ", modified" : ""))"
    }

    /// `--version` of `command`: `create-overlay 0.1.0 (commit ...)`.
    static func line(_ command: String) -> String { "\(command) \(text)" }

    /// One JSON object for support scripts.
    public static var json: String {
        let commitValue = commit.isEmpty ? "null" : "\"\(commit)\""
        return "{\"version\":\"\(number)\",\"commit\":\(commitValue),\"modified\":\(modified)}"
    }
}

/// `overlay version`: the version and commit, as text or JSON.
public struct VersionCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "Show the toolkit's version and the git commit it was built from.",
        discussion: """
        The same as --version on every command. With --json, one object for support scripts: \
        {"version":"0.1.0","commit":"17390ed4a1b2","modified":false}; commit is null when the \
        toolkit was built outside a git checkout, modified is true when tracked files differed \
        from the commit.
        """
    )

    public init() {}

    @Flag(help: "Print the result as one JSON object.")
    public var json = false

    public func run() throws {
        print(json ? ToolVersion.json : ToolVersion.line("overlay"))
    }
}
