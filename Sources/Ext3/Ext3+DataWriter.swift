import LinuxSupport
import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// Writes into the image on a thread of its own, so gathering and reading the next batches
    /// overlaps with writing the last ones: filled batch buffers (one pwrite each) and larger
    /// files, copied by the kernel (copy_file_range, or reads and writes where it cannot).
    /// Jobs run in the order given; the first failure is kept, later jobs are skipped, and
    /// ``finish()`` throws it.
    final class DataWriter: @unchecked Sendable {
        enum Job {
            case write(slot: Int, length: Int, offset: UInt64)
            /// Copies `count` bytes of the file at `source` (NUL-terminated) from `from` to the
            /// image at `to`.
            case copy(source: [CChar], from: UInt64, count: UInt64, to: UInt64)
            /// Gives a buffer slot back unwritten.
            case release(slot: Int)
        }

        let fd: Int32
        let path: String
        let buffers: [UnsafeMutableRawBufferPointer]
        /// For copies where copy_file_range cannot be used.
        private let scratch: UnsafeMutableRawBufferPointer
        private var copyFileRange = true
        private var freeSlots: [Int]
        private var jobs: [Job] = []
        private var head = 0
        private var stopping = false
        private var failure: Swift.Error?
        private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        private var thread = pthread_t()
        private var running = false

        init(fd: Int32, path: String, slots: Int, slotSize: Int) throws {
            self.fd = fd
            self.path = path
            buffers = (0..<slots).map { _ in .allocate(byteCount: slotSize, alignment: 4096) }
            scratch = .allocate(byteCount: 1 << 20, alignment: 4096)
            freeSlots = Array(0..<slots)
            pthread_mutex_init(lock, nil)
            pthread_cond_init(changed, nil)
            let context = Unmanaged.passRetained(self).toOpaque()
            let started = pthread_create(&thread, nil, { context in
                let writer = Unmanaged<DataWriter>.fromOpaque(context!).takeRetainedValue()
                writer.loop()
                return nil
            }, context)
            guard started == 0 else {
                Unmanaged<DataWriter>.fromOpaque(context).release()
                throw Error.system(operation: "start the writing thread", path: path, errno: started)
            }
            running = true
        }

        deinit {
            for buffer in buffers { buffer.deallocate() }
            scratch.deallocate()
            pthread_cond_destroy(changed)
            pthread_mutex_destroy(lock)
            lock.deallocate()
            changed.deallocate()
        }

        /// A free buffer slot (waits for the thread to finish one); throws an earlier failure.
        func acquire() throws -> Int {
            pthread_mutex_lock(lock)
            defer { pthread_mutex_unlock(lock) }
            while freeSlots.isEmpty && failure == nil { pthread_cond_wait(changed, lock) }
            if let failure { throw failure }
            return freeSlots.removeLast()
        }

        /// Queues a job; throws an earlier failure (the job is then not run).
        func submit(_ job: Job) throws {
            pthread_mutex_lock(lock)
            defer { pthread_mutex_unlock(lock) }
            jobs.append(job)
            pthread_cond_broadcast(changed)
            if let failure { throw failure }
        }

        /// Runs what is queued, stops the thread, and throws the first failure.
        func finish() throws {
            guard running else { return }
            pthread_mutex_lock(lock)
            stopping = true
            pthread_cond_broadcast(changed)
            pthread_mutex_unlock(lock)
            pthread_join(thread, nil)
            running = false
            if let failure { throw failure }
        }

        private func loop() {
            while true {
                pthread_mutex_lock(lock)
                while head == jobs.count && !stopping { pthread_cond_wait(changed, lock) }
                if head == jobs.count {
                    pthread_mutex_unlock(lock)
                    return
                }
                let job = jobs[head]
                head += 1
                if head > 1024 {
                    jobs.removeFirst(head)
                    head = 0
                }
                let failed = failure != nil
                pthread_mutex_unlock(lock)

                var problem: Swift.Error? = nil
                switch job {
                case let .write(slot, length, offset):
                    if !failed {
                        do { try writeAll(UnsafeRawBufferPointer(rebasing: buffers[slot][..<length]), at: offset) } catch let caught { problem = caught }
                    }
                    pthread_mutex_lock(lock)
                    freeSlots.append(slot)
                    pthread_mutex_unlock(lock)
                case let .copy(source, from, count, to):
                    if !failed {
                        do { try copy(source, from: from, count: count, at: to) } catch let caught { problem = caught }
                    }
                case let .release(slot):
                    pthread_mutex_lock(lock)
                    freeSlots.append(slot)
                    pthread_mutex_unlock(lock)
                }
                pthread_mutex_lock(lock)
                if let problem, failure == nil { failure = problem }
                pthread_cond_broadcast(changed)
                pthread_mutex_unlock(lock)
            }
        }

        func writeAll(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
            try Ext3.writeFully(fd, bytes, at: offset, path: path)
        }

        /// `count` bytes of the file at `source` from `from`, into the image at `at`: the
        /// kernel copies, or reads and writes through the scratch buffer where it cannot (then
        /// for every later file too).
        private func copy(_ source: [CChar], from: UInt64, count: UInt64, at: UInt64) throws {
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
                try writeAll(UnsafeRawBufferPointer(rebasing: scratch[..<got]), at: UInt64(targetOffset))
                sourceOffset += Int64(got)
                targetOffset += Int64(got)
                left -= UInt64(got)
            }
        }

        static func unreadable(_ source: [CChar], _ code: Int32) -> Error {
            Error.invalidConfiguration("cannot read \(Tree.display(source)): \(Ext3.errnoString(code)); make it readable or pack a tree without it")
        }

        static func changed(_ source: [CChar]) -> Error {
            Error.invalidConfiguration("\(Tree.display(source)) got shorter while it was being packed: pack a tree nothing is writing to")
        }
    }
}

extension Ext3 {
    /// pwrite(2) until every byte of `bytes` is at `offset` of `fd` (the image at `path`).
    static func writeFully(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64, path: String) throws {
        var done = 0
        while done < bytes.count {
            let wrote = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if wrote < 0 {
                if errno == EINTR { continue }
                throw Error.system(operation: "write", path: path, errno: errno)
            }
            done += wrote
        }
    }
}
