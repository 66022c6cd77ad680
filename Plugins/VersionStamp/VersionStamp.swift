import Foundation
import PackagePlugin

/// Writes `BuildCommit.swift` before every build: the git commit the sources were built from
/// (empty outside a git checkout), and whether tracked files differed from it. The file is
/// rewritten only when its text changes, so an unchanged checkout recompiles nothing. Git is
/// asked without taking optional locks, so building never touches the work tree or the index.
@main
struct VersionStamp: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let output = context.pluginWorkDirectoryURL.appendingPathComponent("generated")
        return [
            .prebuildCommand(
                displayName: "Recording the git commit for --version",
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: ["-c", Self.script, "version-stamp",
                            context.package.directoryURL.path, output.path],
                outputFilesDirectory: output),
        ]
    }

    static let script = #"""
    source="$1"; output="$2"
    mkdir -p "$output"
    git() { command git -c safe.directory='*' --no-optional-locks -C "$source" "$@" 2>/dev/null; }
    commit="$(git rev-parse --short=12 HEAD || true)"
    modified=false
    if [ -n "$commit" ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; then modified=true; fi
    text="// Generated before each build by the VersionStamp plugin; not checked in.
    let buildCommit = \"$commit\"
    let buildCommitModified = $modified"
    file="$output/BuildCommit.swift"
    if [ ! -f "$file" ] || [ "$(cat "$file")" != "$text" ]; then printf '%s\n' "$text" > "$file"; fi
    """#
}
