import CExt2fs
import CFuse3

#if canImport(Glibc)
import Glibc
#endif

/// A writable image as the driver's writable mode sees it: libext2fs does the allocation,
/// inodes, file contents and extended attributes; directories are this type's own, read once
/// into a hash map per directory (a lookup or a create costs the same in a directory of 20,000
/// entries as in one of 10, where libext2fs's `ext2fs_link`/`ext2fs_unlink` scan the whole
/// directory) and changed in place, entry by entry, as the kernel's ext3 changes them.
///
/// Every call happens under ``lock`` (libext2fs is not thread-safe). The image is locked for
/// the run, and only this mount changes it, so what is kept never goes stale. A file unlinked
/// while open keeps its inode until its last release (or the driver's end), as on the kernel's
/// ext3. The superblock says "not clean" while the driver runs and "clean" once it closed the
/// image, after which e2fsck finds nothing to fix.
///
/// Images with features this code does not maintain (group descriptor or metadata checksums,
/// extents, inline data, ...) are refused (``supports(path:)``): the runtime mounts those with
/// fuse2fs.
final class WritableTree: @unchecked Sendable {
    /// A directory entry: the inode it names, its file type (ext2's `EXT2_FT_*`) and where it
    /// lies (byte offset in the directory), which is also its stable place in a listing.
    struct Slot {
        var inode: UInt32
        var fileType: UInt8
        var position: UInt64
    }

    final class Directory {
        var byName: [[UInt8]: Slot] = [:]
        /// The physical block of each logical block (0: a hole).
        var blocks: [UInt64] = []
        /// Logical blocks that lost an entry: a create looks there for room before the last one.
        var roomy: Set<Int> = []
        /// The listing by position, rebuilt after a change.
        var ordered: [(position: UInt64, name: [UInt8])]?
        /// Whether the directory was checked for an htree index (dropped on the first change).
        var unindexed = false
    }

    let path: String
    let blockSize: Int
    private let fs: ext2_filsys
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var directories: [UInt32: Directory] = [:]
    /// Open handles per inode; the kernel's lookup count per inode (what it may still ask
    /// about by number); inodes whose last name went while either was not zero (freed when
    /// both are, or when the driver ends).
    private var openCount: [UInt32: Int] = [:]
    private var lookups: [UInt32: UInt64] = [:]
    private var orphans: Set<UInt32> = []
    private let inodeSize: Int
    /// The largest file size, as the kernel's ext3 has it for the block size (block-mapped
    /// files without `huge_file`: what the indirect blocks reach, and what `i_blocks` counts).
    let maximumFileSize: UInt64
    /// Whether anything changed: the bitmaps are read, and the image marked "not clean", at
    /// the first change; a run that changes nothing writes nothing.
    private var changed = false
    private var bitmapsRead = false
    /// The generation of the next inode made: a number the kernel can tell a reused inode
    /// number by.
    private var nextGeneration = UInt32.random(in: 1...UInt32.max / 2)

    static let compatibleIncompat: UInt32 = UInt32(EXT2_FEATURE_INCOMPAT_FILETYPE)
    static let compatibleReadOnly: UInt32 = UInt32(EXT2_FEATURE_RO_COMPAT_SPARSE_SUPER | EXT2_FEATURE_RO_COMPAT_LARGE_FILE)

