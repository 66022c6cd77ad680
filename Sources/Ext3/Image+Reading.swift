import CExt2fs

extension Ext3 {
    /// Bounds on what an ``Image`` reads, so a hostile image cannot make it read forever.
    public enum Limits {
        /// Directories claiming more bytes than this are refused as damaged (a real directory
        /// of ten million long names is about 400 MiB).
        public static let directoryBytes: UInt64 = 1 << 30
        /// Symbolic link targets longer than this are refused as damaged (the kernel's limit).
        public static let symlinkBytes: UInt64 = 4096
        /// Bytes asked of libext2fs at a time when reading a file.
        public static let readChunk = 1 << 20
    }

    /// A name in a directory and the entry it names.
    public struct DirectoryEntry: Sendable, Equatable {
        public var name: String
        public var entry: Entry
        public init(name: String, entry: Entry) {
            self.name = name
            self.entry = entry
        }
    }

    /// Where an image's blocks go: metadata (superblocks, descriptors, bitmaps, inode tables,
    /// the journal), files, and free space.
    public struct Usage: Sendable, Equatable {
        public var blockSize: Int
        public var blockCount: UInt64
        public var freeBlocks: UInt64
        public var inodeCount: UInt64
        public var freeInodes: UInt64
        /// Blocks the filesystem itself needs whatever it holds.
        public var metadataBlocks: UInt64

        public var usedInodes: UInt64 { inodeCount - min(freeInodes, inodeCount) }
        /// Bytes free for files.
        public var freeBytes: UInt64 { freeBlocks.multipliedReportingOverflow(by: UInt64(blockSize)).partialValue }
        /// Bytes files and directories take now.
        public var usedBytes: UInt64 {
            let used = blockCount.subtractingReportingOverflow(freeBlocks)
            guard !used.overflow, used.partialValue > metadataBlocks else { return 0 }
            return (used.partialValue - metadataBlocks).multipliedReportingOverflow(by: UInt64(blockSize)).partialValue
        }
    }
}

extension Ext3.Image {
    typealias Error = Ext3.Error

    /// The entry at `inside` (a path from the image root; a leading `/` is optional). Walks one
    /// name at a time through bounded directory reads and follows no symlink. Throws
    /// ``Ext3/Error/noSuchPath(image:path:)``, ``Ext3/Error/notADirectory(image:path:)`` or
    /// ``Ext3/Error/symlinkInPath(image:path:target:)``.
    public func lookup(_ inside: String) throws -> Ext3.Entry {
        var current = try entry(inode: UInt32(EXT2_ROOT_INO))
        var walked = ""
        let parts = inside.split(separator: "/", omittingEmptySubsequences: true)
        for (index, part) in parts.enumerated() {
            if part == "." { continue }
            switch current.kind {
            case .directory: break
            case .symlink:
                throw Error.symlinkInPath(image: path, path: walked, target: try symlinkTarget(current))
            default:
                throw Error.notADirectory(image: path, path: walked)
            }
            guard let found = try find(String(part), in: current) else {
                throw Error.noSuchPath(image: path, path: "/" + parts[...index].joined(separator: "/"))
            }
            current = found
            walked += "/" + part
        }
        return current
    }

    /// The entries of `directory` but `.` and `..`, sorted by name (bytewise, as `LC_ALL=C ls`).
    public func children(of directory: Ext3.Entry) throws -> [Ext3.DirectoryEntry] {
        var names: [(String, UInt32)] = []
        try iterate(directory) { name, ino in
            if name != "." && name != ".." { names.append((name, ino)) }
            return true
        }
        names.sort { Array($0.0.utf8).lexicographicallyPrecedes(Array($1.0.utf8)) }
        return try names.map { name, ino in
            do {
                return Ext3.DirectoryEntry(name: name, entry: try entry(inode: ino))
            } catch let error as Error {
                throw Error.damaged(image: path, what: "entry '\(name)' names inode \(ino), which cannot be read (\(Self.reason(error)))")
            }
        }
    }

    /// Where the symbolic link `entry` points (fast symlinks from the inode, others from their block).
    public func symlinkTarget(_ entry: Ext3.Entry) throws -> String {
        String(decoding: try symlinkBytes(entry), as: UTF8.self)
    }

