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

        /// Writes everything; `archive` supplies file data for trees read from a tar archive.
        func run(archive: TarReader?) throws {
            try numberInodes()
            maps = Array(repeating: nil, count: tree.nodes.count)
            placeRegions()
            let streams = try BlockStreams(fd: fd, path: path)
            do {
                try writeDirectories(streams)
                try writeSymlinkBlocks(streams)
                if archive == nil { try copyFiles(streams) }
                try streams.finish()
            } catch {
                streams.abandon()
                throw error
            }
            if let archive { try copyData(from: archive) }
            try writeInodes()
            // Bitmaps, descriptors, superblock and cached inode-table blocks go to the file now,
            // without fsync: like tar or cp, the data is left to the kernel's writeback (an
            // fsync here waits for the whole image to reach the disk). The close that follows
            // finds nothing left to flush.
            try check(ext2fs_flush2(fs, Int32(EXT2_FLAG_FLUSH_NO_SYNC)), "write the filesystem metadata", path: path)
            report(force: true)
        }

        // MARK: - Inodes

        /// Numbers the tree's inodes: the free ones in order (on a fresh image, a run without gaps).
        private func numberInodes() throws {
            numbers = [ext2_ino_t](repeating: 0, count: tree.nodes.count)
            numbers[0] = upper
            let sb = fs.pointee.super!
            let last = ext2_ino_t(sb.pointee.s_inodes_count)
            var cursor = ext2_ino_t(sb.pointee.s_first_ino)
            for index in 1..<tree.nodes.count {
                var found: ext2_ino_t = 0
                guard cursor <= last, ext2fs_find_first_zero_inode_bitmap2(fs.pointee.inode_map, cursor, last, &found) == 0 else {
                    throw Error.invalidConfiguration("\(path): no free inode left for \(tree.nodes.count - 1) entries")
                }
                ext2fs_inode_alloc_stats2(fs, found, 1, tree.nodes[index].kind == .directory ? 1 : 0)
                numbers[index] = found
                cursor = found + 1
            }
        }

        /// The tree's inodes straight into the inode tables, a group's worth per write (their
        /// numbers run on without gaps: see ``numberInodes()``); then upper/ and the extended
        /// attributes through libext2fs. The other inodes sharing the first and last blocks are
        /// read through libext2fs (it may hold newer copies than the file), and those two blocks
        /// are written through it too, so no older copy in its cache outlives them; it has read
        /// no other block of the tables.
        private func writeInodes() throws {
            let now = Timestamp.now
            let perGroup = UInt64(fs.pointee.super.pointee.s_inodes_per_group)
            let perBlock = UInt64(Ext3.blockSize / Ext3.inodeSize)
            var index = 1
            while index < tree.nodes.count {
                let first = UInt64(numbers[index]) - 1
                let group = first / perGroup
                var end = index + 1
                while end < tree.nodes.count && numbers[end] == numbers[end - 1] + 1 && (UInt64(numbers[end]) - 1) / perGroup == group {
                    end += 1
                }
                let slot = first % perGroup
                let firstBlock = slot / perBlock
                let blocks = (slot + UInt64(end - index) - 1) / perBlock - firstBlock + 1
                let table = ext2fs_inode_table_loc(fs, dgrp_t(group)) + firstBlock
                var buffer = [UInt8](repeating: 0, count: Int(blocks) * Ext3.blockSize)
                try buffer.withUnsafeMutableBytes { bytes in
                    // The other inodes of the first and last blocks (lost+found, upper/... or
                    // unused ones) as libext2fs has them now.
                    let groupStart = group * perGroup + 1
                    for block in Set([firstBlock, firstBlock + blocks - 1]) {
                        for other in block * perBlock..<(block + 1) * perBlock {
                            let number = groupStart + other
                            guard number < UInt64(numbers[index]) || number > UInt64(numbers[end - 1]),
                                  number <= UInt64(fs.pointee.super.pointee.s_inodes_count) else { continue }
                            let offset = Int(other - firstBlock * perBlock) * Ext3.inodeSize
                            try check(ext2fs_read_inode_full(fs, ext2_ino_t(number), (bytes.baseAddress! + offset).assumingMemoryBound(to: ext2_inode.self),
                                                             Int32(Ext3.inodeSize)), "read inode \(number)", path: path)
                        }
                    }
                    for node in index..<end {
                        let offset = Int(slot - firstBlock * perBlock + UInt64(node - index)) * Ext3.inodeSize
                        let raw = UnsafeMutableRawBufferPointer(rebasing: bytes[offset..<offset + Ext3.inodeSize])
                        raw.initializeMemory(as: UInt8.self, repeating: 0)
                        try fill(raw.baseAddress!.assumingMemoryBound(to: ext2_inode_large.self), node: tree.nodes[node], index: node, now: now)
                    }
                    try writeAll(UnsafeRawBufferPointer(bytes), at: table * UInt64(Ext3.blockSize))
                    // The cache may hold an older copy of those two blocks: give it the new one.
                    for block in Set([0, blocks - 1]) {
                        try check(io_channel_write_blk64(fs.pointee.io, table + block, 1, bytes.baseAddress! + Int(block) * Ext3.blockSize),
                                  "write the inode table", path: path)
                    }
                }
                index = end
            }

            // libext2fs keeps the inode-table block it read last: it is stale now.
            try check(ext2fs_flush_icache(fs), "reset the inode cache", path: path)

            // upper/: keep its owner, mode and times; give it the new directory blocks.
            var raw = [UInt8](repeating: 0, count: Ext3.inodeSize)
            try raw.withUnsafeMutableBytes { bytes in
                let inode = bytes.baseAddress!.assumingMemoryBound(to: ext2_inode.self)
                try check(ext2fs_read_inode_full(fs, upper, inode, Int32(bytes.count)), "read inode \(upper)", path: path)
                // The block ext2fs_mkdir gave it goes back to the free pool.
                let old = bytes.load(fromByteOffset: 40, as: UInt32.self)
                if old != 0 { ext2fs_block_alloc_stats2(fs, blk64_t(old), -1) }
                try fill(bytes.baseAddress!.assumingMemoryBound(to: ext2_inode_large.self), node: tree.nodes[0], index: 0, now: now)
                try check(ext2fs_write_inode_full(fs, upper, inode, Int32(bytes.count)), "write inode \(upper)", path: path)
            }
            for index in tree.nodes.indices where !tree.nodes[index].xattrs.isEmpty {
                try writeXattrs(tree.nodes[index].xattrs, inode: numbers[index], index: index)
            }
        }

        private func fill(_ inode: UnsafeMutablePointer<ext2_inode_large>, node: Tree.Node, index: Int, now: Timestamp) throws {
            let typeBits: UInt16
            switch node.kind {
            case .regular: typeBits = UInt16(LINUX_S_IFREG)
            case .directory: typeBits = UInt16(LINUX_S_IFDIR)
            case .symlink: typeBits = UInt16(LINUX_S_IFLNK)
            case .characterDevice: typeBits = UInt16(LINUX_S_IFCHR)
            case .blockDevice: typeBits = UInt16(LINUX_S_IFBLK)
            case .fifo: typeBits = UInt16(LINUX_S_IFIFO)
            case .socket: typeBits = UInt16(LINUX_S_IFSOCK)
            case .unknown: throw Error.other("\(describe(index)): unknown file type")
            }
            if index != 0 {
                inode.pointee.i_mode = typeBits | (node.permissions & 0o7777)
                inode.pointee.i_uid = UInt16(truncatingIfNeeded: node.uid)
                inode.pointee.osd2.linux2.l_i_uid_high = UInt16(truncatingIfNeeded: node.uid >> 16)
                inode.pointee.i_gid = UInt16(truncatingIfNeeded: node.gid)
                inode.pointee.osd2.linux2.l_i_gid_high = UInt16(truncatingIfNeeded: node.gid >> 16)
                (inode.pointee.i_atime, inode.pointee.i_atime_extra) = Populator.encode(node.atime)
                (inode.pointee.i_mtime, inode.pointee.i_mtime_extra) = Populator.encode(node.mtime)
                (inode.pointee.i_ctime, inode.pointee.i_ctime_extra) = Populator.encode(node.ctime)
                (inode.pointee.i_crtime, inode.pointee.i_crtime_extra) = Populator.encode(now)
                // 256-byte inodes carry the nanosecond fields (the extra_isize feature stays off).
                inode.pointee.i_extra_isize = UInt16(MemoryLayout<ext2_inode_large>.size - Int(EXT2_GOOD_OLD_INODE_SIZE))
            }
            var links = node.links
            if node.kind == .directory {
                let subdirectories = node.children.reduce(UInt32(0)) { $0 + (tree.nodes[$1.node].kind == .directory ? 1 : 0) }
                links = 2 + subdirectories
                if links > Tree.linkLimit {
                    throw Error.invalidConfiguration("\(describe(index)): more than \(Tree.linkLimit - 2) subdirectories, which ext3 cannot hold")
                }
            }
            inode.pointee.i_links_count = UInt16(links)

            var size: UInt64 = 0
            var blocks: blk64_t = 0
            withUnsafeMutableBytes(of: &inode.pointee.i_block) { raw in
                for offset in stride(from: 0, to: raw.count, by: 1) { raw[offset] = 0 }
                switch node.kind {
                case .regular, .directory:
                    if let map = maps[index] {
                        for (slot, block) in map.direct.enumerated() { raw.storeBytes(of: block.littleEndian, toByteOffset: slot * 4, as: UInt32.self) }
                        blocks = blk64_t(map.blockCount)
                        size = node.kind == .directory ? map.dataBlocks * UInt64(Ext3.blockSize) : node.size
                    } else {
                        size = node.size
                    }
                case .symlink:
                    size = UInt64(node.target.count)
                    if let map = maps[index] {
                        raw.storeBytes(of: map.direct[0].littleEndian, toByteOffset: 0, as: UInt32.self)
                        blocks = 1
                    } else {
                        for (offset, byte) in node.target.enumerated() { raw[offset] = byte }
                    }
                case .characterDevice, .blockDevice:
                    if node.major < 256 && node.minor < 256 {
                        raw.storeBytes(of: (node.major << 8 | node.minor).littleEndian, toByteOffset: 0, as: UInt32.self)
                    } else {
                        let encoded = (node.minor & 0xFF) | (node.major << 8) | ((node.minor & ~0xFF) << 12)
                        raw.storeBytes(of: encoded.littleEndian, toByteOffset: 4, as: UInt32.self)
                    }
                default:
                    break
                }
            }
            inode.pointee.i_size = UInt32(truncatingIfNeeded: size)
            inode.pointee.i_size_high = UInt32(truncatingIfNeeded: size >> 32)
            try check(ext2fs_iblk_set(fs, UnsafeMutableRawPointer(inode).assumingMemoryBound(to: ext2_inode.self), blocks),
                      "count blocks of \(describe(index))", path: path)
        }

        /// seconds and nanoseconds as ext4 stores them: the low 32 bits of the seconds, and an
        /// extra word with the nanoseconds above 2 epoch bits (seconds beyond the 32-bit range).
        static func encode(_ time: Timestamp) -> (UInt32, UInt32) {
            let low = Int32(truncatingIfNeeded: time.seconds)
            let epoch = UInt32(truncatingIfNeeded: (time.seconds - Int64(low)) >> 32) & 3
            return (UInt32(bitPattern: low), epoch | (time.nanoseconds << 2))
        }

        private func writeXattrs(_ xattrs: [(name: String, value: [UInt8])], inode: ext2_ino_t, index: Int) throws {
            var handle: OpaquePointer? = nil
            try check(ext2fs_xattrs_open(fs, inode, &handle), "open extended attributes of \(describe(index))", path: path)
            defer { ext2fs_xattrs_close(&handle) }
            try check(ext2fs_xattrs_read(handle), "read extended attributes of \(describe(index))", path: path)
            for xattr in xattrs {
                try xattr.value.withUnsafeBytes { value in
                    try check(ext2fs_xattr_set(handle, xattr.name, value.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, value.count),
                              "set extended attribute \(xattr.name) of \(describe(index))", path: path)
                }
            }
        }

        // MARK: - Directories and symlinks

        /// Every directory's blocks, built whole in memory and laid one after another: they go
        /// out through the batch buffers in large writes.
        private func writeDirectories(_ streams: BlockStreams) throws {
            var parents = [Int](repeating: -1, count: tree.nodes.count)
            for (index, node) in tree.nodes.enumerated() where node.kind == .directory {
                for child in node.children where tree.nodes[child.node].kind == .directory { parents[child.node] = index }
            }
            for (index, node) in tree.nodes.enumerated() where node.kind == .directory {
                let parent = index == 0 ? ext2_ino_t(EXT2_ROOT_INO) : numbers[parents[index]]
                let content = directoryContent(self: numbers[index], parent: parent, children: node.children)
                var map = BlockMapper()
                let blocks = UInt64(content.count / Ext3.blockSize)
                let runs = try map.map(0..<blocks, allocator: allocateLiteral)
                try writePointerBlocks(map, streams)
                try content.withUnsafeBytes { bytes in
                    for run in runs {
                        try streams.write(UnsafeRawBufferPointer(rebasing: bytes[Int(run.logical) * Ext3.blockSize..<Int(run.logical + run.count) * Ext3.blockSize]),
                                          at: run.physical)
                    }
                }
                maps[index] = map
            }
        }

        /// `.`, `..` and the entries, packed into whole blocks (ext2_dir_entry_2 records).
        private func directoryContent(self own: ext2_ino_t, parent: ext2_ino_t, children: [(name: [UInt8], node: Int)]) -> [UInt8] {
            let blockSize = Ext3.blockSize
            var content = [UInt8]()
            content.reserveCapacity(blockSize)
            var lastRecord = -1  // offset of the last record in the current block
            func append(_ inode: ext2_ino_t, _ type: UInt8, _ name: [UInt8]) {
                let length = (8 + name.count + 3) & ~3
                let used = content.count % blockSize
                if lastRecord >= 0 && (used == 0 || used + length > blockSize) {
                    // Stretch the last record to the end of its block.
                    if used != 0 { content += [UInt8](repeating: 0, count: blockSize - used) }
                    let end = content.count
                    let stretched = UInt16(end - lastRecord)
                    content[lastRecord + 4] = UInt8(stretched & 0xFF)
                    content[lastRecord + 5] = UInt8(stretched >> 8)
                }
                lastRecord = content.count
                withUnsafeBytes(of: inode.littleEndian) { content += $0 }
                withUnsafeBytes(of: UInt16(length).littleEndian) { content += $0 }
                content.append(UInt8(name.count))
                content.append(type)
                content += name
                content += [UInt8](repeating: 0, count: length - 8 - name.count)
            }
            append(own, UInt8(EXT2_FT_DIR), [46])
            append(parent, UInt8(EXT2_FT_DIR), [46, 46])
            for child in children {
                append(numbers[child.node], Populator.fileType(tree.nodes[child.node].kind), child.name)
            }
            let used = content.count % blockSize
            if used != 0 { content += [UInt8](repeating: 0, count: blockSize - used) }
            let stretched = UInt16(content.count - lastRecord)
            content[lastRecord + 4] = UInt8(stretched & 0xFF)
            content[lastRecord + 5] = UInt8(stretched >> 8)
            return content
        }

        static func fileType(_ kind: EntryKind) -> UInt8 {
            switch kind {
            case .regular: return UInt8(EXT2_FT_REG_FILE)
            case .directory: return UInt8(EXT2_FT_DIR)
            case .symlink: return UInt8(EXT2_FT_SYMLINK)
            case .characterDevice: return UInt8(EXT2_FT_CHRDEV)
            case .blockDevice: return UInt8(EXT2_FT_BLKDEV)
            case .fifo: return UInt8(EXT2_FT_FIFO)
            case .socket: return UInt8(EXT2_FT_SOCK)
            case .unknown: return UInt8(EXT2_FT_UNKNOWN)
            }
        }

        /// Targets of 60 bytes or more live in a block of their own.
        private func writeSymlinkBlocks(_ streams: BlockStreams) throws {
            for (index, node) in tree.nodes.enumerated() where node.kind == .symlink && node.target.count >= 60 {
                var map = BlockMapper()
                let runs = try map.map(0..<1, allocator: allocateLiteral)
                try node.target.withUnsafeBytes { try streams.write($0, at: runs[0].physical) }
                maps[index] = map
            }
        }

        // MARK: - File data

        /// Where each region starts: the literal one (directories, long symlinks and every
        /// indirect block) first, then small files' data, then larger files' data; each with
        /// room for what it gets, so it fills without gaps. The free blocks the regions will
        /// take are reserved in the image file first (fallocate): writing into reserved blocks
        /// costs the host filesystem far less than allocating them page by page. The image
        /// file only grows by what the pack writes anyway (where fallocate is refused, as on
        /// some network filesystems, nothing changes but the speed).
        private func placeRegions() {
            let needs = tree.blockNeeds
            let smallStart = freeRuns(needs.literal, from: cursors[BlockStreams.Region.literal.rawValue], reserve: true)
            let copiedStart = freeRuns(needs.small, from: smallStart, reserve: true)
            _ = freeRuns(needs.copied, from: copiedStart, reserve: true)
            cursors[BlockStreams.Region.small.rawValue] = smallStart
            cursors[BlockStreams.Region.copied.rawValue] = copiedStart
        }

        /// From a directory: each file in tree order, its data ranges (all of it unless sparse).
        private func copyFiles(_ streams: BlockStreams) throws {
            let blockSize = UInt64(Ext3.blockSize)
            for index in tree.nodes.indices where tree.nodes[index].kind == .regular {
                guard case let .file(source, segments) = tree.nodes[index].content else { continue }
                let size = tree.nodes[index].size
                if size > 0 {
                    var map = BlockMapper()
                    let blocks = (size + blockSize - 1) / blockSize
                    let small = segments == nil && blocks <= Tree.smallFileBlocks
                    var runs: [(logical: UInt64, physical: UInt64, count: UInt64)] = []
                    for range in segments.map(Tree.blockRanges) ?? [0..<blocks] {
                        runs += try small ? map.map(range, allocator: allocateSmall)
                            : map.map(range, allocator: allocateCopied, pointerAllocator: allocateLiteral)
                    }
                    try writePointerBlocks(map, streams)
                    for run in runs {
                        let start = run.logical * blockSize
                        guard size > start else { continue }
                        let count = min(run.count * blockSize, size - start)
                        try streams.read(source, offset: start, count: count, at: run.physical, blocks: run.count, region: small ? .small : .copied)
                        bytesDone += count
                    }
                    maps[index] = map
                }
                filesDone += 1
                report()
            }
        }

        /// A file's or directory's indirect blocks.
        private func writePointerBlocks(_ map: BlockMapper, _ streams: BlockStreams) throws {
            for node in map.nodes {
                try node.pointers.withUnsafeBytes { try streams.write($0, at: UInt64(node.block)) }
            }
        }

        /// From an archive: the entries' data in archive order, straight into their blocks (all
        /// in the region of larger files, indirect blocks with their data).
        private func copyData(from reader: TarReader) throws {
            var byOrdinal: [Int: Int] = [:]
            for (index, node) in tree.nodes.enumerated() {
                if case let .archive(ordinal) = node.content { byOrdinal[ordinal] = index }
            }
            while let entry = try reader.next() {
                guard let index = byOrdinal[entry.ordinal] else { continue }
                if entry.size > 0 {
                    var map = BlockMapper()
                    try reader.readData(size: entry.size, buffer: buffer) { chunk, offset in
                        let first = offset / UInt64(Ext3.blockSize)
                        let blocks = (UInt64(chunk.count) + UInt64(Ext3.blockSize) - 1) / UInt64(Ext3.blockSize)
                        for run in try map.map(first..<(first + blocks), allocator: allocateCopied) {
                            let start = Int((run.logical - first) * UInt64(Ext3.blockSize))
                            let end = min(Int((run.logical - first + run.count) * UInt64(Ext3.blockSize)), chunk.count)
                            try writeAll(UnsafeRawBufferPointer(rebasing: chunk[start..<end]), at: run.physical * UInt64(Ext3.blockSize))
                        }
                        bytesDone += UInt64(chunk.count)
                        report()
                    }
                    try writeMapBlocks(map)
                    maps[index] = map
                }
                filesDone += 1
                report()
            }
        }

        // MARK: - Blocks

        /// Claims up to `count` free blocks as runs, from the first free block at or after the
        /// cursor on (the image is fresh: this walks forward through free space).
        private func allocateLiteral(_ count: UInt64) throws -> [(start: UInt64, count: UInt64)] {
            try allocate(count, region: BlockStreams.Region.literal.rawValue)
        }

        private func allocateSmall(_ count: UInt64) throws -> [(start: UInt64, count: UInt64)] {
            try allocate(count, region: BlockStreams.Region.small.rawValue)
        }

        private func allocateCopied(_ count: UInt64) throws -> [(start: UInt64, count: UInt64)] {
            try allocate(count, region: BlockStreams.Region.copied.rawValue)
        }

        /// Claims up to `count` free blocks as runs, from the first free block at or after the
        /// region's cursor on (the image is fresh: this walks forward through free space,
        /// starting over at the beginning when it reaches the end).
        private func allocate(_ count: UInt64, region: Int) throws -> [(start: UInt64, count: UInt64)] {
            var runs: [(start: UInt64, count: UInt64)] = []
            var wanted = count
            var wrapped = false
            while wanted > 0 {
                var start: blk64_t = 0
                let cursor = cursors[region]
                if cursor > lastBlock || ext2fs_find_first_zero_block_bitmap2(fs.pointee.block_map, cursor, lastBlock, &start) != 0 {
                    guard !wrapped else {
                        throw Error.library(operation: "allocate blocks", path: path, code: Int64(EXT2_ET_BLOCK_ALLOC_FAIL),
                                            message: Ext3.message(for: Int64(EXT2_ET_BLOCK_ALLOC_FAIL)))
                    }
                    wrapped = true
                    cursors[region] = blk64_t(fs.pointee.super.pointee.s_first_data_block)
                    continue
                }
                var end: blk64_t = 0
                if ext2fs_find_first_set_block_bitmap2(fs.pointee.block_map, start, min(lastBlock, start + wanted - 1), &end) != 0 {
                    end = min(lastBlock, start + wanted - 1) + 1
                }
                let run = min(end - start, wanted)
                ext2fs_block_alloc_stats_range(fs, start, blk_t(run), 1)
                runs.append((start, run))
                wanted -= run
                cursors[region] = start + run
            }
            return runs
        }

        /// The block where `blocks` free blocks from `start` on have been passed; with
        /// `reserve`, those blocks are reserved in the image file on the way (failures are
        /// left to the writes, which say what went wrong).
        private func freeRuns(_ blocks: UInt64, from start: blk64_t, reserve: Bool) -> blk64_t {
            var cursor = start
            var left = blocks
            while left > 0 && cursor <= lastBlock {
                var free: blk64_t = 0
                guard ext2fs_find_first_zero_block_bitmap2(fs.pointee.block_map, cursor, lastBlock, &free) == 0 else { break }
                var used: blk64_t = 0
                if ext2fs_find_first_set_block_bitmap2(fs.pointee.block_map, free, lastBlock, &used) != 0 { used = lastBlock + 1 }
                let run = min(used - free, left)
                if reserve {
                    _ = FileCalls.fallocate(fd, offset: Int64(free * UInt64(Ext3.blockSize)), length: Int64(run * UInt64(Ext3.blockSize)))
                }
                left -= run
                cursor = free + run
            }
            return cursor
        }

        private func writeMapBlocks(_ map: BlockMapper) throws {
            for node in map.nodes {
                try node.pointers.withUnsafeBytes { try writeAll($0, at: UInt64(node.block) * UInt64(Ext3.blockSize)) }
            }
        }

        private func writeAll(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
            try Ext3.writeFully(fd, bytes, at: offset, path: path)
        }

        // MARK: - Messages and progress

        /// The entry's path inside upper/, for messages.
        private func describe(_ index: Int) -> String {
            if index == 0 { return "upper/" }
            for (parentIndex, node) in tree.nodes.enumerated() {
                if let child = node.children.first(where: { $0.node == index }) {
                    return (parentIndex == 0 ? "upper/" : describe(parentIndex) + "/") + Tree.display(child.name)
                }
            }
            return "inode \(numbers[index])"
        }

        private func report(force: Bool = false) {
            guard let progress else { return }
            let now = Timestamp.now
            let sinceLast = Double(now.seconds - lastReport.seconds) + (Double(now.nanoseconds) - Double(lastReport.nanoseconds)) / 1e9
            guard force || sinceLast >= 0.25 else { return }
            lastReport = now
            let seconds = Double(now.seconds - started.seconds) + (Double(now.nanoseconds) - Double(started.nanoseconds)) / 1e9
            progress(PackProgress(files: filesDone, totalFiles: totalFiles, bytes: bytesDone, totalBytes: totalBytes, seconds: seconds))
        }
    }

    /// The block map of one block-mapped (ext2/ext3) file: 12 direct pointers, then single,
    /// double and triple indirect blocks of 1024 pointers. Blocks are claimed chunk by chunk:
    /// for each chunk the indirect blocks it needs first, then its data in as few runs as the
    /// free space allows.
    struct BlockMapper {
        static let perBlock: UInt64 = UInt64(Ext3.blockSize / 4)
        var direct = [UInt32](repeating: 0, count: 15)
        var nodes: [(block: UInt32, pointers: [UInt32])] = []
        private var index: [UInt64: Int] = [:]
        /// Data blocks mapped.
        private(set) var dataBlocks: UInt64 = 0
        /// Data and indirect blocks.
        var blockCount: UInt64 { dataBlocks + UInt64(nodes.count) }

        /// Maps the logical blocks `range`, claiming blocks through `allocator`; returns the data
        /// runs as (logical, physical, count).
        /// Indirect blocks come from `pointerAllocator` when given.
        mutating func map(_ range: Range<UInt64>, allocator: (UInt64) throws -> [(start: UInt64, count: UInt64)],
                          pointerAllocator: ((UInt64) throws -> [(start: UInt64, count: UInt64)])? = nil)
            throws -> [(logical: UInt64, physical: UInt64, count: UInt64)] {
            guard !range.isEmpty else { return [] }
            let p = BlockMapper.perBlock
            // Indirect blocks first.
            var block = range.lowerBound
            while block < range.upperBound {
                if let pointerAllocator {
                    try ensurePath(block, allocator: pointerAllocator)
                } else {
                    try ensurePath(block, allocator: allocator)
                }
                block = block < 12 ? 12 : 12 + ((block - 12) / p + 1) * p
            }
            var result: [(logical: UInt64, physical: UInt64, count: UInt64)] = []
            var logical = range.lowerBound
            for run in try allocator(UInt64(range.count)) {
                result.append((logical, run.start, run.count))
                for offset in 0..<run.count { set(logical + offset, UInt32(run.start + offset)) }
                logical += run.count
            }
            dataBlocks += UInt64(range.count)
            return result
        }

        /// The leaf that holds logical block `block`'s pointer: a key and the slot in it.
        private static func leaf(_ block: UInt64) -> (key: UInt64, slot: Int) {
            let p = perBlock
            var b = block - 12
            if b < p { return (1, Int(b)) }
            b -= p
            if b < p * p { return (3 << 40 | b / p, Int(b % p)) }
            b -= p * p
            return (6 << 40 | b / p, Int(b % p))
        }

        private mutating func set(_ logical: UInt64, _ physical: UInt32) {
            if logical < 12 {
                direct[Int(logical)] = physical
                return
            }
            let (key, slot) = BlockMapper.leaf(logical)
            nodes[index[key]!].pointers[slot] = physical
        }

        /// Makes the indirect blocks on the way to logical block `block`, parents before children.
        private mutating func ensurePath(_ block: UInt64, allocator: (UInt64) throws -> [(start: UInt64, count: UInt64)]) throws {
            guard block >= 12 else { return }
            let p = BlockMapper.perBlock
            var b = block - 12
            // (key, where its pointer goes: parent key or a direct slot, slot in the parent)
            var path: [(key: UInt64, parent: UInt64?, slot: Int)] = []
            if b < p {
                path = [(1, nil, 12)]
            } else {
                b -= p
                if b < p * p {
                    path = [(2, nil, 13), (3 << 40 | b / p, 2, Int(b / p))]
                } else {
                    b -= p * p
                    let middle = b / (p * p)
                    path = [(4, nil, 14), (5 << 40 | middle, 4, Int(middle)), (6 << 40 | b / p, 5 << 40 | middle, Int((b / p) % p))]
                }
            }
            for step in path where index[step.key] == nil {
                let physical = UInt32(try allocator(1)[0].start)
                index[step.key] = nodes.count
                nodes.append((physical, [UInt32](repeating: 0, count: Int(p))))
                if let parent = step.parent {
                    nodes[index[parent]!].pointers[step.slot] = physical
                } else {
                    direct[step.slot] = physical
                }
            }
        }
    }
}


