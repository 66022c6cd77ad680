import CFuse3

#if canImport(Glibc)
import Glibc
#endif

/// The driver's writable mode (the writable image of an ordinary user's run): the same
/// requests as the read-only mode, and every change an overlay's upper layer needs: create,
/// mknod (whiteouts included), mkdir, symlink, link, unlink, rmdir, rename with
/// RENAME_NOREPLACE, RENAME_EXCHANGE and RENAME_WHITEOUT, attributes, extended attributes,
/// write, fsync. The kernel's overlay accepts it as its upper layer in a user namespace (it
/// needs whiteouts by rename, file types in listings and extended attributes from a FUSE
/// upper layer), so a writable stack needs no fuse-overlayfs.
///
/// Like fuse2fs with `fakeroot`, it checks no permissions itself (the overlay above checks
/// them, and nothing else reaches this mount) and gives what it creates to the caller.
/// Writes go straight to libext2fs (no write-back cache in the kernel): a write to a full
/// image fails with ENOSPC at that write.
extension ImageDriver {
    /// The hidden first argument that makes an executable of the toolkit the writable driver.
    public static let writableArgument = "--serve-image-writable"

    /// How long the kernel may keep names and attributes of the writable image: everything
    /// that changes it goes through this mount, so the kernel's copies are kept up to date.
    static let writableTimeout: Double = 3600

