import Foundation
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The result of running a program to completion.
public struct ProcessResult: Sendable, CustomStringConvertible {
    public let status: Int32
    /// Set when the program was killed by a signal.
    public let signal: Int32?
    public let stdout: String
    public let stderr: String
    /// Set when the program outlived its time limit and was killed (a test must then fail).
    public var timedOut: Bool = false

    public var description: String {
        "status \(status)\(signal.map { " (signal \($0))" } ?? "")\(timedOut ? " (timed out, killed)" : "")\nstdout: \(stdout)\nstderr: \(stderr)"
    }
}

/// A child process started with posix_spawn and reaped with waitpid by this value alone.
///
/// Foundation's `Process` is not used: on Linux its exit monitoring can miss a child that has
/// exited (the child stays a zombie and `waitUntilExit` never returns), which hung whole test
/// runs. Here the caller reaps its own child, so a test can only wait as long as its timeout.
public final class SpawnedProcess: @unchecked Sendable {
    public let pid: pid_t
    /// Write end of the child's stdin when it was started with `stdin: .pipe`.
    public private(set) var stdinFD: Int32 = -1
    private var stdoutFD: Int32 = -1
    private var stderrFD: Int32 = -1
    private var outData = Data()
    private var errData = Data()
    private var exit: (status: Int32, signal: Int32?)?

    public enum Input: Sendable { case null, pipe, inherit }

    /// Starts `argv` (argv[0] looked up on PATH and in sbin). Stdout and stderr are captured
    /// unless `captureOutput` is false (then they go to /dev/null). With `newSession` the child
    /// leads a session of its own (setsid) and keeps no descriptor but 0, 1 and 2, as a process
    /// tree must for CRIU to dump it when the test's own session leader lies outside its PID
    /// namespace (as under some CI supervisors).
    public init(_ argv: [String], environment: [String: String]? = nil, currentDirectory: String? = nil,
                stdin: Input = .null, captureOutput: Bool = true, newSession: Bool = false) throws {
        precondition(!argv.isEmpty)
        _ = ignoreSIGPIPE
        var argv = argv
        argv[0] = argv[0].contains("/") ? argv[0] : (which(argv[0]) ?? argv[0])
        // The working directory through env -C (posix_spawn's chdir action is not exported).
        if let currentDirectory { argv = ["/usr/bin/env", "-C", currentDirectory] + argv }
        let executable = argv[0]

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }

        var toClose: [Int32] = []
        defer { for fd in toClose { close(fd) } }

