import LinuxSupport
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
        let report: Pipe
        do { report = try Pipe() } catch { throw RuntimeError.failed("cannot start the native runtime: \(error.errno)") }
        let readEnd = report.readEnd
        let writeEnd = report.writeEnd
        plan.reportDescriptor = writeEnd.rawValue

        Forwarding.install()
        defer { Forwarding.restore() }
        // Nothing buffered may be written twice, once by each process.
        fflush(nil)
        let parent = getpid()
        let child: Int32
        do { child = try Children.fork() } catch { throw RuntimeError.failed("cannot start the native runtime: \(error.errno)") }
        if child == 0 {
            // The setup process: it never returns from here. The lock descriptors stay open in
            // it (close-on-exec), so the locks last as long as the mounts; so does the report
            // pipe's write end, which the setup writes its error to.
            readEnd.close()
            var none = sigset_t()
            sigemptyset(&none)
            sigprocmask(SIG_SETMASK, &none, nil)
            var setup = Setup(plan: plan, parent: parent)
            _exit(setup.main())
        }
        writeEnd.close()
        Forwarding.target(child)
        let status = Children.wait(child)?.shellStatus ?? 125
        Forwarding.target(0)
        let message = String(decoding: (try? IO.readAll(readEnd.rawValue)) ?? [], as: UTF8.self).trimmingWhitespace
        if !message.isEmpty { throw RuntimeError.failed(message) }
        return status
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
struct Setup: ~Copyable {
    let plan: NativePlan
    /// The tool's pid: when the setup process's parent is no longer this, the tool is gone.
    let parent: Int32
    /// FUSE daemons started, in start order.
    var daemons: [(pid: Int32, name: String)] = []
    /// The watchdog (FUSE mode), once started.
    var watchdog: Watchdog?

    init(plan: NativePlan, parent: Int32) {
        self.plan = plan
        self.parent = parent
    }

    /// Failures of the setup itself go to the tool through the report pipe.
    struct Failure: Error { let text: String }

    mutating func main() -> Int32 {
        // Die with the tool; if it is already gone, stop here.
        Children.setParentDeathSignal(SIGKILL)
        if getppid() != parent { return 125 }
        Forwarding.install()
        var status: Int32 = 125
        do {
            try enterNamespaces()
            try mountStack()
            let job = try startJob()
            Forwarding.target(job)
            status = Children.wait(job)?.shellStatus ?? 125
            Forwarding.target(0)
        } catch let notStarted as JobNotStarted {
            status = notStarted.status
        } catch let failure as Failure {
            report(failure.text)
        } catch {
            report("\(error)")
        }
        tearDown()
        if let watchdog = watchdog.take() {
            // Done: the drivers are gone. It exits before this process does, so that it holds
            // no lock when the tool returns.
            watchdog.finish()
        }
        return status
    }

    func report(_ text: String) {
        IO.writeLine(text, to: plan.reportDescriptor)
    }
}

/// The setup process's first stage: the namespaces, the staging tmpfs and (FUSE mode, when
/// the container is the host root) the copy of `/` that fuse-overlayfs reads.
extension Setup {
    func enterNamespaces() throws {
        switch plan.mode {
        case .kernel:
            do { try Mounts.unshare(.mount) } catch {
                throw Failure(text: "cannot make a private mount namespace: \(error.errno)")
            }
        case .fuse:
            do { try Mounts.unshare([.user, .mount]) } catch {
                throw Failure(text: "cannot make a user namespace (\(error.errno)): running without root needs user namespaces; an administrator can enable them (sysctl user.max_user_namespaces), or run as root")
            }
            // The user stays themselves inside, so every file written keeps their uid on disk.
            try writeFile("/proc/self/setgroups", "deny")
            try writeFile("/proc/self/uid_map", "\(plan.identity.uid) \(plan.identity.uid) 1\n")
            try writeFile("/proc/self/gid_map", "\(plan.identity.gid) \(plan.identity.gid) 1\n")
        }
        do { try Mounts.mount(nil, on: "/", flags: UInt(MS_REC | MS_PRIVATE)) } catch {
            throw Failure(text: "cannot make the mounts private: \(error.errno)")
        }
        do { try Mounts.mount("tmpfs", on: plan.staging, type: "tmpfs", flags: UInt(MS_NOSUID | MS_NODEV), options: "mode=0755") } catch {
            throw Failure(text: "cannot mount a tmpfs on \(plan.staging): \(error.errno)")
        }
        if let hostCopy = plan.hostCopy {
            // Before any FUSE mount: the copy holds none of them, and as / is private, none made
            // later under the staging tmpfs shows in it. Recursive, as a user namespace may not
            // bind / without its (locked) submounts. Then the staging tmpfs comes off the copy,
            // which shows the host's own directory there.
            try makeDirectories(hostCopy)
            do { try Mounts.mount("/", on: hostCopy, flags: UInt(MS_BIND | MS_REC)) } catch {
                throw Failure(text: "cannot bind / to \(hostCopy) for the overlay: \(error.errno)")
            }
            do { try Mounts.unmount(hostCopy + plan.staging, flags: Int32(MNT_DETACH)) } catch {
                throw Failure(text: "cannot unmount \(hostCopy + plan.staging): \(error.errno)")
            }
        }
    }

