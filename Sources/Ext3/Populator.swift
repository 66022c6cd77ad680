import LinuxSupport
import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// How far a pack has got: reported a few times a second while data is written.
    public struct PackProgress: Sendable {
        /// Regular files written so far, of ``totalFiles``.
        public var files: Int
        public var totalFiles: Int
        /// Bytes of file data written so far, of ``totalBytes``.
        public var bytes: UInt64
        public var totalBytes: UInt64
        /// Seconds since data writing started.
        public var seconds: Double
    }

    /// Writes a ``Tree`` into an open, freshly formatted filesystem, under `upper/`.
    ///
    /// Speed comes from doing what a fresh image allows: inodes are numbered in order, every
    /// directory's blocks are built whole in memory (no per-entry link calls), blocks are
    /// claimed as contiguous runs straight from the block bitmap in three regions, each filled
    /// front to back (directories and indirect blocks; small files' data; larger files' data),
    /// and data never goes through libext2fs's file layer: it goes out in large writes and
    /// kernel copies (``BlockStreams``). Inodes and extended attributes go through libext2fs.
    final class Populator {
        let fs: ext2_filsys
        let fd: Int32
        let path: String
        var tree: Tree
        let upper: ext2_ino_t
        let progress: ((PackProgress) -> Void)?
        var numbers: [ext2_ino_t] = []
        var maps: [BlockMapper?] = []
        /// Where each region's next blocks are looked for, by ``BlockStreams/Region`` (see
        /// ``placeRegions()``).
        var cursors: [blk64_t] = [0, 0, 0]
        let lastBlock: blk64_t
        let buffer: UnsafeMutableRawBufferPointer
        static let bufferSize = 4 << 20

        // Progress.
        var filesDone = 0
        var bytesDone: UInt64 = 0
        let totalFiles: Int
        let totalBytes: UInt64
        let started = Timestamp.now
        var lastReport = Timestamp.now

        init(fs: ext2_filsys, imagePath: String, tree: Tree, upper: ext2_ino_t, progress: ((PackProgress) -> Void)?) throws {
            self.fs = fs
            self.path = imagePath
            self.tree = tree
            self.upper = upper
            self.progress = progress
            fd = open(imagePath, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { throw Error.system(operation: "open", path: imagePath, errno: errno) }
            let sb = fs.pointee.super!
            cursors = Array(repeating: blk64_t(sb.pointee.s_first_data_block), count: 3)
            lastBlock = ext2fs_blocks_count(sb) - 1
            buffer = .allocate(byteCount: Populator.bufferSize, alignment: 4096)
            totalFiles = tree.nodes.filter { $0.kind == .regular }.count
            totalBytes = tree.fileBytes
        }

        deinit {
            close(fd)
            buffer.deallocate()
        }

        /// Writes everything; `data` supplies the data of the tree's ``Tree/Content/stream(ordinal:)``
        /// files.
        func run(data: FileDataStream?) throws {
            try numberInodes()
            maps = Array(repeating: nil, count: tree.nodes.count)
            placeRegions()
            let streams = try BlockStreams(fd: fd, path: path)
            do {
                try writeDirectories(streams)
                try writeSymlinkBlocks(streams)
                // Files read from a directory; a tree may also hold files from a stream (an
                // image's files with a directory grafted onto them), written after.
                try copyFiles(streams)
                try streams.finish()
            } catch {
                streams.abandon()
                throw error
            }
            if let data { try copyData(from: data) }
            try writeInodes()
            // Bitmaps, descriptors, superblock and cached inode-table blocks go to the file now,
            // without fsync: like cp, the data is left to the kernel's writeback (an
            // fsync here waits for the whole image to reach the disk). The close that follows
            // finds nothing left to flush.
            try check(ext2fs_flush2(fs, Int32(EXT2_FLAG_FLUSH_NO_SYNC)), "write the filesystem metadata", path: path)
            report(force: true)
        }

        // MARK: - Messages and progress

        /// The entry's path inside upper/, for messages.
        func describe(_ index: Int) -> String {
            if index == 0 { return "upper/" }
            for (parentIndex, node) in tree.nodes.enumerated() {
                if let child = node.children.first(where: { $0.node == index }) {
                    return (parentIndex == 0 ? "upper/" : describe(parentIndex) + "/") + Tree.display(child.name)
                }
            }
            return "inode \(numbers[index])"
        }

        func report(force: Bool = false) {
            guard let progress else { return }
            let now = Timestamp.now
            let sinceLast = Double(now.seconds - lastReport.seconds) + (Double(now.nanoseconds) - Double(lastReport.nanoseconds)) / 1e9
            guard force || sinceLast >= 0.25 else { return }
            lastReport = now
            let seconds = Double(now.seconds - started.seconds) + (Double(now.nanoseconds) - Double(started.nanoseconds)) / 1e9
            progress(PackProgress(files: filesDone, totalFiles: totalFiles, bytes: bytesDone, totalBytes: totalBytes, seconds: seconds))
        }
    }
}

extension Ext3.Formatter {
    /// Builds the image as ``create(at:)`` does, then writes `tree` under `upper/` before the
    /// filesystem is closed and the file renamed into place: on any failure (an unreadable
    /// file, a full disk) nothing is left behind. `data` supplies the tree's
    /// ``Ext3/Tree/Content/stream(ordinal:)`` files (nil: it has none); `progress` is called a
    /// few times a second while file data is written.
    package func create(at target: String, writing tree: Ext3.Tree, data: Ext3.FileDataStream?,
                        rootFiles: [Ext3.RootFile] = [],
                        progress: ((Ext3.PackProgress) -> Void)?) throws -> Ext3.Summary {
        try create(at: target) { fs, path, upper in
            let populator = try Ext3.Populator(fs: fs, imagePath: path, tree: tree, upper: upper, progress: progress)
            try populator.run(data: data)
            for file in rootFiles { try file.write(into: fs, path: path) }
        }
    }
}
