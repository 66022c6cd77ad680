import ArgumentParser

#if canImport(Glibc)
import Glibc
#endif

/// The `main` of every executable: parses and runs the command; every failure is one line on
/// stderr (`Error: ...`) and a non-zero exit, ArgumentParser's own usage errors included (they
/// point at --help instead of printing the usage). Help and version print as usual, and an
/// exit status a command passes on (a job's) is exited with silently.
public enum OneLineErrors {
    public static func main<Command: ParsableCommand>(_ type: Command.Type,
                                                       rewrite: (String) -> String? = { _ in nil }) -> Never {
        do {
            var command = try type.parseAsRoot()
            try command.run()
            Glibc.exit(0)
        } catch let status as ExitCode {
            Glibc.exit(status.rawValue)
        } catch {
            let code = type.exitCode(for: error)
            if code == .success {
                type.exit(withError: error)  // --help, --version
            }
            var text = type.message(for: error).split(separator: "\n").first.map(String.init) ?? "failed"
            if text.hasPrefix("Error: ") { text.removeFirst(7) }
            if let better = rewrite(text) {
                text = better
            } else if !(error is CommandFailure), let first = text.unicodeScalars.first, first.properties.isUppercase {
                // ArgumentParser's own messages (ours start in lower case or with a path): point
                // at the help.
                text += " (see \(type.configuration.commandName ?? "the command") --help)"
            }
            let bytes = Array(("Error: " + text + "\n").utf8)
            _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            Glibc.exit(code.rawValue)
        }
    }
}
