import LinuxSupport
import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3.Tree {
    /// Reads the directory `directory` of `image` and everything under it as a tree to write
    /// into another image (the writer's input model, as a directory scan or an archive gives
    /// one). Node 0 is that directory, with its own metadata (the writer keeps upper/'s; a
    /// caller may apply it). Every inode kind is carried (files, directories, symbolic links
    /// short and long, character and block devices, whiteouts (0/0 character devices) among
    /// them, fifos, sockets), with permissions including setuid/setgid/sticky, owner,
    /// access/modification/change times (to the nanosecond where the image has them), every
    /// extended attribute (`trusted.*`, `user.*`, `security.*`, ACLs), the flags chattr sets
    /// (``userFlags``), hard links (one node,
    /// several names) and the holes of sparse files. Regular files' data is
    /// ``Content/stream(ordinal:segments:)`` with the old inode number as ordinal: write the
    /// tree with an ``ImageFileData`` over the same image.
    ///
    /// To pack an image (or a part of one) into a new image, as a snapshot of a job's writable
    /// overlay: `formatter.create(at: target, writing: tree, data: ImageFileData(image: image,
    /// tree: tree), progress: nil)`, with the image kept open until that returns;
    /// ``ImageContents`` and ``Formatter/replace(_:with:verify:)`` do the same for a whole
    /// overlay (upper/ and work/), as `overlay resize` rebuilds one.
    ///
    /// Everything is read through bounded walks: a damaged or hostile image (a directory with
    /// two names, a block outside the filesystem, a file larger than the image) gives
    /// ``Ext3/Error/damaged(image:what:)``, never a crash or an endless read.
    public static func read(image: Ext3.Image, directory: String = "/upper") throws -> Ext3.Tree {
        let top = try image.lookup(directory)
        guard top.kind == .directory else { throw Ext3.Error.notADirectory(image: image.path, path: directory) }
        var reader = try ImageTreeReader(image: image)
        return try reader.read(from: top.inode)
    }

    /// The metadata of the entry at `path` in `image` as a node without children or content
    /// (for a directory the writer makes itself, such as the image root, upper/ or work/).
    package static func attributes(of path: String, in image: Ext3.Image) throws -> Node {
        let entry = try image.lookup(path)
        let reader = try ImageTreeReader(image: image)
        var node = try reader.node(entry.inode)
        node.content = .none
        return node
    }
}

/// Reads inodes and directories of an open image into tree nodes.
struct ImageTreeReader {
    let image: Ext3.Image
    let fs: ext2_filsys
    var path: String { image.path }

    init(image: Ext3.Image) throws {
        guard let fs = image.handle.fs else { throw Ext3.Error.other("\(image.path): image is closed") }
        self.image = image
        self.fs = fs
    }

    mutating func read(from top: UInt32) throws -> Ext3.Tree {
        var tree = Ext3.Tree(root: try node(top))
        tree.nodes[0].content = .none
        var indexByInode: [UInt32: Int] = [top: 0]
        var directories: [(index: Int, inode: UInt32)] = [(0, top)]
        var next = 0
        while next < directories.count {
            let (index, inode) = directories[next]
            next += 1
            for (name, child) in try entries(of: inode) {
                if let existing = indexByInode[child] {
                    guard tree.nodes[existing].kind != .directory else {
                        throw Ext3.Error.damaged(image: path, what: "directory inode \(child) has more than one name")
                    }
                    guard tree.nodes[existing].links < Ext3.Tree.linkLimit else {
                        throw Ext3.Error.damaged(image: path, what: "inode \(child) has more than \(Ext3.Tree.linkLimit) names")
                    }
                    tree.nodes[existing].links += 1
                    tree.nodes[index].children.append((name, existing))
                    continue
                }
                let childIndex = tree.nodes.count
                tree.nodes.append(try node(child))
                indexByInode[child] = childIndex
                tree.nodes[index].children.append((name, childIndex))
                if tree.nodes[childIndex].kind == .directory { directories.append((childIndex, child)) }
            }
        }
        return tree
    }

    /// The live entries of directory `inode` but `.` and `..`, in on-disk order.
    func entries(of inode: UInt32) throws -> [(name: [UInt8], inode: UInt32)] {
        let raw = try image.largeInode(inode)
        let size = UInt64(raw.i_size) | UInt64(raw.i_size_high) << 32
        let blockSize = UInt64(Ext3.blockSize)
        guard size <= Ext3.Limits.directoryBytes, size % blockSize == 0, size > 0 else {
            throw Ext3.Error.damaged(image: path, what: "directory inode \(inode) claims \(size) bytes")
        }
        let inodeCount = fs.pointee.super.pointee.s_inodes_count
        var found: [(name: [UInt8], inode: UInt32)] = []
        var bad: UInt32?
        try Ext3.walkDirectory(fs, ext2_ino_t(inode), size: size, path: path, named: "directory inode \(inode)") { name, child, _ in
            if name == [46] || name == [46, 46] { return true }
            guard child >= fs.pointee.super.pointee.s_first_ino, child <= inodeCount else {
                bad = child
                return false
            }
            found.append((name, child))
            return true
        }
        if let bad {
            throw Ext3.Error.damaged(image: path, what: "directory inode \(inode) names inode \(bad), which no file can have")
        }
        return found
    }

