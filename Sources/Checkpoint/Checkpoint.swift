import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// Process checkpoints with CRIU: a process tree dumped into a directory (CRIU's images in
/// `images/`, its log beside them, `manifest.json` last) and restored from one, its standard
/// streams then being the caller's.
///
/// A native-runtime job (see Runtime) is dumped from its PID-namespace init: the dump runs in
/// the job's mount namespace (entered with nsenter when the caller is outside it), so CRIU
/// dumps the processes and their PID namespace but not the mounts; files are recorded by path.
/// A restore must then run in a mount namespace where the same paths hold the same files: the
/// runtime rebuilds the job's mounts (same images, same staging paths) and restores there.
public enum Checkpoint {
    public static let imagesDirectory = "images"

    /// Nil when checkpoints can be taken and restored here; else one line saying what is missing.
    public static func missing() -> String? { CRIUStatus.current.problem }

    /// Dumps the process tree rooted at `pid` into `directory` (made when missing; it must hold
    /// no checkpoint yet). With `leaveRunning` the tree goes on after the dump; otherwise CRIU
    /// kills it once dumped. A dump that fails leaves the tree running and removes what it wrote.
    @discardableResult
    /// `sharesJobMounts`: the caller runs inside the tree's own mounts (the native runtime's
    /// setup process), so a restore must rebuild them too.
    public static func dump(root pid: Int32, to directory: String, leaveRunning: Bool,
                            belongsTo: String = "", sharesJobMounts: Bool = false) throws(CheckpointError) -> CheckpointManifest {
        let criu = try ready()
        guard pid > 0, kill(pid, 0) == 0 || Glibc.errno == EPERM else { throw .noSuchProcess(pid) }
        let images = directory + "/" + imagesDirectory
        if access(directory + "/" + CheckpointManifest.fileName, F_OK) == 0 || access(images, F_OK) == 0 {
            throw .exists(directory)
        }
        let madeDirectory = mkdir(directory, 0o700) == 0
        if !madeDirectory && Glibc.errno != EEXIST { throw .cannot("make the directory", directory, .last) }
        guard mkdir(images, 0o700) == 0 else {
            let code = Errno.last
            if madeDirectory { rmdir(directory) }
            throw .cannot("make the directory", images, code)
        }
        var dumped = false
        defer {
            if !dumped {
                removeTree(images)
                if madeDirectory { rmdir(directory) }
            }
        }
        let imagesFD = open(images, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard imagesFD >= 0 else { throw .cannot("open", images, .last) }
        defer { close(imagesFD) }

        let pidNamespace = namespace("pid", of: pid) != namespace("pid", of: getpid()) && isNamespaceInit(pid)
        // A native-runtime job's init: its command is the job's (init's first child).
        let command = commandLine(of: pidNamespace ? children(of: pid).first ?? pid : pid)
        let otherMounts = namespace("mnt", of: pid) != namespace("mnt", of: getpid())
        // The tree has mounts of its own: dumped from outside them (nsenter), or from a process
        // sharing them (a native runtime's setup process, which says so).
        let inOwnMounts = otherMounts || sharesJobMounts
        var streams = (0...2).compactMap { stream(Int32($0), of: pid) }

        // CRIU reads and writes the images through descriptor 3, so the directory need not be
        // visible in the job's mount namespace.
        var argv = ["dump", "--tree", "\(pid)", "--images-dir", "/proc/self/fd/3", "--log-file", "dump.log", "-v3",
                    "--shell-job", "--file-locks"]
        if leaveRunning { argv.append("--leave-running") }
        if criu.unprivileged { argv.append("--unprivileged") }
        for s in streams where !s.external.isEmpty { argv += ["--external", s.external] }
        let program = otherMounts ? ["nsenter", "--mount=/proc/\(pid)/ns/mnt", "--", criu.path!] : [criu.path!]
        let started = MonotonicClock.milliseconds
        let status: Int32
        do {
            let null = try OwnedDescriptor(opening: "/dev/null", O_RDWR)
            status = try run(program + argv, descriptors: [null.rawValue, -2, -2, imagesFD])
        } catch {
            throw .cannot("run", program[0], error.errno)
        }
        let pause = MonotonicClock.milliseconds - started
        guard status == 0 else {
            var reason = firstError(inLog: images + "/dump.log") ?? "criu exited with status \(status)"
            if pidNamespace && reason.contains("session leader") {
                reason += " (a job started on a terminal keeps the terminal's session: start it with its standard input, output and error redirected)"
            } else if reason.contains("session leader") {
                reason += " (start the process in a session of its own, with setsid)"
            }
            let alive = kill(pid, 0) == 0
            throw unlessUnavailable(.dumpFailed(pid: pid, reason: reason, stillRunning: alive))
        }
        let paths = filePaths(root: pid, inLog: images + "/dump.log")
        // The processes CRIU stopped ("Seized task PID"), as the tree was at that instant.
        let seized = seizedTasks(inLog: images + "/dump.log")
        let pids = [pid] + (seized.isEmpty ? descendants(of: pid) : seized.filter { $0 != pid })
        streams = streams.compactMap { s in
            guard s.resource.isEmpty else { return s }
            return paths[s.fd].map { .init(fd: s.fd, resource: $0, external: "") }
        }
        let manifest = CheckpointManifest(criuVersion: criu.version ?? "", created: utcNow(), rootPID: pid, pids: pids, command: command,
                                          belongsTo: belongsTo, leftRunning: leaveRunning, pidNamespace: pidNamespace,
                                          mountNamespace: inOwnMounts, pauseMilliseconds: pause, streams: streams)
        do {
            let temporary = directory + "/." + CheckpointManifest.fileName + ".tmp"
            let fd = try OwnedDescriptor(opening: temporary, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
            try IO.writeAll(fd.rawValue, Array(manifest.json.utf8), path: temporary)
            fsync(fd.rawValue)
            fd.close()
            try retryingInterrupts("rename", path: temporary) { rename(temporary, directory + "/" + CheckpointManifest.fileName) }
        } catch {
            throw .cannot("write", directory + "/" + CheckpointManifest.fileName, error.errno)
        }
        dumped = true
        return manifest
    }

    /// The manifest of the checkpoint in `directory`.
    public static func manifest(in directory: String) throws(CheckpointError) -> CheckpointManifest {
        let path = directory + "/" + CheckpointManifest.fileName
        let bytes: [UInt8]
        do {
            let fd = try OwnedDescriptor(opening: path, O_RDONLY)
            bytes = try IO.readAll(fd.rawValue, path: path)
        } catch {
            if error.errno == .noSuchFileOrDirectory { throw .notACheckpoint(directory) }
            throw .cannot("read", path, error.errno)
        }
        guard let manifest = CheckpointManifest(json: String(decoding: bytes, as: UTF8.self)) else {
            throw .notACheckpoint(directory)
        }
        return manifest
    }

    /// Restores the tree dumped in `directory` as a child of this process, its standard input,
    /// output and error being `stdio` (this process's by default), and returns once it runs.
    /// The restore happens in this process's mount namespace: for a dump whose manifest says
    /// `mountNamespace`, that must hold the job's mounts again (the runtime's setup process).
    /// The tree gets the pids it had (inside its own PID namespace when it had one, so only a
    /// tree without one needs its old pids free).
    public static func restore(from directory: String, stdio: (Int32, Int32, Int32) = (0, 1, 2))
        throws(CheckpointError) -> RestoredTree {
        let criu = try ready()
        let manifest = try manifest(in: directory)
        let images = directory + "/" + imagesDirectory
        if !manifest.pidNamespace {
            // The tree takes its old pids back: wait a moment for the dumped processes (killed,
            // perhaps not yet reaped) to be gone.
            let deadline = MonotonicClock.milliseconds + 3000
            while let busy = manifest.pids.first(where: { kill($0, 0) == 0 || Glibc.errno == EPERM }) {
                if MonotonicClock.milliseconds >= deadline {
                    throw .restoreFailed(directory: directory, reason: "pid \(busy), which the tree had, is in use (the dumped processes must be gone)")
                }
                usleep(10_000)
            }
        }
        var work = Array("/tmp/overlay-restore-XXXXXX".utf8CString)
        guard mkdtemp(&work) != nil else { throw .cannot("make a directory in", "/tmp", .last) }
        let workDirectory = String(decoding: work.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { removeTree(workDirectory) }

        var argv = ["restore", "--images-dir", images, "--work-dir", workDirectory, "--log-file", "restore.log", "-v3",
                    "--shell-job", "--file-locks", "--restore-detached", "--restore-sibling",
                    "--pidfile", workDirectory + "/pid"]
        if criu.unprivileged { argv.append("--unprivileged") }
        var inherited = Set<String>()
        for s in manifest.streams where !inherited.contains(s.resource) {
            inherited.insert(s.resource)
            // The streams are criu's descriptors 3, 4 and 5 (criu takes over its own 0-2).
            argv += ["--inherit-fd", "fd[\(s.fd + 3)]:\(s.resource)"]
        }
        let status: Int32
        do {
            let null = try OwnedDescriptor(opening: "/dev/null", O_RDWR)
            status = try run([criu.path!] + argv, descriptors: [null.rawValue, -2, -2, stdio.0, stdio.1, stdio.2])
        } catch {
            throw .cannot("run", criu.path!, error.errno)
        }
        guard status == 0 else {
            let log = workDirectory + "/restore.log"
            let reason = firstError(inLog: log) ?? "criu exited with status \(status)"
            throw unlessUnavailable(.restoreFailed(directory: directory, reason: reason))
        }
        let text = (try? readSmall(workDirectory + "/pid")) ?? ""
        guard let pid = Int32(text.trimmingWhitespace), pid > 0 else {
            throw .restoreFailed(directory: directory, reason: "criu wrote no pid file")
        }
        return RestoredTree(pid: pid)
    }

    /// criu is there and this user may run it; whether `criu check` passes is asked only
    /// when criu fails (``unlessUnavailable``), to keep it off a dump's path.
    static func ready() throws(CheckpointError) -> CRIUStatus {
        let status = CRIUStatus.quick
        if let problem = status.problem { throw .unavailable(problem) }
        return status
    }

    /// `failure`, or, when `criu check` fails on this machine, that.
    static func unlessUnavailable(_ failure: CheckpointError) -> CheckpointError {
        if let problem = CRIUStatus.current.problem { return .unavailable(problem) }
        return failure
    }
}

/// A tree restored by ``Checkpoint/restore(from:stdio:)``: a child of the caller.
public struct RestoredTree: Sendable {
    public let pid: Int32

    /// Waits for the tree's root to end.
    public func wait() -> WaitStatus? { Children.wait(pid) }
}

/// What can go wrong, each as one line naming the process or directory.
public enum CheckpointError: Error, UserFacingError, Equatable {
    case unavailable(String)
    case noSuchProcess(Int32)
    case exists(String)
    case notACheckpoint(String)
    case cannot(String, String, Errno)
    case dumpFailed(pid: Int32, reason: String, stillRunning: Bool)
    case restoreFailed(directory: String, reason: String)

    public var description: String {
        switch self {
        case let .unavailable(problem): return "checkpoints are not available: \(problem)"
        case let .noSuchProcess(pid): return "no process \(pid) to checkpoint: give the pid of a running process"
        case let .exists(dir):
            return "\(Escaped.terminal(dir)) already holds a checkpoint: give a new or empty directory"
        case let .notACheckpoint(dir):
            return "\(Escaped.terminal(dir)) holds no checkpoint (no readable \(CheckpointManifest.fileName)): give a directory a dump wrote"
        case let .cannot(what, path, code): return "cannot \(what) \(Escaped.terminal(path)): \(code)"
        case let .dumpFailed(pid, reason, running):
            return "cannot checkpoint process \(pid): \(Escaped.terminal(reason))"
                + (running ? "; it is still running, untouched" : "; it is no longer running")
        case let .restoreFailed(dir, reason):
            return "cannot restore the checkpoint in \(Escaped.terminal(dir)): \(Escaped.terminal(reason))"
        }
    }
}

// MARK: Helpers

extension Checkpoint {
    /// How CRIU names the object behind descriptor `fd` of `pid`, and the `--external` it needs
    /// at dump time: pipes by inode, terminals by device, sockets by inode, files by mount id
    /// and inode.
    static func stream(_ fd: Int32, of pid: Int32) -> CheckpointManifest.Stream? {
        let link = "/proc/\(pid)/fd/\(fd)"
        guard let target = readLink(link) else { return nil }
        var info = stat()
        guard stat(link, &info) == 0 else { return nil }
        let kind = info.st_mode & S_IFMT
        if target.hasPrefix("pipe:[") { return .init(fd: fd, resource: target, external: "") }
        if target.hasPrefix("socket:[") {
            let inode = target.dropFirst("socket:[".count).dropLast()
            return .init(fd: fd, resource: target, external: "unix[\(inode)]")
        }
        if kind == S_IFCHR {
            let major = (info.st_rdev >> 8) & 0xFFF
            // Terminals: /dev/tty*, the console (4, 5) and pseudo-terminals (136-143).
            if major == 4 || major == 5 || (136...143).contains(major) {
                let id = "tty[\(String(info.st_rdev, radix: 16)):\(String(info.st_dev, radix: 16))]"
                return .init(fd: fd, resource: id, external: id)
            }
        }
        // Files (and devices such as /dev/null): by the path CRIU records, which may differ
        // from this process's view (another mount namespace); ``filePaths(root:inLog:)`` reads it
        // from the dump's log.
        guard target.hasPrefix("/") else { return nil }
        return .init(fd: fd, resource: "", external: "")
    }

    /// The pids of the processes CRIU stopped for a dump (its log says "Seized task PID, ...").
    static func seizedTasks(inLog path: String) -> [Int32] {
        guard let log = try? readBytes(path) else { return [] }
        return occurrences(of: "Seized task ", in: log, from: 0, to: log.count).compactMap { at in
            Int32(String(decoding: log[at...].prefix(while: { $0 >= 0x30 && $0 <= 0x39 }), as: UTF8.self))
        }
    }

    /// The paths CRIU recorded for descriptors 0-2 of `root` (its log at -v3 says "Dumping
    /// path for N fd via self M [PATH]" while dumping that process's files, after "Dumping
    /// opened files (pid: ROOT)"), without the leading slash, as `--inherit-fd` names files.
    static func filePaths(root: Int32, inLog path: String) -> [Int32: String] {
        guard let log = try? readBytes(path),
              let section = occurrences(of: "Dumping opened files (pid: \(root))\n", in: log, from: 0, to: log.count).first
        else { return [:] }
        let end = occurrences(of: "Dumping opened files (pid: ", in: log, from: section, to: log.count).first ?? log.count
        var paths: [Int32: String] = [:]
        for at in occurrences(of: "Dumping path for ", in: log, from: section, to: end) {
            let line = String(decoding: log[at...].prefix(while: { $0 != 0x0A }), as: UTF8.self)
            guard let space = line.firstIndex(of: " "), let fd = Int32(line[..<space]), (0...2).contains(fd),
                  let open = line.firstIndex(of: "["), line.hasSuffix("]") else { continue }
            let name = line[line.index(after: open)..<line.index(before: line.endIndex)]
            if name.hasPrefix("/") && paths[fd] == nil { paths[fd] = String(name.dropFirst()) }
        }
        return paths
    }

    /// Offsets just past each occurrence of `pattern` in `bytes[from..<to]` (memchr for its
    /// first byte, then memcmp: fast on a large log even in a debug build).
    static func occurrences(of pattern: String, in bytes: [UInt8], from: Int, to: Int) -> [Int] {
        let needle = Array(pattern.utf8)
        guard let first = needle.first else { return [] }
        var found: [Int] = []
        bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            var offset = from
            while offset + needle.count <= to, let hit = memchr(base + offset, Int32(first), to - offset) {
                let at = base.distance(to: UnsafeRawPointer(hit))
                if at + needle.count <= to, memcmp(base + at, needle, needle.count) == 0 {
                    found.append(at + needle.count)
                    offset = at + needle.count
                } else {
                    offset = at + 1
                }
            }
        }
        return found
    }

    static func readBytes(_ path: String) throws(SystemError) -> [UInt8] {
        let fd = try OwnedDescriptor(opening: path, O_RDONLY)
        return try IO.readAll(fd.rawValue, path: path)
    }

    static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4097)
        let count = readlink(path, &buffer, 4096)
        guard count >= 0 else { return nil }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func namespace(_ kind: String, of pid: Int32) -> String? { readLink("/proc/\(pid)/ns/\(kind)") }

    /// Whether `pid` is pid 1 of its PID namespace (the last NSpid entry of its status).
    static func isNamespaceInit(_ pid: Int32) -> Bool {
        guard let status = try? readSmall("/proc/\(pid)/status") else { return false }
        for line in status.split(separator: "\n") where line.hasPrefix("NSpid:") {
            return line.split(whereSeparator: { $0 == " " || $0 == "\t" }).last == "1"
        }
        return false
    }

    static func commandLine(of pid: Int32) -> [String] {
        guard let fd = try? OwnedDescriptor(opening: "/proc/\(pid)/cmdline", O_RDONLY),
              let bytes = try? IO.readAll(fd.rawValue) else { return [] }
        return bytes.split(separator: 0, omittingEmptySubsequences: false).dropLast().map { String(decoding: $0, as: UTF8.self) }
    }

    static func readSmall(_ path: String) throws(SystemError) -> String {
        let fd = try OwnedDescriptor(opening: path, O_RDONLY)
        return String(decoding: try IO.readAll(fd.rawValue, path: path), as: UTF8.self)
    }

    /// The first error CRIU logged ("Error (file:line): text"), without its location.
    static func firstError(inLog path: String) -> String? {
        guard let log = try? readSmall(path) else { return nil }
        for line in log.split(separator: "\n").map(String.init) {
            // CRIU logs its failure to raise its own descriptor limit as an error and goes on.
            guard let start = line.firstRange(of: "Error ("), !line.contains("RLIMIT_NOFILE") else { continue }
            let rest = line[start.upperBound...]
            if let close = rest.firstRange(of: "): ") { return String(rest[close.upperBound...]).trimmingWhitespace }
            return String(line[start.lowerBound...]).trimmingWhitespace
        }
        return nil
    }

    static func utcNow() -> String {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%SZ", &parts)
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Runs `argv` (found on PATH) with descriptor i set to `descriptors[i]` (-2: this process's
    /// own descriptor i), waits, and returns its status (128+N for signal N).
    static func run(_ argv: [String], descriptors: [Int32]) throws(SystemError) -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // First out of the way (above the target range), then into place, so that no
        // descriptor is overwritten before it is copied.
        var moved: [Int32] = []
        for (target, fd) in descriptors.enumerated() {
            let source = fd == -2 ? Int32(target) : fd
            let copy = fcntl(source, F_DUPFD_CLOEXEC, 10)
            guard copy >= 0 else { throw SystemError("dup") }
            moved.append(copy)
        }
        defer { for fd in moved { close(fd) } }
        for (target, copy) in moved.enumerated() { posix_spawn_file_actions_adddup2(&actions, copy, Int32(target)) }
        let path = argv[0].contains("/") ? argv[0] : (findExecutable(argv[0], alsoIn: ["/usr/sbin", "/sbin"]) ?? argv[0])
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        var child: pid_t = 0
        let code = posix_spawn(&child, path, &actions, nil, &cArgs, environ)
        guard code == 0 else { throw SystemError("run", path: path, errno: Errno(rawValue: code)) }
        return Children.wait(child)?.shellStatus ?? 125
    }

    /// rm -r of a directory this module made (no symlinks followed).
    public static func removeTree(_ path: String) {
        guard let dir = opendir(path) else { unlink(path); return }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            let child = path + "/" + name
            var info = stat()
            if lstat(child, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR { removeTree(child) } else { unlink(child) }
        }
        closedir(dir)
        rmdir(path)
    }
}

extension Checkpoint {
    /// The root to dump for the native-runtime job run by the run-overlay (or mount-overlay)
    /// process `pid`: the first process of the job's PID namespace, the child of its setup
    /// process. Nil when `pid` runs no such job.
    public static func nativeJobRoot(runOverlay pid: Int32) -> Int32? {
        for setup in children(of: pid) {
            for candidate in children(of: setup) where isNamespaceInit(candidate)
                && namespace("pid", of: candidate) != namespace("pid", of: pid) {
                return candidate
            }
        }
        return nil
    }

    /// Children of every thread of `pid` (a child belongs to the thread that forked it).
    static func children(of pid: Int32) -> [Int32] {
        guard let dir = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(dir) }
        var found: [Int32] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            guard Int32(name) != nil, let text = try? readSmall("/proc/\(pid)/task/\(name)/children") else { continue }
            found += text.split(separator: " ").compactMap { Int32($0.trimmingWhitespace) }
        }
        return found
    }

    static func descendants(of pid: Int32) -> [Int32] {
        var found: [Int32] = []
        var queue = [pid]
        while let next = queue.popLast(), found.count < 100_000 {
            let children = children(of: next)
            found += children
            queue += children
        }
        return found
    }
}
