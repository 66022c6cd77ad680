import CFuse3

#if canImport(Glibc)
import Glibc
#endif

/// The toolkit's own FUSE driver for a read-only ext3 image (a `:ro` layer of an ordinary
/// user's run), over libext2fs and libfuse3's low-level API.
///
/// The image is locked for the run and nobody writes it, so everything read from it stays
/// true: each directory is read once into a hash map (a lookup costs the same in a directory
/// of 20,000 entries as in one of 10), attributes, block maps and extended attributes are read
/// once and kept, and the kernel is told to keep names, attributes, listings and file contents
/// for as long as it likes. Several threads answer the kernel; file contents are read with
/// `pread` on the image, outside the lock that guards libext2fs.
///
/// FUSE node 1 is the image's root (inode 2); every other node is the ext3 inode of the same
/// number. Extended attributes are served as stored, so whiteouts (character devices 0/0) and
/// opaque directories (`user.overlay.opaque`, `trusted.overlay.opaque`) mean to an overlay
/// above what they mean on the kernel's own ext3 mount. An image that holds no extended
/// attributes at all says so once (ENOSYS to the first getxattr), so that the kernel stops
/// asking: a `stat` of each file under the kernel's overlay then costs no round trip.
///
/// The runtime forks it (``serve(image:mountPoint:)``) in the run's user namespace, which
/// costs no program start; `<this executable> --serve-image-read-only IMAGE MOUNTPOINT` runs
/// the same driver as a command. It mounts through /dev/fuse, serves until the mount goes
/// (or a signal that ends it: SIGHUP, and SIGTERM or SIGINT unless it started with them
/// ignored, as the runtime starts its drivers), unmounts and exits.
public enum ImageDriver {
    /// The hidden first argument that makes an executable of the toolkit this driver.
    public static let argument = "--serve-image-read-only"

    /// Runs the driver and exits when the command line asks for it; returns otherwise.
    public static func runIfAsked(_ arguments: [String] = CommandLine.arguments) {
        guard arguments.count >= 2, arguments[1] == argument || arguments[1] == writableArgument else { return }
        let writable = arguments[1] == writableArgument
        guard arguments.count == 4 else {
            say("usage: \(arguments[1]) IMAGE MOUNTPOINT")
            exit(64)
        }
        exit(serve(image: arguments[2], mountPoint: arguments[3], writable: writable))
    }

    /// The name a driver forked by the runtime gives itself (`ps`, /proc/PID/comm): its
    /// command line is the tool's, as nothing is executed.
    public static let processName = "overlay-image"

    /// Serves `image` on `mountPoint` (read-only, or writable: see ``writableArgument``) until
    /// the mount goes, in a process forked for it (see `runIfAsked` for the same driver as a
    /// command); returns the exit status.
    public static func serve(image: String, mountPoint: String, writable: Bool = false) -> Int32 {
        writable ? mainWritable(image, mountPoint) : main([image, mountPoint])
    }

    /// Whether the writable mode can write `image` (an ext3 image of the features this toolkit
    /// and `mke2fs -t ext3` make); others are left to fuse2fs.
    public static func canWrite(image: String) -> Bool {
        WritableTree.supports(path: image)
    }

    /// How long the kernel may keep names, misses and attributes: the image cannot change.
    static let timeout: Double = 1_000_000

