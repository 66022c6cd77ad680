import CExt2fs

#if canImport(Glibc)
import Glibc
#endif

/// What the driver knows of an image, read through libext2fs once and kept: each inode's
/// attributes, each directory's entries (a hash map for lookups and a list for listings),
/// each file's block map and extended attributes. libext2fs is not thread-safe: every call
/// into it happens under ``lock``; file contents are read with `pread` on the image outside it.
final class ImageTree: @unchecked Sendable {
    /// A directory's entries, read once: names to inode numbers, and the listing in disk order.
    struct Directory {
        struct Entry {
            /// The name, NUL-terminated (as the kernel's listing wants it).
            var cName: [CChar]
            var inode: UInt32
            /// `S_IFMT` bits of the entry's kind (from the directory entry's file type).
            var kind: mode_t
        }
        var byName: [[UInt8]: UInt32] = [:]
        var entries: [Entry] = []
    }

    /// An inode's data blocks as runs: logical blocks `logical..<logical+count` are physical
    /// blocks `physical..<physical+count`; blocks in no run are holes. As many runs as the file
    /// has pieces (one for most files), whatever size a damaged inode claims.
    struct BlockMap {
        struct Run {
            var logical: UInt64
            var physical: UInt64
            var count: UInt64
        }
        var runs: [Run]
        var size: UInt64

        /// The physical block of logical block `block` (0: a hole) and how many blocks from it
        /// on are laid out the same way (consecutive, or all holes; at least 1).
        func locate(_ block: UInt64) -> (physical: UInt64, count: UInt64) {
            // The first run that ends after `block`.
            var low = 0, high = runs.count
            while low < high {
                let middle = (low + high) / 2
                if runs[middle].logical + runs[middle].count <= block { low = middle + 1 } else { high = middle }
            }
            guard low < runs.count else { return (0, UInt64.max - block) }
            let run = runs[low]
            if run.logical > block { return (0, run.logical - block) }
            return (run.physical + (block - run.logical), run.count - (block - run.logical))
        }
    }

    private final class Node {
        var attributes: stat
        var directory: Directory?
        var blockMap: BlockMap?
        var xattrs: [(name: [UInt8], value: [UInt8])]?
        var link: [UInt8]?
        init(_ attributes: stat) { self.attributes = attributes }
    }

    let path: String
    /// The image, opened read-only, for file contents.
    let descriptor: Int32
    let blockSize: Int
    /// Whether the kernel opens files (directories) without asking: set once, when the
    /// session starts, before any request.
    var withoutOpen = false
    var withoutOpendir = false
    private let fs: ext2_filsys
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var nodes: [UInt32: Node] = [:]