    func writeFile(_ path: String, _ text: String) throws {
        let fd: OwnedDescriptor
        do { fd = try OwnedDescriptor(opening: path, O_WRONLY) } catch {
            throw Failure(text: "cannot open \(path): \(error.errno)")
        }
        do { try IO.writeAll(fd.rawValue, Array(text.utf8), path: path) } catch {
            throw Failure(text: "cannot write \(path): \(error.errno)")
        }
    }

    /// mkdir -p (mode 0755) of a mount point.
    func makeDirectories(_ path: String) throws {
        do { try Mounts.makeDirectories(path) } catch {
            throw Failure(text: "cannot make the mount point \(error.path): \(error.errno)")
        }
    }
}

/// The setup process's second stage: the images and the container (kernel loop mounts, or
/// FUSE drivers, see Setup+Drivers.swift), the overlay on them and the binds on it.
extension Setup {
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
                _ = try? OwnedDescriptor(opening: target, O_CREAT | O_WRONLY)
            }
        }
        let readOnly = plan.upperDir == nil
        switch plan.mode {
        case .kernel:
            do {
                try Mounts.mount("overlay", on: plan.root, type: "overlay", flags: readOnly ? UInt(MS_RDONLY) : 0,
                                 options: plan.overlayOptions)
            } catch {
                throw Failure(text: "cannot mount the overlay (\(plan.overlayOptions)): \(error.errno)")
            }
        case .fuse:
            try startDaemons([Driver(argv: ["fuse-overlayfs", "-f", "-o", plan.fuseOverlayOptions, plan.root],
                                     mountPoint: plan.root, what: "the overlay")])
        }
        for bind in plan.binds {
            try mountBind(bind)
        }
    }

    func mountBind(_ bind: NativePlan.BindMount) throws {
        let target = plan.root + bind.destination
        do { try Mounts.mount(bind.source, on: target, flags: UInt(MS_BIND | MS_REC)) } catch {
            throw Failure(text: "cannot bind \(bind.source) to \(bind.destination): \(error.errno)")
        }
        guard bind.readOnly else { return }
        var info = statvfs()
        statvfs(target, &info)
        // Keep the flags the bind has (a user namespace may not clear them).
        // statvfs ST_* bits (glibc's enum) and the mount flags they stand for.
        let kept: [(UInt, Int)] = [(2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, MS_NOATIME),
                                   (2048, MS_NODIRATIME), (4096, MS_RELATIME)]
        var flags = UInt(MS_BIND | MS_REMOUNT | MS_RDONLY)
        for (bit, flag) in kept where UInt(info.f_flag) & bit != 0 { flags |= UInt(flag) }
        do { try Mounts.mount(nil, on: target, flags: flags) } catch {
            throw Failure(text: "cannot make the bind of \(bind.source) read-only: \(error.errno)")
        }
    }

    func mountLoop(_ path: String, at target: String, type: String, readOnly: Bool, offset: UInt64 = 0, size: UInt64 = 0,
                   flags: UInt, data: String?) throws {
        let device: LoopDevice
        do { device = try Mounts.attachLoop(path, readOnly: readOnly, offset: offset, size: size) } catch {
            throw Failure(text: "cannot attach \(path) to a loop device: \(error.errno)")
        }
        // The device stays attached while it is open or mounted; autoclear frees it after.
        do {
            try Mounts.mount(device.path, on: target, type: type, flags: flags | (readOnly ? UInt(MS_RDONLY) : 0), options: data)
        } catch {
            throw Failure(text: "cannot mount \(path) (\(type)): \(error.errno)")
        }
        device.descriptor.close()
    }
}

