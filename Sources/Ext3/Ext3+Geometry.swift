import LinuxSupport
import CExt2fs

extension Ext3 {
    /// Where everything goes in an ext3 image of a given size and inode count, computed before
    /// any I/O the same way libext2fs's `ext2fs_initialize` lays a filesystem out (4 KiB blocks,
    /// 256-byte inodes, sparse superblock backups, reserved descriptor blocks for resizing).
    ///
    /// An inode bitmap is one block, so a group holds at most 8 x 4096 = 32,768 inodes: many
    /// inodes in a small image mean many small groups. libext2fs gets there by shrinking the
    /// blocks per group 8 at a time until the inodes fit, and drops a last group too small for
    /// its own tables; this type follows the same rules so that what it predicts is what gets
    /// built (the tests compare it with `dumpe2fs`).
    public struct Geometry: Sendable, Equatable, CustomStringConvertible {
        /// Bytes in an inode-table slot.
        static let inodeSize: UInt64 = UInt64(Ext3.inodeSize)
        /// Bytes in a block.
        static let blockSize: UInt64 = UInt64(Ext3.blockSize)
        /// Group descriptors per block (32-byte descriptors: no 64bit feature).
        static let descriptorsPerBlock: UInt64 = blockSize / 32
        /// Inodes in one inode-table block.
        static let inodesPerBlock: UInt64 = blockSize / inodeSize
        /// Inodes one bitmap block can track.
        static let maximumInodesPerGroup: UInt64 = blockSize * 8
        /// Block numbers are 32-bit without the 64bit feature.
        static let maximumBlocks: UInt64 = UInt64(UInt32.max)
        /// The smallest filesystem that gets a journal (`ext2fs_default_journal_size`).
        static let minimumJournalledBlocks: UInt64 = 2048
        /// Inodes 1 to 10 are reserved; the first one a file can get is 11.
        static let firstInode: UInt64 = 11
        /// Blocks taken besides group tables and the journal: root directory (1), lost+found
        /// (4 blocks, as mke2fs makes it), the resize inode's double-indirect block (1), upper/
        /// and work/ (1 each).
        static let fixedBlocks: UInt64 = 1 + 4 + 1 + 2

        /// The image file's size in bytes.
        public let sizeBytes: UInt64
        /// The inode count handed to libext2fs (the request, or one per 16 KiB); the image gets
        /// ``inodeCount`` >= this, as inode tables are filled up to whole blocks in every group.
        public let requestedInodes: UInt64
        /// Blocks in the filesystem (a last group too small for its own tables is left out, so
        /// this can be a little less than `sizeBytes / 4096`).
        public let blockCount: UInt64
        public let blocksPerGroup: UInt64
        public let groupCount: UInt64
        public let inodesPerGroup: UInt64
        public let inodeTableBlocksPerGroup: UInt64
        /// Blocks of group descriptors (in group 0 and each backup group).
        public let descriptorBlocks: UInt64
        /// Descriptor blocks reserved for online growth (in group 0 and each backup group).
        public let reservedDescriptorBlocks: UInt64
        /// Journal length in blocks (mke2fs's default for this many blocks).
        public let journalBlocks: UInt64
        /// Indirect blocks mapping the journal (ext3 files are block-mapped).
        public let journalMapBlocks: UInt64
        /// Blocks taken by superblocks, descriptors, bitmaps and inode tables of all groups.
        public let groupMetadataBlocks: UInt64

        public var blockSize: Int { Ext3.blockSize }
        public var inodeCount: UInt64 { inodesPerGroup * groupCount }
        public var inodeTableBytes: UInt64 { inodeTableBlocksPerGroup * groupCount * Geometry.blockSize }
        public var journalBytes: UInt64 { journalBlocks * Geometry.blockSize }

        /// Blocks left for files after group tables, journal, root, lost+found, the resize
        /// inode and `extraDirectories` directory blocks (upper/ and work/ are counted already).
        public func freeBlocks(extraDirectories: Int = 0) -> UInt64 {
            let used = groupMetadataBlocks + journalBlocks + journalMapBlocks + Geometry.fixedBlocks
                + UInt64(extraDirectories)
            return blockCount > used ? blockCount - used : 0
        }

        public var description: String {
            "\(blockCount) blocks in \(groupCount) groups of \(blocksPerGroup), \(inodesPerGroup) inodes per group "
                + "(\(inodeCount) inodes), journal \(journalBlocks) blocks"
        }

        /// Why a size and inode count do not make an image (internal: callers get words).
        enum Failure: Swift.Error, Equatable {
            case tooSmall
            case tooLarge
            case tooManyInodes
        }