        switch stdin {
        case .null:
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        case .pipe:
            let fds = try makePipe(argv)
            posix_spawn_file_actions_adddup2(&actions, fds.read, 0)
            toClose.append(fds.read)
            stdinFD = fds.write
        case .inherit:
            break
        }
        if captureOutput {
            let out = try makePipe(argv)
            toClose.append(out.write)
            stdoutFD = out.read
            let err = try makePipe(argv)
            toClose.append(err.write)
            stderrFD = err.read
            posix_spawn_file_actions_adddup2(&actions, out.write, 1)
            posix_spawn_file_actions_adddup2(&actions, err.write, 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }

        // A tree of its own holds no descriptor of this process but its standard streams (CRIU
        // cannot dump a descriptor on a mount it cannot see, as one inherited from the harness).
        // (glibc's closefrom action is not exported to Swift: each open descriptor is named.)
        if newSession {
            let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            for fd in open.compactMap({ Int32($0) }) where fd > 2 {
                posix_spawn_file_actions_addclose(&actions, fd)
            }
        }

        // The child starts with no blocked signals and default dispositions, whatever this
        // (multi-threaded, Dispatch-using) test process has set.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t(), all = sigset_t()
        sigemptyset(&empty)
        sigfillset(&all)
        sigdelset(&all, SIGKILL)
        sigdelset(&all, SIGSTOP)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &all)
        // glibc's POSIX_SPAWN_SETSID (0x80), which its header only names under _GNU_SOURCE.
        let setsid: Int32 = newSession ? 0x80 : 0
        posix_spawnattr_setflags(&attributes, Int16(Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF) | setsid))

        let env = environment ?? ProcessInfo.processInfo.environment
        let envStrings = env.map { "\($0.key)=\($0.value)" }
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        var cEnv: [UnsafeMutablePointer<CChar>?] = envStrings.map { strdup($0) } + [nil]
        defer {
            for p in cArgs { free(p) }
            for p in cEnv { free(p) }
        }
        var child: pid_t = 0
        let code = posix_spawn(&child, executable, &actions, &attributes, &cArgs, &cEnv)
        guard code == 0 else {
            if stdinFD >= 0 { close(stdinFD) }
            if stdoutFD >= 0 { close(stdoutFD) }
            if stderrFD >= 0 { close(stderrFD) }
            throw SpawnError(argv: argv, errno: code)
        }
        pid = child
    }

    /// Writes `text` to the child's stdin (started with `.pipe`).
    public func write(_ text: String) {
        guard stdinFD >= 0 else { return }
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(stdinFD, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 { if errno == EINTR { continue }; return }
            offset += n
        }
    }

    /// Closes the child's stdin (it then reads end of file).
    public func closeStdin() {
        if stdinFD >= 0 { close(stdinFD); stdinFD = -1 }
    }

    /// Reads one line (up to a newline) from the child's stdout, waiting at most `timeout`.
    public func readLine(timeout: TimeInterval = 60) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let newline = outData.firstIndex(of: 0x0A) {
                let line = outData[outData.startIndex..<newline]
                outData.removeSubrange(outData.startIndex...newline)
                return String(decoding: line, as: UTF8.self)
            }
            guard stdoutFD >= 0, Date() < deadline else { return nil }
            pump(timeoutMilliseconds: 100)
        }
    }

    public func signal(_ number: Int32) { if exit == nil { kill(pid, number) } }

    /// Whether the child has exited (reaping it if so).
    public var hasExited: Bool { reap(block: false) }

    /// Waits for the child (at most `timeout`, then SIGKILL) and collects its output. Output
    /// still held open by a grandchild that outlived it (a daemon) does not keep this waiting.
    public func wait(timeout: TimeInterval = 600) -> ProcessResult {
        let deadline = Date().addingTimeInterval(timeout)
        var timedOut = false
        while !reap(block: false) {
            if Date() >= deadline {
                kill(pid, SIGKILL)
                timedOut = true
                _ = reap(block: true)
                break
            }
            if stdoutFD >= 0 || stderrFD >= 0 { pump(timeoutMilliseconds: 50) } else { usleep(20_000) }
        }
        // Drain what the child wrote; give up after a short while if a descendant keeps a pipe.
        let drainDeadline = Date().addingTimeInterval(0.5)
        while (stdoutFD >= 0 || stderrFD >= 0) && Date() < drainDeadline {
            pump(timeoutMilliseconds: 50)
        }
        for fd in [stdoutFD, stderrFD] where fd >= 0 { close(fd) }
        stdoutFD = -1
        stderrFD = -1
        let (status, signal) = exit ?? (-1, nil)
        var result = ProcessResult(status: status, signal: signal,
                                   stdout: String(decoding: outData, as: UTF8.self),
                                   stderr: String(decoding: errData, as: UTF8.self))
        result.timedOut = timedOut
        return result
    }

    private func reap(block: Bool) -> Bool {
        if exit != nil { return true }
        var raw: Int32 = 0
        while true {
            let r = waitpid(pid, &raw, block ? 0 : WNOHANG)
            if r == pid { break }
            if r == 0 { return false }
            if errno == EINTR { continue }
            exit = (-1, nil)
            return true
        }
        let status = WaitStatus(raw: raw)
        if case let .signaled(number) = status {
            exit = (status.shellStatus, number)
        } else {
            exit = (status.shellStatus, nil)
        }
        return true
    }

    /// Reads whatever is ready on stdout/stderr.
    private func pump(timeoutMilliseconds: Int32) {
        var fds: [pollfd] = []
        if stdoutFD >= 0 { fds.append(pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)) }
        if stderrFD >= 0 { fds.append(pollfd(fd: stderrFD, events: Int16(POLLIN), revents: 0)) }
        guard !fds.isEmpty else { return }
        let ready = poll(&fds, nfds_t(fds.count), timeoutMilliseconds)
        guard ready > 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 65536)
        for entry in fds where entry.revents != 0 {
            let n = read(entry.fd, &buffer, buffer.count)
            if n > 0 {
                // Appended from raw memory: a generic slice append is byte by byte in debug builds.
                buffer.withUnsafeBufferPointer { bytes in
                    if entry.fd == stdoutFD { outData.append(bytes.baseAddress!, count: n) } else { errData.append(bytes.baseAddress!, count: n) }
                }
            } else if n == 0 || (errno != EINTR && errno != EAGAIN) {
                close(entry.fd)
                if entry.fd == stdoutFD { stdoutFD = -1 } else { stderrFD = -1 }
            }
        }
    }

    deinit {
        if exit == nil {
            kill(pid, SIGKILL)
            _ = reap(block: true)
        }
        for fd in [stdinFD, stdoutFD, stderrFD] where fd >= 0 { close(fd) }
    }
}

