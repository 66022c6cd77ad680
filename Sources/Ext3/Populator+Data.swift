import LinuxSupport
import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3.Populator {
    // MARK: - File data

    /// Where each region starts: the literal one (directories, long symlinks and every
    /// indirect block) first, then small files' data, then larger files' data; each with
    /// room for what it gets, so it fills without gaps. The free blocks the regions will
    /// take are reserved in the image file first (fallocate): writing into reserved blocks
    /// costs the host filesystem far less than allocating them page by page. The image
    /// file only grows by what the pack writes anyway (where fallocate is refused, as on
    /// some network filesystems, nothing changes but the speed).
    func placeRegions() {
        let needs = tree.blockNeeds
        let smallStart = freeRuns(needs.literal, from: cursors[Ext3.BlockStreams.Region.literal.rawValue], reserve: true)
        let copiedStart = freeRuns(needs.small, from: smallStart, reserve: true)
        _ = freeRuns(needs.copied, from: copiedStart, reserve: true)
        cursors[Ext3.BlockStreams.Region.small.rawValue] = smallStart
        cursors[Ext3.BlockStreams.Region.copied.rawValue] = copiedStart
    }

    /// From a directory: each file in tree order, its data ranges (all of it unless sparse).
    func copyFiles(_ streams: Ext3.BlockStreams) throws {
        let blockSize = UInt64(Ext3.blockSize)
        for index in tree.nodes.indices where tree.nodes[index].kind == .regular {
            guard case let .file(source, segments) = tree.nodes[index].content else { continue }
            let size = tree.nodes[index].size
            if size > 0 {
                var map = Ext3.BlockMapper()
                let blocks = (size + blockSize - 1) / blockSize
                let small = segments == nil && blocks <= Ext3.Tree.smallFileBlocks
                var runs: [(logical: UInt64, physical: UInt64, count: UInt64)] = []
                for range in segments.map(Ext3.Tree.blockRanges) ?? [0..<blocks] {
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
    func writePointerBlocks(_ map: Ext3.BlockMapper, _ streams: Ext3.BlockStreams) throws {
        for node in map.nodes {
            try node.pointers.withUnsafeBytes { try streams.write($0, at: UInt64(node.block)) }
        }
    }

    /// From a stream (an archive): the items' data in stream order, straight into their blocks
    /// (all in the region of larger files, indirect blocks with their data).
    func copyData(from stream: Ext3.FileDataStream) throws {
        var byOrdinal: [Int: Int] = [:]
        for (index, node) in tree.nodes.enumerated() {
            if case let .stream(ordinal, _) = node.content { byOrdinal[ordinal] = index }
        }
        while let item = try stream.nextItem() {
            guard let index = byOrdinal[item.ordinal] else { continue }
            if item.size > 0 {
                var map = Ext3.BlockMapper()
                try stream.readData(into: buffer) { chunk, offset in
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
    func allocateLiteral(_ count: UInt64) throws -> [(start: UInt64, count: UInt64)] {
        try allocate(count, region: Ext3.BlockStreams.Region.literal.rawValue)
    }

    func allocateSmall(_ count: UInt64) throws -> [(start: UInt64, count: UInt64)] {
        try allocate(count, region: Ext3.BlockStreams.Region.small.rawValue)
    }

    func allocateCopied(_ count: UInt64) throws -> [(start: UInt64, count: UInt64)] {
        try allocate(count, region: Ext3.BlockStreams.Region.copied.rawValue)
    }

    /// Claims up to `count` free blocks as runs, from the first free block at or after the
    /// region's cursor on (the image is fresh: this walks forward through free space,
    /// starting over at the beginning when it reaches the end).
    func allocate(_ count: UInt64, region: Int) throws -> [(start: UInt64, count: UInt64)] {
        var runs: [(start: UInt64, count: UInt64)] = []
        var wanted = count
        var wrapped = false
        while wanted > 0 {
            var start: blk64_t = 0
            let cursor = cursors[region]
            if cursor > lastBlock || ext2fs_find_first_zero_block_bitmap2(fs.pointee.block_map, cursor, lastBlock, &start) != 0 {
                guard !wrapped else {
                    throw Ext3.Error.library(operation: "allocate blocks", path: path, code: Int64(EXT2_ET_BLOCK_ALLOC_FAIL),
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
    func freeRuns(_ blocks: UInt64, from start: blk64_t, reserve: Bool) -> blk64_t {
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

    func writeMapBlocks(_ map: Ext3.BlockMapper) throws {
        for node in map.nodes {
            try node.pointers.withUnsafeBytes { try writeAll($0, at: UInt64(node.block) * UInt64(Ext3.blockSize)) }
        }
    }

    func writeAll(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try Ext3.writeAll(fd, bytes, at: offset, path: path)
    }
}
