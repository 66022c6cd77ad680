import Dispatch
import Synchronization

/// Runs independent pieces of work on a few threads at once.
public enum Parallel {
    /// `body` applied to every item, on up to `threads` threads (items are handed out one at a
    /// time, to whichever thread is free); the results in the items' order.
    /// Inlinable: specialized where it is called, as the per-item work may be small (a read
    /// of a small file).
    @inlinable
    public static func map<Item: Sendable, Result: Sendable>(_ items: [Item], threads: Int,
                                                             _ body: @Sendable (Item) -> Result) -> [Result] {
        let workers = min(threads, items.count)
        if workers <= 1 { return items.map(body) }
        let next = Atomic<Int>(0)
        let results = Mutex<[Result?]>(Array(repeating: nil, count: items.count))
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            while true {
                let index = next.add(1, ordering: .relaxed).oldValue
                guard index < items.count else { return }
                let value = body(items[index])
                results.withLock { $0[index] = value }
            }
        }
        return results.withLock { $0.map { $0! } }
    }
}