        /// The layout for an image of `sizeBytes` with at least `inodes` inodes (nil: one per
        /// 16 KiB, as mke2fs). Throws ``Ext3/Error/invalidConfiguration(_:)`` saying what to
        /// change when they do not fit.
        public init(sizeBytes: UInt64, inodes: UInt64? = nil, extraDirectories: Int = 0) throws {
            do {
                self = try Geometry.layout(sizeBytes: sizeBytes, inodes: inodes, extraDirectories: extraDirectories)
            } catch let failure as Failure {
                throw Ext3.Error.invalidConfiguration(
                    Geometry.explain(failure, sizeBytes: sizeBytes, inodes: inodes, extraDirectories: extraDirectories))
            }
        }

        /// The most inodes an image of `sizeBytes` can hold (0 when it is too small for any).
        public static func maximumInodes(sizeBytes: UInt64, extraDirectories: Int = 0) -> UInt64 {
            func fits(_ n: UInt64) -> Bool {
                (try? layout(sizeBytes: sizeBytes, inodes: n, extraDirectories: extraDirectories)) != nil
            }
            // Inode tables alone cannot exceed the image; inode numbers are 32-bit.
            var low: UInt64 = 0
            var high = min(sizeBytes / inodeSize, UInt64(UInt32.max))
            guard fits(1) else { return 0 }
            low = 1
            // Invariant: fits(low), and nothing above high fits.
            while low < high {
                let middle = low + (high - low + 1) / 2
                if fits(middle) { low = middle } else { high = middle - 1 }
            }
            // Report what the image really gets for that request (tables are filled up).
            return (try? layout(sizeBytes: sizeBytes, inodes: low, extraDirectories: extraDirectories).inodeCount) ?? low
        }

        static func explain(_ failure: Failure, sizeBytes: UInt64, inodes: UInt64?, extraDirectories: Int) -> String {
            let size = Units.humanBytes(sizeBytes)
            switch failure {
            case .tooLarge:
                return "\(size) is too large for ext3: with 4 KiB blocks it holds 4 KiB less than 16 TiB, at most -s \((maximumBlocks * blockSize) >> 20) (16 TiB less 1 MiB)"
            case .tooSmall:
                return "\(size) is too small for an ext3 overlay with a journal: make it at least 8 MiB with -s"
            case .tooManyInodes:
                let most = maximumInodes(sizeBytes: sizeBytes, extraDirectories: extraDirectories)
                let wanted = inodes.map { "\(Units.grouped($0)) inodes do" } ?? "the default inode count does"
                if most == 0 {
                    return "\(wanted) not fit in \(size), nor does any: make the image larger with -s"
                }
                return "\(wanted) not fit in \(size): at most \(Units.grouped(most)) fit; make it larger with -s or ask for fewer with -n"
            }
        }