    static func main(_ arguments: [String]) -> Int32 {
        guard arguments.count == 2 else {
            say("usage: \(argument) IMAGE MOUNTPOINT")
            return 64
        }
        let tree: ImageTree
        do { tree = try ImageTree(path: arguments[0]) } catch {
            say(error.description)
            return 1
        }
        let server = Unmanaged.passRetained(tree)
        defer { server.release() }
        var ops = fuse_lowlevel_ops()
        ops.`init` = { userdata, conn in
            guard let conn, let userdata else { return }
            // Where the kernel can do without OPEN and OPENDIR (and RELEASE), they are answered
            // ENOSYS once: the kernel then keeps file contents and listings cached across opens,
            // and an open costs no round trip.
            let tree = Unmanaged<ImageTree>.fromOpaque(userdata).takeUnretainedValue()
            tree.withoutOpen = cfuse3_capable(conn, UInt32(FUSE_CAP_NO_OPEN_SUPPORT)) != 0
            tree.withoutOpendir = cfuse3_capable(conn, UInt32(FUSE_CAP_NO_OPENDIR_SUPPORT)) != 0
            cfuse3_want(conn, UInt32(FUSE_CAP_CACHE_SYMLINKS))
            cfuse3_want(conn, UInt32(FUSE_CAP_PARALLEL_DIROPS))
            // Every listing comes with its entries' attributes (not only the first batch, as
            // the kernel's "auto" would have it): a `stat` or open of each file after it costs
            // no lookup. Reading the inodes of a listing costs little next to a round trip each.
            cfuse3_want(conn, UInt32(FUSE_CAP_READDIRPLUS))
            cfuse3_unwant(conn, UInt32(FUSE_CAP_READDIRPLUS_AUTO))
            // Nothing changes the image: no need to compare times to drop cached pages.
            cfuse3_unwant(conn, UInt32(FUSE_CAP_AUTO_INVAL_DATA))
        }
        ops.lookup = { req, parent, name in Self.lookup(req, parent, name) }
        ops.getattr = { req, ino, _ in
            Self.answer(req) { tree in
                var info = try tree.attributes(Self.inode(ino))
                fuse_reply_attr(req, &info, Self.timeout)
            }
        }
        ops.readlink = { req, ino in
            Self.answer(req) { tree in
                var target = try tree.linkTarget(Self.inode(ino)).map { CChar(bitPattern: $0) }
                target.append(0)
                fuse_reply_readlink(req, target)
            }
        }
        ops.open = { req, ino, fi in
            Self.answer(req) { tree in
                guard let fi else { throw FuseError(EIO) }
                guard cfuse3_open_flags(fi) & O_ACCMODE == O_RDONLY else { throw FuseError(EROFS) }
                if tree.withoutOpen { throw FuseError(ENOSYS) }
                let info = try tree.attributes(Self.inode(ino))
                guard info.st_mode & S_IFMT != S_IFDIR else { throw FuseError(EISDIR) }
                cfuse3_keep_cache(fi, 0)
                fuse_reply_open(req, fi)
            }
        }
        ops.read = { req, ino, size, offset, _ in Self.read(req, ino, size, offset) }
        ops.opendir = { req, ino, fi in
            Self.answer(req) { tree in
                guard let fi else { throw FuseError(EIO) }
                _ = try tree.listing(Self.inode(ino))
                if tree.withoutOpendir { throw FuseError(ENOSYS) }
                cfuse3_keep_cache(fi, 1)
                fuse_reply_open(req, fi)
            }
        }
        ops.readdir = { req, ino, size, offset, _ in Self.readdir(req, ino, size, offset, plus: false) }
        ops.readdirplus = { req, ino, size, offset, _ in Self.readdir(req, ino, size, offset, plus: true) }
        ops.statfs = { req, _ in
            Self.answer(req) { tree in
                var info = tree.statistics()
                fuse_reply_statfs(req, &info)
            }
        }
        ops.getxattr = { req, ino, name, size in
            Self.answer(req) { tree in
                // An image without any extended attributes answers ENOSYS, which the kernel
                // remembers for the whole mount: every later getxattr fails at once with
                // EOPNOTSUPP ("none", to overlayfs) instead of costing a round trip. The
                // kernel's overlay asks each regular file of a lower layer for
                // `user.overlay.metacopy` when it first looks it up: one round trip a file.
                if !tree.holdsExtendedAttributes { throw FuseError(ENOSYS) }
                guard let name else { throw FuseError(EINVAL) }
                let wanted = Array(UnsafeBufferPointer(start: UnsafeRawPointer(name).assumingMemoryBound(to: UInt8.self), count: strlen(name)))
                guard let value = try tree.extendedAttributes(Self.inode(ino)).first(where: { $0.name == wanted })?.value else {
                    throw FuseError(ENODATA)
                }
                try Self.replyXattr(req, value, size)
            }
        }
        ops.listxattr = { req, ino, size in
            Self.answer(req) { tree in
                var names: [UInt8] = []
                for entry in try tree.extendedAttributes(Self.inode(ino)) { names += entry.name + [0] }
                try Self.replyXattr(req, names, size)
            }
        }
        ops.forget = { req, _, _ in fuse_reply_none(req) }
        ops.forget_multi = { req, _, _ in fuse_reply_none(req) }

        let options = "ro,fsname=overlay-image,subtype=ext3"
        guard let session = cfuse3_session_new("overlay-image", options, &ops, server.toOpaque()) else {
            say("cannot start a FUSE session for '\(arguments[0])'")
            tree.close()
            return 1
        }
        defer { fuse_session_destroy(session) }
        guard fuse_set_signal_handlers(session) == 0 else {
            say("cannot set signal handlers")
            tree.close()
            return 1
        }
        defer { fuse_remove_signal_handlers(session) }
        guard fuse_session_mount(session, arguments[1]) == 0 else {
            say("cannot mount '\(arguments[0])' on \(arguments[1])")
            tree.close()
            return 1
        }
        // Two cores are enough to keep busy; more threads than that only wait on the lock.
        let status = cfuse3_loop_mt(session, 8, 2)
        fuse_session_unmount(session)
        tree.close()
        return status < 0 ? 1 : 0
    }

    // MARK: Requests

    static func inode(_ node: fuse_ino_t) -> UInt32 {
        node == UInt64(FUSE_ROOT_ID) ? 2 : UInt32(truncatingIfNeeded: node)
    }

