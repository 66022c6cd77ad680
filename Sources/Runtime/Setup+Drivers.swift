import ImageDriver
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// FUSE mode: the drivers (fuse2fs, squashfuse, fuse-overlayfs) as children of the setup
/// process, the watchdog that ends them if the setup process is killed, and the teardown.
extension Setup {
    /// A FUSE driver to start, and the mount it makes.
    struct Driver {
        var argv: [String]
        var mountPoint: String
        var what: String

        /// The image and mount point when this is the built-in image driver (code of this
        /// program, which is forked rather than executed).
        var builtinImage: (image: String, mountPoint: String, writable: Bool)? {
            guard argv.count == 4, argv[1] == ImageDriver.argument || argv[1] == ImageDriver.writableArgument else { return nil }
            return (argv[2], argv[3], argv[1] == ImageDriver.writableArgument)
        }

        /// The driver's name in messages.
        var name: String {
            builtinImage != nil ? "the built-in image driver" : argv[0]
        }
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
            // The job's signals ignored: a batch system sends SIGTERM (a time limit, a
            // preemption) to every process of the job at once, and a driver that ended of it
            // would take the job's files away while the job saves its work. SIGHUP ends one.
            var spec = ChildSpec(argv: driver.argv)
            spec.ambientSysAdmin = true
            spec.ignoreJobSignals = true
            spec.deathSignal = SIGHUP
            spec.nullStandardIO = true
            spec.newProcessGroup = true
            let pid: Int32
            if let (image, mountPoint, writable) = driver.builtinImage {
                // Forked, not executed: it starts without loading a program (about 10 ms less
                // before the job runs). It keeps CAP_SYS_ADMIN in the user namespace, as a fork does.
                spec.ambientSysAdmin = false
                pid = try start(spec, what: "cannot start \(driver.name)") {
                    Children.setName(ImageDriver.processName)
                    return ImageDriver.serve(image: image, mountPoint: mountPoint, writable: writable)
                }
            } else {
                pid = try start(spec, what: "cannot start \(driver.name)")
            }
            daemons.append((pid, driver.name))
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
            failure = Failure(text: "\(entry.driver.name) could not mount \(entry.driver.what) (it exited with status \(code); its message is above)")
        })
        daemons.removeAll { exited.contains($0.pid) }
        if let failure { throw failure }
        if let first = waiting.first {
            throw Failure(text: "\(first.driver.name) did not mount \(first.driver.what) within 10 seconds")
        }
    }

    /// Detaches everything (the whole tree under the staging tmpfs), then lets the FUSE drivers
    /// see their mounts go and exit; they close their images cleanly. Waits on the drivers'
    /// exits themselves; after 5 seconds they get SIGHUP (top first: the overlay driver keeps
    /// the image drivers busy until it exits), after 15 SIGKILL.
    mutating func tearDown() {
        try? Mounts.unmount(plan.staging, flags: Int32(MNT_DETACH))
        guard !daemons.isEmpty else { return }
        let start = MonotonicClock.milliseconds
        var remaining = Children.reap(daemons.map(\.pid), until: start + 5_000)
        if !remaining.isEmpty {
            for pid in remaining.reversed() { kill(pid, SIGHUP) }
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
/// then get SIGHUP (their parent-death signal), which a driver stopped, or waiting on a FUSE
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
