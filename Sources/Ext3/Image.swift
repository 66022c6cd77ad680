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
    }

    /// A read-only view of an image through libext2fs (no mount, no root).
    public final class Image {
        let handle: FileSystemHandle
        public let path: String

        public init(path: String) throws {
            _ = try Superblock(path: path)  // a plain "not ext" before libext2fs speaks
            self.path = path
            self.handle = try FileSystemHandle(path: path, writable: false)
        }

        /// The entry at `path` inside the image (absolute or relative to the root), or nil.
        public func entry(at inside: String) throws -> Entry? {
            guard let fs = handle.fs else { throw Error.other("\(path): image is closed") }
            var ino: ext2_ino_t = 0
            let code = ext2fs_namei(fs, ext2_ino_t(EXT2_ROOT_INO), ext2_ino_t(EXT2_ROOT_INO), inside, &ino)
            if code == errcode_t(EXT2_ET_FILE_NOT_FOUND) || code == errcode_t(EXT2_ET_NO_DIRECTORY) { return nil }
            try check(code, "look up \(inside)", path: path)
            return try entry(inode: UInt32(ino))
        }

        func entry(inode ino: UInt32) throws -> Entry {
            guard let fs = handle.fs else { throw Error.other("\(path): image is closed") }
            var raw = ext2_inode()
            try check(ext2fs_read_inode(fs, ext2_ino_t(ino), &raw), "read inode \(ino)", path: path)
            let mode = UInt32(raw.i_mode)
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
            let size = UInt64(raw.i_size) | UInt64(raw.i_size_high) << 32
            return Entry(inode: ino, kind: kind, permissions: UInt16(mode & 0o7777),
                         uid: UInt32(cext2fs_inode_uid(&raw)), gid: UInt32(cext2fs_inode_gid(&raw)),
                         size: size, linkCount: raw.i_links_count)
        }

        public func close() throws { try handle.close() }
    }
}
