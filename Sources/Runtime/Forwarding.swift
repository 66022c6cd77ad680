import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Passes the signals a user or a batch system sends on to one process (the setup process in
/// the tool, the job in the setup process). A signal that comes before there is a target is
/// kept and sent as soon as there is one.
///
/// The handler reads and writes only atomics and calls kill, which is async-signal-safe.
public enum Forwarding {
    static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]
    /// The process signals go to (0: none yet).
    static let recipient = Atomic<Int32>(0)
    /// A signal that came while there was no target (0: none).
    static let pending = Atomic<Int32>(0)
    /// Set while job snapshots are on (``JobSnapshotSettings``): SIGUSR1 and SIGTERM are then
    /// recorded in ``requests`` for the setup process instead of passed on.
    static let intercepting = Atomic<Bool>(false)
    static let requests = Atomic<Int32>(0)
    static let snapshotRequest: Int32 = 1
    static let terminateRequest: Int32 = 2
    /// The dispositions replaced, to put back (never touched by the handler).
    static let saved = Mutex<[Int32: sigaction]>([:])

    /// Handles SIGUSR1 and SIGUSR2 from the start of the tool, before anything is mounted: their
    /// default action would end the tool (a batch system's warning signal or a snapshot request
    /// that comes early must not kill the job before it starts). Kept until there is a target,
    /// as every forwarded signal is; unblocked, so that one already waiting comes now.
    public static func holdUserSignals() {
        install([SIGUSR1, SIGUSR2])
        var held = sigset_t()
        sigemptyset(&held)
        sigaddset(&held, SIGUSR1)
        sigaddset(&held, SIGUSR2)
        sigprocmask(SIG_UNBLOCK, &held, nil)
    }

    /// Sets the handler for `numbers`; the disposition each had before the first install is
    /// the one ``restore()`` puts back.
    static func install(_ numbers: [Int32] = signals) {
        for number in numbers {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { number in
                if Forwarding.intercepting.load(ordering: .acquiring), number == SIGUSR1 || number == SIGTERM {
                    Forwarding.requests.bitwiseOr(number == SIGUSR1 ? Forwarding.snapshotRequest : Forwarding.terminateRequest,
                                                  ordering: .acquiringAndReleasing)
                    return
                }
                let pid = Forwarding.recipient.load(ordering: .acquiring)
                if pid > 0 { kill(pid, number) } else { Forwarding.pending.store(number, ordering: .releasing) }
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            var old = sigaction()
            sigaction(number, &action, &old)
            saved.withLock { if $0[number] == nil { $0[number] = old } }
        }
    }

    /// Sends signals to `pid` from now on (0: keep them until there is a target again), and
    /// the one kept, if any.
    static func target(_ pid: Int32) {
        recipient.store(pid, ordering: .releasing)
        guard pid > 0 else { return }
        let kept = pending.exchange(0, ordering: .acquiringAndReleasing)
        if kept == 0 { return }
        // One that came before snapshots were on is still a request for one.
        if intercepting.load(ordering: .acquiring), kept == SIGUSR1 || kept == SIGTERM {
            requests.bitwiseOr(kept == SIGUSR1 ? snapshotRequest : terminateRequest, ordering: .acquiringAndReleasing)
            return
        }
        kill(pid, kept)
    }

    static func restore() {
        let previous = saved.withLock { saved in
            defer { saved = [:] }
            return saved
        }
        for (number, old) in previous {
            var old = old
            sigaction(number, &old, nil)
        }
    }
}