    /// The bytes of the symbolic link `entry`'s target, as stored.
    public func symlinkBytes(_ entry: Ext3.Entry) throws -> [UInt8] {
        guard entry.kind == .symlink else { throw Error.other("\(path): inode \(entry.inode) is not a symbolic link") }
        guard entry.size > 0, entry.size <= Ext3.Limits.symlinkBytes else {
            throw Error.damaged(image: path, what: "symbolic link inode \(entry.inode) claims a \(entry.size)-byte target")
        }
        var raw = try largeInode(entry.inode)
        let fast = ext2fs_is_fast_symlink(cext2fs_small_inode(&raw)) != 0
        if fast {
            guard entry.size < 60 else {
                throw Error.damaged(image: path, what: "symbolic link inode \(entry.inode) claims a \(entry.size)-byte target")
            }
            return Array(UnsafeBufferPointer(start: cext2fs_inode_block_bytes(&raw), count: Int(entry.size)))
        }
        var bytes: [UInt8] = []
        try readContents(entry, limit: Ext3.Limits.symlinkBytes) { bytes += $0 }
        return bytes
    }

    /// Streams the content of the regular file `entry` in chunks of at most
    /// ``Ext3/Limits/readChunk`` bytes. A file claiming more bytes than the whole filesystem
    /// holds is refused as damaged (sparse files larger than their image are not read).
    public func read(_ entry: Ext3.Entry, chunk body: ([UInt8]) throws -> Void) throws {
        guard entry.kind == .regular else { throw Error.other("\(path): inode \(entry.inode) is not a regular file") }
        guard let fs = handle.fs else { throw Error.other("\(path): image is closed") }
        let capacity = ext2fs_blocks_count(fs.pointee.super).multipliedReportingOverflow(by: UInt64(cext2fs_block_size(fs)))
        guard !capacity.overflow, entry.size <= capacity.partialValue else {
            throw Error.damaged(image: path, what: "inode \(entry.inode) claims \(entry.size) bytes, more than the whole filesystem holds")
        }
        try readContents(entry, limit: entry.size, body)
    }

    // MARK: - Bounded primitives

    private func readContents(_ entry: Ext3.Entry, limit: UInt64, _ body: ([UInt8]) throws -> Void) throws {
        guard let fs = handle.fs else { throw Error.other("\(path): image is closed") }
        var file: ext2_file_t?
        try Ext3.check(ext2fs_file_open(fs, ext2_ino_t(entry.inode), 0, &file), "open inode \(entry.inode)", path: path)
        guard let file else { throw Error.other("\(path): cannot open inode \(entry.inode)") }
        defer { ext2fs_file_close(file) }
        var remaining = min(entry.size, limit)
        var buffer = [UInt8](repeating: 0, count: Ext3.Limits.readChunk)
        while remaining > 0 {
            let want = Int(min(remaining, UInt64(buffer.count)))
            var got: UInt32 = 0
            let code = buffer.withUnsafeMutableBytes { ext2fs_file_read(file, $0.baseAddress, UInt32(want), &got) }
            try Ext3.check(code, "read inode \(entry.inode)", path: path)
            guard got > 0 else {
                throw Error.damaged(image: path, what: "inode \(entry.inode) ends \(remaining) bytes before its size")
            }
            let count = min(Int(got), want)
            try body(count == buffer.count ? buffer : Array(buffer[0..<count]))
            remaining -= UInt64(count)
        }
    }

    /// The entry named `name` in `directory`, or nil.
    private func find(_ name: String, in directory: Ext3.Entry) throws -> Ext3.Entry? {
        var found: UInt32?
        try iterate(directory) { entryName, ino in
            if entryName == name { found = ino; return false }
            return true
        }
        guard let found else { return nil }
        do {
            return try entry(inode: found)
        } catch let error as Error {
            throw Error.damaged(image: path, what: "entry '\(name)' names inode \(found), which cannot be read (\(Self.reason(error)))")
        }
    }

    /// Calls `visit(name, inode)` for each live entry of `directory` until it returns false.
    /// Refuses directories that claim more than ``Ext3/Limits/directoryBytes`` and stops after
    /// as many blocks as the directory's size accounts for, whatever its block map says.
    private func iterate(_ directory: Ext3.Entry, _ visit: (String, UInt32) -> Bool) throws {
        guard let fs = handle.fs else { throw Error.other("\(path): image is closed") }
        guard directory.kind == .directory else { throw Error.other("\(path): inode \(directory.inode) is not a directory") }
        let blockSize = UInt64(cext2fs_block_size(fs))
        guard directory.size <= Ext3.Limits.directoryBytes, directory.size % blockSize == 0, directory.size > 0 else {
            throw Error.damaged(image: path, what: "directory inode \(directory.inode) claims \(directory.size) bytes")
        }
        try Ext3.walkDirectory(fs, ext2_ino_t(directory.inode), size: directory.size, path: path,
                               named: "directory inode \(directory.inode)") { name, inode, _ in
            visit(String(decoding: name, as: UTF8.self), inode)
        }
    }