    static func node(_ inode: UInt32) -> fuse_ino_t {
        inode == 2 ? fuse_ino_t(FUSE_ROOT_ID) : fuse_ino_t(inode)
    }

    static func tree(_ req: fuse_req_t?) -> ImageTree {
        Unmanaged<ImageTree>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    /// Runs `body`, which replies; a thrown errno is the reply instead.
    static func answer(_ req: fuse_req_t?, _ body: (ImageTree) throws -> Void) {
        do { try body(tree(req)) } catch { fuse_reply_err(req, (error as? FuseError)?.code ?? EIO) }
    }

    static func entryParameter(_ inode: UInt32, _ info: stat) -> fuse_entry_param {
        var entry = fuse_entry_param()
        entry.ino = node(inode)
        entry.generation = 1
        entry.attr = info
        entry.attr.st_ino = ino_t(inode)
        entry.attr_timeout = timeout
        entry.entry_timeout = timeout
        return entry
    }

    static func lookup(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        answer(req) { tree in
            guard let name else { throw FuseError(EINVAL) }
            let bytes = Array(UnsafeBufferPointer(start: UnsafeRawPointer(name).assumingMemoryBound(to: UInt8.self), count: strlen(name)))
            var entry: fuse_entry_param
            if let (child, info) = try tree.lookup(inode(parent), bytes) {
                entry = entryParameter(child, info)
            } else {
                // A miss, remembered by the kernel as long as a name (node 0).
                entry = fuse_entry_param()
                entry.entry_timeout = timeout
            }
            fuse_reply_entry(req, &entry)
        }
    }

    static func read(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ offset: off_t) {
        answer(req) { tree in
            let map = try tree.blockMap(inode(ino))
            let start = UInt64(max(offset, 0))
            guard start < map.size, size > 0 else {
                fuse_reply_buf(req, nil, 0)
                return
            }
            let end = min(map.size, start + UInt64(size))
            let length = Int(end - start)
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 4096)
            defer { buffer.deallocate() }
            let blockSize = UInt64(tree.blockSize)
            var position = start
            while position < end {
                // A run of physically consecutive blocks (or of holes) is one read.
                let (physical, count) = map.locate(position / blockSize)
                let runEnd = min(end, (position / blockSize + min(count, (end - position) / blockSize + 1)) * blockSize)
                let target = buffer + Int(position - start)
                let length = Int(runEnd - position)
                if physical == 0 {
                    memset(target, 0, length)
                } else {
                    var done = 0
                    let base = off_t(physical * blockSize + position % blockSize)
                    while done < length {
                        let got = pread(tree.descriptor, target + done, length - done, base + off_t(done))
                        if got < 0, errno == EINTR { continue }
                        guard got > 0 else { throw FuseError(EIO) }
                        done += got
                    }
                }
                position = runEnd
            }
            fuse_reply_buf(req, buffer.assumingMemoryBound(to: CChar.self), length)
        }
    }

    static func readdir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ offset: off_t, plus: Bool) {
        answer(req) { tree in
            let entries = try tree.listing(inode(ino))
            let first = Int(max(offset, 0))
            let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: max(size, 1))
            defer { buffer.deallocate() }
            var used = 0
            if first < entries.count {
                // readdirplus: the attributes of as many entries as can fit (at least 40 bytes each).
                let window = entries[first..<min(entries.count, first + size / 40 + 1)]
                let attributes = plus ? try tree.attributes(of: window.map(\.inode)) : []
                for (index, entry) in window.enumerated() {
                    let added: Int = entry.cName.withUnsafeBufferPointer { name in
                        if plus {
                            var parameter = entryParameter(entry.inode, attributes[index])
                            return fuse_add_direntry_plus(req, buffer + used, size - used, name.baseAddress, &parameter,
                                                          off_t(first + index + 1))
                        }
                        var info = stat()
                        info.st_ino = ino_t(entry.inode)
                        info.st_mode = entry.kind
                        return fuse_add_direntry(req, buffer + used, size - used, name.baseAddress, &info, off_t(first + index + 1))
                    }
                    if added > size - used { break }
                    used += added
                }
            }
            fuse_reply_buf(req, buffer, used)
        }
    }

    static func replyXattr(_ req: fuse_req_t?, _ value: [UInt8], _ size: Int) throws(FuseError) {
        if size == 0 {
            fuse_reply_xattr(req, value.count)
        } else if value.count > size {
            throw FuseError(ERANGE)
        } else {
            _ = value.withUnsafeBufferPointer { fuse_reply_buf(req, UnsafeRawPointer($0.baseAddress)?.assumingMemoryBound(to: CChar.self), $0.count) }
        }
    }

    static func say(_ text: String) {
        let line = "overlay image driver: " + text + "\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }
}
