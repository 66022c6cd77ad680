import CExt2fs
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
    ///   writes where it cannot) on two threads when the batch is handed over.
    ///
    /// The buffers are written on the ``DataWriter``'s thread while the next batches are
    /// gathered and read. Files are opened relative to their open directory; a
    /// directory left behind stays open until the batches that may still read from it are
    /// handed over.
    final class BlockStreams {
        enum Region: Int {
            case literal = 0, small = 1, copied = 2
        }

        /// A larger file's data is copied in pieces of at most this many bytes (spread over both
        /// threads).
        static let pieceBytes = 1 << 20
        /// At most this many directories left behind are kept open for a batch's reads.
        static let openDirectoriesPerBatch = 64

        let fd: Int32
        let path: String
        private let writer: DataWriter
        private var batches = [Batch(), Batch(), Batch()]
        private var directory: (path: ArraySlice<CChar>, fd: Int32) = ([], -1)
        private var retiredDirectories: [Int32] = []
        private var finished = false

        /// A run of consecutive blocks being gathered: the literal region's bytes are in a
        /// buffer slot; the data regions' are reads and copies to do when it is handed over.
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
            writer = try DataWriter(fd: fd, path: path, slots: 4)
        }

        deinit {
            abandon()
        }

        private var batchBytes: Int { writer.buffers[0].count }

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
        /// block `physical` and the `blocks` blocks after it (zeros after `count`).
        func read(_ source: [CChar], offset: UInt64, count: UInt64, at physical: UInt64, blocks: UInt64, region: Region) throws {
            if retiredDirectories.count >= BlockStreams.openDirectoriesPerBatch { try flushData() }
            let place = locate(source)
            let pieceBlocks = UInt64(BlockStreams.pieceBytes / Ext3.blockSize)
            var done: UInt64 = 0
            var block: UInt64 = 0
            while block < blocks {
                let pieceLength = min(pieceBlocks, blocks - block)
                let pieceCount = min(count - done, pieceLength * UInt64(Ext3.blockSize))
                let at = try reserve(region, physical: physical + block, blocks: pieceLength)
                batches[region.rawValue].reads.append(Read(directory: place.directory, name: place.name, source: source, offset: offset + done,
                                                           count: Int(pieceCount), at: at, room: Int(pieceLength) * Ext3.blockSize))
                done += pieceCount
                block += pieceLength
            }
        }

        /// Room for `blocks` blocks at `physical` at the end of the region's batch (handed over
        /// first when they do not follow on from it or do not fit); their byte offset in it.
        private func reserve(_ region: Region, physical: UInt64, blocks: UInt64) throws -> Int {
            let batch = batches[region.rawValue]
            if batch.blocks > 0 && (physical != batch.start + batch.blocks || Int(batch.blocks + blocks) * Ext3.blockSize > batchBytes) {
                if region == .literal { try flushLiteral() } else { try flushData() }
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
                try flushData()
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
            batches = [Batch(), Batch(), Batch()]
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

        /// Hands both data batches over (their reads done), then closes the directories left behind.
        private func flushData() throws {
            defer { closeRetiredDirectories() }
            for region in [Region.small, Region.copied] {
                let batch = batches[region.rawValue]
                batches[region.rawValue] = Batch()
                if batch.blocks > 0 { try flush(batch, region: region) }
            }
        }

        private func flush(_ batch: Batch, region: Region) throws {
            let offset = batch.start * UInt64(Ext3.blockSize)
            if region == .copied {
                // On the reading threads, each piece copied by the kernel as it is opened: a
                // descriptor or two open at a time, whatever the batch holds.
                let fd = self.fd
                let path = self.path
                let failures = ParallelWork.map(batch.reads, threads: 2) { read -> Error? in
                    let input = BlockStreams.open(read)
                    guard input >= 0 else { return DataWriter.unreadable(read.source, errno) }
                    defer { close(input) }
                    return BlockStreams.copy(read, from: input, to: fd, at: offset + UInt64(read.at), path: path)
                }
                if let failure = failures.lazy.compactMap({ $0 }).first { throw failure }
                return
            }
            let slot = try writer.acquire()
            let address = UInt(bitPattern: writer.buffers[slot].baseAddress!)
            let failures = ParallelWork.map(batch.reads, threads: 2) { read in
                BlockStreams.readIntoBuffer(read, base: UnsafeMutableRawPointer(bitPattern: address)!)
            }
            if let failure = failures.lazy.compactMap({ $0 }).first {
                try? writer.submit(.release(slot: slot))
                throw failure
            }
            try writer.submit(.write(slot: slot, length: Int(batch.blocks) * Ext3.blockSize, offset: offset))
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

        /// The read's bytes from `input` into the image file at `at`: copy_file_range, or
        /// reads and writes where the kernel cannot.
        private static func copy(_ read: Read, from input: Int32, to fd: Int32, at: UInt64, path: String) -> Error? {
            var sourceOffset = Int64(read.offset)
            var targetOffset = Int64(at)
            var left = read.count
            while left > 0 {
                let copied = cext2fs_copy_file_range(input, &sourceOffset, fd, &targetOffset, left)
                if copied > 0 {
                    left -= Int(copied)
                    continue
                }
                if copied == 0 { return DataWriter.changed(read.source) }
                let code = errno
                if code == EINTR { continue }
                if [EXDEV, EINVAL, ENOSYS, EOPNOTSUPP, EBADF].contains(code) { break }  // not here: read and write
                if code == ENOSPC || code == EDQUOT { return Error.system(operation: "write", path: path, errno: code) }
                return DataWriter.unreadable(read.source, code)
            }
            guard left > 0 else { return nil }
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: left, alignment: 4096)
            defer { scratch.deallocate() }
            var got = 0
            while got < left {
                let count = pread(input, scratch.baseAddress! + got, left - got, off_t(sourceOffset) + off_t(got))
                if count < 0 {
                    if errno == EINTR { continue }
                    return DataWriter.unreadable(read.source, errno)
                }
                if count == 0 { return DataWriter.changed(read.source) }
                got += count
            }
            do {
                try Ext3.writeFully(fd, UnsafeRawBufferPointer(scratch), at: UInt64(targetOffset), path: path)
            } catch let failure as Error {
                return failure
            } catch {
                return .other("\(error)")
            }
            return nil
        }

        // MARK: - Directories

        /// Where to open `source` from: its directory's descriptor and its name there, or -1
        /// and the whole path.
        private func locate(_ source: [CChar]) -> (directory: Int32, name: [CChar]) {
            var terminated = source
            if terminated.last != 0 { terminated.append(0) }
            let slash = terminated.lastIndex(of: CChar(UInt8(ascii: "/"))) ?? -1
            let parent = terminated[..<max(slash, 0)]
            if slash > 0 && parent != directory.path {
                if directory.fd >= 0 { retiredDirectories.append(directory.fd) }
                directory = (parent, Glibc.open(Array(parent) + [0], O_RDONLY | O_DIRECTORY | O_CLOEXEC))
            }
            guard slash > 0, directory.fd >= 0 else { return (-1, terminated) }
            return (directory.fd, Array(terminated[(slash + 1)...]))
        }

        private func closeRetiredDirectories() {
            for fd in retiredDirectories { close(fd) }
            retiredDirectories.removeAll()
        }
    }
}
