import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// How a pack's blocks reach the image file. Blocks come in three regions, each filled
    /// front to back and handed over in batches of consecutive blocks, so the image is written
    /// in large pieces:
    ///
    /// - `.literal`: blocks built in memory (directories, indirect blocks, long symlinks), copied
    ///   into a buffer written with one pwrite per batch;
    /// - `.small`: small files' data, read into a buffer when the batch is handed over (on two
    ///   threads, each file into its own part), written with one pwrite per batch;
    /// - `.copied`: larger files' data, copied by the kernel (copy_file_range, or reads and
    ///   writes where it cannot), opened by path.
    ///
    /// Every write to the image happens on the ``DataWriter``'s thread while the next batches
    /// are gathered and read. Files are opened relative to their open directory; a
    /// directory left behind stays open until the batches that may still read from it are
    /// handed over.
    final class BlockStreams {
        enum Region: Int {
            case literal = 0, small = 1, copied = 2
        }

        /// At most this many directories left behind are kept open for a batch's reads.
        static let openDirectoriesPerBatch = 64

        let fd: Int32
        let path: String
        private let writer: DataWriter
        /// The literal and small regions' batches, by ``Region`` (the copied region has none).
        private var batches = [Batch(), Batch()]
        private var directory: (path: ArraySlice<CChar>, fd: Int32) = ([], -1)
        private var retiredDirectories: [Int32] = []
        private var finished = false

        /// A run of consecutive blocks being gathered: the literal region's bytes are in a
        /// buffer slot; the small files' are reads to do when it is handed over.
        private struct Batch {
            var start: UInt64 = 0
            var blocks: UInt64 = 0
            var slot: Int? = nil
            var reads: [Read] = []
        }

        /// `count` bytes of a source file from `offset`, for the batch's bytes `at..<at+room`
        /// (zeros after `count`).
        struct Read: Sendable {
            /// Where to open it from (see ``locate(_:)``).
            var directory: Int32
            var name: [CChar]
            var source: [CChar]
            var offset: UInt64
            var count: Int
            var at: Int
            var room: Int
        }

        init(fd: Int32, path: String) throws {
            self.fd = fd
            self.path = path
            // Batches of 1 MiB: the writing thread copies a batch while the bytes the reading
            // threads just put there are still in the processor's cache (with 8 MiB batches the
            // copy took twice as long).
            writer = try DataWriter(fd: fd, path: path, slots: 4, slotSize: 1 << 20)
        }

        deinit {
            abandon()
        }

        private var batchBytes: Int { writer.buffers.slotSize }

        // MARK: - Adding

        /// Whole blocks built in memory (`bytes`, zero-padded to a block), to go at block `physical`.
        func write(_ bytes: UnsafeRawBufferPointer, at physical: UInt64) throws {
            var done = 0
            while done < bytes.count {
                let count = min(batchBytes, bytes.count - done)
                let blocks = (count + Ext3.blockSize - 1) / Ext3.blockSize
                let at = try reserve(.literal, physical: physical + UInt64(done / Ext3.blockSize), blocks: UInt64(blocks))
                if batches[Region.literal.rawValue].slot == nil { batches[Region.literal.rawValue].slot = try writer.acquire() }
                let base = writer.buffers[batches[Region.literal.rawValue].slot!].baseAddress! + at
                base.copyMemory(from: bytes.baseAddress! + done, byteCount: count)
                (base + count).initializeMemory(as: UInt8.self, repeating: 0, count: blocks * Ext3.blockSize - count)
                done += count
            }
        }

        /// `count` bytes of the file `source` (a NUL-terminated path) from `offset`, to go at
        /// block `physical` and the `blocks` blocks after it (zeros after `count`): read into
        /// the small files' batch, or copied by the writing thread.
        func read(_ source: [CChar], offset: UInt64, count: UInt64, at physical: UInt64, blocks: UInt64, region: Region) throws {
            if region == .copied {
                try writer.submit(.copy(source: source, from: offset, count: count, to: physical * UInt64(Ext3.blockSize)))
                return
            }
            if retiredDirectories.count >= BlockStreams.openDirectoriesPerBatch { try flushSmall() }
            let place = locate(source)
            precondition(Int(blocks) * Ext3.blockSize <= batchBytes, "a small file's run fits a batch")
            let at = try reserve(.small, physical: physical, blocks: blocks)
            batches[Region.small.rawValue].reads.append(Read(directory: place.directory, name: place.name, source: source, offset: offset,
                                                             count: Int(count), at: at, room: Int(blocks) * Ext3.blockSize))
        }

        /// Room for `blocks` blocks at `physical` at the end of the region's batch (handed over
        /// first when they do not follow on from it or do not fit); their byte offset in it.
        private func reserve(_ region: Region, physical: UInt64, blocks: UInt64) throws -> Int {
            let batch = batches[region.rawValue]
            if batch.blocks > 0 && (physical != batch.start + batch.blocks || Int(batch.blocks + blocks) * Ext3.blockSize > batchBytes) {
                if region == .literal { try flushLiteral() } else { try flushSmall() }
            }
            if batches[region.rawValue].blocks == 0 { batches[region.rawValue].start = physical }
            let at = Int(batches[region.rawValue].blocks) * Ext3.blockSize
            batches[region.rawValue].blocks += blocks
            return at
        }

        // MARK: - Handing over

        /// Hands every batch over, waits for the writes, and closes the directories; throws the
        /// first failure.
        func finish() throws {
            guard !finished else { return }
            do {
                try flushLiteral()
                try flushSmall()
            } catch {
                abandon()
                throw error
            }
            finished = true
            defer { release() }
            try writer.finish()
        }

        /// After a failure: drops what is not handed over and stops the writing thread.
        func abandon() {
            guard !finished else { return }
            finished = true
            batches = [Batch(), Batch()]
            try? writer.finish()
            release()
        }

        private func release() {
            closeRetiredDirectories()
            if directory.fd >= 0 { close(directory.fd) }
            directory = ([], -1)
        }

        private func flushLiteral() throws {
            let batch = batches[Region.literal.rawValue]
            batches[Region.literal.rawValue] = Batch()
            guard let slot = batch.slot else { return }
            try writer.submit(.write(slot: slot, length: Int(batch.blocks) * Ext3.blockSize, offset: batch.start * UInt64(Ext3.blockSize)))
        }

        /// Reads the small files' batch into a buffer, on two threads, and hands it over; then
        /// closes the directories left behind.
        private func flushSmall() throws {
            defer { closeRetiredDirectories() }
            let batch = batches[Region.small.rawValue]
            batches[Region.small.rawValue] = Batch()
            guard batch.blocks > 0 else { return }
            let slot = try writer.acquire()
            let buffers = writer.buffers
            // Each read fills its own part of the slot's buffer.
            let failures = Parallel.map(batch.reads, threads: 2) { read in
                BlockStreams.readIntoBuffer(read, base: buffers[slot].baseAddress!)
            }
            if let failure = failures.lazy.compactMap({ $0 }).first {
                try? writer.submit(.release(slot: slot))
                throw failure
            }
            try writer.submit(.write(slot: slot, length: Int(batch.blocks) * Ext3.blockSize, offset: batch.start * UInt64(Ext3.blockSize)))
        }

        private static func open(_ read: Read) -> Int32 {
            if read.directory < 0 { return Glibc.open(read.name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW) }
            return openat(read.directory, read.name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        }

        /// Reads one small file's bytes into its part of the batch buffer, zeros after them.
        private static func readIntoBuffer(_ read: Read, base: UnsafeMutableRawPointer) -> Error? {
            let input = open(read)
            guard input >= 0 else { return DataWriter.unreadable(read.source, errno) }
            defer { close(input) }
            let target = base + read.at
            var done = 0
            while done < read.count {
                let got = pread(input, target + done, read.count - done, off_t(read.offset) + off_t(done))
                if got < 0 {
                    if errno == EINTR { continue }
                    return DataWriter.unreadable(read.source, errno)
                }
                if got == 0 { return DataWriter.changed(read.source) }
                done += got
            }
            (target + done).initializeMemory(as: UInt8.self, repeating: 0, count: read.room - done)
            return nil
        }

        // MARK: - Directories

        /// Where to open `source` from: its directory's descriptor and its name there, or -1
        /// and the whole path.
        private func locate(_ source: [CChar]) -> (directory: Int32, name: [CChar]) {
            let slash = source.lastIndex(of: CChar(UInt8(ascii: "/"))) ?? -1
            let parent = source[..<max(slash, 0)]
            if slash > 0 && parent != directory.path {
                if directory.fd >= 0 { retiredDirectories.append(directory.fd) }
                directory = (parent, Glibc.open(Array(parent) + [0], O_RDONLY | O_DIRECTORY | O_CLOEXEC))
            }
            guard slash > 0, directory.fd >= 0 else { return (-1, source) }
            return (directory.fd, Array(source[(slash + 1)...]))
        }

        private func closeRetiredDirectories() {
            for fd in retiredDirectories { close(fd) }
            retiredDirectories.removeAll()
        }
    }
}
