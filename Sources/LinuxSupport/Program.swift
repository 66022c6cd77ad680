#if canImport(Glibc)
import Glibc
#endif

/// Runs a helper program to completion (posix_spawn, then waitpid), its standard output and
/// standard error collected together and standard input from /dev/null.
public enum ProgramRunner {
    public struct Result: Sendable, Equatable {
        /// Exit status; 128+N when killed by signal N.
        public var status: Int32
        /// stdout and stderr, interleaved as written.
        public var output: String

        public init(status: Int32, output: String) {
            self.status = status
            self.output = output
        }
    }

    /// Runs `executable` with `arguments` (argv[0] included) and the current environment.
    public static func run(_ executable: String, _ arguments: [String]) throws(SystemError) -> Result {
        let pipe = try Pipe()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, pipe.writeEnd.rawValue, 1)
        posix_spawn_file_actions_adddup2(&actions, pipe.writeEnd.rawValue, 2)
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var child: pid_t = 0
        let code = posix_spawn(&child, executable, &actions, nil, &argv, environ)
        let readEnd = pipe.readEnd
        pipe.writeEnd.close()
        guard code == 0 else { throw SystemError("run", path: executable, errno: Errno(rawValue: code)) }
        let output = (try? IO.readAll(readEnd.rawValue)) ?? []
        readEnd.close()
        let status = Children.wait(child)?.shellStatus ?? 125
        return Result(status: status, output: String(decoding: output, as: UTF8.self))
    }

    /// Replaces this process with `executable` (execv: `arguments`, argv[0] included, and the
    /// current environment). Returns only when that failed, with the reason.
    public static func exec(_ executable: String, _ arguments: [String]) -> Errno {
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        execv(executable, &argv)
        return Errno.last
    }
}

/// Finds an executable on `PATH` (as `execvp` would), then in `alsoIn` (e2fsprogs lives in
/// /usr/sbin and /sbin, often off an ordinary user's PATH).
public func findExecutable(_ name: String, path: String? = nil, alsoIn extra: [String] = []) -> String? {
    if name.contains("/") { return isExecutableFile(name) ? name : nil }
    let searchPath = path ?? getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
    for dir in searchPath.split(separator: ":").map(String.init) + extra where !dir.isEmpty {
        let candidate = "\(dir)/\(name)"
        if isExecutableFile(candidate) { return candidate }
    }
    return nil
}

/// A regular file this process may execute.
public func isExecutableFile(_ path: String) -> Bool {
    var info = stat()
    guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return false }
    return access(path, X_OK) == 0
}

/// This process's environment as a dictionary.
public func currentEnvironment() -> [String: String] {
    var result: [String: String] = [:]
    var pointer = environ
    while let entry = pointer.pointee {
        let text = String(cString: entry)
        if let equals = text.firstIndex(of: "=") {
            result[String(text[..<equals])] = String(text[text.index(after: equals)...])
        }
        pointer += 1
    }
    return result
}
