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
///
/// The setup's stages live in extensions of ``Setup``: Setup+Namespaces.swift,
/// Setup+Mounts.swift, Setup+Drivers.swift (FUSE drivers, their watchdog, the teardown) and
/// Setup+Job.swift.
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
        // A signal held since the tool started goes to the setup process once it exists; taken
        // out first, so that the setup process does not start with a copy to pass on too.
        let held = Forwarding.pending.exchange(0, ordering: .acquiringAndReleasing)
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
        if held != 0 { kill(child, held) }
        let status = Children.wait(child)?.shellStatus ?? 125
        Forwarding.target(0)
        if plan.interactive { Setup.takeTerminalBack() }
        let message = String(decoding: (try? IO.readAll(readEnd.rawValue)) ?? [], as: UTF8.self).trimmingWhitespace
        if !message.isEmpty {
            if plan.restoreFrom != nil && status == JobResume.processRestoreFailedStatus { throw ProcessRestoreFailed(reason: message) }
            throw RuntimeError.failed(message)
        }
        return status
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

    /// Failures of the setup itself go to the tool through the report pipe; the setup process
    /// exits with `status`.
    struct Failure: Error {
        let text: String
        var status: Int32 = 125
    }

    /// Makes this process's group the terminal's foreground again (an interactive job had it),
    /// so that what the tool prints or reads after the job, and its caller, find it as before.
    static func takeTerminalBack() {
        guard isatty(0) != 0 else { return }
        let previous = signal(SIGTTOU, SIG_IGN)
        tcsetpgrp(0, getpgrp())
        signal(SIGTTOU, previous)
    }

    mutating func main() -> Int32 {
        // Die with the tool; if it is already gone, stop here.
        Children.setParentDeathSignal(SIGKILL)
        if getppid() != parent { return 125 }
        // With job snapshots, SIGUSR1 and SIGTERM are requests from the start (one that comes
        // while the stack is mounted is taken once the job runs).
        if plan.jobSnapshots != nil { Forwarding.intercepting.store(true, ordering: .releasing) }
        Forwarding.install()
        var status: Int32 = 125
        do {
            try enterNamespaces()
            try mountStack()
            let job = try plan.restoreFrom.map { directory throws(Failure) in try restoreJob(from: directory) } ?? startJob()
            Forwarding.target(job)
            if let settings = plan.jobSnapshots {
                status = waitTakingSnapshots(job: job, settings: settings)
            } else {
                status = Children.wait(job)?.shellStatus ?? 125
            }
            Forwarding.target(0)
        } catch let notStarted as JobNotStarted {
            status = notStarted.status
        } catch let failure as Failure {
            report(failure.text)
            status = failure.status
        } catch {
            report("\(error)")
        }
        tearDown()
        // FUSE mode: the file job snapshots flushed fuse2fs through goes, now that it is unmounted.
        if plan.mode == .fuse, plan.jobSnapshots != nil, let image = plan.images.first(where: { !$0.readOnly }) {
            Fuse2fsFlush.removeFile(from: image.path)
        }
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
