import CExt2fs

extension Ext3 {
    /// What an entry inside an image is.
    public enum EntryKind: String, Sendable, Codable {
        case regular, directory, symlink, characterDevice, blockDevice, fifo, socket, unknown
    }

    /// One entry inside an image, as `stat` would show it.
    public struct Entry: Sendable, Equatable {
        public var inode: UInt32
        public var kind: EntryKind
        /// Permission bits including setuid/setgid/sticky (no type bits).
        public var permissions: UInt16
        public var uid: UInt32
        public var gid: UInt32
        public var size: UInt64
        public var linkCount: UInt16
        /// Modification time; nanoseconds only where the inode has room for them (256-byte inodes).
        public var modificationTime: Timestamp = Timestamp(seconds: 0)
        /// Major and minor number of a character or block device (0 otherwise).
        public var deviceMajor: UInt32 = 0
        public var deviceMinor: UInt32 = 0
    }

    /// A read-only view of an image through libext2fs (no mount, no root).
    ///
    /// Everything it reads is bounded, so a damaged or hostile image gives an error, never a
    /// crash or an endless loop: group descriptors are checked on open, directories larger than
    /// ``Limits/directoryBytes`` and symlinks longer than a block are refused, paths are walked
    /// one name at a time without following symlinks.
    public final class Image {
        let handle: FileSystemHandle
        public let path: String

        public init(path: String) throws {
            _ = try Superblock(path: path)  // a plain "not ext" before libext2fs speaks
            self.path = path
            self.handle = try FileSystemHandle(path: path, writable: false)
            guard let fs = handle.fs else { throw Error.other("\(path): image is closed") }
            let code = ext2fs_check_desc(fs)
            if code != 0 {
                handle.abandon()
                throw Error.damaged(image: path, what: "its group descriptors are bad (\(Ext3.message(for: Int64(code))))")
            }
        }

        /// The entry at `path` inside the image (absolute or relative to the root), or nil when
        /// nothing is there. Symlinks are not followed.
        public func entry(at inside: String) throws -> Entry? {
            do {
                return try lookup(inside)
            } catch Error.noSuchPath {
                return nil
            }
        }

        func entry(inode ino: UInt32) throws -> Entry {
            let raw = try largeInode(ino)
            return Image.entry(ino, raw)
        }

        func largeInode(_ ino: UInt32) throws -> ext2_inode_large {
            guard let fs = handle.fs else { throw Error.other("\(path): image is closed") }
            var raw = ext2_inode_large()
            try check(cext2fs_read_inode_large(fs, ext2_ino_t(ino), &raw), "read inode \(ino)", path: path)
            return raw
        }

        static func entry(_ ino: UInt32, _ large: ext2_inode_large) -> Entry {
            var large = large
            let mode = UInt32(large.i_mode)
            let kind: EntryKind
            switch mode & 0o170000 {
            case 0o100000: kind = .regular
            case 0o040000: kind = .directory
            case 0o120000: kind = .symlink
            case 0o020000: kind = .characterDevice
            case 0o060000: kind = .blockDevice
            case 0o010000: kind = .fifo
            case 0o140000: kind = .socket
            default: kind = .unknown
            }
            let size = UInt64(large.i_size) | UInt64(large.i_size_high) << 32
            let small = cext2fs_small_inode(&large)!
            var entry = Entry(inode: ino, kind: kind, permissions: UInt16(mode & 0o7777),
                              uid: UInt32(cext2fs_inode_uid(small)), gid: UInt32(cext2fs_inode_gid(small)),
                              size: size, linkCount: large.i_links_count)
            // i_mtime_extra (bytes 136..<140) is there when i_extra_isize reaches it.
            var seconds = Int64(Int32(bitPattern: large.i_mtime))
            var nanoseconds: UInt32 = 0
            if large.i_extra_isize >= 12, large.i_extra_isize <= 128 {
                let extra = large.i_mtime_extra
                seconds += Int64(extra & 3) << 32
                nanoseconds = min(extra >> 2, 999_999_999)
            }
            entry.modificationTime = Timestamp(seconds: seconds, nanoseconds: nanoseconds)
            if kind == .characterDevice || kind == .blockDevice {
                entry.deviceMajor = UInt32(cext2fs_inode_rdev_major(&large))
                entry.deviceMinor = UInt32(cext2fs_inode_rdev_minor(&large))
            }
            return entry
        }

        public func close() throws { try handle.close() }
    }
}