    static func reason(_ error: Error) -> String {
        if case let .library(_, _, _, message) = error { return message }
        return error.description
    }

    /// How the image's blocks and inodes are used now (the superblock's counts, as dumpe2fs
    /// prints them, and the metadata the layout fixes).
    public func usage() throws -> Ext3.Usage {
        guard let fs = handle.fs else { throw Error.other("\(path): image is closed") }
        let sb = fs.pointee.super!
        let blockSize = Int(cext2fs_block_size(fs))
        var metadata: UInt64 = 0
        let groups = cext2fs_group_count(fs)
        for group in 0..<groups {
            var superBlock: blk64_t = 0, oldDesc: blk64_t = 0, newDesc: blk64_t = 0
            var used: blk_t = 0
            try Ext3.check(ext2fs_super_and_bgd_loc2(fs, group, &superBlock, &oldDesc, &newDesc, &used),
                           "locate group \(group)", path: path)
            metadata &+= UInt64(used) &+ 2 &+ UInt64(cext2fs_inode_blocks_per_group(fs))
        }
        metadata &+= UInt64(sb.pointee.s_first_data_block)
        // The journal, and the resize inode's own indirect block (its reserved descriptor
        // blocks are counted with the groups).
        if sb.pointee.s_journal_inum != 0, let journal = try? largeInode(sb.pointee.s_journal_inum) {
            metadata &+= UInt64(journal.i_blocks) * 512 / UInt64(blockSize)
        }
        if sb.pointee.s_reserved_gdt_blocks > 0 { metadata &+= 1 }
        return Ext3.Usage(blockSize: blockSize, blockCount: ext2fs_blocks_count(sb),
                          freeBlocks: ext2fs_free_blocks_count(sb),
                          inodeCount: UInt64(sb.pointee.s_inodes_count), freeInodes: UInt64(sb.pointee.s_free_inodes_count),
                          metadataBlocks: metadata)
    }
}

extension Ext3 {
    /// Calls `visit(name, inode, file type)` for each live entry of directory `ino` (`.` and
    /// `..` included) until it returns false, stopping after as many blocks as the directory's
    /// `size` accounts for, whatever its block map says (a hostile image cannot make it read
    /// more). `named` names the directory in errors.
    static func walkDirectory(_ fs: ext2_filsys, _ ino: ext2_ino_t, size: UInt64, path: String, named: String,
                              _ visit: ([UInt8], UInt32, UInt8) -> Bool) throws {
        final class Context {
            let visit: ([UInt8], UInt32, UInt8) -> Bool
            let maxBlocks: UInt64
            var blocks: UInt64 = 0
            var tooLong = false
            init(visit: @escaping ([UInt8], UInt32, UInt8) -> Bool, maxBlocks: UInt64) {
                self.visit = visit
                self.maxBlocks = maxBlocks
            }
        }
        let blockSize = UInt64(cext2fs_block_size(fs))
        try withoutActuallyEscaping(visit) { visit in
            let context = Context(visit: visit, maxBlocks: size / blockSize)
            let unmanaged = Unmanaged.passRetained(context)
            defer { unmanaged.release() }
            let code = ext2fs_dir_iterate2(
                fs, ino, DIRENT_FLAG_INCLUDE_EMPTY, nil,
                { _, _, dirent, offset, _, _, priv in
                    let context = Unmanaged<Context>.fromOpaque(priv!).takeUnretainedValue()
                    if offset == 0 {
                        context.blocks += 1
                        if context.blocks > context.maxBlocks {
                            context.tooLong = true
                            return DIRENT_ABORT
                        }
                    }
                    guard let dirent, dirent.pointee.inode != 0 else { return 0 }
                    let length = Int(cext2fs_dirent_name_len(dirent))
                    let name = cext2fs_dirent_name(dirent)!.withMemoryRebound(to: UInt8.self, capacity: length) {
                        Array(UnsafeBufferPointer(start: $0, count: length))
                    }
                    let fileType = UInt8(truncatingIfNeeded: dirent.pointee.name_len >> 8)
                    return context.visit(name, dirent.pointee.inode, fileType) ? 0 : DIRENT_ABORT
                },
                unmanaged.toOpaque())
            if context.tooLong {
                throw Error.damaged(image: path, what: "\(named) has more blocks than its size (\(size) bytes) accounts for")
            }
            try check(code, "read \(named)", path: path)
        }
    }
}
