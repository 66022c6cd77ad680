#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// What an image's block bitmaps say is in use, read straight from the file with `pread`
    /// (no libext2fs: opening a file with it fsyncs the file, which on a job's frozen image
    /// would wait for its dirty pages inside the job's pause).
    public struct UsedBlocks: Sendable, Equatable {
        /// Byte ranges in use, sorted and disjoint: the superblocks, group descriptors, bitmaps,
        /// inode tables, the journal, and the blocks of files and directories; plus any bytes of
        /// the file past the filesystem's end. A copy of these (holes elsewhere) is the same
        /// filesystem; what is left out is free, whatever stale data the file still holds there
        /// (a deleted file's blocks stay allocated in the image file).
        public var ranges: [Range<Int64>]
        /// The primary superblock and group descriptors: `[0, headBytes)`, what libext2fs reads
        /// when it opens the image.
        public var headBytes: Int64

        /// Reads the block bitmaps of the image open at `fd` (`fileSize` bytes long). Two ranges
        /// separated by fewer than `mergeGap` free bytes are given as one (fewer, longer copies
        /// for a little stale data). nil when the bitmaps alone cannot say what is used: the
        /// journal still needs replaying (metadata committed there, bitmaps among it, has not
        /// reached its place yet), uninitialised groups (uninit_bg), meta_bg's scattered
        /// descriptors, or anything out of bounds.
        public static func read(fd: Int32, fileSize: Int64, mergeGap: Int64 = 1 << 16) -> UsedBlocks? {
            func bytes(at offset: Int64, count: Int) -> [UInt8]? {
                guard count > 0, offset >= 0, offset + Int64(count) <= fileSize else { return nil }
                var buffer = [UInt8](repeating: 0, count: count)
                var done = 0
                while done < count {
                    let got = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
                    if got < 0 && errno == EINTR { continue }
                    guard got > 0 else { return nil }
                    done += got
                }
                return buffer
            }
            func u16(_ b: [UInt8], _ o: Int) -> UInt64 { UInt64(b[o]) | UInt64(b[o + 1]) << 8 }
            func u32(_ b: [UInt8], _ o: Int) -> UInt64 { u16(b, o) | u16(b, o + 2) << 16 }

            guard let sb = bytes(at: 1024, count: 1024), u16(sb, 0x38) == UInt64(Superblock.magic) else { return nil }
            let incompat = u32(sb, 0x60), roCompat = u32(sb, 0x64)
            let recover: UInt64 = 0x4, metaBG: UInt64 = 0x10, is64: UInt64 = 0x80
            let gdtChecksum: UInt64 = 0x10, metadataChecksum: UInt64 = 0x400
            guard incompat & (recover | metaBG) == 0, u32(sb, 0x18) <= 6 else { return nil }
            let blockSize = Int64(1024) << Int64(u32(sb, 0x18))
            let first = Int64(u32(sb, 0x14))
            let perGroup = Int64(u32(sb, 0x20))
            var count = Int64(u32(sb, 0x04))
            var descriptorSize = 32
            if incompat & is64 != 0 {
                count |= Int64(u32(sb, 0x150)) << 32
                descriptorSize = Int(u16(sb, 0xFE))
                guard descriptorSize >= 32, descriptorSize <= 1024, descriptorSize.nonzeroBitCount == 1 else { return nil }
            }
            guard perGroup >= 8, perGroup % 8 == 0, perGroup <= 8 * blockSize, count > first,
                  first <= 1, count <= Int64.max / blockSize else { return nil }
            let groups = (count - first + perGroup - 1) / perGroup
            guard groups <= 1 << 22 else { return nil }
            let descriptorBytes = Int(groups) * descriptorSize
            let descriptorBlocks = (Int64(descriptorBytes) + blockSize - 1) / blockSize
            let head = (first + 1 + descriptorBlocks) * blockSize
            guard let table = bytes(at: (first + 1) * blockSize, count: descriptorBytes) else { return nil }
            let checksummed = roCompat & (gdtChecksum | metadataChecksum) != 0

            var ranges: [Range<Int64>] = []
            func add(_ range: Range<Int64>) {
                guard !range.isEmpty else { return }
                if let previous = ranges.last, range.lowerBound - previous.upperBound < mergeGap {
                    ranges[ranges.count - 1] = previous.lowerBound..<max(previous.upperBound, range.upperBound)
                } else {
                    ranges.append(range)
                }
            }
            // Blocks before the first data block (the boot block with 1 KiB blocks) are in no
            // bitmap; the primary superblock lies in them or in the first data block.
            add(0..<max(first * blockSize, 2048))
            var runStart: Int64 = -1
            for group in 0..<groups {
                let descriptor = Int(group) * descriptorSize
                if checksummed && u16(table, descriptor + 0x12) & 0x2 != 0 { return nil }  // BLOCK_UNINIT
                var bitmapBlock = Int64(u32(table, descriptor))
                if descriptorSize >= 64 { bitmapBlock |= Int64(u32(table, descriptor + 0x20)) << 32 }
                guard bitmapBlock >= first, bitmapBlock < count,
                      let bitmap = bytes(at: bitmapBlock * blockSize, count: Int(blockSize)) else { return nil }
                let base = first + group * perGroup
                let blocks = min(perGroup, count - base)
                var index: Int64 = 0
                while index < blocks {
                    let byte = bitmap[Int(index >> 3)]
                    // Whole bytes at once where they are all used or all free.
                    if index & 7 == 0 && index + 8 <= blocks && (byte == 0 || byte == 0xFF) {
                        if byte == 0xFF {
                            if runStart < 0 { runStart = base + index }
                        } else if runStart >= 0 {
                            add(runStart * blockSize..<(base + index) * blockSize)
                            runStart = -1
                        }
                        index += 8
                        continue
                    }
                    if byte & (1 << UInt8(index & 7)) != 0 {
                        if runStart < 0 { runStart = base + index }
                    } else if runStart >= 0 {
                        add(runStart * blockSize..<(base + index) * blockSize)
                        runStart = -1
                    }
                    index += 1
                }
            }
            if runStart >= 0 { add(runStart * blockSize..<count * blockSize) }
            if fileSize > count * blockSize { add(count * blockSize..<fileSize) }
            let clamped = ranges.map { $0.clamped(to: 0..<max(0, fileSize)) }.filter { !$0.isEmpty }
            return UsedBlocks(ranges: clamped, headBytes: min(head, fileSize))
        }
    }
}