/// FUSE mode: the drivers (fuse2fs, squashfuse, fuse-overlayfs) as children of the setup
/// process, the watchdog that ends them if the setup process is killed, and the teardown.
extension Setup {
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
        let table = (try? OwnedDescriptor(opening: "/proc/self/mountinfo", O_RDONLY)) ?? OwnedDescriptor(adopting: -1)
        if watchdog == nil { watchdog = try Watchdog(report: plan.reportDescriptor) }
        var waiting: [(driver: Driver, pid: Int32, device: UInt)] = []
        for driver in drivers {
            var before = stat()
            stat(driver.mountPoint, &before)
            // A process group of its own: Ctrl-C on the terminal goes to the job (and the tool,
            // which passes it on), never straight to a driver the job is still reading through.
            var spec = ChildSpec(argv: driver.argv)
            spec.ambientSysAdmin = true
            spec.deathSignal = SIGTERM
            spec.nullStandardIO = true
            spec.newProcessGroup = true
            let pid = try start(spec, what: "cannot start \(driver.argv[0])")
            daemons.append((pid, driver.argv[0]))
            watchdog?.watch(pid)
            waiting.append((driver, pid, UInt(before.st_dev)))
        }
        var failure: Failure?
        var exited: [Int32] = []
        Children.reap(waiting.map(\.pid), until: MonotonicClock.milliseconds + 10_000, also: table.rawValue, woken: {
            waiting.removeAll { entry in
                var now = stat()
                return stat(entry.driver.mountPoint, &now) == 0 && UInt(now.st_dev) != entry.device
            }
            return waiting.isEmpty || failure != nil
        }, ended: { pid, status in
            // Reaped: it is no longer one to tear down.
            exited.append(pid)
            guard failure == nil, let entry = waiting.first(where: { $0.pid == pid }) else { return }
            // The exit byte of waitpid's status (0 when a signal ended the driver).
            let code: Int32
            if case let .exited(value) = status { code = value } else { code = 0 }
            failure = Failure(text: "\(entry.driver.argv[0]) could not mount \(entry.driver.what) (it exited with status \(code); its message is above)")
        })
        daemons.removeAll { exited.contains($0.pid) }
        if let failure { throw failure }
        if let first = waiting.first {
            throw Failure(text: "\(first.driver.argv[0]) did not mount \(first.driver.what) within 10 seconds")
        }
    }

    /// Detaches everything (the whole tree under the staging tmpfs), then lets the FUSE drivers
    /// see their mounts go and exit; they close their images cleanly. Waits on the drivers'
    /// exits themselves; after 5 seconds they get SIGTERM (top first: the overlay driver keeps
    /// the image drivers busy until it exits), after 15 SIGKILL.
    mutating func tearDown() {
        try? Mounts.unmount(plan.staging, flags: Int32(MNT_DETACH))
        guard !daemons.isEmpty else { return }
        let start = MonotonicClock.milliseconds
        var remaining = Children.reap(daemons.map(\.pid), until: start + 5_000)
        if !remaining.isEmpty {
            for pid in remaining.reversed() { kill(pid, SIGTERM) }
            remaining = Children.reap(remaining, until: start + 15_000)
        }
        for pid in remaining {
            kill(pid, SIGKILL)
            _ = Children.wait(pid)
        }
        daemons = []
    }
}

/// The watchdog (FUSE mode): a fork of the setup process that ends the FUSE drivers when the
/// setup process is killed (it dies with the tool) before it could tear them down. The drivers
/// then get SIGTERM (their parent-death signal), which a driver stopped, or waiting on a FUSE
/// request that will never be answered, does not act on: the watchdog gives them 5 seconds to
/// exit, then sends SIGKILL, and waits up to 5 more. Told each driver's pid as it starts; told
/// 0 when the teardown is done, and exits. It keeps the image locks (inherited descriptors)
/// for as long as it waits, so no other job takes an image still mounted.
struct Watchdog: ~Copyable {
    let pid: Int32
    /// The write end of the pipe the watchdog reads pids from.
    let pipe: OwnedDescriptor

