import Dispatch
import Ext3
import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

extension Ext3.Tree {
    /// Reads every directory of the tree: each thread takes a directory nobody has read yet,
    /// reads it and hands out its subdirectories, so that no thread waits while another still
    /// has directories to give (a level with one big directory does not hold the others up).
    /// The thread that puts the tree together reads too: when the listing it needs next is not
    /// there yet, it reads that directory itself (or another, if someone is already on it)
    /// instead of waiting. Subdirectories are handed out first name first, so they are read
    /// roughly in the order the tree is put together.
    final class DirectoryReader: Sendable {
        /// A directory to read: its listing's number, NUL-terminated path, and a descriptor
        /// opened relative to its parent while that was read (-1: none).
        typealias Job = (number: Int, path: [CChar], descriptor: Int32)

        /// What the threads share, under one lock. A thread waits on it when there is nothing
        /// to read yet (for directories to be handed out, a listing to come in, or the end).
        private struct State {
            /// Directories not read yet and the number of their listing.
            var waiting: [Job]
            /// Descriptors opened ahead for waiting directories, and the most there may be:
            /// opening by name relative to the parent saves the kernel a walk down the whole
            /// path, and the limit keeps a wide tree within a low open-file limit.
            var held = 0
            /// Every listing by number (the root is 0): nil until read, and again once taken.
            var listings: [Listing?] = [nil]
            /// Threads reading a directory now (they may hand out more).
            var busy = 0
            /// Set by ``stop()``: read nothing more.
            var stopped = false
        }

        private static let holdLimit = 32
        private let state: ConditionLock<State>
        private let read: @Sendable ([CChar], Int32, Int) -> Listing
        private let helpers = DispatchGroup()

        /// Starts reading the tree at `root` (NUL-terminated) on `helpers` threads besides the
        /// one that calls ``take(_:)``.
        /// `read(path, descriptor, n)` reads one directory (from `descriptor` if it is not -1)
        /// and may open up to `n` of its subdirectories ahead (their entries' `descriptor`).
        init(root: [CChar], helpers count: Int, _ read: @escaping @Sendable ([CChar], Int32, Int) -> Listing) {
            state = ConditionLock(State(waiting: [(0, root, -1)]))
            self.read = read
            for _ in 0..<max(0, count) {
                DispatchQueue.global().async(group: helpers) { self.work() }
            }
        }

        /// The listing with this number (0 is the root; a directory entry's `listing` is its
        /// own), read here if nobody has started on it. Each is taken once.
        func take(_ number: Int) -> Listing {
            while true {
                let next = state.wait(until: { $0.listings[number] != nil || !$0.waiting.isEmpty }) { state -> Next in
                    if let listing = state.listings[number].take() { return .done(listing) }
                    // The one needed if it is still waiting (it was handed out lately: look
                    // near the end), else any.
                    let position = state.waiting.indices.reversed().prefix(64).first { state.waiting[$0].number == number }
                    let started = Self.start(state.waiting.remove(at: position ?? state.waiting.count - 1), &state)
                    return .read(job: started.job, ahead: started.ahead)
                }
                switch next {
                case let .done(listing): return listing
                case let .read(job, ahead): readAndHandOut(job, ahead: ahead)
                }
            }
        }

        private enum Next {
            case done(Listing)
            case read(job: Job, ahead: Int)
        }

        /// Stops handing out directories and waits for the other threads to finish.
        func stop() {
            state.update { state in
                state.stopped = true
                for job in state.waiting where job.descriptor >= 0 { close(job.descriptor) }
                state.held = 0
                state.waiting.removeAll()
            }
            helpers.wait()
        }

        private func work() {
            while true {
                // Wait while nothing is waiting but someone may still hand out more.
                let next = state.wait(until: { $0.stopped || !$0.waiting.isEmpty || $0.busy == 0 }) { state -> (job: Job, ahead: Int)? in
                    guard !state.stopped, let job = state.waiting.popLast() else { return nil }
                    return Self.start(job, &state)
                }
                guard let (job, ahead) = next else {
                    // Nothing left and nobody can hand out more: wake the others to see it.
                    state.update { _ in }
                    return
                }
                readAndHandOut(job, ahead: ahead)
            }
        }

        /// Counts a directory as being read: returns it with how many of its subdirectories
        /// may be opened ahead.
        private static func start(_ job: Job, _ state: inout State) -> (job: Job, ahead: Int) {
            state.busy += 1
            if job.descriptor >= 0 { state.held -= 1 }
            let ahead = min(holdLimit - state.held, 8)
            state.held += ahead
            return (job, ahead)
        }

        /// Reads one directory (unlocked), then hands out its subdirectories and stores its
        /// listing.
        private func readAndHandOut(_ job: Job, ahead: Int) {
            var listing = read(job.path, job.descriptor, ahead)
            // Entries are last name first: the first subdirectory is pushed last and so is
            // read next, depth first.
            var subdirectories: [(entry: Int, path: [CChar])] = []
            for index in listing.entries.indices where listing.entries[index].isDirectory {
                subdirectories.append((index, Ext3.Tree.join(job.path, listing.entries[index].name)))
            }
            state.update { state in
                state.busy -= 1
                for (index, path) in subdirectories {
                    var descriptor = listing.entries[index].descriptor
                    listing.entries[index].descriptor = -1
                    if descriptor >= 0 && state.stopped {
                        close(descriptor)  // nobody will read it
                        descriptor = -1
                    }
                    if descriptor >= 0 { state.held += 1 }
                    listing.entries[index].listing = state.listings.count
                    state.waiting.append((state.listings.count, path, descriptor))
                    state.listings.append(nil)
                }
                state.held -= ahead
                state.listings[job.number] = listing
            }
        }
    }
}
