import LinuxSupport
import CLinux
import Overlay

#if canImport(Glibc)
import Glibc
#endif

/// The setup process of the native runtime: a fork of the tool (single-threaded, so the copy
/// may go on running Swift and may still enter a new user namespace), made with the plan in
/// hand. It dies with the tool (parent-death signal), makes the mount namespace (and, for an
/// ordinary user, the user namespace), mounts the stack, runs the job, passes signals on, tears
/// the mounts down and exits with the job's status; in FUSE mode a watchdog ends the drivers if
/// it is killed before it could. Forking instead of starting a fresh copy of the program saves
/// loading it and its libraries a second time on every run.
public enum NativeSetup {
    // MARK: The tool's side

    /// Starts the setup process for `plan` and waits for it, passing SIGINT, SIGTERM, SIGHUP,
    /// SIGQUIT, SIGUSR1 and SIGUSR2 on. Returns the job's status; throws the setup's error.
    static func start(_ plan: NativePlan) throws -> Int32 {
        var plan = plan
        var report: [Int32] = [-1, -1]
        guard pipe(&report) == 0 else { throw RuntimeError.failed("cannot start the native runtime: \(String(cString: strerror(errno)))") }
        _ = fcntl(report[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(report[1], F_SETFD, FD_CLOEXEC)
        defer { close(report[0]) }
        plan.reportDescriptor = report[1]

        Forwarding.install()
        defer { Forwarding.restore() }
        // Nothing buffered may be written twice, once by each process.
        fflush(nil)
        let parent = getpid()
        let child = clinux_fork()
        if child == 0 {
            // The setup process: it never returns from here. The lock descriptors stay open in
            // it (close-on-exec), so the locks last as long as the mounts.
            close(report[0])
            var none = sigset_t()
            sigemptyset(&none)
            sigprocmask(SIG_SETMASK, &none, nil)
            var setup = Setup(plan: plan, parent: parent)
            _exit(setup.main())
        }
        close(report[1])
        guard child > 0 else { throw RuntimeError.failed("cannot start the native runtime: \(String(cString: strerror(-child)))") }
        Forwarding.target(child)
        let status = waitStatus(child)
        Forwarding.target(0)
        let message = readAll(report[0]).trimmingWhitespace
        if !message.isEmpty { throw RuntimeError.failed(message) }
        return status
    }

    /// Waits for `pid`; its exit status, or 128+N when signal N killed it.
    static func waitStatus(_ pid: pid_t) -> Int32 {
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 {
            if errno != EINTR { return 125 }
        }
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
    }

    static func readAll(_ fd: Int32) -> String {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n > 0 { data += buffer[0..<n]; continue }
            if n < 0 && errno == EINTR { continue }
            break
        }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Passes the signals a user or a batch system sends on to one process (the setup process in
/// the tool, the job in the setup process). A signal that comes before there is a target is
/// kept and sent as soon as there is one.
enum Forwarding {
    static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]
    nonisolated(unsafe) static var pid: pid_t = 0
    nonisolated(unsafe) static var pending: Int32 = 0
    nonisolated(unsafe) static var saved: [Int32: sigaction] = [:]

    static func install() {
        for number in signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { number in
                if Forwarding.pid > 0 { kill(Forwarding.pid, number) } else { Forwarding.pending = number }
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            var old = sigaction()
            sigaction(number, &action, &old)
            saved[number] = old
        }
    }

    static func target(_ pid: pid_t) {
        Forwarding.pid = pid
        if pid > 0, pending != 0 { kill(pid, pending); pending = 0 }
    }

    static func restore() {
        for (number, old) in saved {
            var old = old
            sigaction(number, &old, nil)
        }
        saved = [:]
    }
}

/// The work of the setup process.
struct Setup {
    let plan: NativePlan
    /// The tool's pid: when the setup process's parent is no longer this, the tool is gone.
    let parent: pid_t
    /// FUSE daemons started, in start order.
    var daemons: [(pid: pid_t, name: String)] = []
    /// The watchdog (FUSE mode): its pid, and the pipe that tells it the drivers' pids.
    var watchdog: (pid: pid_t, pipe: Int32)?

    init(plan: NativePlan, parent: pid_t) {
        self.plan = plan
        self.parent = parent
    }

    /// Failures of the setup itself go to the tool through the report pipe.
    struct Failure: Error { let text: String }

    mutating func main() -> Int32 {
        // Die with the tool; if it is already gone, stop here.
        _ = clinux_set_parent_death_signal(SIGKILL)
        if getppid() != parent { return 125 }
        Forwarding.install()
        var status: Int32 = 125
        do {
            try enterNamespaces()
            try mountStack()
            let job = try startJob()
            Forwarding.target(job)
            status = NativeSetup.waitStatus(job)
            Forwarding.target(0)
        } catch let notStarted as JobNotStarted {
            status = notStarted.status
        } catch let failure as Failure {
            report(failure.text)
        } catch {
            report("\(error)")
        }
        tearDown()
        if let watchdog {
            // Done: the drivers are gone. It exits before this process does, so that it holds
            // no lock when the tool returns.
            var done: Int32 = 0
            _ = write(watchdog.pipe, &done, 4)
            close(watchdog.pipe)
            _ = NativeSetup.waitStatus(watchdog.pid)
        }
        return status
    }

    func report(_ text: String) {
        let line = text + "\n"
        _ = line.withCString { write(plan.reportDescriptor, $0, strlen($0)) }
    }

    static func errorText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

    // MARK: Namespaces

    func enterNamespaces() throws {
        switch plan.mode {
        case .kernel:
            guard clinux_unshare(clinux_flag_newns()) == 0 else {
                throw Failure(text: "cannot make a private mount namespace: \(Self.errorText())")
            }
        case .fuse:
            guard clinux_unshare(clinux_flag_newuser() | clinux_flag_newns()) == 0 else {
                let code = errno
                throw Failure(text: "cannot make a user namespace (\(Self.errorText(code))): running without root needs user namespaces; an administrator can enable them (sysctl user.max_user_namespaces), or run as root")
            }
            // The user stays themselves inside, so every file written keeps their uid on disk.
            try writeFile("/proc/self/setgroups", "deny")
            try writeFile("/proc/self/uid_map", "\(plan.identity.uid) \(plan.identity.uid) 1\n")
            try writeFile("/proc/self/gid_map", "\(plan.identity.gid) \(plan.identity.gid) 1\n")
        }
        guard mount(nil, "/", nil, UInt(MS_REC | MS_PRIVATE), nil) == 0 else {
            throw Failure(text: "cannot make the mounts private: \(Self.errorText())")
        }
        guard mount("tmpfs", plan.staging, "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=0755") == 0 else {
            throw Failure(text: "cannot mount a tmpfs on \(plan.staging): \(Self.errorText())")
        }
        if let hostCopy = plan.hostCopy {
            // Before any FUSE mount: the copy holds none of them, and as / is private, none made
            // later under the staging tmpfs shows in it. Recursive, as a user namespace may not
            // bind / without its (locked) submounts. Then the staging tmpfs comes off the copy,
            // which shows the host's own directory there.
            try makeDirectories(hostCopy)
            guard mount("/", hostCopy, nil, UInt(MS_BIND | MS_REC), nil) == 0 else {
                throw Failure(text: "cannot bind / to \(hostCopy) for the overlay: \(Self.errorText())")
            }
            guard umount2(hostCopy + plan.staging, Int32(MNT_DETACH)) == 0 else {
                throw Failure(text: "cannot unmount \(hostCopy + plan.staging): \(Self.errorText())")
            }
        }
    }

    func writeFile(_ path: String, _ text: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(text: "cannot open \(path): \(Self.errorText())") }
        defer { close(fd) }
        let written = text.withCString { write(fd, $0, strlen($0)) }
        guard written == text.utf8.count else { throw Failure(text: "cannot write \(path): \(Self.errorText())") }
    }

    // MARK: Mounts

    mutating func mountStack() throws {
        for dir in [plan.session, plan.session + "/proc", plan.root] + plan.images.map(\.mountPoint) + [plan.squashfs?.mountPoint].compactMap({ $0 }) {
            try makeDirectories(dir)
        }
        // The image and container drivers do not depend on each other: all start at once.
        var drivers: [Driver] = []
        for image in plan.images {
            switch plan.mode {
            case .kernel:
                try mountLoop(image.path, at: image.mountPoint, type: "ext3", readOnly: image.readOnly,
                              flags: UInt(MS_NOSUID | MS_NODEV), data: "errors=remount-ro")
            case .fuse:
                drivers.append(Driver(argv: ["fuse2fs", image.path, image.mountPoint, "-f", "-o", image.readOnly ? "fakeroot,ro" : "fakeroot"],
                                      mountPoint: image.mountPoint, what: "overlay '\(image.path)'"))
            }
        }
        if let squashfs = plan.squashfs {
            switch plan.mode {
            case .kernel:
                try mountLoop(squashfs.path, at: squashfs.mountPoint, type: "squashfs", readOnly: true,
                              offset: squashfs.offset, size: squashfs.size, flags: UInt(MS_NOSUID | MS_NODEV), data: nil)
            case .fuse:
                var argv = ["squashfuse", "-f"]
                if squashfs.offset > 0 { argv += ["-o", "offset=\(squashfs.offset)"] }
                drivers.append(Driver(argv: argv + [squashfs.path, squashfs.mountPoint], mountPoint: squashfs.mountPoint,
                                      what: "container '\(squashfs.path)'"))
            }
        }
        if !drivers.isEmpty { try startDaemons(drivers) }
        // Mount points for the binds, in the topmost (empty) lower layer.
        for bind in plan.binds {
            let target = plan.session + bind.destination
            if bind.isDirectory {
                try makeDirectories(target)
            } else {
                try makeDirectories(String(target[..<target.lastIndex(of: "/")!]))
                let fd = open(target, O_CREAT | O_WRONLY | O_CLOEXEC, 0o644)
                if fd >= 0 { close(fd) }
            }
        }
        let readOnly = plan.upperDir == nil
        switch plan.mode {
        case .kernel:
            guard mount("overlay", plan.root, "overlay", readOnly ? UInt(MS_RDONLY) : 0, plan.overlayOptions) == 0 else {
                throw Failure(text: "cannot mount the overlay (\(plan.overlayOptions)): \(Self.errorText())")
            }
        case .fuse:
            try startDaemons([Driver(argv: ["fuse-overlayfs", "-f", "-o", plan.fuseOverlayOptions, plan.root],
                                     mountPoint: plan.root, what: "the overlay")])
        }
        for bind in plan.binds {
            let target = plan.root + bind.destination
            guard mount(bind.source, target, nil, UInt(MS_BIND | MS_REC), nil) == 0 else {
                throw Failure(text: "cannot bind \(bind.source) to \(bind.destination): \(Self.errorText())")
            }
            if bind.readOnly {
                var info = statvfs()
                statvfs(target, &info)
                // Keep the flags the bind has (a user namespace may not clear them).
                // statvfs ST_* bits (glibc's enum) and the mount flags they stand for.
                let kept: [(UInt, Int)] = [(2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, MS_NOATIME),
                                           (2048, MS_NODIRATIME), (4096, MS_RELATIME)]
                var flags = UInt(MS_BIND | MS_REMOUNT | MS_RDONLY)
                for (bit, flag) in kept where UInt(info.f_flag) & bit != 0 { flags |= UInt(flag) }
                guard mount(nil, target, nil, flags, nil) == 0 else {
                    throw Failure(text: "cannot make the bind of \(bind.source) read-only: \(Self.errorText())")
                }
            }
        }
    }

    func makeDirectories(_ path: String) throws {
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw Failure(text: "cannot make the mount point \(current): \(Self.errorText())")
            }
        }
    }