/// A pipe with both ends close-on-exec (LinuxSupport's), so no other child inherits them; the
/// caller closes both ends.
private func makePipe(_ argv: [String]) throws -> (read: Int32, write: Int32) {
    do {
        let ends = try LinuxSupport.Pipe()
        return (ends.readEnd.take(), ends.writeEnd.take())
    } catch {
        throw SpawnError(argv: argv, errno: error.errno.rawValue)
    }
}

/// Writing to a child that has exited must fail with EPIPE, not kill the test process.
private let ignoreSIGPIPE: Void = { signal(SIGPIPE, SIG_IGN); return () }()

public struct SpawnError: Error, CustomStringConvertible {
    public let argv: [String]
    public let errno: Int32
    public var description: String { "cannot start \(argv.joined(separator: " ")): \(Errno(rawValue: errno))" }
}

/// Runs `argv` (argv[0] looked up on PATH and in sbin) and waits, at most `timeout` seconds
/// (then the program is killed and the result says `timedOut`). Stdin is /dev/null unless given.
@discardableResult
public func run(_ argv: [String], environment: [String: String]? = nil, currentDirectory: String? = nil,
                stdin: String? = nil, timeout: TimeInterval = 300) throws -> ProcessResult {
    let process = try SpawnedProcess(argv, environment: environment, currentDirectory: currentDirectory,
                                     stdin: stdin == nil ? .null : .pipe)
    if let stdin {
        // Written from another thread so a program that prints before reading cannot deadlock.
        let text = stdin
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            process.write(text)
            process.closeStdin()
            done.signal()
        }
        let result = process.wait(timeout: timeout)
        done.wait()
        return result
    }
    return process.wait(timeout: timeout)
}

/// Directory holding the built products (`.build/debug`): where the test bundle itself lives.
public var productsDirectory: URL {
    let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    var dir = exe.deletingLastPathComponent()
    // swift-testing on Linux runs `<pkg>PackageTests.xctest` from .build/<triple>/debug
    while dir.path != "/" {
        if FileManager.default.fileExists(atPath: dir.appendingPathComponent("create-overlay").path) { return dir }
        dir = dir.deletingLastPathComponent()
    }
    return exe.deletingLastPathComponent()
}

/// The path of a built executable of this package.
public func product(_ name: String) -> String {
    productsDirectory.appendingPathComponent(name).path
}

/// Every descendant of `pid` (through /proc/PID/task/*/children), parents before their children.
public func processDescendants(of pid: Int32) -> [Int32] {
    var found: [Int32] = []
    var queue = [pid]
    while !queue.isEmpty {
        let next = queue.removeFirst()
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(next)/task")) ?? []
        for task in tasks {
            let text = (try? String(contentsOfFile: "/proc/\(next)/task/\(task)/children", encoding: .utf8)) ?? ""
            for word in text.split(separator: " ") {
                if let child = Int32(word.trimmingCharacters(in: .whitespacesAndNewlines)) {
                    found.append(child)
                    queue.append(child)
                }
            }
        }
    }
    return found
}

/// The children of `pid`.
public func processChildren(of pid: Int32) -> [Int32] {
    let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
    return text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
}

/// The state letter of /proc/PID/stat (R, S, T, Z...), nil when the process is gone.
public func processState(of pid: Int32) -> Character? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return nil }
    return text[text.index(after: close)...].first { $0 != " " }
}
