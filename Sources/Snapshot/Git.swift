import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

/// Runs git in a repository: standard output collected (or sent to a descriptor), standard
/// error kept for the message when it fails, standard input from /dev/null.
struct Git: Sendable {
    let executable: String
    let directory: String
    /// Variables set on top of this process's environment.
    var environment: [String: String] = [:]

    init(directory: String) throws {
        guard let found = findExecutable("git") else {
            throw SnapshotError("--git needs git, which is not on PATH: install it (apt-get install git)")
        }
        executable = found
        self.directory = directory
    }

    struct Result {
        var status: Int32
        var output: String
        var errors: String
        /// The first line of what git said on stderr, for a one-line message.
        var firstError: String {
            errors.split(separator: "\n").first.map { String($0).trimmedLine() } ?? "exit status \(status)"
        }
    }

    /// Runs `git -C directory ARGS`; `stdout` sends standard output to that descriptor instead.
    func run(_ arguments: [String], stdout: Int32? = nil) throws -> Result {
        let errorFile = FileCalls.openUnnamed(in: "/tmp", mode: 0o600)
        let pipe = try Pipe()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout ?? pipe.writeEnd.rawValue, 1)
        if errorFile >= 0 {
            posix_spawn_file_actions_adddup2(&actions, errorFile, 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        var merged = currentEnvironment()
        for (key, value) in environment { merged[key] = value }
        // Never ask anything on a terminal (a push asking for a password fails instead).
        merged["GIT_TERMINAL_PROMPT"] = "0"
        let argv0 = [executable, "-C", directory] + arguments
        var argv: [UnsafeMutablePointer<CChar>?] = argv0.map { strdup($0) } + [nil]
        var envp: [UnsafeMutablePointer<CChar>?] = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var child: pid_t = 0
        let code = posix_spawn(&child, executable, &actions, nil, &argv, &envp)
        let readEnd = pipe.readEnd
        pipe.writeEnd.close()
        guard code == 0 else {
            if errorFile >= 0 { close(errorFile) }
            throw SnapshotError("cannot run \(executable): \(Errno(rawValue: code))")
        }
        let output = (try? IO.readAll(readEnd.rawValue)) ?? []
        readEnd.close()
        let status = Children.wait(child)?.shellStatus ?? 125
        var errors: [UInt8] = []
        if errorFile >= 0 {
            lseek(errorFile, 0, SEEK_SET)
            errors = (try? IO.readAll(errorFile)) ?? []
            close(errorFile)
        }
        return Result(status: status, output: String(decoding: output, as: UTF8.self),
                      errors: String(decoding: errors, as: UTF8.self))
    }

    /// Runs git and returns its output without the trailing newline; a failure throws `what`
    /// with git's first line.
    func value(_ arguments: [String], _ what: String) throws -> String {
        let result = try run(arguments)
        guard result.status == 0 else { throw SnapshotError("\(what): git \(arguments.first ?? ""): \(result.firstError)") }
        return result.output.trimmedLine()
    }
}

extension String {
    /// Without leading and trailing spaces, tabs and newlines.
    func trimmedLine() -> String {
        let blank: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
        guard let first = firstIndex(where: { !blank($0) }), let last = lastIndex(where: { !blank($0) }) else { return "" }
        return String(self[first...last])
    }
}