    /// Whether this driver can write the image (its features are those of an ext3 image made
    /// by this toolkit or `mke2fs -t ext3`), read from its superblock without libext2fs.
    static func supports(path: String) -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        var raw = [UInt8](repeating: 0, count: 1024)
        guard raw.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, 1024, 1024) }) == 1024 else { return false }
        func word(_ offset: Int) -> UInt32 {
            UInt32(raw[offset]) | UInt32(raw[offset + 1]) << 8 | UInt32(raw[offset + 2]) << 16 | UInt32(raw[offset + 3]) << 24
        }
        guard raw[56] == 0x53, raw[57] == 0xEF else { return false }
        let incompat = word(96), readOnly = word(100)
        // Directory entries with file types (the listings an overlay needs), blocks of up to 32 KiB.
        return incompat & UInt32(EXT2_FEATURE_INCOMPAT_FILETYPE) != 0 && word(24) <= 5
            && incompat & ~compatibleIncompat == 0 && readOnly & ~compatibleReadOnly == 0
    }

    /// Opens the image for writing and marks it in use (not clean) until ``close()``.
    init(path: String) throws(DriverError) {
        self.path = path
        initialize_ext2_error_table()
        guard Self.supports(path: path) else {
            throw DriverError("'\(path)' has ext2 features this driver does not write (or is no ext3 image)")
        }
        var handle: ext2_filsys?
        let code = ext2fs_open2(path, nil, Int32(EXT2_FLAG_64BITS | EXT2_FLAG_RW), 0, 0, cext2fs_unix_io_manager(), &handle)
        guard code == 0, let handle else {
            throw DriverError("cannot open '\(path)' as ext3: \(String(cString: error_message(code)))")
        }
        self.fs = handle
        self.blockSize = Int(cext2fs_block_size(handle))
        self.inodeSize = Int(cext2fs_inode_size(handle))
        self.maximumFileSize = Self.maximumFileSize(blockBits: UInt64(10 + handle.pointee.super.pointee.s_log_block_size))
        pthread_mutex_init(mutex, nil)
    }

    /// Before the first change: the allocation bitmaps read, and the image marked "not clean"
    /// on disk (the superblock's state field alone, without a sync: only a crash of the host
    /// could lose it, and with it what the run wrote).
    private func beginChange() throws(FuseError) {
        if !bitmapsRead {
            let code = ext2fs_read_bitmaps(fs)
            guard code == 0 else { throw Self.error(code) }
            bitmapsRead = true
        }
        guard !changed else { return }
        let sb = fs.pointee.super!
        sb.pointee.s_state &= ~UInt16(EXT2_VALID_FS)
        sb.pointee.s_mtime = UInt32(truncatingIfNeeded: time(nil))
        var state = sb.pointee.s_state.littleEndian
        let code = io_channel_write_byte(cext2fs_io(fs), 1024 + 58, 2, &state)
        guard code == 0 else { throw Self.error(code) }
        // libext2fs writes only the superblock fields that differ from what it read: it must
        // know the state on disk changed, or "clean" would never be written back at the end.
        fs.pointee.orig_super?.pointee.s_state = sb.pointee.s_state
        ext2fs_mark_super_dirty(fs)
        changed = true
    }

    /// Frees what unlinked files still held, marks the image clean and closes it.
    func close() -> Bool {
        withLock {
            guard changed else {
                // Nothing to write.
                ext2fs_free(fs)
                return true
            }
            for inode in orphans { try? free(inode) }
            orphans = []
            fs.pointee.super.pointee.s_state |= UInt16(EXT2_VALID_FS)
            ext2fs_mark_super_dirty(fs)
            let code = ext2fs_close2(fs, 0)
            if code != 0 { ext2fs_free(fs) }
            return code == 0
        }
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

    /// The caller of a request: owner of what it creates.
    struct Caller {
        var uid: UInt32
        var gid: UInt32
    }

    // MARK: Queries

    func attributes(_ inode: UInt32) throws(FuseError) -> stat {
        try withLock { () throws(FuseError) -> stat in try stat(of: inode) }
    }

    /// An inode handed to the kernel (its lookup count raised by one).
    struct Found {
        var inode: UInt32
        var generation: UInt32
        var attributes: stat
    }

    func lookup(_ parent: UInt32, _ name: [UInt8]) throws(FuseError) -> Found? {
        try withLock { () throws(FuseError) -> Found? in
            try checkName(name)
            guard let slot = try directory(parent).byName[name] else { return nil }
            return try found(slot.inode)
        }
    }

    /// The kernel forgot `count` lookups of `inode`.
    func forget(_ inode: UInt32, _ count: UInt64) {
        withLock {
            let left = (lookups[inode] ?? 0) &- min(count, lookups[inode] ?? 0)
            lookups[inode] = left > 0 ? left : nil
            settle(inode)
        }
    }

    /// The entries after `cookie` (0: from the start), each with its cookie, at most `limit`;
    /// with their attributes when `plus`.
    /// With `plus`, each entry but "." and ".." comes as `found` (its lookup count raised: the
    /// caller forgets the ones it does not send).
    func listing(_ inode: UInt32, after cookie: UInt64, limit: Int, plus: Bool) throws(FuseError)
        -> [(name: [UInt8], inode: UInt32, kind: mode_t, cookie: UInt64, found: Found?)] {
        try withLock { () throws(FuseError) -> [(name: [UInt8], inode: UInt32, kind: mode_t, cookie: UInt64, found: Found?)] in
            let directory = try directory(inode)
            if directory.ordered == nil {
                directory.ordered = directory.byName.map { ($0.value.position, $0.key) }.sorted { $0.position < $1.position }
            }
            let ordered = directory.ordered!
            // The first entry whose cookie (position + 1) is past `cookie`.
            var low = 0, high = ordered.count
            while low < high {
                let middle = (low + high) / 2
                if ordered[middle].position + 1 <= cookie { low = middle + 1 } else { high = middle }
            }
            var result: [(name: [UInt8], inode: UInt32, kind: mode_t, cookie: UInt64, found: Found?)] = []
            for (position, name) in ordered[low...].prefix(limit) {
                guard let slot = directory.byName[name] else { continue }
                let dots = name == [46] || name == [46, 46]
                let entry = plus && !dots ? try? found(slot.inode) : nil
                result.append((name, slot.inode, ImageTree.kind(fileType: slot.fileType), position + 1, entry))
            }
            return result
        }
    }

    func linkTarget(_ inode: UInt32) throws(FuseError) -> [UInt8] {
        try withLock { () throws(FuseError) -> [UInt8] in
            var raw = try read(inode)
            guard raw.i_mode & Self.mask16 == Self.link16 else { throw FuseError(EINVAL) }
            let size = Int(raw.i_size)
            guard size > 0, size < blockSize else { throw FuseError(EIO) }
            if cext2fs_large_is_fast_symlink(&raw) != 0 {
                guard size <= 60 else { throw FuseError(EIO) }
                var target = [UInt8](repeating: 0, count: size)
                cext2fs_large_get_i_block(&raw, &target, Int32(size))
                return target
            }
            var target = try readData(inode, offset: 0, size: size)
            if let end = target.firstIndex(of: 0) { target = Array(target[..<end]) }
            return target
        }
    }

    func read(_ inode: UInt32, offset: UInt64, size: Int) throws(FuseError) -> [UInt8] {
        try withLock { () throws(FuseError) -> [UInt8] in try readData(inode, offset: offset, size: size) }
    }

    func statistics() -> statvfs {
        withLock { ImageTree.statistics(fs) }
    }

    func extendedAttribute(_ inode: UInt32, _ name: UnsafePointer<CChar>) throws(FuseError) -> [UInt8] {
        try withLock { () throws(FuseError) -> [UInt8] in
            try withAttributes(inode) { (handle) throws(FuseError) -> [UInt8] in
                var value: UnsafeMutableRawPointer?
                var length = 0
                let code = ext2fs_xattr_get(handle, name, &value, &length)
                guard code == 0 else { throw code == EXT2_ET_EA_KEY_NOT_FOUND ? FuseError(ENODATA) : Self.error(code) }
                defer { Glibc.free(value) }
                guard let value, length > 0 else { return [] }
                return Array(UnsafeRawBufferPointer(start: value, count: length))
            }
        }
    }

    func extendedAttributeNames(_ inode: UInt32) throws(FuseError) -> [UInt8] {
        try withLock { () throws(FuseError) -> [UInt8] in
            try withAttributes(inode) { (handle) throws(FuseError) -> [UInt8] in
                final class Context { var names: [UInt8] = [] }
                let context = Context()
                let code = withExtendedLifetime(context) {
                    ext2fs_xattrs_iterate(handle, { name, _, _, data in
                        guard let name, let data else { return 0 }
                        let context = Unmanaged<Context>.fromOpaque(data).takeUnretainedValue()
                        context.names += Array(UnsafeBufferPointer(start: UnsafeRawPointer(name).assumingMemoryBound(to: UInt8.self),
                                                                   count: strlen(name))) + [0]
                        return 0
                    }, Unmanaged.passUnretained(context).toOpaque())
                }
                guard code == 0 else { throw Self.error(code) }
                return context.names
            }
        }
    }

    // MARK: Changes

    /// Makes a file of any kind but a directory or a symbolic link (regular, device, FIFO,
    /// socket, whiteout) named `name` in `parent`; `opened`: the kernel opens it (create).
    func makeNode(_ parent: UInt32, _ name: [UInt8], mode: mode_t, device: dev_t, caller: Caller, opened: Bool) throws(FuseError) -> Found {
        try withLock { () throws(FuseError) -> Found in
            let kind = mode & S_IFMT
            guard [S_IFREG, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK].contains(kind) else { throw FuseError(EINVAL) }
            let directory = try directory(parent)
            guard directory.byName[name] == nil else { throw FuseError(EEXIST) }
            try checkName(name)
            try beginChange()
            var (inode, raw) = try allocate(parent, mode: mode, caller: caller)
            if kind == S_IFCHR || kind == S_IFBLK {
                let major = UInt32((UInt64(device) >> 8) & 0xfff | (UInt64(device) >> 32) & ~0xfff)
                let minor = UInt32(UInt64(device) & 0xff | (UInt64(device) >> 12) & ~0xff)
                cext2fs_set_rdev(&raw, major, minor)
                try write(inode, &raw)
            }
            try link(parent, directory, name, inode, Self.fileType(mode), caller: caller, undo: inode)
            if opened { openCount[inode, default: 0] += 1 }
            return try found(inode)
        }
    }

    func makeDirectory(_ parent: UInt32, _ name: [UInt8], mode: mode_t, caller: Caller) throws(FuseError) -> Found {
        try withLock { () throws(FuseError) -> Found in
            let directory = try directory(parent)
            guard directory.byName[name] == nil else { throw FuseError(EEXIST) }
            try checkName(name)
            var parentRaw = try read(parent)
            guard parentRaw.i_links_count < Self.linkMax else { throw FuseError(EMLINK) }
            try beginChange()
            guard availableBlocks(caller) >= 1 else { throw FuseError(ENOSPC) }
            var (inode, raw) = try allocate(parent, mode: S_IFDIR | (mode & 0o7777), caller: caller)
            var block: blk64_t = 0
            var code = ext2fs_new_block2(fs, 0, nil, &block)
            guard code == 0 else { try? free(inode); throw Self.error(code) }
            ext2fs_block_alloc_stats2(fs, block, 1)
            var buffer: UnsafeMutablePointer<CChar>?
            code = ext2fs_new_dir_block(fs, inode, parent, &buffer)
            if code == 0, let buffer {
                code = ext2fs_write_dir_block4(fs, block, buffer, 0, inode)
                Glibc.free(buffer)
            }
            guard code == 0 else {
                ext2fs_block_alloc_stats2(fs, block, -1)
                try? free(inode)
                throw Self.error(code)
            }
            raw.i_block.0 = UInt32(truncatingIfNeeded: block)
            raw.i_size = UInt32(blockSize)
            raw.i_links_count = 2
            cext2fs_large_iblk_set(fs, &raw, 1)
            try write(inode, &raw)
            try link(parent, directory, name, inode, UInt8(EXT2_FT_DIR), caller: caller, undo: inode)
            parentRaw = try read(parent)
            parentRaw.i_links_count += 1
            try write(parent, &parentRaw)
            return try found(inode)
        }
    }

    func makeSymbolicLink(_ parent: UInt32, _ name: [UInt8], target: [UInt8], caller: Caller) throws(FuseError) -> Found {
        try withLock { () throws(FuseError) -> Found in
            let directory = try directory(parent)
            guard directory.byName[name] == nil else { throw FuseError(EEXIST) }
            try checkName(name)
            guard !target.isEmpty, target.count < blockSize else { throw FuseError(ENAMETOOLONG) }
            try beginChange()
            if target.count >= 60, availableBlocks(caller) < 4 { throw FuseError(ENOSPC) }
            var (inode, raw) = try allocate(parent, mode: S_IFLNK | 0o777, caller: caller)
            if target.count < 60 {
                cext2fs_large_set_i_block(&raw, target, Int32(target.count))
                raw.i_size = UInt32(target.count)
                try write(inode, &raw)
            } else {
                do throws(FuseError) { try writeData(inode, offset: 0, target) } catch {
                    try? free(inode)
                    throw error
                }
            }
            try link(parent, directory, name, inode, UInt8(EXT2_FT_SYMLINK), caller: caller, undo: inode)
            return try found(inode)
        }
    }

    /// A new name for an existing inode (not a directory).
    func makeLink(_ inode: UInt32, _ parent: UInt32, _ name: [UInt8], caller: Caller) throws(FuseError) -> Found {
        try withLock { () throws(FuseError) -> Found in
            let directory = try directory(parent)
            guard directory.byName[name] == nil else { throw FuseError(EEXIST) }
            try checkName(name)
            try beginChange()
            var raw = try read(inode)
            guard raw.i_mode & Self.mask16 != Self.directory16 else { throw FuseError(EPERM) }
            guard raw.i_links_count > 0 else { throw FuseError(ENOENT) }
            guard raw.i_links_count < Self.linkMax else { throw FuseError(EMLINK) }
            try link(parent, directory, name, inode, Self.fileType(mode_t(raw.i_mode)), caller: caller, undo: nil)
            raw = try read(inode)
            raw.i_links_count += 1
            Self.touch(&raw, change: true, modify: false)
            try write(inode, &raw)
            return try found(inode)
        }
    }

    func remove(_ parent: UInt32, _ name: [UInt8], directoryWanted: Bool) throws(FuseError) {
        try withLock { () throws(FuseError) in
            let directory = try directory(parent)
            guard let slot = directory.byName[name] else { throw FuseError(ENOENT) }
            var raw = try read(slot.inode)
            let isDirectory = raw.i_mode & Self.mask16 == Self.directory16
            if directoryWanted {
                guard isDirectory else { throw FuseError(ENOTDIR) }
                guard try self.directory(slot.inode).byName.count <= 2 else { throw FuseError(ENOTEMPTY) }
            } else {
                guard !isDirectory else { throw FuseError(EISDIR) }
            }
            try beginChange()
            try unlinkEntry(parent, directory, name)
            if isDirectory {
                var parentRaw = try read(parent)
                if parentRaw.i_links_count > 1 { parentRaw.i_links_count -= 1 }
                try write(parent, &parentRaw)
                raw.i_links_count = 0
            } else if raw.i_links_count > 0 {
                raw.i_links_count -= 1
            }
            Self.touch(&raw, change: true, modify: false)
            try write(slot.inode, &raw)
            if raw.i_links_count == 0 { try dropped(slot.inode) }
        }
    }

    func rename(_ parent: UInt32, _ name: [UInt8], to newParent: UInt32, _ newName: [UInt8], flags: UInt32, caller: Caller) throws(FuseError) {
        try withLock { () throws(FuseError) in
            guard flags & ~UInt32(Self.renameNoReplace | Self.renameExchange | Self.renameWhiteout) == 0,
                  !(flags & UInt32(Self.renameExchange) != 0 && flags & UInt32(Self.renameNoReplace | Self.renameWhiteout) != 0) else {
                throw FuseError(EINVAL)
            }
            let from = try directory(parent)
            let to = try directory(newParent)
            try checkName(name)
            guard let source = from.byName[name] else { throw FuseError(ENOENT) }
            try checkName(newName)
            let target = to.byName[newName]
            let sourceIsDirectory = source.fileType == UInt8(EXT2_FT_DIR)
            let targetIsDirectory = target?.fileType == UInt8(EXT2_FT_DIR)
            if flags & UInt32(Self.renameExchange) != 0 {
                guard let target else { throw FuseError(ENOENT) }
                if parent != newParent, sourceIsDirectory != targetIsDirectory {
                    // A directory moves to the other parent, which gains a link.
                    let gaining = sourceIsDirectory ? newParent : parent
                    guard try read(gaining).i_links_count < Self.linkMax else { throw FuseError(EMLINK) }
                }
                try beginChange()
                try retarget(parent, from, name, target.inode, target.fileType)
                try retarget(newParent, to, newName, source.inode, source.fileType)
                if parent != newParent {
                    if sourceIsDirectory { try setDotDot(source.inode, newParent) }
                    if targetIsDirectory { try setDotDot(target.inode, parent) }
                    let delta = (sourceIsDirectory ? 1 : 0) - (targetIsDirectory ? 1 : 0)
                    try adjustLinks(newParent, by: delta)
                    try adjustLinks(parent, by: -delta)
                }
                try touchInode(source.inode)
                try touchInode(target.inode)
                try touchDirectory(parent)
                if newParent != parent { try touchDirectory(newParent) }
                return
            }
            if let target {
                if flags & UInt32(Self.renameNoReplace) != 0 { throw FuseError(EEXIST) }
                if target.inode == source.inode { return }
                if sourceIsDirectory, !targetIsDirectory { throw FuseError(ENOTDIR) }
                if !sourceIsDirectory, targetIsDirectory { throw FuseError(EISDIR) }
                if targetIsDirectory {
                    guard try directory(target.inode).byName.count <= 2 else { throw FuseError(ENOTEMPTY) }
                }
            }
            if sourceIsDirectory, parent != newParent, !targetIsDirectory {
                guard try read(newParent).i_links_count < Self.linkMax else { throw FuseError(EMLINK) }
            }
            try beginChange()
            // The whiteout first: once names change, nothing may fail for want of an inode.
            var whiteout: UInt32?
            if flags & UInt32(Self.renameWhiteout) != 0 {
                whiteout = try allocate(parent, mode: S_IFCHR, caller: caller).0
            }
            if let target {
                try retarget(newParent, to, newName, source.inode, source.fileType)
                var raw = try read(target.inode)
                if targetIsDirectory {
                    raw.i_links_count = 0
                    try adjustLinks(newParent, by: -1)
                } else if raw.i_links_count > 0 {
                    raw.i_links_count -= 1
                }
                Self.touch(&raw, change: true, modify: false)
                try write(target.inode, &raw)
                if raw.i_links_count == 0 { try dropped(target.inode) }
            } else {
                try link(newParent, to, newName, source.inode, source.fileType, caller: caller, undo: whiteout)
            }
            if let whiteout {
                try retarget(parent, from, name, whiteout, UInt8(EXT2_FT_CHRDEV))
            } else {
                try unlinkEntry(parent, from, name)
            }
            if sourceIsDirectory, parent != newParent {
                try setDotDot(source.inode, newParent)
                try adjustLinks(parent, by: -1)
                try adjustLinks(newParent, by: 1)
            }
            try touchInode(source.inode)
            try touchDirectory(parent)
            if newParent != parent { try touchDirectory(newParent) }
        }
    }

    /// Changes attributes (`FUSE_SET_ATTR_*` in `which`); returns the new ones.
    func setAttributes(_ inode: UInt32, _ wanted: stat, _ which: Int32) throws(FuseError) -> stat {
        try withLock { () throws(FuseError) -> stat in
            guard try read(inode).i_mode != 0 else { throw FuseError(ENOENT) }
            try beginChange()
            if which & FUSE_SET_ATTR_SIZE != 0 {
                let raw = try read(inode)
                guard raw.i_mode & Self.mask16 == Self.regular16 else { throw FuseError(EINVAL) }
                guard UInt64(max(wanted.st_size, 0)) <= maximumFileSize else { throw FuseError(EFBIG) }
                try resize(inode, UInt64(max(wanted.st_size, 0)))
            }
            var raw = try read(inode)
            if which & FUSE_SET_ATTR_MODE != 0 {
                raw.i_mode = raw.i_mode & Self.mask16 | UInt16(wanted.st_mode & 0o7777)
            }
            if which & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID) != 0 {
                let uid = which & FUSE_SET_ATTR_UID != 0 ? UInt32(wanted.st_uid) : cext2fs_large_uid(&raw)
                let gid = which & FUSE_SET_ATTR_GID != 0 ? UInt32(wanted.st_gid) : cext2fs_large_gid(&raw)
                cext2fs_set_owner(&raw, uid, gid)
            }
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            if which & FUSE_SET_ATTR_ATIME_NOW != 0 { Self.setTime(&raw, .access, now) }
            else if which & FUSE_SET_ATTR_ATIME != 0 { Self.setTime(&raw, .access, wanted.st_atim) }
            if which & FUSE_SET_ATTR_MTIME_NOW != 0 { Self.setTime(&raw, .modify, now) }
            else if which & FUSE_SET_ATTR_MTIME != 0 { Self.setTime(&raw, .modify, wanted.st_mtim) }
            if which & FUSE_SET_ATTR_SIZE != 0, which & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW) == 0 {
                Self.setTime(&raw, .modify, now)
            }
            Self.setTime(&raw, .change, which & FUSE_SET_ATTR_CTIME != 0 ? wanted.st_ctim : now)
            try write(inode, &raw)
            return try stat(of: inode)
        }
    }

    func opened(_ inode: UInt32, truncate: Bool) throws(FuseError) {
        try withLock { () throws(FuseError) in
            var raw = try read(inode)
            guard raw.i_links_count > 0 || orphans.contains(inode) else { throw FuseError(ENOENT) }
            if truncate, raw.i_mode & Self.mask16 == Self.regular16 {
                try beginChange()
                try resize(inode, 0)
                raw = try read(inode)
                Self.touch(&raw, change: true, modify: true)
                try write(inode, &raw)
            }
            openCount[inode, default: 0] += 1
        }
    }

    func released(_ inode: UInt32) {
        withLock {
            let count = (openCount[inode] ?? 1) - 1
            openCount[inode] = count > 0 ? count : nil
            settle(inode)
        }
    }

    /// Writes `bytes` at `offset`; returns how many were written: all, or as many as the
    /// image has room for (ENOSPC thrown when that is none), as on the kernel's ext3. A full
    /// image fails here, not at close.
    func write(_ inode: UInt32, offset: UInt64, _ bytes: UnsafeRawBufferPointer, caller: Caller) throws(FuseError) -> Int {
        try withLock { () throws(FuseError) -> Int in
            // As far as the largest file size, as the kernel's ext3 does (EFBIG from there on).
            guard offset < maximumFileSize || bytes.isEmpty else { throw FuseError(EFBIG) }
            let fitting = Int(min(UInt64(bytes.count), maximumFileSize - min(offset, maximumFileSize)))
            try beginChange()
            let length = try affordable(inode, offset: offset, count: fitting, caller: caller)
            let written = try writeData(inode, offset: offset, UnsafeRawBufferPointer(rebasing: bytes[..<length]))
            var raw = try read(inode)
            Self.touch(&raw, change: true, modify: true)
            try write(inode, &raw)
            return written
        }
    }

    /// Writes everything out and syncs the image file.
    func flushAll() throws(FuseError) {
        try withLock { () throws(FuseError) in
            let code = ext2fs_flush2(fs, 0)
            guard code == 0 else { throw Self.error(code) }
        }
    }

    func setExtendedAttribute(_ inode: UInt32, _ name: UnsafePointer<CChar>, _ value: UnsafeRawBufferPointer, flags: Int32, caller: Caller) throws(FuseError) {
        try withLock { () throws(FuseError) in
            try beginChange()
            // Room for an attribute block, should the inode need one.
            guard availableBlocks(caller) >= 1 else { throw FuseError(ENOSPC) }
            try withAttributes(inode) { (handle) throws(FuseError) in
                var existing: UnsafeMutableRawPointer?
                var length = 0
                let found = ext2fs_xattr_get(handle, name, &existing, &length) == 0
                Glibc.free(existing)
                if flags & Self.xattrCreate != 0, found { throw FuseError(EEXIST) }
                if flags & Self.xattrReplace != 0, !found { throw FuseError(ENODATA) }
                let code = ext2fs_xattr_set(handle, name, value.baseAddress, value.count)
                guard code == 0 else { throw Self.error(code) }
            }
            try touchInode(inode)
        }
    }

    func removeExtendedAttribute(_ inode: UInt32, _ name: UnsafePointer<CChar>) throws(FuseError) {
        try withLock { () throws(FuseError) in
            try beginChange()
            try withAttributes(inode) { (handle) throws(FuseError) in
                var existing: UnsafeMutableRawPointer?
                var length = 0
                guard ext2fs_xattr_get(handle, name, &existing, &length) == 0 else { throw FuseError(ENODATA) }
                Glibc.free(existing)
                let code = ext2fs_xattr_remove(handle, name)
                guard code == 0 else { throw Self.error(code) }
            }
            try touchInode(inode)
        }
    }

    // MARK: Room (under the lock)

    /// The free blocks `caller` may take: not the reserved ones, unless it is the reserved
    /// user or group (or root), as on the kernel's ext3.
    private func availableBlocks(_ caller: Caller) -> UInt64 {
        let sb = fs.pointee.super!
        let free = UInt64(sb.pointee.s_free_blocks_count)
        let reserved = UInt64(sb.pointee.s_r_blocks_count)
        if caller.uid == 0 || caller.uid == UInt32(sb.pointee.s_def_resuid) || caller.gid == UInt32(sb.pointee.s_def_resgid) { return free }
        return free > reserved ? free - reserved : 0
    }

    /// How much of a write of `count` bytes at `offset` the image has room for (all, or up to
    /// the first block it has none for; ENOSPC when that is none): each block of the range not
    /// yet in the file, and the indirect blocks that may come with them. libext2fs would
    /// otherwise fail half-way through allocating, leaving blocks that nothing counts.
    private func affordable(_ inode: UInt32, offset: UInt64, count: Int, caller: Caller) throws(FuseError) -> Int {
        guard count > 0 else { return 0 }
        var raw = try read(inode)
        let size = UInt64(blockSize), perIndirect = UInt64(blockSize / 4)
        let available = availableBlocks(caller)
        var missing: UInt64 = 0
        var block = offset / size
        let last = (offset + UInt64(count) - 1) / size
        while block <= last {
            var physical: blk64_t = 0
            let code = cext2fs_large_bmap(fs, inode, &raw, block, &physical)
            guard code == 0 else { throw Self.error(code) }
            if physical == 0 {
                let next = missing + 1
                if next + (next + perIndirect - 1) / perIndirect + 3 > available {
                    let allowed = block * size > offset ? Int(block * size - offset) : 0
                    guard allowed > 0 else { throw FuseError(ENOSPC) }
                    return allowed
                }
                missing = next
            }
            block += 1
        }
        return count
    }

    // MARK: Inodes (under the lock)

    static let linkMax: UInt16 = 65000
    /// `i_mode` bits.
    static let mask16: UInt16 = 0o170000, directory16: UInt16 = 0o040000, regular16: UInt16 = 0o100000
    static let link16: UInt16 = 0o120000, setGroup16: UInt16 = 0o2000
    /// setxattr's flags.
    static let xattrCreate: Int32 = 1, xattrReplace: Int32 = 2
    /// renameat2's flags (linux/fs.h).
    static let renameNoReplace: Int32 = 1, renameExchange: Int32 = 2, renameWhiteout: Int32 = 4

    private func read(_ inode: UInt32) throws(FuseError) -> ext2_inode_large {
        guard inode >= 2, inode <= fs.pointee.super.pointee.s_inodes_count else { throw FuseError(ENOENT) }
        var raw = ext2_inode_large()
        guard cext2fs_read_inode_large(fs, inode, &raw) == 0 else { throw FuseError(EIO) }
        return raw
    }

    private func write(_ inode: UInt32, _ raw: inout ext2_inode_large) throws(FuseError) {
        let code = cext2fs_write_inode_large(fs, inode, &raw)
        guard code == 0 else { throw Self.error(code) }
    }

    private func stat(of inode: UInt32) throws(FuseError) -> stat {
        var raw = try read(inode)
        guard raw.i_mode != 0 else { throw FuseError(ENOENT) }
        return ImageTree.attributes(inode, &raw, fs: fs)
    }

    /// `inode` as handed to the kernel: its lookup count raised by one.
    private func found(_ inode: UInt32) throws(FuseError) -> Found {
        var raw = try read(inode)
        guard raw.i_mode != 0 else { throw FuseError(ENOENT) }
        let attributes = ImageTree.attributes(inode, &raw, fs: fs)
        lookups[inode, default: 0] += 1
        return Found(inode: inode, generation: raw.i_generation, attributes: attributes)
    }

    /// Frees an orphan that nothing refers to any more (no name, no open handle, no lookup).
    private func settle(_ inode: UInt32) {
        guard orphans.contains(inode), (openCount[inode] ?? 0) == 0, (lookups[inode] ?? 0) == 0 else { return }
        orphans.remove(inode)
        try? free(inode)
    }

    /// A fresh inode of `mode` owned by the caller (the group of a set-group-ID parent).
    private func allocate(_ parent: UInt32, mode: mode_t, caller: Caller) throws(FuseError) -> (UInt32, ext2_inode_large) {
        var parentRaw = try read(parent)
        var number: ext2_ino_t = 0
        let isDirectory = mode & S_IFMT == S_IFDIR
        let code = ext2fs_new_inode(fs, parent, Int32(mode), nil, &number)
        guard code == 0 else { throw Self.error(code) }
        ext2fs_inode_alloc_stats2(fs, number, 1, isDirectory ? 1 : 0)
        var raw = ext2_inode_large()
        var finalMode = mode
        var gid = caller.gid
        if parentRaw.i_mode & Self.setGroup16 != 0 {
            gid = cext2fs_large_gid(&parentRaw)
            if isDirectory { finalMode |= S_ISGID }
        }
        raw.i_mode = UInt16(truncatingIfNeeded: finalMode)
        raw.i_generation = nextGeneration
        nextGeneration &+= 1
        cext2fs_set_owner(&raw, caller.uid, gid)
        raw.i_links_count = 1
        raw.i_extra_isize = inodeSize > 128 ? UInt16(MemoryLayout<ext2_inode_large>.size - 128) : 0
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        Self.setTime(&raw, .access, now)
        Self.setTime(&raw, .modify, now)
        Self.setTime(&raw, .change, now)
        if inodeSize > 128 {
            raw.i_crtime = raw.i_ctime
            raw.i_crtime_extra = raw.i_ctime_extra
        }
        let written = cext2fs_write_new_inode_large(fs, number, &raw)
        guard written == 0 else {
            ext2fs_inode_alloc_stats2(fs, number, -1, isDirectory ? 1 : 0)
            throw Self.error(written)
        }
        return (number, raw)
    }

    /// An inode lost its last name: freed now, or at its last release when it is open.
    private func dropped(_ inode: UInt32) throws(FuseError) {
        directories[inode] = nil
        orphans.insert(inode)
        settle(inode)
    }

    /// Frees an inode: its blocks, its extended attribute block, the inode itself.
    private func free(_ inode: UInt32) throws(FuseError) {
        var raw = try read(inode)
        guard raw.i_mode != 0 else { return }
        let isDirectory = raw.i_mode & Self.mask16 == Self.directory16
        if cext2fs_large_has_valid_blocks(fs, &raw) != 0 {
            let code = cext2fs_large_punch(fs, inode, &raw, 0)
            guard code == 0 else { throw Self.error(code) }
        }
        if raw.i_file_acl != 0 {
            // It changes `raw` (no attribute block any more) and leaves the writing to us.
            let code = ext2fs_free_ext_attr(fs, inode, &raw)
            guard code == 0 else { throw Self.error(code) }
        }
        raw.i_links_count = 0
        raw.i_size = 0
        raw.i_size_high = 0
        raw.i_dtime = UInt32(truncatingIfNeeded: time(nil))
        try write(inode, &raw)
        ext2fs_inode_alloc_stats2(fs, inode, -1, isDirectory ? 1 : 0)
        directories[inode] = nil
    }

    private func adjustLinks(_ inode: UInt32, by delta: Int) throws(FuseError) {
        guard delta != 0 else { return }
        var raw = try read(inode)
        raw.i_links_count = UInt16(min(Int(UInt16.max), max(1, Int(raw.i_links_count) + delta)))
        try write(inode, &raw)
    }

    private func touchInode(_ inode: UInt32) throws(FuseError) {
        var raw = try read(inode)
        guard raw.i_mode != 0 else { return }
        Self.touch(&raw, change: true, modify: false)
        try write(inode, &raw)
    }

    private func touchDirectory(_ inode: UInt32) throws(FuseError) {
        var raw = try read(inode)
        Self.touch(&raw, change: true, modify: true)
        try write(inode, &raw)
    }

    private func resize(_ inode: UInt32, _ size: UInt64) throws(FuseError) {
        var file: ext2_file_t?
        var code = ext2fs_file_open2(fs, inode, nil, Int32(EXT2_FILE_WRITE), &file)
        guard code == 0, let file else { throw Self.error(code) }
        code = ext2fs_file_set_size2(file, ext2_off64_t(size))
        let closed = ext2fs_file_close(file)
        guard code == 0 else { throw Self.error(code) }
        guard closed == 0 else { throw Self.error(closed) }
    }

    private func readData(_ inode: UInt32, offset: UInt64, size: Int) throws(FuseError) -> [UInt8] {
        var file: ext2_file_t?
        var code = ext2fs_file_open2(fs, inode, nil, 0, &file)
        guard code == 0, let file else { throw Self.error(code) }
        defer { ext2fs_file_close(file) }
        code = ext2fs_file_llseek(file, offset, Int32(EXT2_SEEK_SET), nil)
        guard code == 0 else { throw Self.error(code) }
        var bytes = [UInt8](repeating: 0, count: size)
        var got: UInt32 = 0
        code = bytes.withUnsafeMutableBytes { ext2fs_file_read(file, $0.baseAddress, UInt32(size), &got) }
        guard code == 0 else { throw Self.error(code) }
        if Int(got) < size { bytes.removeSubrange(Int(got)...) }
        return bytes
    }

    private func writeData(_ inode: UInt32, offset: UInt64, _ bytes: [UInt8]) throws(FuseError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: bytes)
        _ = try writeData(inode, offset: offset, UnsafeRawBufferPointer(buffer))
    }

    /// Writes through libext2fs's file I/O, blocks allocated as they are written. When the
    /// image runs full, what did not fit is taken back: the file keeps its former size.
    private func writeData(_ inode: UInt32, offset: UInt64, _ bytes: UnsafeRawBufferPointer) throws(FuseError) -> Int {
        var file: ext2_file_t?
        var code = ext2fs_file_open2(fs, inode, nil, Int32(EXT2_FILE_WRITE), &file)
        guard code == 0, let file else { throw Self.error(code) }
        var formerSize: UInt64 = 0
        ext2fs_file_get_lsize(file, &formerSize)
        code = ext2fs_file_llseek(file, offset, Int32(EXT2_SEEK_SET), nil)
        var written: UInt32 = 0
        if code == 0, bytes.count > 0 {
            code = ext2fs_file_write(file, bytes.baseAddress, UInt32(bytes.count), &written)
        }
        if code == 0 { code = ext2fs_file_flush(file) }
        if code != 0 {
            // Nothing of a failed write stays past the former end: neither the size nor the
            // blocks allocated for it (which e2fsck would find past the end of the file).
            ext2fs_file_close(file)
            var raw = try read(inode)
            raw.i_size = UInt32(truncatingIfNeeded: formerSize)
            raw.i_size_high = UInt32(truncatingIfNeeded: formerSize >> 32)
            let keep = (formerSize + UInt64(blockSize) - 1) / UInt64(blockSize)
            let punched = cext2fs_large_punch(fs, inode, &raw, keep)
            try write(inode, &raw)
            guard punched == 0 else { throw Self.error(punched) }
            // What the write put past the former end inside its last block reads as zeros again.
            let tail = Int(formerSize % UInt64(blockSize))
            var physical: blk64_t = 0
            if tail > 0, cext2fs_large_bmap(fs, inode, &raw, keep - 1, &physical) == 0, physical != 0 {
                let buffer = UnsafeMutableRawPointer.allocate(byteCount: blockSize, alignment: 8)
                defer { buffer.deallocate() }
                if io_channel_read_blk64(cext2fs_io(fs), physical, 1, buffer) == 0 {
                    memset(buffer + tail, 0, blockSize - tail)
                    _ = io_channel_write_blk64(cext2fs_io(fs), physical, 1, buffer)
                }
            }
            throw Self.error(code)
        }
        code = ext2fs_file_close(file)
        guard code == 0 else { throw Self.error(code) }
        return Int(written)
    }

    private func withAttributes<Result>(_ inode: UInt32, _ body: (OpaquePointer) throws(FuseError) -> Result) throws(FuseError) -> Result {
        var handle: OpaquePointer?
        var code = ext2fs_xattrs_open(fs, inode, &handle)
        guard code == 0, let open = handle else { throw Self.error(code) }
        defer { ext2fs_xattrs_close(&handle) }
        code = ext2fs_xattrs_read(open)
        guard code == 0 else { throw Self.error(code) }
        return try body(open)
    }

    // MARK: Directories (under the lock)

    private func directory(_ inode: UInt32) throws(FuseError) -> Directory {
        if let directory = directories[inode] { return directory }
        let raw = try read(inode)
        guard raw.i_mode & Self.mask16 == Self.directory16 else { throw FuseError(raw.i_mode == 0 ? ENOENT : ENOTDIR) }
        guard raw.i_links_count > 0 else { throw FuseError(ENOENT) }
        let directory = Directory()
        directory.blocks = try blocks(of: inode, size: UInt64(raw.i_size))
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: blockSize, alignment: 8)
        defer { buffer.deallocate() }
        for (logical, physical) in directory.blocks.enumerated() where physical != 0 {
            let code = ext2fs_read_dir_block4(fs, physical, buffer, 0, inode)
            guard code == 0 else { throw Self.error(code) }
            try Self.walk(buffer, blockSize) { offset, number, _, nameLength, fileType in
                guard number != 0, nameLength > 0 else { return false }
                let name = Array(UnsafeRawBufferPointer(start: buffer + offset + 8, count: nameLength))
                if directory.byName[name] == nil {
                    directory.byName[name] = Slot(inode: number, fileType: fileType, position: UInt64(logical * blockSize + offset))
                }
                return false
            }
        }
        directories[inode] = directory
        return directory
    }

    /// The physical blocks of a directory by logical block, for `size` bytes.
    private func blocks(of inode: UInt32, size: UInt64) throws(FuseError) -> [UInt64] {
        final class Context { var blocks: [UInt64] = [] }
        let context = Context()
        let count = Int(size / UInt64(blockSize))
        context.blocks = [UInt64](repeating: 0, count: count)
        let code = withExtendedLifetime(context) {
            ext2fs_block_iterate3(fs, inode, BLOCK_FLAG_READ_ONLY | BLOCK_FLAG_DATA_ONLY, nil, { _, block, index, _, _, data in
                guard let block, let data, index >= 0 else { return 0 }
                let context = Unmanaged<Context>.fromOpaque(data).takeUnretainedValue()
                if Int(index) < context.blocks.count { context.blocks[Int(index)] = block.pointee }
                return 0
            }, Unmanaged.passUnretained(context).toOpaque())
        }
        guard code == 0 else { throw Self.error(code) }
        return context.blocks
    }

    /// Calls `body(offset, inode, recordLength, nameLength, fileType)` for each entry of a
    /// directory block until it returns true; a malformed block is EIO.
    private static func walk(_ buffer: UnsafeMutableRawPointer, _ blockSize: Int,
                             _ body: (Int, UInt32, Int, Int, UInt8) throws(FuseError) -> Bool) throws(FuseError) {
        var offset = 0
        while offset < blockSize {
            guard offset + 8 <= blockSize else { throw FuseError(EIO) }
            let number = buffer.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
            var length = Int(buffer.loadUnaligned(fromByteOffset: offset + 4, as: UInt16.self))
            if length == 0 || length == 65535, blockSize == 65536 { length = 65536 }
            let nameLength = Int(buffer.load(fromByteOffset: offset + 6, as: UInt8.self))
            let fileType = buffer.load(fromByteOffset: offset + 7, as: UInt8.self)
            guard length >= 8, length % 4 == 0, offset + length <= blockSize, nameLength + 8 <= length else { throw FuseError(EIO) }
            if try body(offset, number, length, nameLength, fileType) { return }
            offset += length
        }
    }

    private static func setEntry(_ buffer: UnsafeMutableRawPointer, _ offset: Int, inode: UInt32, length: Int, name: [UInt8], fileType: UInt8) {
        buffer.storeBytes(of: inode, toByteOffset: offset, as: UInt32.self)
        buffer.storeBytes(of: UInt16(length), toByteOffset: offset + 4, as: UInt16.self)
        buffer.storeBytes(of: UInt8(name.count), toByteOffset: offset + 6, as: UInt8.self)
        buffer.storeBytes(of: fileType, toByteOffset: offset + 7, as: UInt8.self)
        name.withUnsafeBytes { (buffer + offset + 8).copyMemory(from: $0.baseAddress!, byteCount: name.count) }
    }

    private func checkName(_ name: [UInt8]) throws(FuseError) {
        guard !name.isEmpty, name.count <= 255 else { throw FuseError(ENAMETOOLONG) }
    }

    /// An htree-indexed directory loses its index on its first change (its blocks stay valid
    /// linear directory blocks, as the kernel's ext3 without `dir_index` treats them).
    private func unindex(_ inode: UInt32, _ directory: Directory) throws(FuseError) {
        guard !directory.unindexed else { return }
        var raw = try read(inode)
        if raw.i_flags & UInt32(EXT2_INDEX_FL) != 0 {
            raw.i_flags &= ~UInt32(EXT2_INDEX_FL)
            try write(inode, &raw)
        }
        directory.unindexed = true
    }

    /// Adds the entry `name` → `inode` to a directory: in a block that lost entries, else in
    /// its last block, else in a block added to it. On failure, `undo` (a fresh inode) is freed.
    private func link(_ parent: UInt32, _ directory: Directory, _ name: [UInt8], _ inode: UInt32, _ fileType: UInt8,
                      caller: Caller, undo: UInt32?) throws(FuseError) {
        do throws(FuseError) {
            try unindex(parent, directory)
            let needed = (8 + name.count + 3) & ~3
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: blockSize, alignment: 8)
            defer { buffer.deallocate() }
            var candidates = directory.roomy.sorted()
            if let last = directory.blocks.indices.last, !directory.roomy.contains(last) { candidates.append(last) }
            for logical in candidates {
                if let position = try place(parent, directory, logical, buffer, needed, name, inode, fileType) {
                    record(directory, name, Slot(inode: inode, fileType: fileType, position: position))
                    try touchDirectory(parent)
                    return
                }
                directory.roomy.remove(logical)
            }
            // A new block, and up to three indirect blocks for it: libext2fs's failure half-way
            // would leave blocks allocated that nothing counts.
            guard availableBlocks(caller) >= 4 else { throw FuseError(ENOSPC) }
            let code = ext2fs_expand_dir(fs, parent)
            guard code == 0 else { throw Self.error(code) }
            var raw = try read(parent)
            directory.blocks = try blocks(of: parent, size: UInt64(raw.i_size))
            guard let last = directory.blocks.indices.last,
                  let position = try place(parent, directory, last, buffer, needed, name, inode, fileType) else { throw FuseError(EIO) }
            record(directory, name, Slot(inode: inode, fileType: fileType, position: position))
            Self.touch(&raw, change: true, modify: true)
            try write(parent, &raw)
        } catch {
            if let undo { try? free(undo) }
            throw error
        }
    }

    private func record(_ directory: Directory, _ name: [UInt8], _ slot: Slot) {
        directory.byName[name] = slot
        if directory.ordered != nil {
            if let last = directory.ordered!.last, last.position < slot.position {
                directory.ordered!.append((slot.position, name))
            } else {
                directory.ordered = nil
            }
        }
    }

    /// Puts the entry into logical block `logical` if it has room; its position, or nil.
    private func place(_ parent: UInt32, _ directory: Directory, _ logical: Int, _ buffer: UnsafeMutableRawPointer, _ needed: Int,
                       _ name: [UInt8], _ inode: UInt32, _ fileType: UInt8) throws(FuseError) -> UInt64? {
        let physical = directory.blocks[logical]
        guard physical != 0 else { return nil }
        var code = ext2fs_read_dir_block4(fs, physical, buffer, 0, parent)
        guard code == 0 else { throw Self.error(code) }
        var found: Int?
        let blockSize = self.blockSize
        try Self.walk(buffer, blockSize) { offset, number, length, nameLength, _ in
            let used = number == 0 ? 0 : (8 + nameLength + 3) & ~3
            guard length - used >= needed else { return false }
            if number != 0 { buffer.storeBytes(of: UInt16(used), toByteOffset: offset + 4, as: UInt16.self) }
            Self.setEntry(buffer, offset + used, inode: inode, length: length - used, name: name, fileType: fileType)
            found = offset + used
            return true
        }
        guard let found else { return nil }
        code = ext2fs_write_dir_block4(fs, physical, buffer, 0, parent)
        guard code == 0 else { throw Self.error(code) }
        return UInt64(logical * blockSize + found)
    }

    /// Reads the block holding `slot`, lets `change(offset of the entry, offset of the one
    /// before it or nil)` change it, and writes it back.
    private func changeEntry(_ parent: UInt32, _ directory: Directory, _ slot: Slot,
                             _ change: (UnsafeMutableRawPointer, Int, Int?) -> Void) throws(FuseError) {
        let logical = Int(slot.position / UInt64(blockSize))
        let target = Int(slot.position % UInt64(blockSize))
        guard logical < directory.blocks.count, directory.blocks[logical] != 0 else { throw FuseError(EIO) }
        let physical = directory.blocks[logical]
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: blockSize, alignment: 8)
        defer { buffer.deallocate() }
        var code = ext2fs_read_dir_block4(fs, physical, buffer, 0, parent)
        guard code == 0 else { throw Self.error(code) }
        var previous: Int?
        var found = false
        try Self.walk(buffer, blockSize) { offset, _, _, _, _ in
            if offset == target { found = true; return true }
            previous = offset
            return false
        }
        guard found, buffer.loadUnaligned(fromByteOffset: target, as: UInt32.self) == slot.inode else { throw FuseError(EIO) }
        change(buffer, target, previous)
        code = ext2fs_write_dir_block4(fs, physical, buffer, 0, parent)
        guard code == 0 else { throw Self.error(code) }
    }

    private func unlinkEntry(_ parent: UInt32, _ directory: Directory, _ name: [UInt8]) throws(FuseError) {
        guard let slot = directory.byName[name] else { throw FuseError(ENOENT) }
        try unindex(parent, directory)
        try changeEntry(parent, directory, slot) { buffer, offset, previous in
            if let previous {
                let merged = Int(buffer.loadUnaligned(fromByteOffset: previous + 4, as: UInt16.self))
                    + Int(buffer.loadUnaligned(fromByteOffset: offset + 4, as: UInt16.self))
                buffer.storeBytes(of: UInt16(truncatingIfNeeded: merged), toByteOffset: previous + 4, as: UInt16.self)
            } else {
                buffer.storeBytes(of: UInt32(0), toByteOffset: offset, as: UInt32.self)
            }
        }
        directory.byName[name] = nil
        directory.roomy.insert(Int(slot.position / UInt64(blockSize)))
        directory.ordered = nil
        try touchDirectory(parent)
    }

    /// Points the entry `name` at another inode, in place.
    private func retarget(_ parent: UInt32, _ directory: Directory, _ name: [UInt8], _ inode: UInt32, _ fileType: UInt8) throws(FuseError) {
        guard var slot = directory.byName[name] else { throw FuseError(ENOENT) }
        try unindex(parent, directory)
        try changeEntry(parent, directory, slot) { buffer, offset, _ in
            buffer.storeBytes(of: inode, toByteOffset: offset, as: UInt32.self)
            buffer.storeBytes(of: fileType, toByteOffset: offset + 7, as: UInt8.self)
        }
        slot.inode = inode
        slot.fileType = fileType
        directory.byName[name] = slot
    }

    private func setDotDot(_ inode: UInt32, _ parent: UInt32) throws(FuseError) {
        let directory = try directory(inode)
        try retarget(inode, directory, Array("..".utf8), parent, UInt8(EXT2_FT_DIR))
    }

    // MARK: Conversions

    /// The largest size of a block-mapped file without `huge_file`, as the kernel's ext4
    /// driver computes it for ext3 (`ext4_max_bitmap_size`): what the indirect blocks reach,
    /// or, where less, what a 32-bit count of 512-byte sectors holds with the indirect blocks
    /// themselves counted in.
    static func maximumFileSize(blockBits bits: UInt64) -> UInt64 {
        let perBlock = UInt64(1) << (bits - 2)
        var limit = ((UInt64(1) << 32) - 1) >> (bits - 9)
        var blocks = 12 + perBlock + perBlock * perBlock + perBlock * perBlock * perBlock
        var meta = 1 + (1 + perBlock) + (1 + perBlock + perBlock * perBlock)
        func up(_ value: UInt64, _ by: UInt64) -> UInt64 { (value + by - 1) / by }
        if blocks + meta > limit {
            blocks = limit
            limit -= 12
            meta = 1
            limit -= perBlock
            if limit < perBlock * perBlock {
                meta += 1 + up(limit, perBlock)
            } else {
                meta += 1 + perBlock
                limit -= perBlock * perBlock
                meta += 1 + up(limit, perBlock) + up(limit, perBlock * perBlock)
            }
            blocks -= meta
        }
        return min(blocks << bits, UInt64(Int64.max))
    }

    static func fileType(_ mode: mode_t) -> UInt8 {
        switch mode & S_IFMT {
        case S_IFREG: return UInt8(EXT2_FT_REG_FILE)
        case S_IFDIR: return UInt8(EXT2_FT_DIR)
        case S_IFCHR: return UInt8(EXT2_FT_CHRDEV)
        case S_IFBLK: return UInt8(EXT2_FT_BLKDEV)
        case S_IFIFO: return UInt8(EXT2_FT_FIFO)
        case S_IFSOCK: return UInt8(EXT2_FT_SOCK)
        case S_IFLNK: return UInt8(EXT2_FT_SYMLINK)
        default: return UInt8(EXT2_FT_UNKNOWN)
        }
    }

    enum TimeField { case access, modify, change }

    /// Sets a time, with nanoseconds and epoch bits where the inode has room for them.
    /// Times outside what the inode can hold are clamped to its first or last second (no
    /// nanoseconds), as the kernel does: 1901-12-13 to 2446-05-10 with the extra fields, to
    /// 2038-01-19 without.
    static func setTime(_ raw: inout ext2_inode_large, _ field: TimeField, _ value: timespec) {
        let room = Int(raw.i_extra_isize)
        let extended = room >= (field == .access ? 16 : field == .modify ? 12 : 8)
        let latest = extended ? (1 << 34) - 1 + Int(Int32.min) : Int(Int32.max)
        var seconds = value.tv_sec, nanoseconds = value.tv_nsec
        if seconds >= latest || seconds <= Int(Int32.min) {
            seconds = seconds >= latest ? latest : Int(Int32.min)
            nanoseconds = 0
        }
        let low = UInt32(truncatingIfNeeded: seconds)
        let epoch = UInt32(truncatingIfNeeded: (seconds - Int(Int32(truncatingIfNeeded: seconds))) >> 32) & 3
        let extra = epoch | UInt32(max(0, min(nanoseconds, 999_999_999))) << 2
        switch field {
        case .access:
            raw.i_atime = low
            if room >= 16 { raw.i_atime_extra = extra }
        case .modify:
            raw.i_mtime = low
            if room >= 12 { raw.i_mtime_extra = extra }
        case .change:
            raw.i_ctime = low
            if room >= 8 { raw.i_ctime_extra = extra }
        }
    }

    static func touch(_ raw: inout ext2_inode_large, change: Bool, modify: Bool) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        if change { setTime(&raw, .change, now) }
        if modify { setTime(&raw, .modify, now) }
    }

    /// A libext2fs error code as an errno.
    static func error(_ code: errcode_t) -> FuseError {
        switch code {
        case 1..<4096: return FuseError(Int32(code))
        case EXT2_ET_BLOCK_ALLOC_FAIL, EXT2_ET_INODE_ALLOC_FAIL, EXT2_ET_DIR_NO_SPACE, EXT2_ET_EA_NO_SPACE: return FuseError(ENOSPC)
        case EXT2_ET_FILE_TOO_BIG: return FuseError(EFBIG)
        case EXT2_ET_NO_MEMORY: return FuseError(ENOMEM)
        case EXT2_ET_EA_KEY_NOT_FOUND: return FuseError(ENODATA)
        case EXT2_ET_MISSING_EA_FEATURE: return FuseError(EOPNOTSUPP)
        default: return FuseError(EIO)
        }
    }

}
