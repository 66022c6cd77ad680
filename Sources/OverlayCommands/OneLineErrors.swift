import ArgumentParser
import Runtime
import ImageDriver
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// A command line this toolkit refuses (a value it cannot use, options that do not go
/// together): one line, exit status 64 (EX_USAGE), as ArgumentParser's own usage errors.
public struct UsageError: UserFacingError {
    public let description: String
    public init(_ description: String) { self.description = description }
    public var exitStatus: Int32 { 64 }
}

/// A one-line failure of a command: printed as `error: <text>`, exit status 1.
public struct CommandFailure: UserFacingError {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The `main` of every executable: parses and runs the command; every failure is one line on
/// stderr (`error: ...`, the prefix `warning:` and `note:` lines share) and a non-zero exit. Errors are told apart by type: a
/// ``UserFacingError`` prints its own line (from parsing or validating the command line: exit
/// 64; from running: its ``UserFacingError/exitStatus``); any other error from parsing is
/// ArgumentParser's own, printed with a pointer to --help instead of the usage. Help and version
/// print as usual, and an exit status a command passes on (a job's) is exited with silently.
public enum OneLineErrors {
    /// With `holdingUserSignals` (run-overlay, mount-overlay), SIGUSR1 and SIGUSR2 are kept for
    /// the job from the first moment: their default action would end the tool before the job
    /// has even started.
    public static func main<Command: ParsableCommand>(_ type: Command.Type, holdingUserSignals: Bool = false) -> Never {
        // The native runtime starts this executable as its FUSE driver for read-only images.
        ImageDriver.runIfAsked()
        if holdingUserSignals { Forwarding.holdUserSignals() }
        if let mistyped = unknownSubcommand(type, Array(CommandLine.arguments.dropFirst())) {
            fail(mistyped, status: 64)
        }
        var command: any ParsableCommand
        do {
            command = try type.parseAsRoot()
        } catch {
            if let ours = userFacing(in: error) { fail(ours.description, status: 64) }
            argumentParserFailure(error, type)
        }
        do {
            try command.run()
            Glibc.exit(0)
        } catch let status as ExitCode {
            Glibc.exit(status.rawValue)
        } catch let error as any UserFacingError {
            fail(error.description, status: error.exitStatus)
        } catch {
            // ArgumentParser's own (a help request, for one, arrives through run()).
            argumentParserFailure(error, type)
        }
    }

    /// Help and version print as usual; ArgumentParser's usage errors are one line that points
    /// at --help instead of the usage.
    private static func argumentParserFailure<Command: ParsableCommand>(_ error: any Error, _ type: Command.Type) -> Never {
        let code = type.exitCode(for: error)
        if code == .success {
            type.exit(withError: error)  // --help, --version
        }
        var text = type.message(for: error).split(separator: "\n").first.map(String.init) ?? "failed"
        if text.hasPrefix("Error: ") { text.removeFirst(7) }
        fail(text + " (see \(type.configuration.commandName ?? "the command") --help)", status: code.rawValue)
    }

    /// Prints the line with every control character escaped: names and text in it may come from
    /// an image, an archive or the command line, and must not reach the terminal raw.
    private static func fail(_ text: String, status: Int32) -> Never {
        IO.writeLine("error: " + Escaped.terminal(text))
        Glibc.exit(status)
    }

    /// For a command with subcommands (overlay) whose first argument names none of them: one
    /// line naming it, the nearest subcommand when one is close (`overlay inf`: did you mean
    /// info), and the list. ArgumentParser would only call it an unexpected argument.
    static func unknownSubcommand<Command: ParsableCommand>(_ type: Command.Type, _ arguments: [String]) -> String? {
        let subcommands = type.configuration.subcommands
        guard !subcommands.isEmpty, let word = arguments.first, !word.hasPrefix("-") else { return nil }
        let names = subcommands.compactMap { $0.configuration.commandName } + ["help"]
        guard !names.contains(word) else { return nil }
        let tool = type.configuration.commandName ?? "the command"
        let listed = names.dropLast().joined(separator: ", ")
        let startingWith = names.filter { $0.hasPrefix(word.lowercased()) }
        let near = startingWith.count == 1 ? startingWith[0]
            : names.map { ($0, editDistance($0, word.lowercased())) }.filter { $0.1 <= 2 }.min { $0.1 < $1.1 }?.0
        if let near {
            return "\(tool) \(word): no such command; did you mean \(tool) \(near)? (commands: \(listed))"
        }
        return "\(tool) \(word): no such command; give one of \(listed) (see \(tool) --help)"
    }

    /// Levenshtein distance, for names a few letters long.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        guard !a.isEmpty else { return b.count }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in stride(from: 1, through: b.count, by: 1) {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }

    /// The ``UserFacingError`` behind a parsing error: ArgumentParser hands back what our
    /// `validate()` and value transforms throw wrapped in its own (internal) error types, so
    /// the wrapper is searched a few levels deep.
    static func userFacing(in error: Any, depth: Int = 0) -> (any UserFacingError)? {
        if let ours = error as? any UserFacingError { return ours }
        guard depth < 6 else { return nil }
        for child in Mirror(reflecting: error).children {
            if let found = userFacing(in: child.value, depth: depth + 1) { return found }
        }
        return nil
    }
}
