import ArgumentParser
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

/// A one-line failure of a command: printed as `Error: <text>`, exit status 1.
public struct CommandFailure: UserFacingError {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The `main` of every executable: parses and runs the command; every failure is one line on
/// stderr (`Error: ...`) and a non-zero exit. Errors are told apart by type: a
/// ``UserFacingError`` prints its own line (from parsing or validating the command line: exit
/// 64; from running: its ``UserFacingError/exitStatus``); any other error from parsing is
/// ArgumentParser's own, printed with a pointer to --help instead of the usage. Help and version
/// print as usual, and an exit status a command passes on (a job's) is exited with silently.
public enum OneLineErrors {
    public static func main<Command: ParsableCommand>(_ type: Command.Type) -> Never {
        // The native runtime starts this executable as its FUSE driver for read-only images.
        ImageDriver.runIfAsked()
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
        IO.writeLine("Error: " + Escaped.terminal(text))
        Glibc.exit(status)
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