    /// Starts the watchdog. `report` is the report pipe, which only the tool may read.
    init(report: Int32) throws {
        let ends: Pipe
        do { ends = try Pipe() } catch { throw Setup.Failure(text: "cannot start the watchdog: \(error.errno)") }
        let readEnd = ends.readEnd
        let writeEnd = ends.writeEnd
        let pid: Int32
        do { pid = try Children.fork() } catch { throw Setup.Failure(text: "cannot start the watchdog: \(error.errno)") }
        if pid == 0 {
            writeEnd.close()
            Self.run(readEnd.take(), report: report)
        }
        readEnd.close()
        self.pid = pid
        self.pipe = writeEnd
        // A watchdog killed by someone must not kill this process with SIGPIPE (the job and the
        // drivers start with the default again).
        signal(SIGPIPE, SIG_IGN)
    }

    /// Tells the watchdog a driver's pid.
    func watch(_ driver: Int32) {
        try? IO.writeAll(pipe.rawValue, withUnsafeBytes(of: driver) { Array($0) })
    }

    /// Tells the watchdog the teardown is done, and waits for it to exit.
    consuming func finish() {
        watch(0)
        let pid = self.pid
        pipe.close()
        _ = Children.wait(pid)
    }

    /// The watchdog's work.
    static func run(_ input: Int32, report: Int32) -> Never {
        // Signals to the process group (Ctrl-C, a batch system's SIGTERM) are the job's.
        for number in Forwarding.signals { signal(number, SIG_IGN) }
        // Only the tool reads the report pipe, until the setup process has closed it.
        close(report)
        let null = open("/dev/null", O_RDWR)
        if null >= 0 { dup2(null, 0); dup2(null, 1); if null > 2 { close(null) } }
        var drivers: [(pid: Int32, pidfd: Int32)] = []
        var word: Int32 = 0
        while (try? IO.read(input, into: &word, count: 4)) == 4 {
            if word == 0 { _exit(0) }
            drivers.append((word, Children.pidfd(word)))
        }
        // The setup process is gone without a teardown.
        let start = MonotonicClock.milliseconds
        let running = Children.awaitExit(drivers, until: start + 5_000).map { drivers[$0] }
        // Through the pidfd: it never reaches a later process with that pid (by pid only
        // without pidfds).
        for entry in running { Children.kill(entry.pid, pidfd: entry.pidfd, SIGKILL) }
        _ = Children.awaitExit(running, until: start + 10_000)
        _exit(0)
    }
}

/// The setup process's last stage: the job, as the first process of a PID namespace of its
/// own, in the overlay root, as the user.
extension Setup {
    func startJob() throws -> Int32 {
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
        do { try Mounts.unshare(.pid) } catch {
            throw Failure(text: "cannot make a PID namespace for the job: \(error.errno)")
        }
        var spec = ChildSpec(argv: command)
        spec.environment = environment
        spec.root = plan.root
        spec.directory = plan.workingDirectory
        if plan.identity.change { spec.identity = (plan.identity.uid, plan.identity.gid, plan.identity.groups) }
        spec.deathSignal = SIGKILL
        spec.initProcess = true
        spec.procTarget = plan.root + "/proc"
        return try start(spec, what: "cannot run '\(command[0])' in the container", isJob: true)
    }

    /// Starts `spec` (fork + exec, see ``ChildSpec``). `what` says what failed when the program
    /// could not be run; a job that could not be run is reported as a shell would, on standard
    /// error with status 127 for a command not found and 126 for one that cannot run.
    func start(_ spec: ChildSpec, what: String, isJob: Bool = false) throws -> Int32 {
        let outcome: ChildSpec.Outcome
        do { outcome = try spec.spawn() } catch {
            throw Failure(text: "cannot start \(spec.argv[0]): \(error.errno)")
        }
        switch outcome {
        case let .started(pid):
            return pid
        case let .failed(step, code):
            let text: String
            switch step {
            case .root: text = "cannot enter the overlay root \(spec.root ?? "")"
            case .directory: text = "cannot change to \(spec.directory ?? "")"
            case .identity: text = "cannot switch to uid \(plan.identity.uid) gid \(plan.identity.gid)"
            case .capabilities: text = "cannot give \(spec.argv[0]) the capability to mount"
            case .exec: text = what
            }
            if step == .exec && isJob {
                IO.writeLine("error: \(text): \(code)")
                throw JobNotStarted(status: code == .noSuchFileOrDirectory ? 127 : 126)
            }
            throw Failure(text: "\(text): \(code)")
        }
    }

    struct JobNotStarted: Error { let status: Int32 }
}
