internal import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// How a child ended, decoded from waitpid's raw status.
public enum WaitStatus: Sendable, Equatable {
    case exited(Int32)
    case signaled(Int32)

    public init(raw: Int32) {
        let signal = raw & 0x7f
        self = signal == 0 ? .exited((raw >> 8) & 0xff) : .signaled(signal)
    }

    /// As a shell reports it: the exit status, or 128+N when signal N ended the process.
    public var shellStatus: Int32 {
        switch self {
        case let .exited(code): return code
        case let .signaled(signal): return 128 + signal
        }
    }
}

/// Milliseconds (and nanoseconds) on the monotonic clock.
public enum MonotonicClock {
    public static var nanoseconds: UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    public static var milliseconds: Int { Int(nanoseconds / 1_000_000) }
}

/// Children of this process: waiting for them, with or without a deadline.
public enum Children {
    /// Waits for `pid` (retrying EINTR); nil when it is not our child.
    public static func wait(_ pid: Int32) -> WaitStatus? {
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 {
            if Glibc.errno != EINTR { return nil }
        }
        return WaitStatus(raw: raw)
    }

    /// The status of `pid` if it has ended, without waiting.
    public static func poll(_ pid: Int32) -> WaitStatus? {
        var raw: Int32 = 0
        return waitpid(pid, &raw, WNOHANG) == pid ? WaitStatus(raw: raw) : nil
    }

    /// Reaps children of this process as they end, until every one in `pids` has or the
    /// deadline (monotonic milliseconds) passes; returns those still running. Woken by their
    /// exits (pidfds), or, on kernels without pidfds, looks every 5 ms. `ended` is told of
    /// each child reaped. `extra`, if given, is polled too (POLLPRI: a mount table changing;
    /// when it could not be opened (-1), the wait looks every 5 ms instead); `woken` is asked
    /// at the start and after every wake-up, and may return true to stop waiting.
    @discardableResult
    public static func reap(_ pids: [Int32], until deadline: Int,
                            also extra: Int32? = nil, woken: () -> Bool = { false },
                            ended: (Int32, WaitStatus) -> Void = { _, _ in }) -> [Int32] {
        let pidfds = pids.map { clinux_pidfd_open($0) }
        defer { for fd in pidfds where fd >= 0 { close(fd) } }
        let running = waitLoop(pidfds, until: deadline, tick: 5, extra: extra, stop: woken) { index in
            guard let status = poll(pids[index]) else { return false }
            ended(pids[index], status)
            return true
        }
        return running.map { pids[$0] }
    }

    /// Waits until the processes behind `pidfds` (not necessarily our children) have all
    /// ended, or the deadline passes; returns the indices of those still running. Without a
    /// pidfd (-1) a process is looked at by pid every 20 ms.
    public static func awaitExit(_ processes: [(pid: Int32, pidfd: Int32)], until deadline: Int) -> [Int] {
        waitLoop(processes.map(\.pidfd), until: deadline, tick: 20, extra: nil, stop: { false }) { index in
            let entry = processes[index]
            if entry.pidfd >= 0 {
                var fd = pollfd(fd: entry.pidfd, events: Int16(POLLIN), revents: 0)
                return Glibc.poll(&fd, 1, 0) == 1
            }
            return Glibc.kill(entry.pid, 0) != 0 && Glibc.errno == ESRCH
        }
    }

    /// The loop under ``reap(_:until:also:woken:ended:)`` and ``awaitExit(_:until:)``: drops
    /// the processes `gone` says have ended, stops when none is left, `stop` says so or the
    /// deadline passes, else sleeps in poll(2) on their pidfds (and `extra`, for POLLPRI) for
    /// at most a second, or `tick` milliseconds when a pidfd or `extra` is missing. Returns
    /// the indices of the processes still running.
    private static func waitLoop(_ pidfds: [Int32], until deadline: Int, tick: Int, extra: Int32?,
                                 stop: () -> Bool, gone: (Int) -> Bool) -> [Int] {
        var running = Array(pidfds.indices)
        while true {
            running.removeAll(where: gone)
            if running.isEmpty || stop() { return running }
            let left = deadline - MonotonicClock.milliseconds
            if left <= 0 { return running }
            var fds = running.map { pollfd(fd: pidfds[$0], events: Int16(POLLIN), revents: 0) }
            if let extra { fds.append(pollfd(fd: extra, events: Int16(POLLPRI), revents: 0)) }
            let woken = running.allSatisfy { pidfds[$0] >= 0 } && (extra ?? 0) >= 0
            _ = Glibc.poll(&fds, nfds_t(fds.count), Int32(woken ? min(left, 1000) : min(left, tick)))
        }
    }

    /// A pidfd for `pid` (Linux 5.3+), or -1.
    public static func pidfd(_ pid: Int32) -> Int32 { clinux_pidfd_open(pid) }

    /// Sends `signal` through a pidfd (never to a later process with the same pid), or by pid
    /// when there is none.
    public static func kill(_ pid: Int32, pidfd: Int32, _ signal: Int32) {
        if pidfd >= 0 { _ = clinux_pidfd_send_signal(pidfd, signal) } else { _ = Glibc.kill(pid, signal) }
    }

    /// fork(): the child's pid in the parent, 0 in the child.
    public static func fork() throws(SystemError) -> Int32 {
        let pid = clinux_fork()
        guard pid >= 0 else { throw SystemError("fork", errno: Errno(rawValue: -pid)) }
        return pid
    }

    /// This process's name (/proc/self/comm, what `ps` shows; at most 15 bytes are kept).
    public static func setName(_ name: String) {
        _ = clinux_set_name(name)
    }

    /// The signal this process gets when its parent dies.
    public static func setParentDeathSignal(_ signal: Int32) {
        _ = clinux_set_parent_death_signal(signal)
    }
}