    /// Inode `inode` as a node (one link; the caller counts names).
    func node(_ inode: UInt32) throws -> Ext3.Tree.Node {
        var raw = try image.largeInode(inode)
        let entry = Ext3.Image.entry(inode, raw)
        guard entry.kind != .unknown else {
            throw Ext3.Error.damaged(image: path, what: "inode \(inode) has an unknown file type (mode \(String(raw.i_mode, radix: 8)))")
        }
        // The _extra time words are there as far as i_extra_isize reaches (ctime's at 132,
        // mtime's at 136, atime's at 140).
        let extra = raw.i_extra_isize <= UInt16(Ext3.inodeSize - 128) ? Int(raw.i_extra_isize) : 0
        func time(_ seconds: UInt32, _ word: UInt32, _ needed: Int) -> Ext3.Timestamp {
            var value = Int64(Int32(bitPattern: seconds))
            guard extra >= needed else { return Ext3.Timestamp(seconds: value) }
            value += Int64(word & 3) << 32
            return Ext3.Timestamp(seconds: value, nanoseconds: min(word >> 2, 999_999_999))
        }
        var node = Ext3.Tree.Node(kind: entry.kind, permissions: entry.permissions, uid: entry.uid, gid: entry.gid,
                                  atime: time(raw.i_atime, raw.i_atime_extra, 16),
                                  mtime: time(raw.i_mtime, raw.i_mtime_extra, 12),
                                  ctime: time(raw.i_ctime, raw.i_ctime_extra, 8))
        switch entry.kind {
        case .regular:
            let capacity = ext2fs_blocks_count(fs.pointee.super).multipliedReportingOverflow(by: UInt64(Ext3.blockSize))
            guard !capacity.overflow, entry.size <= capacity.partialValue else {
                throw Ext3.Error.damaged(image: path, what: "inode \(inode) claims \(entry.size) bytes, more than the whole filesystem holds")
            }
            node.size = entry.size
            let runs = try ImageTreeReader.dataRuns(fs, inode, size: entry.size, path: path)
            let blocks = (entry.size + UInt64(Ext3.blockSize) - 1) / UInt64(Ext3.blockSize)
            let mapped = runs.reduce(UInt64(0)) { $0 + $1.count }
            let segments: [Range<UInt64>]? = mapped == blocks ? nil : runs.map { run in
                let start = run.logical * UInt64(Ext3.blockSize)
                return start..<min((run.logical + run.count) * UInt64(Ext3.blockSize), entry.size)
            }
            node.content = .stream(ordinal: Int(inode), segments: segments)
        case .symlink:
            node.target = try image.symlinkBytes(entry)
        case .characterDevice, .blockDevice:
            node.major = UInt32(cext2fs_inode_rdev_major(&raw))
            node.minor = UInt32(cext2fs_inode_rdev_minor(&raw))
        default:
            break
        }
        node.xattrs = try xattrs(inode)
        node.flags = raw.i_flags & Ext3.Tree.userFlags
        return node
    }

    /// Every extended attribute of `inode` (full names, values as libext2fs gives them back
    /// to its own writer).
    func xattrs(_ inode: UInt32) throws -> [(name: String, value: [UInt8])] {
        final class Collected {
            var items: [(name: String, value: [UInt8])] = []
        }
        var handle: OpaquePointer?
        try Ext3.check(ext2fs_xattrs_open(fs, ext2_ino_t(inode), &handle), "open extended attributes of inode \(inode)", path: path)
        defer { ext2fs_xattrs_close(&handle) }
        try Ext3.check(ext2fs_xattrs_read(handle), "read extended attributes of inode \(inode)", path: path)
        let collected = Collected()
        let unmanaged = Unmanaged.passRetained(collected)
        defer { unmanaged.release() }
        try Ext3.check(ext2fs_xattrs_iterate(handle, { name, value, length, data in
            let collected = Unmanaged<Collected>.fromOpaque(data!).takeUnretainedValue()
            guard let name else { return 0 }
            let bytes = value.map { Array(UnsafeRawBufferPointer(start: $0, count: length)) } ?? []
            collected.items.append((String(cString: name), bytes))
            return 0
        }, unmanaged.toOpaque()), "list extended attributes of inode \(inode)", path: path)
        return collected.items
    }