    func mountLoop(_ path: String, at target: String, type: String, readOnly: Bool, offset: UInt64 = 0, size: UInt64 = 0,
                   flags: UInt, data: String?) throws {
        var number: Int32 = -1
        let device = clinux_loop_attach(path, readOnly ? 1 : 0, offset, size, &number)
        guard device >= 0 else { throw Failure(text: "cannot attach \(path) to a loop device: \(Self.errorText(-device))") }
        // The device stays attached while it is open or mounted; autoclear frees it after.
        defer { close(device) }
        let result = mount("/dev/loop\(number)", target, type, flags | (readOnly ? UInt(MS_RDONLY) : 0), data)
        guard result == 0 else { throw Failure(text: "cannot mount \(path) (\(type)): \(Self.errorText())") }
    }

    /// A FUSE driver to start, and the mount it makes.
    struct Driver {
        var argv: [String]
        var mountPoint: String
        var what: String
    }

    /// Starts FUSE drivers in the foreground (children of this process) with CAP_SYS_ADMIN in
    /// the user namespace, all at once, and waits until each one's mount is there. Woken by the
    /// mount table changing or a driver exiting, never by a timer; gives up after 10 seconds.
    mutating func startDaemons(_ drivers: [Driver]) throws {
        // Opened before the drivers start, so no mount is missed: poll says POLLPRI when the
        // namespace's mount table changes.
        let table = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC)
        defer { if table >= 0 { close(table) } }
        var waiting: [(driver: Driver, pid: pid_t, exited: Int32, device: UInt)] = []
        defer { for entry in waiting where entry.exited >= 0 { close(entry.exited) } }
        if watchdog == nil { try startWatchdog() }
        for driver in drivers {
            var before = stat()
            stat(driver.mountPoint, &before)
            // A process group of its own: Ctrl-C on the terminal goes to the job (and the tool,
            // which passes it on), never straight to a driver the job is still reading through.
            let pid = try spawn(driver.argv, root: nil, directory: nil, changeIDs: false, ambientAdmin: true,
                                deathSignal: SIGTERM, nullInput: true, newGroup: true, environment: nil)
            daemons.append((pid, driver.argv[0]))
            var word = Int32(pid)
            if let watchdog { _ = write(watchdog.pipe, &word, 4) }
            waiting.append((driver, pid, clinux_pidfd_open(pid), UInt(before.st_dev)))
        }
        let deadline = monotonicMilliseconds() + 10_000
        while true {
            waiting.removeAll { entry in
                var now = stat()
                guard stat(entry.driver.mountPoint, &now) == 0, UInt(now.st_dev) != entry.device else { return false }
                if entry.exited >= 0 { close(entry.exited) }
                return true
            }
            if waiting.isEmpty { return }
            for entry in waiting {
                var raw: Int32 = 0
                if waitpid(entry.pid, &raw, WNOHANG) == entry.pid {
                    daemons.removeAll { $0.pid == entry.pid }
                    throw Failure(text: "\(entry.driver.argv[0]) could not mount \(entry.driver.what) (it exited with status \((raw >> 8) & 0xff); its message is above)")
                }
            }
            let left = deadline - monotonicMilliseconds()
            guard left > 0 else {
                throw Failure(text: "\(waiting[0].driver.argv[0]) did not mount \(waiting[0].driver.what) within 10 seconds")
            }
            var fds = [pollfd(fd: table, events: Int16(POLLPRI), revents: 0)]
            fds += waiting.map { pollfd(fd: $0.exited, events: Int16(POLLIN), revents: 0) }
            // Without pidfds (Linux before 5.3) an exit is noticed within 5 ms.
            let pidfds = waiting.allSatisfy { $0.exited >= 0 }
            _ = poll(&fds, nfds_t(fds.count), Int32(pidfds && table >= 0 ? min(left, 1000) : min(left, 5)))
        }
    }

    /// Starts the watchdog: a fork of this process that ends the FUSE drivers when this process
    /// is killed (it dies with the tool) before it could tear them down. The drivers then get
    /// SIGTERM (their parent-death signal), which a driver stopped, or waiting on a FUSE
    /// request that will never be answered, does not act on: the watchdog gives them 5 seconds
    /// to exit, then sends SIGKILL, and waits up to 5 more. Told each driver's pid as it
    /// starts; told 0 when the teardown is done, and exits. It keeps the image locks (inherited
    /// descriptors) for as long as it waits, so no other job takes an image still mounted.
    mutating func startWatchdog() throws {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw Failure(text: "cannot start the watchdog: \(Self.errorText())") }
        _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
        let pid = clinux_fork()
        if pid == 0 {
            close(ends[1])
            Self.watch(ends[0], report: plan.reportDescriptor)
        }
        close(ends[0])
        guard pid > 0 else {
            close(ends[1])
            throw Failure(text: "cannot start the watchdog: \(Self.errorText(-pid))")
        }
        watchdog = (pid, ends[1])
        // A watchdog killed by someone must not kill this process with SIGPIPE (the job and the
        // drivers start with the default again).
        signal(SIGPIPE, SIG_IGN)
    }

    /// The watchdog's work (see ``startWatchdog()``).
    static func watch(_ input: Int32, report: Int32) -> Never {
        // Signals to the process group (Ctrl-C, a batch system's SIGTERM) are the job's.
        for number in Forwarding.signals { signal(number, SIG_IGN) }
        // Only the tool reads the report pipe, until the setup process has closed it.
        close(report)
        let null = open("/dev/null", O_RDWR)
        if null >= 0 { dup2(null, 0); dup2(null, 1); if null > 2 { close(null) } }
        var drivers: [(pid: pid_t, exited: Int32)] = []
        var word: Int32 = 0
        while true {
            let n = read(input, &word, 4)
            if n < 0 && errno == EINTR { continue }
            guard n == 4 else { break }
            if word == 0 { _exit(0) }
            drivers.append((word, clinux_pidfd_open(word)))
        }
        // The setup process is gone without a teardown.
        func gone(_ entry: (pid: pid_t, exited: Int32)) -> Bool {
            if entry.exited >= 0 {
                var fd = pollfd(fd: entry.exited, events: Int16(POLLIN), revents: 0)
                return poll(&fd, 1, 0) == 1
            }
            return kill(entry.pid, 0) != 0 && errno == ESRCH
        }
        func wait(until deadline: Int) {
            while true {
                drivers.removeAll(where: gone)
                let left = deadline - monotonicMilliseconds()
                if drivers.isEmpty || left <= 0 { return }
                var fds = drivers.map { pollfd(fd: $0.exited, events: Int16(POLLIN), revents: 0) }
                let pidfds = drivers.allSatisfy { $0.exited >= 0 }
                _ = poll(&fds, nfds_t(fds.count), Int32(pidfds ? min(left, 1000) : min(left, 20)))
            }
        }
        let start = monotonicMilliseconds()
        wait(until: start + 5_000)
        for entry in drivers {
            // By pid only without pidfds: a pidfd never reaches a later process with that pid.
            if entry.exited < 0 { kill(entry.pid, SIGKILL) } else { _ = clinux_pidfd_send_signal(entry.exited, SIGKILL) }
        }
        wait(until: start + 10_000)
        _exit(0)
    }

    // MARK: The job

    func startJob() throws -> pid_t {
        var command = plan.command
        if plan.interactive {
            guard let shell = plan.command.first(where: { isExecutableFile(plan.root + $0) }) else {
                throw Failure(text: "no shell in the container: none of \(plan.command.joined(separator: ", ")) is there")
            }
            command = [shell]
        }
        var environment = currentEnvironment()
        for (key, value) in plan.environment { environment[key] = value }
        // The job gets a PID namespace of its own, so whatever it leaves running ends with it.
        guard clinux_unshare(clinux_flag_newpid()) == 0 else {
            throw Failure(text: "cannot make a PID namespace for the job: \(Self.errorText())")
        }
        return try spawn(command, root: plan.root, directory: plan.workingDirectory, changeIDs: plan.identity.change,
                         ambientAdmin: false, deathSignal: SIGKILL, nullInput: false, newGroup: false,
                         environment: environment, isJob: true)
    }

    /// fork + exec through the shim (nothing between them allocates). The strings are leaked on
    /// purpose: this process execs or exits soon.
    func spawn(_ argv: [String], root: String?, directory: String?, changeIDs: Bool, ambientAdmin: Bool,
               deathSignal: Int32, nullInput: Bool, newGroup: Bool, environment: [String: String]?,
               isJob: Bool = false) throws -> pid_t {
        var errors: [Int32] = [-1, -1]
        guard pipe(&errors) == 0 else { throw Failure(text: "cannot start \(argv[0]): \(Self.errorText())") }
        _ = fcntl(errors[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(errors[1], F_SETFD, FD_CLOEXEC)
        let cArgs = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: argv.count + 1)
        for (i, word) in argv.enumerated() { cArgs[i] = strdup(word) }
        cArgs[argv.count] = nil
        let env = environment ?? currentEnvironment()
        let cEnv = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: env.count + 1)
        for (i, entry) in env.enumerated() { cEnv[i] = strdup("\(entry.key)=\(entry.value)") }
        cEnv[env.count] = nil
        let groups = plan.identity.groups.map { gid_t($0) }
        let cRoot = root.map { strdup($0) } ?? nil
        let cDirectory = directory.map { strdup($0) } ?? nil
        let cProc = isJob ? strdup(plan.root + "/proc") : nil
        let pid = groups.withUnsafeBufferPointer { groupPointer -> pid_t in
            var child = clinux_child()
            child.root = UnsafePointer(cRoot)
            child.cwd = UnsafePointer(cDirectory)
            child.change_ids = changeIDs ? 1 : 0
            child.uid = plan.identity.uid
            child.gid = plan.identity.gid
            child.ngroups = Int32(groups.count)
            child.groups = groupPointer.baseAddress
            child.ambient_sys_admin = ambientAdmin ? 1 : 0
            child.death_signal = deathSignal
            child.null_stdio = nullInput ? 1 : 0
            child.new_process_group = newGroup ? 1 : 0
            child.file = UnsafePointer(cArgs[0])
            child.argv = UnsafePointer(cArgs)
            child.envp = cEnv
            child.error_fd = errors[1]
            child.init_process = isJob ? 1 : 0
            child.proc_target = UnsafePointer(cProc)
            return clinux_spawn(&child)
        }
        close(errors[1])
        defer { close(errors[0]) }
        guard pid > 0 else { throw Failure(text: "cannot start \(argv[0]): \(Self.errorText(-pid))") }
        var reportBytes = [Int32](repeating: 0, count: 2)
        let n = reportBytes.withUnsafeMutableBytes { read(errors[0], $0.baseAddress, 8) }
        guard n == 8 else { return pid }
        let (step, code) = (reportBytes[0], reportBytes[1])
        _ = NativeSetup.waitStatus(pid)
        let what: String
        switch step {
        case 1: what = "cannot enter the overlay root \(root ?? "")"
        case 2: what = "cannot change to \(directory ?? "")"
        case 3: what = "cannot switch to uid \(plan.identity.uid) gid \(plan.identity.gid)"
        case 4: what = "cannot give \(argv[0]) the capability to mount"
        default: what = isJob ? "cannot run '\(argv[0])' in the container" : "cannot start \(argv[0])"
        }
        if step == 5 && isJob {
            // As a shell: 127 for a command not found, 126 for one that cannot run.
            writeError("error: \(what): \(Self.errorText(code))")
            throw JobNotStarted(status: code == ENOENT ? 127 : 126)
        }
        throw Failure(text: "\(what): \(Self.errorText(code))")
    }

    struct JobNotStarted: Error { let status: Int32 }

    // MARK: Teardown

    /// Detaches everything (the whole tree under the staging tmpfs), then lets the FUSE drivers
    /// see their mounts go and exit; they close their images cleanly. Waits on the drivers'
    /// exits themselves; after 5 seconds they get SIGTERM (top first: the overlay driver keeps
    /// the image drivers busy until it exits), after 15 SIGKILL.
    mutating func tearDown() {
        _ = umount2(plan.staging, Int32(MNT_DETACH))
        guard !daemons.isEmpty else { return }
        var remaining = daemons.map { (pid: $0.pid, exited: clinux_pidfd_open($0.pid)) }
        defer { for entry in remaining where entry.exited >= 0 { close(entry.exited) } }
        func reap(until deadline: Int) {
            while true {
                remaining.removeAll { entry in
                    var raw: Int32 = 0
                    guard waitpid(entry.pid, &raw, WNOHANG) == entry.pid else { return false }
                    if entry.exited >= 0 { close(entry.exited) }
                    return true
                }
                let left = deadline - monotonicMilliseconds()
                if remaining.isEmpty || left <= 0 { return }
                var fds = remaining.map { pollfd(fd: $0.exited, events: Int16(POLLIN), revents: 0) }
                let pidfds = remaining.allSatisfy { $0.exited >= 0 }
                _ = poll(&fds, nfds_t(fds.count), Int32(pidfds ? min(left, 1000) : min(left, 5)))
            }
        }
        let start = monotonicMilliseconds()
        reap(until: start + 5_000)
        if !remaining.isEmpty {
            for entry in remaining.reversed() { kill(entry.pid, SIGTERM) }
            reap(until: start + 15_000)
        }
        for entry in remaining {
            kill(entry.pid, SIGKILL)
            _ = NativeSetup.waitStatus(entry.pid)
        }
    }
}

/// Milliseconds on the monotonic clock.
func monotonicMilliseconds() -> Int {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec * 1000 + now.tv_nsec / 1_000_000
}

/// Writes one line to standard error.
func writeError(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
}

/// The string in a NUL-terminated buffer.
func cString(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