    /// Opens the image read-only. Throws the errno or libext2fs's message as text.
    init(path: String) throws(DriverError) {
        self.path = path
        initialize_ext2_error_table()
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw DriverError("cannot open '\(path)': \(String(cString: strerror(errno)))") }
        var handle: ext2_filsys?
        let code = ext2fs_open2(path, nil, Int32(EXT2_FLAG_64BITS), 0, 0, cext2fs_unix_io_manager(), &handle)
        guard code == 0, let handle else {
            Glibc.close(fd)
            throw DriverError("cannot open '\(path)' as ext3: \(String(cString: error_message(code)))")
        }
        self.descriptor = fd
        self.fs = handle
        self.blockSize = Int(cext2fs_block_size(handle))
        pthread_mutex_init(mutex, nil)
    }

    /// Frees libext2fs's handle and the image descriptor (the driver is ending).
    func close() {
        withLock {
            var handle: ext2_filsys? = fs
            ext2fs_close_free(&handle)
        }
        Glibc.close(descriptor)
    }

    private func withLock<Result>(_ body: () throws(FuseError) -> Result) throws(FuseError) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    private func withLock<Result>(_ body: () -> Result) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    // MARK: Queries (each takes the lock)

    func attributes(_ inode: UInt32) throws(FuseError) -> stat {
        try withLock { () throws(FuseError) -> stat in try node(inode).attributes }
    }

    /// The inode `name` names in directory `parent`, with its attributes; nil when there is none.
    func lookup(_ parent: UInt32, _ name: [UInt8]) throws(FuseError) -> (UInt32, stat)? {
        try withLock { () throws(FuseError) -> (UInt32, stat)? in
            guard let child = try directory(parent).byName[name] else { return nil }
            return (child, try node(child).attributes)
        }
    }

    func listing(_ inode: UInt32) throws(FuseError) -> [Directory.Entry] {
        try withLock { () throws(FuseError) -> [Directory.Entry] in try directory(inode).entries }
    }

    /// The attributes of each inode in `inodes` (a listing's, for readdirplus).
    func attributes(of inodes: [UInt32]) throws(FuseError) -> [stat] {
        try withLock { () throws(FuseError) -> [stat] in
            var result: [stat] = []
            result.reserveCapacity(inodes.count)
            for inode in inodes { result.append(try node(inode).attributes) }
            return result
        }
    }

    func blockMap(_ inode: UInt32) throws(FuseError) -> BlockMap {
        try withLock { () throws(FuseError) -> BlockMap in
            let entry = try node(inode)
            if let map = entry.blockMap { return map }
            let map = try readBlockMap(inode, size: UInt64(entry.attributes.st_size))
            entry.blockMap = map
            return map
        }
    }

    func extendedAttributes(_ inode: UInt32) throws(FuseError) -> [(name: [UInt8], value: [UInt8])] {
        try withLock { () throws(FuseError) -> [(name: [UInt8], value: [UInt8])] in
            let entry = try node(inode)
            if let xattrs = entry.xattrs { return xattrs }
            let xattrs = try readExtendedAttributes(inode)
            entry.xattrs = xattrs
            return xattrs
        }
    }

    /// Whether any inode of the image carries extended attributes (in an attribute block or
    /// in the inode's spare space). Found once, by reading the inode tables of the groups
    /// that have inodes in use; a table that cannot be read counts as holding some.
    var holdsExtendedAttributes: Bool {
        withLock {
            if let known = extendedAttributesKnown { return known }
            let found = scanForExtendedAttributes()
            extendedAttributesKnown = found
            return found
        }
    }

    private var extendedAttributesKnown: Bool?

    private func scanForExtendedAttributes() -> Bool {
        let sb = fs.pointee.super!
        let inodeSize = Int(sb.pointee.s_rev_level == 0 ? 128 : UInt32(sb.pointee.s_inode_size))
        let perGroup = sb.pointee.s_inodes_per_group
        var scan: OpaquePointer?
        guard ext2fs_open_inode_scan(fs, 64, &scan) == 0, let scan else { return true }
        defer { ext2fs_close_inode_scan(scan) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(inodeSize, MemoryLayout<ext2_inode_large>.size), alignment: 8)
        defer { buffer.deallocate() }
        for group in 0..<cext2fs_group_count(fs) {
            if ext2fs_bg_free_inodes_count(fs, dgrp_t(group)) >= perGroup { continue }
            guard ext2fs_inode_scan_goto_blockgroup(scan, Int32(group)) == 0 else { return true }
            for _ in 0..<perGroup {
                var number: ext2_ino_t = 0
                guard ext2fs_get_next_inode_full(scan, &number, buffer.assumingMemoryBound(to: ext2_inode.self), Int32(inodeSize)) == 0 else { return true }
                if number == 0 { break }
                let inode = buffer.assumingMemoryBound(to: ext2_inode_large.self).pointee
                guard inode.i_links_count > 0 else { continue }
                if inode.i_file_acl != 0 { return true }
                // In-inode attributes: the header's magic right after the inode's extra fields.
                let extra = Int(inode.i_extra_isize)
                if inodeSize > 128, extra >= 4, 128 + extra + 4 <= inodeSize,
                   buffer.loadUnaligned(fromByteOffset: 128 + extra, as: UInt32.self) == 0xEA02_0000 {
                    return true
                }
            }
        }
        return false
    }

    func linkTarget(_ inode: UInt32) throws(FuseError) -> [UInt8] {
        try withLock { () throws(FuseError) -> [UInt8] in
            let entry = try node(inode)
            if let link = entry.link { return link }
            guard entry.attributes.st_mode & S_IFMT == S_IFLNK else { throw FuseError(EINVAL) }
            var raw = ext2_inode_large()
            guard cext2fs_read_inode_large(fs, inode, &raw) == 0 else { throw FuseError(EIO) }
            let size = Int(entry.attributes.st_size)
            guard size > 0, size < blockSize else { throw FuseError(EIO) }
            var target: [UInt8]
            if ext2fs_is_fast_symlink(cext2fs_small_inode(&raw)) != 0 {
                guard size <= 60 else { throw FuseError(EIO) }
                target = Array(UnsafeBufferPointer(start: cext2fs_inode_block_bytes(&raw), count: size))
            } else {
                let map = try readBlockMap(inode, size: UInt64(size))
                let first = map.locate(0).physical
                guard first != 0 else { throw FuseError(EIO) }
                target = [UInt8](repeating: 0, count: size)
                let count = target.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, size, off_t(first) * off_t(blockSize)) }
                guard count == size else { throw FuseError(EIO) }
            }
            if let end = target.firstIndex(of: 0) { target = Array(target[..<end]) }
            entry.link = target
            return target
        }
    }

    func statistics() -> statvfs {
        withLock { Self.statistics(fs) }
    }

    /// statfs's answer from the superblock (the free counts as libext2fs keeps them).
    static func statistics(_ fs: ext2_filsys) -> statvfs {
        let sb = fs.pointee.super!
        let blockSize = cext2fs_block_size(fs)
        var info = statvfs()
        info.f_bsize = UInt(blockSize)
        info.f_frsize = UInt(blockSize)
        info.f_blocks = fsblkcnt_t(sb.pointee.s_blocks_count)
        info.f_bfree = fsblkcnt_t(sb.pointee.s_free_blocks_count)
        let reserved = fsblkcnt_t(sb.pointee.s_r_blocks_count)
        info.f_bavail = info.f_bfree > reserved ? info.f_bfree - reserved : 0
        info.f_files = fsfilcnt_t(sb.pointee.s_inodes_count)
        info.f_ffree = fsfilcnt_t(sb.pointee.s_free_inodes_count)
        info.f_favail = info.f_ffree
        info.f_namemax = 255
        return info
    }

    // MARK: Reading (under the lock)

    private func node(_ inode: UInt32) throws(FuseError) -> Node {
        if let node = nodes[inode] { return node }
        guard inode >= 2, inode <= fs.pointee.super.pointee.s_inodes_count else { throw FuseError(EIO) }
        var raw = ext2_inode_large()
        guard cext2fs_read_inode_large(fs, inode, &raw) == 0 else { throw FuseError(EIO) }
        let node = Node(Self.attributes(inode, &raw, fs: fs))
        nodes[inode] = node
        return node
    }

    private func directory(_ inode: UInt32) throws(FuseError) -> Directory {
        let entry = try node(inode)
        if let directory = entry.directory { return directory }
        guard entry.attributes.st_mode & S_IFMT == S_IFDIR else { throw FuseError(ENOTDIR) }
        final class Context { var directory = Directory() }
        let context = Context()
        let code = withExtendedLifetime(context) {
            ext2fs_dir_iterate2(fs, inode, 0, nil, { _, _, dirent, _, _, _, data in
                guard let dirent, let data else { return 0 }
                let context = Unmanaged<Context>.fromOpaque(data).takeUnretainedValue()
                let length = Int(cext2fs_dirent_name_len(dirent))
                let number = dirent.pointee.inode
                // Inode 1 (bad blocks) is never a file; the root maps onto FUSE's node 1.
                guard number >= 2, length > 0 else { return 0 }
                let bytes = UnsafeRawPointer(cext2fs_dirent_name(dirent)!).assumingMemoryBound(to: UInt8.self)
                let name = Array(UnsafeBufferPointer(start: bytes, count: length))
                guard context.directory.byName[name] == nil else { return 0 }
                context.directory.byName[name] = number
                var cName = name.map { CChar(bitPattern: $0) }
                cName.append(0)
                context.directory.entries.append(.init(cName: cName, inode: number,
                                                       kind: ImageTree.kind(fileType: UInt8(truncatingIfNeeded: dirent.pointee.name_len >> 8))))
                return 0
            }, Unmanaged.passUnretained(context).toOpaque())
        }
        guard code == 0 else { throw FuseError(EIO) }
        entry.directory = context.directory
        return context.directory
    }

    private func readBlockMap(_ inode: UInt32, size: UInt64) throws(FuseError) -> BlockMap {
        final class Context { var runs: [BlockMap.Run] = []; var limit: UInt64 = 0 }
        let context = Context()
        context.limit = (size + UInt64(blockSize) - 1) / UInt64(blockSize)
        let code = withExtendedLifetime(context) {
            ext2fs_block_iterate3(fs, inode, BLOCK_FLAG_READ_ONLY | BLOCK_FLAG_DATA_ONLY, nil, { _, block, index, _, _, data in
                guard let block, let data, index >= 0 else { return 0 }
                let context = Unmanaged<Context>.fromOpaque(data).takeUnretainedValue()
                let logical = UInt64(index), physical = block.pointee
                guard logical < context.limit else { return BLOCK_ABORT }
                // In logical order: extend the last run, or start one.
                if let last = context.runs.last, last.logical + last.count == logical, last.physical + last.count == physical {
                    context.runs[context.runs.count - 1].count += 1
                } else if context.runs.last.map({ $0.logical + $0.count <= logical }) ?? true {
                    context.runs.append(.init(logical: logical, physical: physical, count: 1))
                }
                return 0
            }, Unmanaged.passUnretained(context).toOpaque())
        }
        guard code == 0 else { throw FuseError(EIO) }
        return BlockMap(runs: context.runs, size: size)
    }

    private func readExtendedAttributes(_ inode: UInt32) throws(FuseError) -> [(name: [UInt8], value: [UInt8])] {
        var handle: OpaquePointer?
        guard ext2fs_xattrs_open(fs, inode, &handle) == 0, handle != nil else { throw FuseError(EIO) }
        defer { ext2fs_xattrs_close(&handle) }
        guard ext2fs_xattrs_read(handle) == 0 else { throw FuseError(EIO) }
        final class Context { var xattrs: [(name: [UInt8], value: [UInt8])] = [] }
        let context = Context()
        let code = withExtendedLifetime(context) {
            ext2fs_xattrs_iterate(handle, { name, value, length, data in
                guard let name, let data else { return 0 }
                let context = Unmanaged<Context>.fromOpaque(data).takeUnretainedValue()
                let nameBytes = Array(UnsafeBufferPointer(start: UnsafeRawPointer(name).assumingMemoryBound(to: UInt8.self),
                                                          count: strlen(name)))
                var bytes: [UInt8] = []
                if let value, length > 0 {
                    bytes = Array(UnsafeBufferPointer(start: UnsafeRawPointer(value).assumingMemoryBound(to: UInt8.self), count: length))
                }
                context.xattrs.append((nameBytes, bytes))
                return 0
            }, Unmanaged.passUnretained(context).toOpaque())
        }
        guard code == 0 else { throw FuseError(EIO) }
        return context.xattrs
    }

    // MARK: Conversions

    static func kind(fileType: UInt8) -> mode_t {
        switch fileType {
        case 1: return S_IFREG
        case 2: return S_IFDIR
        case 3: return S_IFCHR
        case 4: return S_IFBLK
        case 5: return S_IFIFO
        case 6: return S_IFSOCK
        case 7: return S_IFLNK
        default: return 0
        }
    }

    static func attributes(_ inode: UInt32, _ raw: inout ext2_inode_large, fs: ext2_filsys) -> stat {
        var info = stat()
        let small = cext2fs_small_inode(&raw)!
        info.st_ino = ino_t(inode)
        info.st_mode = mode_t(raw.i_mode)
        info.st_nlink = nlink_t(raw.i_links_count)
        info.st_uid = uid_t(cext2fs_inode_uid(small))
        info.st_gid = gid_t(cext2fs_inode_gid(small))
        info.st_size = off_t(UInt64(raw.i_size) | UInt64(raw.i_size_high) << 32)
        info.st_blksize = blksize_t(cext2fs_block_size(fs))
        info.st_blocks = blkcnt_t(ext2fs_get_stat_i_blocks(fs, small))
        let kind = info.st_mode & S_IFMT
        if kind == S_IFCHR || kind == S_IFBLK {
            let major = UInt64(cext2fs_inode_rdev_major(&raw)), minor = UInt64(cext2fs_inode_rdev_minor(&raw))
            info.st_rdev = dev_t((major & 0xfff) << 8 | (major & ~0xfff) << 32 | (minor & 0xff) | (minor & ~0xff) << 12)
        }
        // The _extra fields (nanoseconds, epoch bits) where i_extra_isize reaches them.
        let extra = Int(raw.i_extra_isize)
        func time(_ seconds: UInt32, _ extraField: UInt32, needs: Int) -> timespec {
            var value = timespec(tv_sec: Int(Int32(bitPattern: seconds)), tv_nsec: 0)
            if extra >= needs, extra <= 128 {
                value.tv_sec += Int(extraField & 3) << 32
                value.tv_nsec = Int(min(extraField >> 2, 999_999_999))
            }
            return value
        }
        info.st_ctim = time(raw.i_ctime, raw.i_ctime_extra, needs: 8)
        info.st_mtim = time(raw.i_mtime, raw.i_mtime_extra, needs: 12)
        info.st_atim = time(raw.i_atime, raw.i_atime_extra, needs: 16)
        return info
    }
}

/// A failure to start the driver, as one line.
struct DriverError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// An errno to answer a FUSE request with.
struct FuseError: Error {
    let code: Int32
    init(_ code: Int32) { self.code = code }
}
