import LinuxSupport
import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// Everything an overlay image holds, read to be written into a new image (a rebuild with
    /// another size or inode count): `upper/` and `work/` as trees (``Tree/read(image:directory:)``),
    /// the metadata of the root directory, upper/ and work/ themselves, and the filesystem's
    /// UUID and label. An image holding anything else at its root, or files in lost+found/, is
    /// refused: a rebuild would lose them.
    public final class ImageContents {
        /// The image read; it stays open while the contents are written.
        public let image: Image
        public let upper: Tree
        public let work: Tree
        let root: Tree.Node
        let lostFound: Tree.Node?
        let uuid: [UInt8]
        let label: [UInt8]
        let hashSeed: [UInt8]
        let hashVersion: UInt8

        public init(image: Image) throws {
            guard let fs = image.handle.fs else { throw Error.other("\(image.path): image is closed") }
            self.image = image
            let reader = try ImageTreeReader(image: image)
            let rootInode = UInt32(EXT2_ROOT_INO)
            var trees: [String: Tree] = [:]
            var lostFound: Tree.Node?
            for (name, inode) in try reader.entries(of: rootInode) {
                let text = Tree.display(name)
                let entry = try image.entry(inode: inode)
                if (text == "upper" || text == "work") && entry.kind == .directory {
                    trees[text] = try Tree.read(image: image, directory: "/" + text)
                } else if text == "lost+found" && entry.kind == .directory {
                    if let first = try reader.entries(of: inode).first {
                        throw Error.invalidConfiguration(
                            "\(image.path) holds files in lost+found/ (\(Escaped.terminal(Tree.display(first.name))), left there by e2fsck): "
                                + "a rebuild would lose them; copy them out (debugfs -R 'rdump lost+found DIR' \(image.path)) and remove them first")
                    }
                    lostFound = try reader.node(inode)
                } else {
                    throw Error.invalidConfiguration(
                        "\(image.path) holds '\(Escaped.terminal(text))' at its root, outside upper/ and work/: a rebuild would lose it; "
                            + "move it into upper/ or remove it first (debugfs -w \(image.path))")
                }
            }
            let rootNode = try reader.node(rootInode)
            guard let upper = trees["upper"] else {
                throw Error.invalidConfiguration("\(image.path) has no upper/ directory at its root: it is not an overlay image")
            }
            self.upper = upper
            // No work/: the new image gets one like upper/.
            let like = upper.nodes[0]
            self.work = trees["work"] ?? Tree(root: Tree.Node(kind: .directory, permissions: 0o755, uid: like.uid, gid: like.gid,
                                                             atime: like.atime, mtime: like.mtime, ctime: like.ctime))
            self.root = rootNode
            self.lostFound = lostFound
            let sb = fs.pointee.super!
            uuid = withUnsafeBytes(of: sb.pointee.s_uuid) { Array($0) }
            label = withUnsafeBytes(of: sb.pointee.s_volume_name) { Array($0) }
            hashSeed = withUnsafeBytes(of: sb.pointee.s_hash_seed) { Array($0) }
            hashVersion = sb.pointee.s_def_hash_version
        }

        init(copying other: ImageContents, upper: Tree, work: Tree) {
            image = other.image
            self.upper = upper
            self.work = work
            root = other.root
            lostFound = other.lostFound
            uuid = other.uuid
            label = other.label
            hashSeed = other.hashSeed
            hashVersion = other.hashVersion
        }

        /// Inodes the contents take in an image: the reserved ones, lost+found, upper/, work/
        /// and everything under upper/ and work/.
        public var inodesNeeded: UInt64 {
            UInt64(Geometry.firstInode) + 2 + UInt64(upper.inodeCount + work.inodeCount)
        }

        /// Blocks the files, directories, long symlinks and attribute blocks under upper/ and
        /// work/ take (an upper bound).
        public var blocksNeeded: UInt64 { upper.blocksNeeded + work.blocksNeeded }

        /// Bytes of file data (the holes of sparse files left out).
        public var fileBytes: UInt64 { upper.fileBytes + work.fileBytes }
    }
}

