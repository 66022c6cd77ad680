import CExt2fs

#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// Deletions and replaced directories in an overlay image's `upper/`, in the one form that
    /// the kernel overlayfs, fuse-overlayfs and Apptainer (either way it runs) all read:
    ///
    /// - a deleted name is a whiteout: a character device 0/0 of that name (mode `S_IFCHR|0`,
    ///   as the kernel makes them);
    /// - a directory that hides what lies below it (opaque) carries both
    ///   `trusted.overlay.opaque=y` (the kernel overlayfs, as root) and `user.overlay.opaque=y`
    ///   (fuse-overlayfs, which an ordinary user's process cannot read `trusted.*` through).
    ///
    /// fuse-overlayfs writes other forms when it cannot write those: `.wh.NAME` marker files,
    /// `user.fuseoverlayfs.opaque`, and in an opaque directory a whiteout named `.wh..opq` (or,
    /// where it cannot make one, a file `.wh..wh..opq`). The kernel reads none of them: it
    /// shows the markers as ordinary files, and the lower layers' files through the directory.
    /// ``normalize(imagePath:under:)`` rewrites them into the form above.
    public enum Whiteouts {
        /// The file fuse-overlayfs puts in a directory to make it opaque (any kind but a directory).
        public static let opaqueMarker: [UInt8] = Array(".wh..wh..opq".utf8)
        /// The whiteout fuse-overlayfs makes in a directory to make it opaque (only a whiteout
        /// of this name means that: a file `.wh..opq` is the marker of a deleted `.opq`).
        public static let opaqueWhiteout: [UInt8] = Array(".wh..opq".utf8)
        /// The prefix of a fuse-overlayfs whiteout file (`.wh.NAME` deletes NAME).
        public static let markerPrefix: [UInt8] = Array(".wh.".utf8)
        /// Extended attributes any of which (with the value `y`) makes a directory opaque to
        /// one reader or another.
        public static let opaqueAttributes = ["trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque"]
        /// The ones every opaque directory gets.
        public static let canonicalOpaqueAttributes = ["trusted.overlay.opaque", "user.overlay.opaque"]

        /// What ``normalize(imagePath:under:)`` found and did.
        public struct Report: Sendable, Equatable {
            /// Directories read.
            public var directories = 0
            /// `.wh.NAME` files turned into a whiteout named NAME.
            public var whiteoutsMade = 0
            /// Opaque markers (`.wh..wh..opq`, a whiteout `.wh..opq`), and `.wh.NAME` files whose
            /// NAME exists, removed.
            public var markersRemoved = 0
            /// Directories given both opaque attributes.
            public var directoriesMarkedOpaque = 0

            public var changed: Bool { whiteoutsMade + markersRemoved + directoriesMarkedOpaque > 0 }
        }

        /// NAME for a `.wh.NAME` marker, or nil for any other name (the opaque marker, other
        /// `.wh..wh.` names, and NAMEs no directory entry may have).
        public static func markerTarget(_ name: [UInt8]) -> [UInt8]? {
            guard name.count > markerPrefix.count, name.starts(with: markerPrefix) else { return nil }
            let target = Array(name[markerPrefix.count...])
            if target.starts(with: markerPrefix) { return nil }
            if target == [0x2e] || target == [0x2e, 0x2e] { return nil }
            if target.contains(0) || target.contains(0x2f) { return nil }
            return target
        }

        /// `name`'s target as text (for listings), or nil when it is not a whiteout marker.
        public static func markerTarget(_ name: String) -> String? {
            markerTarget(Array(name.utf8)).map { String(decoding: $0, as: UTF8.self) }
        }

        /// What an entry named `name` in `upper/` is to the overlay readers.
        public enum Meaning: Equatable, Sendable {
            /// An ordinary entry.
            case ordinary
            /// A deletion of the name given (a whiteout, or a `.wh.NAME` file).
            case deletes([UInt8])
            /// A marker making its directory opaque.
            case opaqueMarker
        }

        /// What the entry `name` of kind `kind` (a whiteout when `whiteout`) means.
        public static func meaning(of name: [UInt8], kind: EntryKind, whiteout: Bool) -> Meaning {
            if kind == .directory { return .ordinary }
            if name == opaqueMarker || (name == opaqueWhiteout && whiteout) { return .opaqueMarker }
            if whiteout { return .deletes(name) }
            if kind == .regular, let target = markerTarget(name) { return .deletes(target) }
            return .ordinary
        }

        /// Whether `entry` is a whiteout: a character device 0/0.
        public static func isWhiteout(_ entry: Entry) -> Bool {
            entry.kind == .characterDevice && entry.deviceMajor == 0 && entry.deviceMinor == 0
        }

        /// Rewrites the whiteouts and opaque directories under `under` (a directory at the
        /// image root) into the form every reader agrees on: each `.wh.NAME` file becomes a
        /// character device 0/0 named NAME (owned as its directory), or goes when NAME exists;
        /// each `.wh..wh..opq` goes and its directory becomes opaque; each directory with any
        /// of ``opaqueAttributes`` set to `y` gets both ``canonicalOpaqueAttributes``.
        ///
        /// The image must not be mounted. It is read first without writing: when there is
        /// nothing to change it is never opened for writing, so not a byte of it changes.
        /// Bounded like ``Image``: directories are read within their size and each at most
        /// once, symbolic links are never followed, and an image that is not cleanly unmounted
        /// (needs journal recovery, not marked clean, or marked with errors) is refused untouched.
        @discardableResult
        public static func normalize(imagePath: String, under: String = "upper") throws -> Report {
            let reader = try FileSystemHandle(path: imagePath, writable: false)
            let plan: Plan
            do {
                try checkState(reader, path: imagePath)
                plan = try Plan.make(reader, path: imagePath, under: under)
                try reader.close()
            } catch {
                reader.abandon()
                throw error
            }
            guard !plan.isEmpty else { return plan.report }
            let writer = try FileSystemHandle(path: imagePath, writable: true)
            do {
                try checkState(writer, path: imagePath)
                try plan.apply(writer, path: imagePath)
            } catch {
                // What was written is consistent step by step; flush the bitmaps it changed.
                try? writer.close()
                throw error
            }
            try writer.close()
            return plan.report
        }

        /// Refuses an image that is not cleanly unmounted: writing around a journal that still
        /// has to be replayed, or over damage, would make things worse.
        static func checkState(_ handle: FileSystemHandle, path: String) throws {
            guard let fs = handle.fs, let sb = fs.pointee.super else { throw Error.other("\(path): image is closed") }
            if sb.pointee.s_feature_incompat & UInt32(EXT3_FEATURE_INCOMPAT_RECOVER) != 0 {
                throw Error.damaged(image: path, what: "its journal needs recovery (it was not unmounted cleanly); the next mount replays it")
            }
            if sb.pointee.s_state & UInt16(EXT2_ERROR_FS) != 0 {
                throw Error.damaged(image: path, what: "it is marked as having errors: check it with overlay check")
            }
            if sb.pointee.s_state & UInt16(EXT2_VALID_FS) == 0 {
                throw Error.damaged(image: path, what: "it was not unmounted cleanly: check it with overlay check")
            }
        }

        // MARK: - The plan: read only

        /// A directory entry as the walk sees it.
        struct Named {
            var name: [UInt8]
            var inode: ext2_ino_t
            var fileType: UInt8
        }

        /// What to change in one directory.
        struct DirectoryChanges {
            var directory: ext2_ino_t
            var path: String
            /// `.wh.NAME` markers to turn into whiteouts: the marker's entry and NAME.
            var convert: [(marker: Named, target: [UInt8])] = []
            /// Markers to remove (`.wh..wh..opq`, and `.wh.NAME` where NAME exists).
            var remove: [Named] = []
            var makeOpaque = false

            var isEmpty: Bool { convert.isEmpty && remove.isEmpty && !makeOpaque }
        }

        struct Plan {
            var changes: [DirectoryChanges] = []
            var report = Report()
            var isEmpty: Bool { changes.isEmpty }

            static func make(_ handle: FileSystemHandle, path: String, under: String) throws -> Plan {
                guard let fs = handle.fs else { throw Error.other("\(path): image is closed") }
                var plan = Plan()
                // The starting directory, by name from the root; nothing to do without it.
                let root = ext2_ino_t(EXT2_ROOT_INO)
                let rootEntries = try entries(of: root, fs: fs, path: path, where: "/")
                guard let start = rootEntries.first(where: { $0.name == Array(under.utf8) }),
                      let startInode = try? readInode(fs, start.inode, path: path),
                      startInode.i_mode & 0o170000 == 0o040000 else { return plan }
                let filetypes = fs.pointee.super.pointee.s_feature_incompat & UInt32(EXT2_FEATURE_INCOMPAT_FILETYPE) != 0
                var visited: Set<ext2_ino_t> = [root, start.inode]
                var stack: [(inode: ext2_ino_t, path: String)] = [(start.inode, "/" + under)]
                while let (directory, where_) = stack.popLast() {
                    plan.report.directories += 1
                    var changes = DirectoryChanges(directory: directory, path: where_)
                    if try opaqueState(fs, directory, path: path) == .partial { changes.makeOpaque = true }
                    let named = try entries(of: directory, fs: fs, path: path, where: where_)
                    var markers: [Named] = []
                    for entry in named {
                        if entry.name.starts(with: markerPrefix) { markers.append(entry) }
                        let maybeDirectory = !filetypes || entry.fileType == UInt8(EXT2_FT_DIR) || entry.fileType == UInt8(EXT2_FT_UNKNOWN)
                        guard maybeDirectory, !visited.contains(entry.inode) else { continue }
                        // The inode decides, not the entry's type: a symbolic link is never followed.
                        let inode = try readInode(fs, entry.inode, path: path)
                        if inode.i_mode & 0o170000 == 0o040000 {
                            visited.insert(entry.inode)
                            stack.append((entry.inode, where_ + "/" + String(decoding: entry.name, as: UTF8.self)))
                        }
                    }
                    if !markers.isEmpty {
                        let present = Set(named.map(\.name))
                        for marker in markers {
                            let inode = try readInode(fs, marker.inode, path: path)
                            switch meaning(of: marker.name, kind: kind(of: inode), whiteout: isWhiteout(inode)) {
                            case .opaqueMarker:
                                changes.remove.append(marker)
                                changes.makeOpaque = true
                            case let .deletes(target) where target != marker.name:
                                if present.contains(target) {
                                    changes.remove.append(marker)
                                } else {
                                    changes.convert.append((marker, target))
                                }
                            case .deletes, .ordinary:
                                break
                            }
                        }
                    }
                    if !changes.isEmpty {
                        plan.report.whiteoutsMade += changes.convert.count
                        plan.report.markersRemoved += changes.remove.count
                        if changes.makeOpaque { plan.report.directoriesMarkedOpaque += 1 }
                        plan.changes.append(changes)
                    }
                }
                return plan
            }

            // MARK: Applying it

            func apply(_ handle: FileSystemHandle, path: String) throws {
                guard let fs = handle.fs else { throw Error.other("\(path): image is closed") }
                if changes.contains(where: { !$0.convert.isEmpty || !$0.remove.isEmpty }) {
                    try check(ext2fs_read_bitmaps(fs), "read bitmaps", path: path)
                }
                for change in changes {
                    let dir = change.directory
                    for marker in change.remove {
                        try removeEntry(fs, dir, marker, path: path, where: change.path)
                    }
                    // The plan saw no NAME next to these markers; the caller's write lock keeps
                    // it so (no second lookup: it would make a large directory quadratic).
                    for (marker, target) in change.convert {
                        try removeEntry(fs, dir, marker, path: path, where: change.path)
                        try makeWhiteout(fs, dir, target, path: path, where: change.path)
                    }
                    if change.makeOpaque {
                        try setOpaque(fs, dir, path: path, where: change.path)
                    }
                }
            }
        }

        // MARK: - Pieces

        static func kind(of inode: ext2_inode) -> EntryKind {
            switch UInt32(inode.i_mode) & 0o170000 {
            case 0o100000: return .regular
            case 0o040000: return .directory
            case 0o120000: return .symlink
            case 0o020000: return .characterDevice
            case 0o060000: return .blockDevice
            case 0o010000: return .fifo
            case 0o140000: return .socket
            default: return .unknown
            }
        }

        /// A character device 0/0 (in either device number encoding).
        static func isWhiteout(_ inode: ext2_inode) -> Bool {
            UInt32(inode.i_mode) & 0o170000 == 0o020000 && inode.i_block.0 == 0 && inode.i_block.1 == 0
        }

        static func readInode(_ fs: ext2_filsys, _ ino: ext2_ino_t, path: String) throws -> ext2_inode {
            guard ino >= 1, ino <= fs.pointee.super.pointee.s_inodes_count else {
                throw Error.damaged(image: path, what: "a directory entry names inode \(ino), which does not exist")
            }
            var inode = ext2_inode()
            try check(ext2fs_read_inode(fs, ino, &inode), "read inode \(ino)", path: path)
            return inode
        }

        /// The live entries of directory `ino` but `.` and `..`, read within the directory's
        /// size (see `Image.iterate`).
        static func entries(of ino: ext2_ino_t, fs: ext2_filsys, path: String, where place: String) throws -> [Named] {
            let inode = try readInode(fs, ino, path: path)
            let blockSize = UInt64(cext2fs_block_size(fs))
            let size = UInt64(inode.i_size) | UInt64(inode.i_size_high) << 32
            guard inode.i_mode & 0o170000 == 0o040000 else {
                throw Error.notADirectory(image: path, path: place)
            }
            guard size <= Limits.directoryBytes, size % blockSize == 0, size > 0 else {
                throw Error.damaged(image: path, what: "directory \(place) (inode \(ino)) claims \(size) bytes")
            }
            var found: [Named] = []
            try Ext3.walkDirectory(fs, ino, size: size, path: path, named: "directory \(place) (inode \(ino))") { name, inode, fileType in
                if name != [0x2e] && name != [0x2e, 0x2e] {
                    found.append(Named(name: name, inode: inode, fileType: fileType))
                }
                return true
            }
            return found
        }

        enum OpaqueState { case no, partial, canonical }

        /// Whether directory `ino` is opaque, and in the canonical form.
        static func opaqueState(_ fs: ext2_filsys, _ ino: ext2_ino_t, path: String) throws -> OpaqueState {
            let values = try attributes(fs, ino, opaqueAttributes, path: path)
            let set = values.map { $0?.first == UInt8(ascii: "y") }
            guard set.contains(true) else { return .no }
            return values[0] == [UInt8(ascii: "y")] && values[1] == [UInt8(ascii: "y")] ? .canonical : .partial
        }

        /// The values of `names` on inode `ino` (nil where missing).
        static func attributes(_ fs: ext2_filsys, _ ino: ext2_ino_t, _ names: [String], path: String) throws -> [[UInt8]?] {
            var handle: OpaquePointer?
            try check(ext2fs_xattrs_open(fs, ino, &handle), "open extended attributes of inode \(ino)", path: path)
            defer { ext2fs_xattrs_close(&handle) }
            try check(ext2fs_xattrs_read(handle), "read extended attributes of inode \(ino)", path: path)
            return try names.map { name in
                var value: UnsafeMutableRawPointer?
                var length = 0
                let code = ext2fs_xattr_get(handle, name, &value, &length)
                if code == EXT2_ET_EA_KEY_NOT_FOUND { return nil }
                try check(code, "read extended attribute \(name) of inode \(ino)", path: path)
                defer { free(value) }
                guard let value else { return [] }
                return Array(UnsafeRawBufferPointer(start: value, count: min(length, 64)))
            }
        }

        static func setOpaque(_ fs: ext2_filsys, _ ino: ext2_ino_t, path: String, where place: String) throws {
            var handle: OpaquePointer?
            try check(ext2fs_xattrs_open(fs, ino, &handle), "open extended attributes of \(place)", path: path)
            defer { ext2fs_xattrs_close(&handle) }
            try check(ext2fs_xattrs_read(handle), "read extended attributes of \(place)", path: path)
            for name in canonicalOpaqueAttributes {
                try check(ext2fs_xattr_set(handle, name, "y", 1), "set \(name) on \(place)", path: path)
            }
        }

        static func withCName<T>(_ name: [UInt8], _ body: (UnsafePointer<CChar>) throws -> T) rethrows -> T {
            try (name + [0]).withUnsafeBufferPointer { bytes in
                try bytes.baseAddress!.withMemoryRebound(to: CChar.self, capacity: bytes.count) { try body($0) }
            }
        }

        /// Removes the entry `marker` from `dir` and drops its inode's link (freeing it, its
        /// blocks and its attribute block at the last one), as unlink(2) does.
        static func removeEntry(_ fs: ext2_filsys, _ dir: ext2_ino_t, _ marker: Named, path: String, where place: String) throws {
            let shown = place + "/" + String(decoding: marker.name, as: UTF8.self)
            try check(withCName(marker.name) { ext2fs_unlink(fs, dir, $0, marker.inode, 0) }, "remove \(shown)", path: path)
            var inode = ext2_inode_large()
            try check(cext2fs_read_inode_large(fs, marker.inode, &inode), "read inode of \(shown)", path: path)
            guard inode.i_links_count > 0 else { return }
            inode.i_links_count -= 1
            let now = UInt32(truncatingIfNeeded: time(nil))
            inode.i_ctime = now
            if inode.i_links_count == 0 { inode.i_dtime = now }
            try check(ext2fs_write_inode_full(fs, marker.inode, cext2fs_small_inode(&inode), Int32(MemoryLayout<ext2_inode_large>.size)),
                      "write inode of \(shown)", path: path)
            guard inode.i_links_count == 0 else { return }
            try check(ext2fs_free_ext_attr(fs, marker.inode, &inode), "free extended attributes of \(shown)", path: path)
            if ext2fs_inode_has_valid_blocks2(fs, cext2fs_small_inode(&inode)) != 0 {
                try check(ext2fs_punch(fs, marker.inode, cext2fs_small_inode(&inode), nil, 0, ~0), "free the blocks of \(shown)", path: path)
            }
            ext2fs_inode_alloc_stats2(fs, marker.inode, -1, 0)
        }

        /// Makes `name` in `dir` a whiteout: a character device 0/0, mode 0, owned as `dir`.
        static func makeWhiteout(_ fs: ext2_filsys, _ dir: ext2_ino_t, _ name: [UInt8], path: String, where place: String) throws {
            let shown = place + "/" + String(decoding: name, as: UTF8.self)
            let parent = try readInode(fs, dir, path: path)
            let mode: UInt16 = 0o020000
            var ino: ext2_ino_t = 0
            try check(ext2fs_new_inode(fs, dir, Int32(mode), nil, &ino), "allocate an inode for the whiteout \(shown)", path: path)
            var inode = ext2_inode()
            inode.i_mode = mode
            inode.i_links_count = 1
            inode.i_uid = parent.i_uid
            inode.i_gid = parent.i_gid
            inode.osd2.linux2.l_i_uid_high = parent.osd2.linux2.l_i_uid_high
            inode.osd2.linux2.l_i_gid_high = parent.osd2.linux2.l_i_gid_high
            let now = UInt32(truncatingIfNeeded: time(nil))
            inode.i_atime = now
            inode.i_ctime = now
            inode.i_mtime = now
            try check(ext2fs_write_new_inode(fs, ino, &inode), "write the whiteout \(shown)", path: path)
            ext2fs_inode_alloc_stats2(fs, ino, 1, 0)
            var code = withCName(name) { ext2fs_link(fs, dir, $0, ino, Int32(EXT2_FT_CHRDEV)) }
            if code == EXT2_ET_DIR_NO_SPACE {
                try check(ext2fs_expand_dir(fs, dir), "make room in \(place)", path: path)
                code = withCName(name) { ext2fs_link(fs, dir, $0, ino, Int32(EXT2_FT_CHRDEV)) }
            }
            try check(code, "add the whiteout \(shown)", path: path)
        }
    }
}

extension Ext3.Image {
    /// Whether the directory `entry` is opaque to some overlay reader: one of
    /// ``Ext3/Whiteouts/opaqueAttributes`` is `y`, or it holds an opaque marker.
    public func isOpaque(_ entry: Ext3.Entry) throws -> Bool {
        guard entry.kind == .directory, let fs = handle.fs else { return false }
        if try Ext3.Whiteouts.opaqueState(fs, ext2_ino_t(entry.inode), path: path) != .no { return true }
        let named = try Ext3.Whiteouts.entries(of: ext2_ino_t(entry.inode), fs: fs, path: path, where: "inode \(entry.inode)")
        for item in named where item.name == Ext3.Whiteouts.opaqueMarker || item.name == Ext3.Whiteouts.opaqueWhiteout {
            let inode = try Ext3.Whiteouts.readInode(fs, item.inode, path: path)
            let kind = Ext3.Whiteouts.kind(of: inode)
            if Ext3.Whiteouts.meaning(of: item.name, kind: kind, whiteout: Ext3.Whiteouts.isWhiteout(inode)) == .opaqueMarker { return true }
        }
        return false
    }
}