        /// ext2fs_initialize's layout rules, restated.
        static func layout(sizeBytes: UInt64, inodes requested: UInt64?, extraDirectories: Int) throws -> Geometry {
            let requestedBlocks = sizeBytes / blockSize
            guard requestedBlocks <= maximumBlocks else { throw Failure.tooLarge }
            guard requestedBlocks >= minimumJournalledBlocks else { throw Failure.tooSmall }
            // mke2fs: one inode per 16 KiB unless told; never fewer than the reserved ones + 1.
            var wanted = requested ?? (requestedBlocks * blockSize / 16384)
            if wanted == 0 { wanted = requestedBlocks }
            wanted = max(wanted, firstInode + 1)
            guard wanted <= UInt64(UInt32.max) else { throw Failure.tooManyInodes }

            var blocksPerGroup = blockSize * 8
            var blocks = requestedBlocks
            while true {
                let groups = (blocks + blocksPerGroup - 1) / blocksPerGroup
                guard groups > 0 else { throw Failure.tooSmall }
                let descriptorBlocks = (groups + descriptorsPerBlock - 1) / descriptorsPerBlock
                var perGroup = (wanted + groups - 1) / groups
                if perGroup > maximumInodesPerGroup {
                    // More groups (each with its own bitmap) until every group's inodes fit.
                    guard blocksPerGroup >= 256 else { throw Failure.tooManyInodes }
                    blocksPerGroup -= 8
                    blocks = requestedBlocks
                    continue
                }
                // Fill whole inode-table blocks, in multiples of 8 inodes; stay under 2^32.
                var inodesPerGroup: UInt64
                var tableBlocks: UInt64
                while true {
                    tableBlocks = (perGroup * inodeSize + blockSize - 1) / blockSize
                    inodesPerGroup = max(tableBlocks * blockSize / inodeSize, 8) & ~7
                    tableBlocks = (inodesPerGroup * inodeSize + blockSize - 1) / blockSize
                    if inodesPerGroup * groups > UInt64(UInt32.max) {
                        guard perGroup > 1 else { throw Failure.tooManyInodes }
                        perGroup -= 1
                        continue
                    }
                    break
                }
                // Descriptor blocks reserved so the filesystem could grow 1024-fold (to 2^32 blocks).
                var growTo = maximumBlocks
                if blocks < maximumBlocks / 1024 { growTo = blocks * 1024 }
                let reserveGroups = (growTo + blocksPerGroup - 1) / blocksPerGroup
                var reserved = (reserveGroups + descriptorsPerBlock - 1) / descriptorsPerBlock - descriptorBlocks
                reserved = min(reserved, blockSize / 4)

                guard 3 + tableBlocks + descriptorBlocks + reserved <= blocksPerGroup else { throw Failure.tooManyInodes }

                var lastOverhead = 2 + tableBlocks
                if hasSuperblockBackup(groups - 1) { lastOverhead += 1 + descriptorBlocks + reserved }
                let remainder = blocks % blocksPerGroup
                if groups == 1 && remainder != 0 && remainder < lastOverhead { throw Failure.tooSmall }
                if remainder != 0 && remainder < lastOverhead + 50 {
                    blocks -= remainder
                    continue
                }

                var metadata: UInt64 = 0
                var backups: UInt64 = 0
                for group in 0..<groups where hasSuperblockBackup(group) { backups += 1 }
                metadata = groups * (2 + tableBlocks) + backups * (1 + descriptorBlocks + reserved)

                let journal = ext2fs_default_journal_size(blocks)
                guard journal > 0 else { throw Failure.tooSmall }
                let journalBlocks = UInt64(journal)
                let geometry = Geometry(
                    sizeBytes: sizeBytes, requestedInodes: wanted, blockCount: blocks, blocksPerGroup: blocksPerGroup, groupCount: groups,
                    inodesPerGroup: inodesPerGroup, inodeTableBlocksPerGroup: tableBlocks,
                    descriptorBlocks: descriptorBlocks, reservedDescriptorBlocks: reserved,
                    journalBlocks: journalBlocks, journalMapBlocks: mapBlocks(forFileBlocks: journalBlocks),
                    groupMetadataBlocks: metadata)
                // The journal and the first directories must fit in what is left.
                let used = metadata + geometry.journalBlocks + geometry.journalMapBlocks + fixedBlocks
                    + UInt64(extraDirectories)
                guard used < blocks else {
                    throw requested == nil ? Failure.tooSmall : Failure.tooManyInodes
                }
                return geometry
            }
        }

        private init(sizeBytes: UInt64, requestedInodes: UInt64, blockCount: UInt64, blocksPerGroup: UInt64, groupCount: UInt64,
                     inodesPerGroup: UInt64, inodeTableBlocksPerGroup: UInt64, descriptorBlocks: UInt64,
                     reservedDescriptorBlocks: UInt64, journalBlocks: UInt64, journalMapBlocks: UInt64,
                     groupMetadataBlocks: UInt64) {
            self.sizeBytes = sizeBytes
            self.requestedInodes = requestedInodes
            self.blockCount = blockCount
            self.blocksPerGroup = blocksPerGroup
            self.groupCount = groupCount
            self.inodesPerGroup = inodesPerGroup
            self.inodeTableBlocksPerGroup = inodeTableBlocksPerGroup
            self.descriptorBlocks = descriptorBlocks
            self.reservedDescriptorBlocks = reservedDescriptorBlocks
            self.journalBlocks = journalBlocks
            self.journalMapBlocks = journalMapBlocks
            self.groupMetadataBlocks = groupMetadataBlocks
        }

        /// sparse_super: groups 0 and 1 and the powers of 3, 5 and 7 carry superblock backups.
        static func hasSuperblockBackup(_ group: UInt64) -> Bool {
            if group <= 1 { return true }
            if group & 1 == 0 { return false }
            for base: UInt64 in [3, 5, 7] {
                var power = base
                while power < group { power *= base }
                if power == group { return true }
            }
            return false
        }

        /// Indirect blocks a block-mapped file of `blocks` blocks needs (12 direct pointers, then
        /// single, double and triple indirection with 1024 pointers per block).
        static func mapBlocks(forFileBlocks blocks: UInt64) -> UInt64 {
            let perBlock = blockSize / 4
            var remaining = blocks > 12 ? blocks - 12 : 0
            var count: UInt64 = 0
            if remaining > 0 {  // single indirect
                count += 1
                remaining -= min(remaining, perBlock)
            }
            if remaining > 0 {  // double indirect
                let covered = min(remaining, perBlock * perBlock)
                count += 1 + (covered + perBlock - 1) / perBlock
                remaining -= covered
            }
            if remaining > 0 {  // triple indirect
                let second = (remaining + perBlock * perBlock - 1) / (perBlock * perBlock)
                count += 1 + second + (remaining + perBlock - 1) / perBlock
            }
            return count
        }
    }
}
