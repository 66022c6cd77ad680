import LinuxSupport
import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// Batch buffers shared by the thread that fills them and the writing thread. A slot
    /// belongs to one of them at a time: taken with ``DataWriter/acquire()``, handed over with
    /// the job that writes it, and given back by the writing thread once written. That handing
    /// over (through the writer's lock) is what makes sharing the raw memory safe.
    struct SlotBuffers: @unchecked Sendable {
        private let buffers: [UnsafeMutableRawBufferPointer]
        let slotSize: Int

        init(slots: Int, slotSize: Int) {
            buffers = (0..<slots).map { _ in .allocate(byteCount: slotSize, alignment: 4096) }
            self.slotSize = slotSize
        }

        subscript(slot: Int) -> UnsafeMutableRawBufferPointer { buffers[slot] }

        func deallocate() {
            for buffer in buffers { buffer.deallocate() }
        }
    }

    /// Writes into the image on a thread of its own, so gathering and reading the next batches
    /// overlaps with writing the last ones: filled batch buffers (one pwrite each) and larger
    /// files, copied by the kernel (copy_file_range, or reads and writes where it cannot).
    /// Jobs run in the order given; the first failure is kept, later jobs are skipped, and
    /// ``finish()`` throws it.
    final class DataWriter {
        enum Job: Sendable {
            case write(slot: Int, length: Int, offset: UInt64)
            /// Copies `count` bytes of the file at `source` (NUL-terminated) from `from` to the
            /// image at `to`.
            case copy(source: [CChar], from: UInt64, count: UInt64, to: UInt64)
            /// Gives a buffer slot back unwritten.
            case release(slot: Int)
        }

        /// What both threads see, under one lock; the writing thread waits on it for jobs, the
        /// other for free slots.
        private struct State {
            var freeSlots: [Int]
            var jobs: [Job] = []
            var head = 0
            var stopping = false
            var failure: Swift.Error?
        }

        let path: String
        let buffers: SlotBuffers
        private let state: ConditionLock<State>
        private var thread: JoinableThread?

        init(fd: Int32, path: String, slots: Int, slotSize: Int) throws {
            self.path = path
            let buffers = SlotBuffers(slots: slots, slotSize: slotSize)
            let state = ConditionLock(State(freeSlots: Array(0..<slots)))
            self.buffers = buffers
            self.state = state
            do throws(SystemError) {
                thread = try JoinableThread { DataWriter.work(fd: fd, path: path, buffers: buffers, state: state) }
            } catch {
                throw Error.system(operation: "start the writing thread", path: path, errno: error.errno.rawValue)
            }
        }

        deinit {
            if let thread = thread.take() {
                state.update { $0.stopping = true }
                thread.join()
            }
            buffers.deallocate()
        }

        /// A free buffer slot (waits for the thread to finish one); throws an earlier failure.
        func acquire() throws -> Int {
            try state.wait(until: { !$0.freeSlots.isEmpty || $0.failure != nil }) { state in
                if let failure = state.failure { throw failure }
                return state.freeSlots.removeLast()
            }
        }

        /// Queues a job; throws an earlier failure (the job is then not run).
        func submit(_ job: Job) throws {
            try state.update { state in
                state.jobs.append(job)
                if let failure = state.failure { throw failure }
            }
        }

        /// Runs what is queued, stops the thread, and throws the first failure.
        func finish() throws {
            guard let thread = thread.take() else { return }
            state.update { $0.stopping = true }
            thread.join()
            if let failure = state.withLock({ $0.failure }) { throw failure }
        }

        /// The writing thread: runs jobs in order until told to stop and none is left.
        private static func work(fd: Int32, path: String, buffers: SlotBuffers, state: ConditionLock<State>) {
            var copier = Copier(fd: fd, path: path)
            defer { copier.scratch.deallocate() }
            while true {
                let next: (job: Job, failed: Bool)? = state.wait(until: { $0.head < $0.jobs.count || $0.stopping }) { state in
                    guard state.head < state.jobs.count else { return nil }
                    let job = state.jobs[state.head]
                    state.head += 1
                    if state.head > 1024 {
                        state.jobs.removeFirst(state.head)
                        state.head = 0
                    }
                    return (job, state.failure != nil)
                }
                guard let (job, failed) = next else { return }

                var problem: Swift.Error? = nil
                var freed: Int? = nil
                switch job {
                case let .write(slot, length, offset):
                    if !failed {
                        do {
                            try Ext3.writeAll(fd, UnsafeRawBufferPointer(rebasing: buffers[slot][..<length]), at: offset, path: path)
                        } catch let caught { problem = caught }
                    }
                    freed = slot
                case let .copy(source, from, count, to):
                    if !failed {
                        do { try copier.copy(source, from: from, count: count, at: to) } catch let caught { problem = caught }
                    }
                case let .release(slot):
                    freed = slot
                }
                state.update { state in
                    if let freed { state.freeSlots.append(freed) }
                    if let problem, state.failure == nil { state.failure = problem }
                }
            }
        }

        static func unreadable(_ source: [CChar], _ code: Int32) -> Error {
            Error.invalidConfiguration("cannot read \(Tree.display(source)): \(Ext3.errnoString(code)); make it readable or pack a tree without it")
        }

        static func changed(_ source: [CChar]) -> Error {
            Error.invalidConfiguration("\(Tree.display(source)) got shorter while it was being packed: pack a tree nothing is writing to")
        }
    }

    /// The writing thread's copies of larger files, with what only that thread uses.
    private struct Copier {
        let fd: Int32
        let path: String
        /// For copies where copy_file_range cannot be used.
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        private var copyFileRange = true

        init(fd: Int32, path: String) {
            self.fd = fd
            self.path = path
        }

        /// `count` bytes of the file at `source` from `from`, into the image at `at`: the
        /// kernel copies, or reads and writes through the scratch buffer where it cannot (then
        /// for every later file too).
        mutating func copy(_ source: [CChar], from: UInt64, count: UInt64, at: UInt64) throws {
            let input = open(source, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard input >= 0 else { throw DataWriter.unreadable(source, errno) }
            defer { close(input) }
            var sourceOffset = Int64(from)
            var targetOffset = Int64(at)
            var left = count
            while copyFileRange && left > 0 {
                let copied = FileCalls.copyFileRange(input, &sourceOffset, fd, &targetOffset, Int(min(left, 1 << 30)))
                if copied > 0 {
                    left -= UInt64(copied)
                    continue
                }
                if copied == 0 { throw DataWriter.changed(source) }
                let code = errno
                if code == EINTR { continue }
                if [EXDEV, EINVAL, ENOSYS, EOPNOTSUPP, EBADF].contains(code) {
                    copyFileRange = false
                    break
                }
                if code == ENOSPC || code == EDQUOT { throw Error.system(operation: "write", path: path, errno: code) }
                throw DataWriter.unreadable(source, code)
            }
            while left > 0 {
                let got = pread(input, scratch.baseAddress, Int(min(left, UInt64(scratch.count))), off_t(sourceOffset))
                if got < 0 {
                    if errno == EINTR { continue }
                    throw DataWriter.unreadable(source, errno)
                }
                if got == 0 { throw DataWriter.changed(source) }
                try Ext3.writeAll(fd, UnsafeRawBufferPointer(rebasing: scratch[..<got]), at: UInt64(targetOffset), path: path)
                sourceOffset += Int64(got)
                targetOffset += Int64(got)
                left -= UInt64(got)
            }
        }
    }
}