    /// The data blocks of regular file `inode` as runs contiguous both in the file and on disk,
    /// in file order; blocks past `size` are left out. Refuses blocks outside the filesystem.
    static func dataRuns(_ fs: ext2_filsys, _ inode: UInt32, size: UInt64, path: String)
        throws -> [(logical: UInt64, physical: UInt64, count: UInt64)] {
        final class Context {
            var runs: [(logical: UInt64, physical: UInt64, count: UInt64)] = []
            var outside: UInt64?
            let first: UInt64
            let end: UInt64
            let fileBlocks: UInt64
            init(first: UInt64, end: UInt64, fileBlocks: UInt64) {
                self.first = first
                self.end = end
                self.fileBlocks = fileBlocks
            }
        }
        let sb = fs.pointee.super!
        let context = Context(first: UInt64(sb.pointee.s_first_data_block), end: ext2fs_blocks_count(sb),
                              fileBlocks: (size + UInt64(Ext3.blockSize) - 1) / UInt64(Ext3.blockSize))
        let unmanaged = Unmanaged.passRetained(context)
        defer { unmanaged.release() }
        let code = ext2fs_block_iterate3(fs, ext2_ino_t(inode), BLOCK_FLAG_DATA_ONLY | BLOCK_FLAG_READ_ONLY, nil, { _, block, count, _, _, data in
            let context = Unmanaged<Context>.fromOpaque(data!).takeUnretainedValue()
            guard let block, count >= 0 else { return 0 }
            let logical = UInt64(count), physical = UInt64(block.pointee)
            guard logical < context.fileBlocks else { return 0 }
            guard physical >= context.first, physical < context.end else {
                context.outside = physical
                return BLOCK_ABORT
            }
            if let last = context.runs.last, last.logical + last.count == logical, last.physical + last.count == physical {
                context.runs[context.runs.count - 1].count += 1
            } else {
                context.runs.append((logical, physical, 1))
            }
            return 0
        }, unmanaged.toOpaque())
        if let outside = context.outside {
            throw Ext3.Error.damaged(image: path, what: "inode \(inode) maps block \(outside), outside the filesystem")
        }
        try Ext3.check(code, "map the blocks of inode \(inode)", path: path)
        guard zip(context.runs, context.runs.dropFirst()).allSatisfy({ $0.logical + $0.count <= $1.logical }) else {
            throw Ext3.Error.damaged(image: path, what: "inode \(inode) maps its blocks out of order")
        }
        return context.runs
    }
}

extension Ext3 {
    /// The data of a tree read from an image (``Tree/read(image:directory:)``), read straight
    /// from the image file's blocks, file after file in inode order, holes skipped: what the
    /// writer copies into a new image.
    package final class ImageFileData: FileDataStream {
        private let image: Image
        private let fd: Int32
        private let items: [(ordinal: Int, size: UInt64)]
        private var position = -1
        private var runs: [(logical: UInt64, physical: UInt64, count: UInt64)] = []

        /// `tree` must have been read from `image`, which stays open while this is used.
        package init(image: Image, tree: Tree) throws {
            self.image = image
            var items: [(ordinal: Int, size: UInt64)] = []
            for node in tree.nodes {
                if case let .stream(ordinal, _) = node.content { items.append((ordinal, node.size)) }
            }
            self.items = items.sorted { $0.ordinal < $1.ordinal }
            fd = open(image.path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw Error.system(operation: "open", path: image.path, errno: errno) }
        }

        deinit { close(fd) }

        package func nextItem() throws -> (ordinal: Int, size: UInt64)? {
            position += 1
            guard position < items.count else { return nil }
            guard let fs = image.handle.fs else { throw Error.other("\(image.path): image is closed") }
            let item = items[position]
            runs = try ImageTreeReader.dataRuns(fs, UInt32(item.ordinal), size: item.size, path: image.path)
            return item
        }

        package func readData(into buffer: UnsafeMutableRawBufferPointer, _ body: (UnsafeRawBufferPointer, UInt64) throws -> Void) throws {
            guard position >= 0, position < items.count else { return }
            let size = items[position].size
            let blockSize = UInt64(Ext3.blockSize)
            let chunkBlocks = UInt64(buffer.count) / blockSize
            precondition(chunkBlocks > 0, "a buffer of at least one block")
            for run in runs {
                var done: UInt64 = 0
                while done < run.count {
                    let blocks = min(run.count - done, chunkBlocks)
                    let offset = (run.logical + done) * blockSize
                    guard offset < size else { return }
                    let length = Int(min(blocks * blockSize, size - offset))
                    let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
                    try readBlocks(into: chunk, at: (run.physical + done) * blockSize)
                    try body(UnsafeRawBufferPointer(chunk), offset)
                    done += blocks
                }
            }
        }

        /// Fills `chunk` from the image file at `offset`; a file ending first is damage.
        private func readBlocks(into chunk: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
            var got = 0
            while got < chunk.count {
                let n = pread(fd, chunk.baseAddress! + got, chunk.count - got, off_t(offset) + off_t(got))
                if n < 0 && errno == EINTR { continue }
                guard n >= 0 else { throw Error.system(operation: "read", path: image.path, errno: errno) }
                guard n > 0 else {
                    throw Error.damaged(image: image.path, what: "inode \(items[position].ordinal) maps blocks past the end of the file")
                }
                got += n
            }
        }
    }
}
