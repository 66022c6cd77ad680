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
    /// exits (pidfds), or, on kernels without pidfds, looks every 5 ms. `extra`, if given, is
    /// polled too (POLLPRI: a mount table changing) and a wake-up from it calls `woken`, which
    /// may return true to stop waiting.
    @discardableResult
    public static func reap(_ pids: [Int32], until deadline: Int,
                            also extra: Int32 = -1, woken: () -> Bool = { false },
                            ended: (Int32, WaitStatus) -> Void = { _, _ in }) -> [Int32] {
        var watched = pids.map { (pid: $0, fd: clinux_pidfd_open($0)) }
        defer { for entry in watched where entry.fd >= 0 { close(entry.fd) } }
        while true {
            watched.removeAll { entry in
                guard let status = poll(entry.pid) else { return false }
                if entry.fd >= 0 { close(entry.fd) }
                ended(entry.pid, status)
                return true
            }
            if watched.isEmpty || woken() { break }
            let left = deadline - MonotonicClock.milliseconds
            if left <= 0 { break }
            var fds = watched.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            if extra >= 0 { fds.append(pollfd(fd: extra, events: Int16(POLLPRI), revents: 0)) }
            let pidfds = watched.allSatisfy { $0.fd >= 0 }
            _ = Glibc.poll(&fds, nfds_t(fds.count), Int32(pidfds ? min(left, 1000) : min(left, 5)))
        }
        return watched.map(\.pid)
    }

    /// Waits until the processes behind `pidfds` (not necessarily our children) have all
    /// ended, or the deadline passes; returns the indices of those still running. Without a
    /// pidfd (-1) a process is looked at by pid every 20 ms.
    public static func awaitExit(_ processes: [(pid: Int32, pidfd: Int32)], until deadline: Int) -> [Int] {
        var left = Array(processes.indices)
        func gone(_ index: Int) -> Bool {
            let entry = processes[index]
            if entry.pidfd >= 0 {
                var fd = pollfd(fd: entry.pidfd, events: Int16(POLLIN), revents: 0)
                return Glibc.poll(&fd, 1, 0) == 1
            }
            return Glibc.kill(entry.pid, 0) != 0 && Glibc.errno == ESRCH
        }
        while true {
            left.removeAll(where: gone)
            let remaining = deadline - MonotonicClock.milliseconds
            if left.isEmpty || remaining <= 0 { return left }
            var fds = left.map { pollfd(fd: processes[$0].pidfd, events: Int16(POLLIN), revents: 0) }
            let pidfds = left.allSatisfy { processes[$0].pidfd >= 0 }
            _ = Glibc.poll(&fds, nfds_t(fds.count), Int32(pidfds ? min(remaining, 1000) : min(remaining, 20)))
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

    /// The signal this process gets when its parent dies.
    public static func setParentDeathSignal(_ signal: Int32) {
        _ = clinux_set_parent_death_signal(signal)
    }
}
