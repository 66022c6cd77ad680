import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

/// Runs a helper program (e2fsck, resize2fs) to completion with posix_spawn and waitpid, its
/// stdout and stderr collected together. Looked up on PATH, then in /usr/sbin and /sbin (where
/// e2fsprogs lives, often off an ordinary user's PATH).
public enum Program {
    public struct Result: Sendable, Equatable {
        /// Exit status; 128+N when killed by signal N.
        public var status: Int32
        /// stdout and stderr, interleaved as written.
        public var output: String
    }

    /// Runs `arguments` (the first names the program) and waits for it.
    public static func run(_ arguments: [String]) throws -> Result {
        guard let executable = findExecutable(arguments[0], alsoIn: ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]) else {
            throw OverlayError.message("\(arguments[0]) not found: install e2fsprogs (Debian: apt-get install e2fsprogs)")
        }
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw OverlayError.message("cannot run \(arguments[0]): \(errnoDescription(errno))") }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        posix_spawn_file_actions_addclose(&actions, fds[1])
        var argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments.dropFirst()).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var child: pid_t = 0
        let code = posix_spawn(&child, executable, &actions, nil, &argv, environ)
        close(fds[1])
        guard code == 0 else {
            close(fds[0])
            throw OverlayError.message("cannot run \(executable): \(errnoDescription(code))")
        }
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fds[0], &buffer, buffer.count)
            if n > 0 { output += buffer[0..<n]; continue }
            if n < 0 && errno == EINTR { continue }
            break
        }
        close(fds[0])
        var raw: Int32 = 0
        while waitpid(child, &raw, 0) < 0 && errno == EINTR {}
        let signal = raw & 0x7f
        let status = signal == 0 ? (raw >> 8) & 0xff : 128 + signal
        return Result(status: status, output: String(decoding: output, as: UTF8.self))
    }
}

