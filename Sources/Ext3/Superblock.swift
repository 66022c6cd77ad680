#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// The fields of an ext2/3/4 superblock we reason about, read straight from the file (no
    /// libext2fs): safe on hostile input, since it only reads 1024 bytes at offset 1024.
    public struct Superblock: Sendable, Equatable {
        public static let magic: UInt16 = 0xEF53

        public var inodeCount: UInt32
        public var blockCount: UInt64
        public var reservedBlockCount: UInt64
        public var freeBlockCount: UInt64
        public var freeInodeCount: UInt32
        public var blocksPerGroup: UInt32
        public var inodesPerGroup: UInt32
        public var logBlockSize: UInt32
        public var inodeSize: UInt16
        public var state: UInt16
        public var compat: UInt32
        public var incompat: UInt32
        public var roCompat: UInt32

        public var blockSize: Int { 1024 << Int(min(logBlockSize, 6)) }

        /// Reads the superblock of the file at `path`. Throws ``Ext3/Error/notExt(path:)`` when
        /// the magic is missing (too short, or another kind of file).
        public init(path: String) throws {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw Error.system(operation: "open", path: path, errno: errno) }
            defer { close(fd) }
            var bytes = [UInt8](repeating: 0, count: 1024)
            let count = pread(fd, &bytes, 1024, 1024)
            guard count == 1024 else {
                if count < 0 { throw Error.system(operation: "read", path: path, errno: errno) }
                throw Error.notExt(path: path)
            }
            try self.init(bytes: bytes, path: path)
            // A file shorter than its filesystem mounts as a user's FUSE mount but not as root's,
            // and fsck sees only what is there: refuse it at every opening, saying so.
            var info = stat()
            if fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, UInt64(max(info.st_size, 0)) < filesystemBytes {
                throw Error.truncated(path: path, filesystemBytes: filesystemBytes, fileBytes: UInt64(max(info.st_size, 0)))
            }
        }

        /// Bytes the filesystem says it spans.
        public var filesystemBytes: UInt64 {
            let (bytes, overflow) = blockCount.multipliedReportingOverflow(by: UInt64(blockSize))
            return overflow ? UInt64.max : bytes
        }

        /// Parses the 1024 superblock bytes.
        public init(bytes: [UInt8], path: String = "") throws {
            func u16(_ o: Int) -> UInt16 { UInt16(bytes[o]) | UInt16(bytes[o + 1]) << 8 }
            func u32(_ o: Int) -> UInt32 { UInt32(u16(o)) | UInt32(u16(o + 2)) << 16 }
            guard bytes.count >= 1024, u16(0x38) == Superblock.magic else { throw Error.notExt(path: path) }
            inodeCount = u32(0x00)
            blockCount = UInt64(u32(0x04))
            blocksPerGroup = u32(0x20)
            inodesPerGroup = u32(0x28)
            reservedBlockCount = UInt64(u32(0x08))
            freeBlockCount = UInt64(u32(0x0C))
            freeInodeCount = u32(0x10)
            logBlockSize = u32(0x18)
            state = u16(0x3A)
            let revision = u32(0x4C)
            inodeSize = revision == 0 ? 128 : u16(0x58)
            compat = u32(0x5C)
            incompat = u32(0x60)
            roCompat = u32(0x64)
            if incompat & Feature.incompat64bit != 0 {
                blockCount |= UInt64(u32(0x150)) << 32
                reservedBlockCount |= UInt64(u32(0x154)) << 32
                freeBlockCount |= UInt64(u32(0x158)) << 32
            }
        }

        /// Feature names as dumpe2fs prints them, in compat, incompat, ro_compat order.
        public var featureNames: [String] {
            Feature.names(compat, Feature.compatNames) + Feature.names(incompat, Feature.incompatNames)
                + Feature.names(roCompat, Feature.roCompatNames)
        }

        /// Why Apptainer would refuse this image as an overlay (empty: it accepts it). Its rule
        /// (pkg/image/ext3.go): compat must contain has_journal; incompat only filetype, recover,
        /// meta_bg; ro_compat only sparse_super, large_file, btree_dir.
        public var apptainerRefusals: [String] {
            var reasons: [String] = []
            if compat & Feature.hasJournal == 0 { reasons.append("no journal (ext2, not ext3)") }
            let badIncompat = incompat & ~Feature.apptainerIncompat
            let badRoCompat = roCompat & ~Feature.apptainerRoCompat
            let extra = Feature.names(badIncompat, Feature.incompatNames) + Feature.names(badRoCompat, Feature.roCompatNames)
            if !extra.isEmpty { reasons.append("ext4 features Apptainer does not accept: " + extra.joined(separator: ", ")) }
            return reasons
        }

        public var acceptedByApptainer: Bool { apptainerRefusals.isEmpty }
    }

    /// Superblock feature bits (ext2_fs.h).
    public enum Feature {
        public static let hasJournal: UInt32 = 0x0004
        public static let incompatFiletype: UInt32 = 0x0002
        public static let incompatRecover: UInt32 = 0x0004
        public static let incompatMetaBG: UInt32 = 0x0010
        public static let incompat64bit: UInt32 = 0x0080
        public static let roSparseSuper: UInt32 = 0x0001
        public static let roLargeFile: UInt32 = 0x0002
        public static let roBtreeDir: UInt32 = 0x0004

        public static let apptainerIncompat = incompatFiletype | incompatRecover | incompatMetaBG
        public static let apptainerRoCompat = roSparseSuper | roLargeFile | roBtreeDir

        public static let compatNames: [(UInt32, String)] = [
            (0x0001, "dir_prealloc"), (0x0002, "imagic_inodes"), (0x0004, "has_journal"), (0x0008, "ext_attr"),
            (0x0010, "resize_inode"), (0x0020, "dir_index"), (0x0040, "lazy_bg"), (0x0080, "exclude_inode"),
            (0x0100, "exclude_bitmap"), (0x0200, "sparse_super2"), (0x0400, "fast_commit"), (0x0800, "stable_inodes"),
            (0x1000, "orphan_file"),
        ]
        public static let incompatNames: [(UInt32, String)] = [
            (0x0001, "compression"), (0x0002, "filetype"), (0x0004, "needs_recovery"), (0x0008, "journal_dev"),
            (0x0010, "meta_bg"), (0x0040, "extent"), (0x0080, "64bit"), (0x0100, "mmp"), (0x0200, "flex_bg"),
            (0x0400, "ea_inode"), (0x1000, "dirdata"), (0x2000, "metadata_csum_seed"), (0x4000, "large_dir"),
            (0x8000, "inline_data"), (0x10000, "encrypt"), (0x20000, "casefold"),
        ]
        public static let roCompatNames: [(UInt32, String)] = [
            (0x0001, "sparse_super"), (0x0002, "large_file"), (0x0004, "btree_dir"), (0x0008, "huge_file"),
            (0x0010, "uninit_bg"), (0x0020, "dir_nlink"), (0x0040, "extra_isize"), (0x0080, "has_snapshot"),
            (0x0100, "quota"), (0x0200, "bigalloc"), (0x0400, "metadata_csum"), (0x0800, "replica"),
            (0x1000, "read-only"), (0x2000, "project"), (0x4000, "shared_blocks"), (0x8000, "verity"),
            (0x10000, "orphan_present"),
        ]

        static func names(_ bits: UInt32, _ table: [(UInt32, String)]) -> [String] {
            var result: [String] = []
            var rest = bits
            for (bit, name) in table where bits & bit != 0 {
                result.append(name)
                rest &= ~bit
            }
            var bit: UInt32 = 1
            while rest != 0 {
                if rest & bit != 0 { result.append(String(format: bit)); rest &= ~bit }
                bit <<= 1
            }
            return result
        }
    }
}

private extension String {
    init(format bit: UInt32) { self = "FEATURE_0x" + String(bit, radix: 16) }
}
