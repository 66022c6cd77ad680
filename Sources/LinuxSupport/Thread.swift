#if canImport(Glibc)
import Glibc
#endif

/// A thread of its own for work that runs as long as its owner wants it (a writer that waits
/// for jobs), where a thread pool's threads should not be held. Joined exactly once: by
/// ``join()``, or when the owner goes away.
public struct JoinableThread: ~Copyable {
    private let handle: pthread_t

    /// Starts `body` on a new thread.
    public init(_ body: @escaping @Sendable () -> Void) throws(SystemError) {
        let context = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
        var handle = pthread_t()
        let started = pthread_create(&handle, nil, { context in
            Unmanaged<ThreadBody>.fromOpaque(context!).takeRetainedValue().body()
            return nil
        }, context)
        guard started == 0 else {
            Unmanaged<ThreadBody>.fromOpaque(context).release()
            throw SystemError("start a thread", errno: Errno(rawValue: started))
        }
        self.handle = handle
    }

    /// Waits for the thread to end.
    public consuming func join() {
        pthread_join(handle, nil)
        discard self
    }

    deinit {
        pthread_join(handle, nil)
    }
}

/// What a ``JoinableThread`` runs, handed to it as its start routine's argument.
private final class ThreadBody: Sendable {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}
