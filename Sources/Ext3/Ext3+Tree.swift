#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// A point in time to the nanosecond (seconds may be negative or beyond 2038).
    public struct Timestamp: Sendable, Equatable, Hashable, Comparable {
        public var seconds: Int64
        public var nanoseconds: UInt32
        public init(seconds: Int64, nanoseconds: UInt32 = 0) {
            self.seconds = seconds
            self.nanoseconds = nanoseconds
        }
        public static func < (a: Timestamp, b: Timestamp) -> Bool {
            (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
        }
        public static var now: Timestamp {
            var spec = timespec()
            clock_gettime(CLOCK_REALTIME, &spec)
            return Timestamp(seconds: Int64(spec.tv_sec), nanoseconds: UInt32(spec.tv_nsec))
        }
    }

    /// A tree of files to write into an image, all of it known before anything is written (the
    /// Pack module reads one from a directory or an archive): every inode once (hard links share
    /// one), every directory with its entries. Node 0 is the root, which becomes `upper/` (its
    /// own metadata is not used: upper/ keeps mode 0755 and the overlay's owner).
    public struct Tree: Sendable {
        /// Where a regular file's bytes come from.
        package enum Content: Sendable {
            case none
            /// A file on disk (NUL-terminated path bytes); `segments` are its data ranges when it
            /// is sparse (SEEK_DATA/SEEK_HOLE), nil when dense.
            case file(path: [CChar], segments: [Range<UInt64>]?)
            /// The data of the item with this ordinal of the ``FileDataStream`` the tree is
            /// written with; `segments` are its data ranges when it is sparse (the stream
            /// delivers only those), nil when dense.
            case stream(ordinal: Int, segments: [Range<UInt64>]? = nil)

            /// The data ranges of a sparse file.
            package var segments: [Range<UInt64>]? {
                switch self {
                case let .file(_, segments), let .stream(_, segments): return segments
                case .none: return nil
                }
            }
        }

        package struct Node: Sendable {
            package var kind: EntryKind
            package var permissions: UInt16
            package var uid: UInt32
            package var gid: UInt32
            package var atime: Timestamp
            package var mtime: Timestamp
            package var ctime: Timestamp
            package var size: UInt64 = 0
            package var major: UInt32 = 0
            package var minor: UInt32 = 0
            package var target: [UInt8] = []
            package var xattrs: [(name: String, value: [UInt8])] = []
            /// Inode flags a user sets with chattr (``Tree/userFlags``: immutable, append-only,
            /// nodump, noatime, ...); 0 when read from a directory or an archive.
            package var flags: UInt32 = 0
            package var content: Content = .none
            /// Names this inode has in the tree.
            package var links: UInt32 = 1
            /// Directory entries (directories only), in the order they are written.
            package var children: [(name: [UInt8], node: Int)] = []

            package init(kind: EntryKind, permissions: UInt16, uid: UInt32, gid: UInt32,
                         atime: Timestamp, mtime: Timestamp, ctime: Timestamp) {
                self.kind = kind
                self.permissions = permissions
                self.uid = uid
                self.gid = gid
                self.atime = atime
                self.mtime = mtime
                self.ctime = ctime
            }
        }

        package var nodes: [Node]

        package init(root: Node) {
            var root = root
            root.kind = .directory
            nodes = [root]
        }

        /// Files, directories and other entries (inodes; hard links count once), without the root.
        public var inodeCount: Int { nodes.count - 1 }
        /// Bytes of regular-file data (hard links count once).
        public var fileBytes: UInt64 {
            nodes.withUnsafeBufferPointer { nodes in
                var total: UInt64 = 0
                for index in nodes.indices where nodes[index].kind == .regular { total += nodes[index].size }
                return total
            }
        }
        /// Regular files (hard links count once).
        package var regularFileCount: Int {
            nodes.withUnsafeBufferPointer { nodes in nodes.indices.reduce(0) { $0 + (nodes[$1].kind == .regular ? 1 : 0) } }
        }

        /// Blocks the tree takes in an image: file data (only the allocated parts of sparse
        /// files) with their indirect blocks, directory blocks, long symlinks and extended
        /// attribute blocks. An upper bound: what gets written is never more.
        public var blocksNeeded: UInt64 { blockNeeds.total }

        /// Files of at most this many blocks (no indirect block) are small: a pack gives their
        /// data a region of its own, where they lie one after another.
        static let smallFileBlocks: UInt64 = 12

        /// ``blocksNeeded`` by the region of the image a pack puts them in.
        struct BlockNeeds {
            /// Directories, long symlinks and every indirect block.
            var literal: UInt64 = 0
            /// Small files' data (dense files of at most ``smallFileBlocks`` blocks, read from a directory).
            var small: UInt64 = 0
            /// Larger and sparse files' data, and everything of files read from an archive.
            var copied: UInt64 = 0
            /// Extended attribute blocks (libext2fs places them).
            var attributes: UInt64 = 0
            var total: UInt64 { literal + small + copied + attributes }
        }

        var blockNeeds: BlockNeeds {
            var needs = BlockNeeds()
            let block = UInt64(Ext3.blockSize)
            // Each node read where it lies: copying one out (a dozen arrays retained and
            // released) cost more than the sum, and this runs for every node of a large tree.
            nodes.withUnsafeBufferPointer { nodes in
                for index in nodes.indices {
                    switch nodes[index].kind {
                    case .regular:
                        let blocks = (nodes[index].size + block - 1) / block
                        switch nodes[index].content {
                        case .file(_, let segments?):
                            // A run anywhere in the file may need its own chain of indirect blocks.
                            let data = Tree.blockRanges(segments).reduce(0) { $0 + UInt64($1.count) }
                            if data > 0 { needs.literal += Geometry.mapBlocks(forFileBlocks: data) + 3 * UInt64(segments.count) }
                            needs.copied += data
                        case .file(_, nil) where blocks <= Tree.smallFileBlocks:
                            needs.small += blocks
                        case .file(_, nil):
                            needs.literal += Geometry.mapBlocks(forFileBlocks: blocks)
                            needs.copied += blocks
                        case .stream(_, let segments?):
                            let data = Tree.blockRanges(segments).reduce(0) { $0 + UInt64($1.count) }
                            if data > 0 { needs.copied += data + Geometry.mapBlocks(forFileBlocks: data) + 3 * UInt64(segments.count) }
                        case .stream, .none:
                            needs.copied += blocks + Geometry.mapBlocks(forFileBlocks: blocks)
                        }
                    case .directory:
                        let blocks = Tree.directoryBlocks(nameLengths: nodes[index].children.lazy.map { $0.name.count })
                        needs.literal += blocks + Geometry.mapBlocks(forFileBlocks: blocks)
                    case .symlink:
                        if nodes[index].target.count >= 60 { needs.literal += 1 }
                    default:
                        break
                    }
                    if !nodes[index].xattrs.isEmpty && !Tree.xattrsFitInInode(nodes[index].xattrs) { needs.attributes += 1 }
                }
            }
            return needs
        }

        /// Blocks a directory with entries of these name lengths takes (plus `.` and `..`).
        static func directoryBlocks(nameLengths: some Sequence<Int>) -> UInt64 {
            var blocks: UInt64 = 1
            var used = 12 + 12  // . and ..
            for length in nameLengths {
                let record = (8 + length + 3) & ~3
                if used + record > Ext3.blockSize {
                    blocks += 1
                    used = 0
                }
                used += record
            }
            return blocks
        }

        /// Room for extended attributes inside a 256-byte inode with i_extra_isize 32: 96 bytes,
        /// less the 4-byte magic and the 4-byte end marker; each entry takes 16 bytes plus its
        /// name (without the prefix libext2fs encodes) and value, each padded to 4 bytes.
        static func xattrsFitInInode(_ xattrs: [(name: String, value: [UInt8])]) -> Bool {
            var used = 4 + 4
            for xattr in xattrs {
                used += 16 + ((xattr.name.utf8.count + 3) & ~3) + ((xattr.value.count + 3) & ~3)
            }
            return used <= Ext3.inodeSize - 128 - 32
        }

        /// Data ranges rounded out to whole blocks and merged, as block numbers.
        static func blockRanges(_ segments: [Range<UInt64>]) -> [Range<UInt64>] {
            let block = UInt64(Ext3.blockSize)
            var merged: [Range<UInt64>] = []
            for segment in segments where !segment.isEmpty {
                let range = (segment.lowerBound / block)..<((segment.upperBound + block - 1) / block)
                if let last = merged.last, range.lowerBound <= last.upperBound {
                    merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, range.upperBound)
                } else {
                    merged.append(range)
                }
            }
            return merged
        }

        // MARK: - Limits for whoever builds a tree

        /// A name for a directory entry, refusing what ext3 cannot hold.
        package static func checkName(_ name: [UInt8], in display: String) throws {
            if name.count > 255 {
                throw Error.invalidConfiguration("\(display): a name is longer than 255 bytes, which ext3 cannot hold")
            }
        }

        /// The inode flags a copy keeps: those chattr sets (secure deletion, undelete, sync,
        /// immutable, append-only, nodump, noatime, data journalling, notail, dirsync, topdir).
        /// Layout flags (htree index, extents, inline data) belong to how an image stores a
        /// file, not to the file.
        package static let userFlags: UInt32 = 0x1 | 0x2 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x4000 | 0x8000 | 0x10000 | 0x20000

        /// The most names an inode (or subdirectories plus 2 a directory) can have in ext3.
        package static let linkLimit: UInt32 = 65000
    }
}

extension Ext3.Tree {
    /// Path bytes as text for messages (invalid UTF-8 shown with replacement characters).
    package static func display(_ bytes: [UInt8]) -> String {
        String(decoding: bytes.last == 0 ? Array(bytes.dropLast()) : bytes, as: UTF8.self)
    }

    package static func display(_ path: [CChar]) -> String {
        display(path.map { UInt8(bitPattern: $0) })
    }
}

extension Ext3 {
    /// File data that arrives in one pass, item after item (an archive's entries): the
    /// tree's ``Tree/Content/stream(ordinal:)`` files are written from it as their items come.
    package protocol FileDataStream: AnyObject {
        /// Moves to the next item (what was left of the last one is skipped): its ordinal and
        /// the bytes of data it carries; nil after the last.
        func nextItem() throws -> (ordinal: Int, size: UInt64)?
        /// Reads the current item's data in chunks of at most `buffer.count` bytes, calling
        /// `body` with each chunk and its offset in the file.
        func readData(into buffer: UnsafeMutableRawBufferPointer, _ body: (UnsafeRawBufferPointer, UInt64) throws -> Void) throws
    }
}
