import Dispatch
#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// Runs independent pieces of work on a few threads at once.
    enum ParallelWork {
        /// `body` applied to every item, on up to `threads` threads (items are handed out one
        /// at a time, to whichever thread is free); the results in the items' order.
        static func map<Item: Sendable, Result: Sendable>(_ items: [Item], threads: Int,
                                                          _ body: @Sendable (Item) -> Result) -> [Result] {
            let workers = min(threads, items.count)
            if workers <= 1 { return items.map(body) }
            let slots = Slots<Result>(count: items.count)
            DispatchQueue.concurrentPerform(iterations: workers) { _ in
                while let index = slots.claim() { slots.store(body(items[index]), at: index) }
            }
            return slots.take()
        }
    }

    /// Results filled in by several threads: every access under one lock.
    private final class Slots<Result: Sendable>: @unchecked Sendable {
        private var values: [Result?]
        private var next = 0
        private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

        init(count: Int) {
            values = Array(repeating: nil, count: count)
            pthread_mutex_init(lock, nil)
        }

        deinit {
            pthread_mutex_destroy(lock)
            lock.deallocate()
        }

        /// The index of the next item nobody has taken, if any is left.
        func claim() -> Int? {
            pthread_mutex_lock(lock)
            defer { pthread_mutex_unlock(lock) }
            guard next < values.count else { return nil }
            next += 1
            return next - 1
        }

        func store(_ value: Result, at index: Int) {
            pthread_mutex_lock(lock)
            defer { pthread_mutex_unlock(lock) }
            values[index] = value
        }

        /// Every result (call once all threads are done).
        func take() -> [Result] {
            pthread_mutex_lock(lock)
            defer { pthread_mutex_unlock(lock) }
            return values.map { $0! }
        }
    }
}