    static func writableTree(_ req: fuse_req_t?) -> WritableTree {
        Unmanaged<WritableTree>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    /// Runs `body`, which replies; a thrown errno is the reply instead.
    static func answerWritable(_ req: fuse_req_t?, _ body: (WritableTree) throws(FuseError) -> Void) {
        do { try body(writableTree(req)) } catch { fuse_reply_err(req, error.code) }
    }

    static func bytes(_ name: UnsafePointer<CChar>?) throws(FuseError) -> [UInt8] {
        guard let name else { throw FuseError(EINVAL) }
        return Array(UnsafeBufferPointer(start: UnsafeRawPointer(name).assumingMemoryBound(to: UInt8.self), count: strlen(name)))
    }

    static func caller(_ req: fuse_req_t?) -> WritableTree.Caller {
        guard let context = fuse_req_ctx(req) else { return .init(uid: getuid(), gid: getgid()) }
        return .init(uid: context.pointee.uid, gid: context.pointee.gid)
    }

    /// The entry of an inode, with its generation: the kernel tells a reused inode number by it.
    static func writableEntry(_ found: WritableTree.Found) -> fuse_entry_param {
        var entry = entryParameter(found.inode, found.attributes)
        entry.generation = UInt64(found.generation)
        entry.attr_timeout = writableTimeout
        entry.entry_timeout = writableTimeout
        return entry
    }

    /// Replies with the entry; when the kernel did not take it (the request was interrupted),
    /// the lookup it would have counted is taken back.
    static func replyEntry(_ req: fuse_req_t?, _ found: WritableTree.Found) {
        var entry = writableEntry(found)
        if fuse_reply_entry(req, &entry) != 0 { writableTree(req).forget(found.inode, 1) }
    }

    static func mainWritable(_ image: String, _ mountPoint: String) -> Int32 {
        let tree: WritableTree
        do { tree = try WritableTree(path: image) } catch {
            say(error.description)
            return 1
        }
        let server = Unmanaged.passRetained(tree)
        defer { server.release() }
        var ops = fuse_lowlevel_ops()
        ops.`init` = { _, conn in
            guard let conn else { return }
            cfuse3_want(conn, UInt32(FUSE_CAP_READDIRPLUS))
            cfuse3_unwant(conn, UInt32(FUSE_CAP_READDIRPLUS_AUTO))
            // The kernel sends truncation as a setattr and drops set-ID bits on writes itself.
            cfuse3_unwant(conn, UInt32(FUSE_CAP_ATOMIC_O_TRUNC))
            cfuse3_unwant(conn, UInt32(FUSE_CAP_HANDLE_KILLPRIV))
            cfuse3_unwant(conn, UInt32(FUSE_CAP_WRITEBACK_CACHE))
            // Only this mount changes the image: cached pages never go stale.
            cfuse3_unwant(conn, UInt32(FUSE_CAP_AUTO_INVAL_DATA))
        }
        ops.lookup = { req, parent, name in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                if let found = try tree.lookup(ImageDriver.inode(parent), ImageDriver.bytes(name)) {
                    ImageDriver.replyEntry(req, found)
                } else {
                    var entry = fuse_entry_param()
                    entry.entry_timeout = ImageDriver.writableTimeout
                    fuse_reply_entry(req, &entry)
                }
            }
        }
        ops.getattr = { req, ino, _ in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                var info = try tree.attributes(ImageDriver.inode(ino))
                fuse_reply_attr(req, &info, ImageDriver.writableTimeout)
            }
        }
        ops.setattr = { req, ino, attributes, which, _ in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                guard let attributes else { throw FuseError(EINVAL) }
                var info = try tree.setAttributes(ImageDriver.inode(ino), attributes.pointee, which)
                fuse_reply_attr(req, &info, ImageDriver.writableTimeout)
            }
        }
        ops.readlink = { req, ino in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                var target = try tree.linkTarget(ImageDriver.inode(ino)).map { CChar(bitPattern: $0) }
                target.append(0)
                fuse_reply_readlink(req, target)
            }
        }
        ops.mknod = { req, parent, name, mode, device in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                ImageDriver.replyEntry(req, try tree.makeNode(ImageDriver.inode(parent), ImageDriver.bytes(name), mode: mode, device: device, caller: ImageDriver.caller(req), opened: false))
            }
        }
        ops.mkdir = { req, parent, name, mode in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                ImageDriver.replyEntry(req, try tree.makeDirectory(ImageDriver.inode(parent), ImageDriver.bytes(name), mode: mode, caller: ImageDriver.caller(req)))
            }
        }
        ops.symlink = { req, target, parent, name in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                ImageDriver.replyEntry(req, try tree.makeSymbolicLink(ImageDriver.inode(parent), ImageDriver.bytes(name), target: ImageDriver.bytes(target), caller: ImageDriver.caller(req)))
            }
        }
        ops.link = { req, ino, parent, name in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                ImageDriver.replyEntry(req, try tree.makeLink(ImageDriver.inode(ino), ImageDriver.inode(parent), ImageDriver.bytes(name),
                                                              caller: ImageDriver.caller(req)))
            }
        }
        ops.unlink = { req, parent, name in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                try tree.remove(ImageDriver.inode(parent), ImageDriver.bytes(name), directoryWanted: false)
                fuse_reply_err(req, 0)
            }
        }
        ops.rmdir = { req, parent, name in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                try tree.remove(ImageDriver.inode(parent), ImageDriver.bytes(name), directoryWanted: true)
                fuse_reply_err(req, 0)
            }
        }
        ops.rename = { req, parent, name, newParent, newName, flags in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                try tree.rename(ImageDriver.inode(parent), ImageDriver.bytes(name), to: ImageDriver.inode(newParent), ImageDriver.bytes(newName), flags: UInt32(flags), caller: ImageDriver.caller(req))
                fuse_reply_err(req, 0)
            }
        }
        ops.create = { req, parent, name, mode, fi in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                guard let fi else { throw FuseError(EIO) }
                let found = try tree.makeNode(ImageDriver.inode(parent), ImageDriver.bytes(name), mode: S_IFREG | (mode & 0o7777), device: 0,
                                              caller: ImageDriver.caller(req), opened: true)
                var entry = ImageDriver.writableEntry(found)
                cfuse3_keep_cache(fi, 0)
                if fuse_reply_create(req, &entry, fi) != 0 {
                    tree.forget(found.inode, 1)
                    tree.released(found.inode)
                }
            }
        }
        ops.open = { req, ino, fi in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                guard let fi else { throw FuseError(EIO) }
                let flags = cfuse3_open_flags(fi)
                try tree.opened(ImageDriver.inode(ino), truncate: flags & O_TRUNC != 0 && flags & O_ACCMODE != O_RDONLY)
                cfuse3_keep_cache(fi, 0)
                if fuse_reply_open(req, fi) != 0 { tree.released(ImageDriver.inode(ino)) }
            }
        }
        ops.release = { req, ino, _ in
            ImageDriver.writableTree(req).released(ImageDriver.inode(ino))
            fuse_reply_err(req, 0)
        }
        // No flush: nothing is held back until close, and the kernel, answered ENOSYS once,
        // stops asking on every close.
        ops.read = { req, ino, size, offset, _ in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                let data = try tree.read(ImageDriver.inode(ino), offset: UInt64(max(offset, 0)), size: size)
                _ = data.withUnsafeBytes { fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
            }
        }
        ops.write = { req, ino, buffer, size, offset, _ in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                let written = try tree.write(ImageDriver.inode(ino), offset: UInt64(max(offset, 0)), UnsafeRawBufferPointer(start: buffer, count: size),
                                             caller: ImageDriver.caller(req))
                fuse_reply_write(req, written)
            }
        }
        ops.fsync = { req, _, _, _ in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                try tree.flushAll()
                fuse_reply_err(req, 0)
            }
        }
        ops.fsyncdir = { req, _, _, _ in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                try tree.flushAll()
                fuse_reply_err(req, 0)
            }
        }
        ops.opendir = { req, ino, fi in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                guard let fi else { throw FuseError(EIO) }
                _ = try tree.listing(ImageDriver.inode(ino), after: UInt64.max, limit: 0, plus: false)
                fuse_reply_open(req, fi)
            }
        }
        ops.readdir = { req, ino, size, offset, _ in ImageDriver.writableReaddir(req, ino, size, offset, plus: false) }
        ops.readdirplus = { req, ino, size, offset, _ in ImageDriver.writableReaddir(req, ino, size, offset, plus: true) }
        ops.statfs = { req, _ in
            var info = ImageDriver.writableTree(req).statistics()
            fuse_reply_statfs(req, &info)
        }
        ops.getxattr = { req, ino, name, size in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                guard let name else { throw FuseError(EINVAL) }
                try ImageDriver.replyXattr(req, try tree.extendedAttribute(ImageDriver.inode(ino), name), size)
            }
        }
        ops.listxattr = { req, ino, size in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                try ImageDriver.replyXattr(req, try tree.extendedAttributeNames(ImageDriver.inode(ino)), size)
            }
        }
        ops.setxattr = { req, ino, name, value, size, flags in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                guard let name else { throw FuseError(EINVAL) }
                try tree.setExtendedAttribute(ImageDriver.inode(ino), name, UnsafeRawBufferPointer(start: value, count: size), flags: flags,
                                              caller: ImageDriver.caller(req))
                fuse_reply_err(req, 0)
            }
        }
        ops.removexattr = { req, ino, name in
            ImageDriver.answerWritable(req) { (tree) throws(FuseError) in
                guard let name else { throw FuseError(EINVAL) }
                try tree.removeExtendedAttribute(ImageDriver.inode(ino), name)
                fuse_reply_err(req, 0)
            }
        }
        ops.forget = { req, ino, count in
            ImageDriver.writableTree(req).forget(ImageDriver.inode(ino), count)
            fuse_reply_none(req)
        }
        ops.forget_multi = { req, count, forgets in
            let tree = ImageDriver.writableTree(req)
            if let forgets {
                for index in 0..<count { tree.forget(ImageDriver.inode(forgets[index].ino), forgets[index].nlookup) }
            }
            fuse_reply_none(req)
        }

        let options = "fsname=overlay-image,subtype=ext3"
        guard let session = cfuse3_session_new("overlay-image", options, &ops, server.toOpaque()) else {
            say("cannot start a FUSE session for '\(image)'")
            _ = tree.close()
            return 1
        }
        defer { fuse_session_destroy(session) }
        guard fuse_set_signal_handlers(session) == 0 else {
            say("cannot set signal handlers")
            _ = tree.close()
            return 1
        }
        defer { fuse_remove_signal_handlers(session) }
        guard fuse_session_mount(session, mountPoint) == 0 else {
            say("cannot mount '\(image)' on \(mountPoint)")
            _ = tree.close()
            return 1
        }
        let status = cfuse3_loop_mt(session, 8, 2)
        fuse_session_unmount(session)
        guard tree.close() else {
            say("could not write '\(image)' out completely when closing it")
            return 1
        }
        return status < 0 ? 1 : 0
    }

    static func writableReaddir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ offset: off_t, plus: Bool) {
        answerWritable(req) { (tree) throws(FuseError) in
            // At least 24 bytes an entry (32 more with attributes).
            let limit = size / (plus ? 56 : 24) + 1
            let entries = try tree.listing(inode(ino), after: UInt64(max(offset, 0)), limit: limit, plus: plus)
            let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: max(size, 1))
            defer { buffer.deallocate() }
            var used = 0
            var sent = 0
            defer {
                // The entries that did not fit were not handed to the kernel.
                for entry in entries.dropFirst(sent) { if let found = entry.found { tree.forget(found.inode, 1) } }
            }
            for entry in entries {
                var cName = entry.name.map { CChar(bitPattern: $0) }
                cName.append(0)
                let added: Int = cName.withUnsafeBufferPointer { name in
                    if plus {
                        // Node 0 for "." and "..", and an entry whose inode could not be read:
                        // the kernel looks those up itself.
                        var parameter: fuse_entry_param
                        if let found = entry.found {
                            parameter = writableEntry(found)
                        } else {
                            parameter = fuse_entry_param()
                            parameter.attr.st_ino = ino_t(entry.inode)
                            parameter.attr.st_mode = entry.kind
                        }
                        return fuse_add_direntry_plus(req, buffer + used, size - used, name.baseAddress, &parameter, off_t(entry.cookie))
                    }
                    var info = stat()
                    info.st_ino = ino_t(entry.inode)
                    info.st_mode = entry.kind
                    return fuse_add_direntry(req, buffer + used, size - used, name.baseAddress, &info, off_t(entry.cookie))
                }
                if added > size - used { break }
                used += added
                sent += 1
            }
            if fuse_reply_buf(req, buffer, used) != 0 { sent = 0 }
        }
    }
}