extension Ext3.Formatter {
    /// Builds a new image holding `contents` and puts it in place of `target` (the image the
    /// contents were read from) with one rename: the new file gets the old one's mode and
    /// owner, the filesystem its UUID, label and directory hash seed, and `verify` is called
    /// with the new file's path before it replaces the old one (throw to keep the old one). The
    /// new image is built in an unnamed file in the same directory (O_TMPFILE), given a hidden
    /// name (locked while it lives) only for the rename; where the filesystem has no unnamed
    /// files, in a hidden locked temporary file. On any failure the old image is untouched and
    /// nothing is left behind; a hidden file a killed run left is removed by the next run (see
    /// ``create(at:)``). A symbolic link is followed (the image it names is replaced); an image
    /// with more than one name (hard links) is refused.
    public func replace(_ target: String, with contents: Ext3.ImageContents,
                        verify: (String) throws -> Void) throws -> Ext3.Summary {
        // A symbolic link to the image: the image it names is replaced, not the link.
        guard let real = realpath(target, nil) else { throw Ext3.Error.system(operation: "resolve", path: target, errno: errno) }
        let target = String(cString: real)
        free(real)
        var old = stat()
        guard stat(target, &old) == 0 else { throw Ext3.Error.system(operation: "stat", path: target, errno: errno) }
        guard old.st_nlink == 1 else {
            throw Ext3.Error.invalidConfiguration("\(target) has \(old.st_nlink) names (hard links): a rebuild would put the new image under this one only; "
                + "remove the other names first, or copy the image (cp --sparse=always) and resize the copy")
        }
        let (directory, name) = Ext3.Formatter.split(target)
        let place = directory ?? "."
        Ext3.Formatter.removeAbandonedTemporaries(of: name, in: directory)
        let fill: Contents = { fs, path, upper in try Ext3.Formatter.write(contents, into: fs, path: path, upper: upper) }
        let temporary = (directory.map { $0 + "/" } ?? "") + "." + name + ".tmp-" + Ext3.Formatter.randomSuffix()

        let unnamed = FileCalls.openUnnamed(in: place, mode: 0o600)
        if unnamed >= 0 {
            defer { close(unnamed) }
            let path = "/proc/self/fd/\(unnamed)"
            var summary: Ext3.Summary
            do {
                summary = try format(path, mustCreate: false, contents: fill)
            } catch let error as Ext3.Error {
                throw error.naming(path, as: "\(target) (the new image)")
            }
            // The path other processes (e2fsck) can open it by.
            try Ext3.Formatter.finish(unnamed, path: "/proc/\(getpid())/fd/\(unnamed)", named: target, like: old, verify: verify)
            _ = try? FileLock.tryLock(unnamed, .write, path: path)  // marks the hidden name as in use
            let slot = TemporaryFiles.register(temporary)
            defer { TemporaryFiles.unregister(slot) }
            guard FileCalls.linkUnnamed(unnamed, to: temporary) == 0 else {
                throw Ext3.Error.system(operation: "name the new image", path: temporary, errno: errno)
            }
            try Ext3.Formatter.move(temporary, over: target, directory: place)
            summary.path = target
            return summary
        }
        switch errno {
        case EOPNOTSUPP, EISDIR, EINVAL, ENOSYS: break  // no unnamed files here: a named temporary file
        default: throw Ext3.Error.cannotCreate(path: target, errno: errno)
        }
        let slot = TemporaryFiles.register(temporary)
        defer { TemporaryFiles.unregister(slot) }
        var summary = try format(temporary, mustCreate: true, contents: fill)
        do {
            let fd = open(temporary, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { throw Ext3.Error.system(operation: "open", path: temporary, errno: errno) }
            defer { close(fd) }
            _ = try? FileLock.tryLock(fd, .write, path: temporary)
            try Ext3.Formatter.finish(fd, path: temporary, named: temporary, like: old, verify: verify)
            try Ext3.Formatter.move(temporary, over: target, directory: place)
        } catch {
            unlink(temporary)
            throw error
        }
        summary.path = target
        return summary
    }

    /// Gives the new image the old one's mode and owner, checks it (`verify` gets `path`, which
    /// other processes can open), and makes it durable before it replaces the old one. Errors
    /// name the image as `named`.
    private static func finish(_ fd: Int32, path: String, named: String, like old: stat, verify: (String) throws -> Void) throws {
        var now = stat()
        guard fstat(fd, &now) == 0 else { throw Ext3.Error.system(operation: "stat the new image", path: named, errno: errno) }
        if now.st_uid != old.st_uid || now.st_gid != old.st_gid, fchown(fd, old.st_uid, old.st_gid) != 0 {
            throw Ext3.Error.system(operation: "give the new image to \(old.st_uid):\(old.st_gid) as the old one", path: named, errno: errno)
        }
        guard fchmod(fd, old.st_mode & 0o7777) == 0 else {
            throw Ext3.Error.system(operation: "give the new image mode \(String(old.st_mode & 0o7777, radix: 8))", path: named, errno: errno)
        }
        try verify(path)
        guard fsync(fd) == 0 else { throw Ext3.Error.system(operation: "write the new image to disk", path: named, errno: errno) }
    }

    /// rename(2) of the hidden file over the image, then the directory made durable; the
    /// hidden file is removed when the rename fails.
    private static func move(_ temporary: String, over target: String, directory: String) throws {
        guard rename(temporary, target) == 0 else {
            let code = errno
            unlink(temporary)
            throw Ext3.Error.system(operation: "put the new image in place", path: target, errno: code)
        }
        let dir = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 {
            _ = fsync(dir)
            close(dir)
        }
    }

    /// Writes `contents` into a freshly formatted filesystem: upper/ and work/ filled, then
    /// the root, upper/, work/ and lost+found/ given their old metadata, and the superblock its
    /// UUID, label and directory hash seed.
    static func write(_ contents: Ext3.ImageContents, into fs: ext2_filsys, path: String, upper: ext2_ino_t) throws {
        let root = ext2_ino_t(EXT2_ROOT_INO)
        var work: ext2_ino_t = 0
        try Ext3.check(ext2fs_lookup(fs, root, "work", 4, nil, &work), "look up work/", path: path)
        for (tree, inode) in [(contents.upper, upper), (contents.work, work)] {
            let data = try Ext3.ImageFileData(image: contents.image, tree: tree)
            let populator = try Ext3.Populator(fs: fs, imagePath: path, tree: tree, upper: inode, progress: nil)
            try populator.run(data: data)
        }
        var attributes = [(contents.root, root), (contents.upper.nodes[0], upper), (contents.work.nodes[0], work)]
        var lostFound: ext2_ino_t = 0
        if let node = contents.lostFound, ext2fs_lookup(fs, root, "lost+found", 10, nil, &lostFound) == 0 {
            attributes.append((node, lostFound))
        }
        for (node, inode) in attributes {
            var slot = InodeSlot()
            try slot.read(inode, from: fs, path: path)
            slot.inode.i_mode = (slot.inode.i_mode & UInt16(LINUX_S_IFMT)) | (node.permissions & 0o7777)
            slot.inode.i_flags = (slot.inode.i_flags & ~Ext3.Tree.userFlags) | (node.flags & Ext3.Tree.userFlags)
            slot.inode.i_uid = UInt16(truncatingIfNeeded: node.uid)
            slot.inode.osd2.linux2.l_i_uid_high = UInt16(truncatingIfNeeded: node.uid >> 16)
            slot.inode.i_gid = UInt16(truncatingIfNeeded: node.gid)
            slot.inode.osd2.linux2.l_i_gid_high = UInt16(truncatingIfNeeded: node.gid >> 16)
            slot.inode.i_extra_isize = UInt16(MemoryLayout<ext2_inode_large>.size - Int(EXT2_GOOD_OLD_INODE_SIZE))
            (slot.inode.i_atime, slot.inode.i_atime_extra) = Ext3.Populator.encode(node.atime)
            (slot.inode.i_mtime, slot.inode.i_mtime_extra) = Ext3.Populator.encode(node.mtime)
            (slot.inode.i_ctime, slot.inode.i_ctime_extra) = Ext3.Populator.encode(node.ctime)
            try slot.withSmallInode { small in
                try Ext3.check(ext2fs_write_inode_full(fs, inode, small, Int32(Ext3.inodeSize)), "write inode \(inode)", path: path)
            }
        }
        if !contents.root.xattrs.isEmpty {
            var handle: OpaquePointer?
            try Ext3.check(ext2fs_xattrs_open(fs, root, &handle), "open extended attributes of the root", path: path)
            defer { ext2fs_xattrs_close(&handle) }
            try Ext3.check(ext2fs_xattrs_read(handle), "read extended attributes of the root", path: path)
            for xattr in contents.root.xattrs {
                try xattr.value.withUnsafeBytes { value in
                    try Ext3.check(ext2fs_xattr_set(handle, xattr.name, value.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, value.count),
                                   "set extended attribute \(xattr.name) of the root", path: path)
                }
            }
        }
        let sb = fs.pointee.super!
        withUnsafeMutableBytes(of: &sb.pointee.s_uuid) { field in
            for index in field.indices where index < contents.uuid.count { field[index] = contents.uuid[index] }
        }
        withUnsafeMutableBytes(of: &sb.pointee.s_volume_name) { field in
            for index in field.indices where index < contents.label.count { field[index] = contents.label[index] }
        }
        // The same directory hash: the kernel lists directories in the same order as before.
        withUnsafeMutableBytes(of: &sb.pointee.s_hash_seed) { field in
            for index in field.indices where index < contents.hashSeed.count { field[index] = contents.hashSeed[index] }
        }
        sb.pointee.s_def_hash_version = contents.hashVersion
        ext2fs_mark_super_dirty(fs)
    }
}

extension Ext3.Error {
    /// The same error with `path` (a file's /proc/self/fd name) shown as `name`.
    func naming(_ path: String, as name: String) -> Ext3.Error {
        switch self {
        case let .library(operation, where_, code, message) where where_ == path:
            return .library(operation: operation, path: name, code: code, message: message)
        case let .system(operation, where_, code) where where_ == path:
            return .system(operation: operation, path: name, errno: code)
        case let .other(text):
            return .other(text.replacing(path, with: name))
        case let .invalidConfiguration(text):
            return .invalidConfiguration(text.replacing(path, with: name))
        default:
            return self
        }
    }
}

extension Ext3.Formatter {
    /// Formats the existing file `path` (its size set to the configured one) with `contents`
    /// written into it, as ``replace(_:with:verify:)`` does, but in place: for a new file only.
    package func write(_ contents: Ext3.ImageContents, to path: String) throws -> Ext3.Summary {
        try format(path, mustCreate: false) { fs, path, upper in
            try Ext3.Formatter.write(contents, into: fs, path: path, upper: upper)
        }
    }
}
