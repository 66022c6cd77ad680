import LinuxSupport
import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// A user and group id pair.
    public struct Owner: Sendable, Equatable, Hashable, CustomStringConvertible {
        public var uid: UInt32
        public var gid: UInt32
        public init(uid: UInt32, gid: UInt32) {
            self.uid = uid
            self.gid = gid
        }
        /// root:root.
        public static let root = Owner(uid: 0, gid: 0)
        /// The real uid and gid of this process.
        public static var current: Owner { Owner(uid: getuid(), gid: getgid()) }
        public var description: String { "\(uid):\(gid)" }
    }

    /// Builds ext3 overlay images exactly as Apptainer accepts them: mke2fs's ext3 feature set
    /// (`has_journal ext_attr resize_inode dir_index filetype sparse_super large_file`), 4 KiB
    /// blocks, 256-byte inodes, mke2fs's default journal size, no blocks reserved for root, the
    /// root directory and lost+found as mke2fs makes them, and `upper/` and `work/` (mode 0755)
    /// belonging to ``Configuration/owner``.
    ///
    /// Only metadata that must be non-zero is written: a new sparse file already reads as
    /// zeros, so inode tables and the journal's body stay holes. The image is tiny on disk until
    /// files are written into it.
    public struct Formatter: Sendable {
        /// What to build. Checked by ``Formatter/init(_:)`` before anything touches the disk.
        public struct Configuration: Sendable, Equatable {
            /// The image file's exact length in bytes.
            public var sizeBytes: UInt64
            /// At least this many inodes (files and directories); nil: one per 16 KiB, as mke2fs.
            public var minimumInodes: UInt64?
            /// Owner of `upper/`, `work/` and ``directories``.
            public var owner: Owner
            /// Directories to make under `upper/` (`opt/conda`, `/data/in`: nested paths are
            /// fine, a leading slash is ignored), owned by ``owner`` with mode 0755.
            public var directories: [String]
            /// Volume label (at most 16 bytes), or nil for none.
            public var label: String?
            /// Owner for the image file itself, or nil to leave it with whoever runs this.
            public var imageOwner: Owner?

            public init(sizeBytes: UInt64, minimumInodes: UInt64? = nil, owner: Owner = .current,
                        directories: [String] = [], label: String? = nil, imageOwner: Owner? = nil) {
                self.sizeBytes = sizeBytes
                self.minimumInodes = minimumInodes
                self.owner = owner
                self.directories = directories
                self.label = label
                self.imageOwner = imageOwner
            }
        }

        public let configuration: Configuration
        /// Where everything will go.
        public let geometry: Geometry
        /// ``Configuration/directories`` split into components.
        package let directoryPaths: [[String]]

        /// Checks `configuration` without touching the disk. Throws
        /// ``Ext3/Error/invalidConfiguration(_:)`` with a message saying what to change.
        public init(_ configuration: Configuration) throws {
            if configuration.minimumInodes == 0 {
                throw Error.invalidConfiguration("an image needs at least one inode: ask for at least one file with -n")
            }
            if let label = configuration.label, label.utf8.count > 16 {
                throw Error.invalidConfiguration("label '\(label)' is longer than 16 bytes: shorten it")
            }
            let paths = try configuration.directories.map(Formatter.components(of:))
            let newDirectories = Set(paths.flatMap { path in path.indices.map { Array(path[...$0]) } }).count
            self.configuration = configuration
            self.directoryPaths = paths
            self.geometry = try Geometry(sizeBytes: configuration.sizeBytes, inodes: configuration.minimumInodes,
                                         extraDirectories: newDirectories)
        }

        /// `a/b/c` (a leading slash, `.` and repeated slashes ignored) as components; refuses
        /// empty paths, `..` and names longer than 255 bytes.
        package static func components(of path: String) throws -> [String] {
            let parts = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init).filter { $0 != "." }
            guard !parts.isEmpty else {
                throw Error.invalidConfiguration("directory '\(path)' names nothing: give a path such as opt/conda")
            }
            for part in parts {
                if part == ".." {
                    throw Error.invalidConfiguration("directory '\(path)' leaves upper/ with '..': give a path inside it")
                }
                if part.utf8.count > 255 {
                    throw Error.invalidConfiguration("directory '\(path)': a name is longer than 255 bytes")
                }
                if part.utf8.contains(0) {
                    throw Error.invalidConfiguration("directory '\(path)' contains a NUL byte")
                }
            }
            return parts
        }

        /// Formats a new image at exactly `path`: the file must not exist yet, or be empty (for
        /// a name reserved with mkstemp). On failure a file this call created is removed.
        public func format(into path: String) throws -> Summary {
            try format(path, mustCreate: false, contents: nil)
        }

        /// Builds the image in an unnamed file in `target`'s directory (O_TMPFILE) and links it
        /// into place when it is complete: whatever ends the process, even SIGKILL, nothing is left
        /// behind. Where the filesystem has no unnamed files, builds it in a hidden temporary file
        /// beside `target`, locked while it is built, renames it into place, removes it on failure,
        /// SIGINT, SIGTERM or SIGHUP, and removes the unlocked ones that killed runs left. An
        /// existing `target` is refused (``Ext3/Error/exists(path:)``) and never touched.
        public func create(at target: String) throws -> Summary {
            try create(at: target, contents: nil)
        }

        /// Fills the new filesystem before it is closed: gets the open filesystem, the path of the
        /// file being built and the inode of `upper/`.
        typealias Contents = (ext2_filsys, String, ext2_ino_t) throws -> Void

        func create(at target: String, contents: Contents?) throws -> Summary {
            var info = stat()
            if lstat(target, &info) == 0 { throw Error.exists(path: target) }
            let (directory, name) = Formatter.split(target)
            guard !name.isEmpty, name != ".", name != ".." else {
                throw Error.invalidConfiguration("'\(target)' names no file: give the image's file name")
            }
            let fd = FileCalls.openUnnamed(in: directory ?? ".", mode: 0o666)
            if fd >= 0 {
                defer { close(fd) }
                // libext2fs and the packer open the image by path: the descriptor's own.
                var summary = try format("/proc/self/fd/\(fd)", mustCreate: false, contents: contents)
                guard FileCalls.linkUnnamed(fd, to: target) == 0 else {
                    let code = errno
                    if code == EEXIST { throw Error.exists(path: target) }
                    throw Error.system(operation: "link the new image into place", path: target, errno: code)
                }
                summary.path = target
                return summary
            }
            switch errno {
            case EOPNOTSUPP, EISDIR, EINVAL, ENOSYS:
                break  // no unnamed files here: a named temporary file
            default:
                throw Error.cannotCreate(path: target, errno: errno)
            }
            Formatter.removeAbandonedTemporaries(of: name, in: directory)
            var attempts = 0
            while true {
                attempts += 1
                let temporary = (directory.map { $0 + "/" } ?? "") + "." + name + ".tmp-" + Formatter.randomSuffix()
                let slot = TemporaryFiles.register(temporary)
                defer { TemporaryFiles.unregister(slot) }
                var summary: Summary
                do {
                    summary = try format(temporary, mustCreate: true, contents: contents)
                } catch Error.exists where attempts < 10 {
                    continue  // a name clash with another run's temporary file: pick another
                }
                do {
                    try Formatter.moveNoReplace(temporary, to: target)
                } catch {
                    unlink(temporary)
                    throw error
                }
                summary.path = target
                return summary
            }
        }

        // MARK: - Building

        func format(_ path: String, mustCreate: Bool, contents: Contents?) throws -> Summary {
            var created = false
            var fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
            if fd >= 0 {
                created = true
                // Marks a temporary file as being built (see removeAbandonedTemporaries).
                _ = try? FileLock.tryLock(fd, .write, path: path)
            } else if errno == EEXIST && !mustCreate {
                fd = open(path, O_RDWR | O_CLOEXEC)
                var info = stat()
                if fd < 0 || fstat(fd, &info) != 0 || (info.st_mode & S_IFMT) != S_IFREG || info.st_size != 0 {
                    if fd >= 0 { close(fd) }
                    throw Error.exists(path: path)
                }
            } else if errno == EEXIST {
                throw Error.exists(path: path)
            } else {
                let code = errno
                throw Error.cannotCreate(path: path, errno: code)
            }
            do {
                defer { close(fd) }
                guard ftruncate(fd, off_t(configuration.sizeBytes)) == 0 else {
                    throw Error.system(operation: "set the image size to \(configuration.sizeBytes) bytes", path: path, errno: errno)
                }
                if let owner = configuration.imageOwner, fchown(fd, owner.uid, owner.gid) != 0 {
                    throw Error.system(operation: "give the image to \(owner)", path: path, errno: errno)
                }
                var summary = try build(path, contents: contents)
                var info = stat()
                guard fstat(fd, &info) == 0 else {
                    throw Error.system(operation: "stat", path: path, errno: errno)
                }
                summary.allocatedBytes = UInt64(info.st_blocks) * 512
                return summary
            } catch {
                if created { unlink(path) } else { _ = truncate(path, 0) }
                throw error
            }
        }

        /// The mke2fs sequence on an open, sized file.
        private func build(_ path: String, contents: Contents?) throws -> Summary {
            var parameters = ext2_super_block()
            ext2fs_blocks_count_set(&parameters, configuration.sizeBytes / UInt64(Ext3.blockSize))
            parameters.s_log_block_size = 2  // 1024 << 2 = 4096
            parameters.s_rev_level = UInt32(EXT2_DYNAMIC_REV)
            parameters.s_inode_size = UInt16(Ext3.inodeSize)
            parameters.s_inodes_count = UInt32(geometry.requestedInodes)
            parameters.s_feature_compat = UInt32(EXT2_FEATURE_COMPAT_EXT_ATTR | EXT2_FEATURE_COMPAT_RESIZE_INODE
                                                 | EXT2_FEATURE_COMPAT_DIR_INDEX)
            parameters.s_feature_incompat = UInt32(EXT2_FEATURE_INCOMPAT_FILETYPE)
            parameters.s_feature_ro_compat = UInt32(EXT2_FEATURE_RO_COMPAT_SPARSE_SUPER | EXT2_FEATURE_RO_COMPAT_LARGE_FILE)
            parameters.s_default_mount_opts = UInt32(EXT2_DEFM_XATTR_USER | EXT2_DEFM_ACL)

            var raw: ext2_filsys?
            try check(ext2fs_initialize(path, Int32(EXT2_FLAG_64BITS), &parameters, cext2fs_unix_io_manager(), &raw),
                      "set up the superblock", path: path)
            guard let fs = raw else { throw Error.other("\(path): libext2fs returned no filesystem") }
            let handle = FileSystemHandle(adopting: fs, path: path)
            defer { handle.abandon() }

            let superblock = fs.pointee.super!
            Formatter.randomUUID(&superblock.pointee.s_uuid)
            withUnsafeMutableBytes(of: &superblock.pointee.s_hash_seed) { Formatter.randomUUID(bytes: $0) }
            superblock.pointee.s_def_hash_version = UInt8(EXT2_HASH_HALF_MD4)
            superblock.pointee.s_max_mnt_count = -1
            superblock.pointee.s_checkinterval = 0
            superblock.pointee.s_r_blocks_count = 0
            if let label = configuration.label {
                withUnsafeMutableBytes(of: &superblock.pointee.s_volume_name) { buffer in
                    for index in buffer.indices { buffer[index] = 0 }
                    for (index, byte) in label.utf8.prefix(buffer.count).enumerated() { buffer[index] = byte }
                }
            }

            // Group tables. The inode tables are left as they are: holes that read as zeros.
            try check(ext2fs_allocate_tables(fs), "allocate group tables", path: path)
            try check(ext2fs_convert_subcluster_bitmap(fs, &fs.pointee.block_map), "convert the block bitmap", path: path)
            var overhead: blk64_t = 0
            try check(ext2fs_count_used_clusters(fs, blk64_t(superblock.pointee.s_first_data_block),
                                                 ext2fs_blocks_count(superblock) - 1, &overhead),
                      "count metadata blocks", path: path)

            try makeStandardInodes(fs, path: path)

            let journalBlocks = try Journal.add(to: fs, path: path)
            superblock.pointee.s_overhead_clusters = UInt32(overhead + blk64_t(journalBlocks)
                                                            + blk64_t(superblock.pointee.s_first_data_block))

            // The overlay layout.
            let owner = configuration.owner
            let upper = try Directories.make(fs, parent: ext2_ino_t(EXT2_ROOT_INO), name: "upper", owner: owner, path: path)
            _ = try Directories.make(fs, parent: ext2_ino_t(EXT2_ROOT_INO), name: "work", owner: owner, path: path)
            for components in directoryPaths {
                var parent = upper
                for name in components {
                    parent = try Directories.make(fs, parent: parent, name: name, owner: owner, path: path)
                }
            }
            try contents?(fs, path, upper)

            let summary = Summary(
                path: path, sizeBytes: configuration.sizeBytes, blockSize: Int(fs.pointee.blocksize),
                inodeCount: UInt64(superblock.pointee.s_inodes_count),
                inodeTableBytes: UInt64(fs.pointee.group_desc_count) * UInt64(fs.pointee.inode_blocks_per_group)
                    * UInt64(fs.pointee.blocksize),
                journalBytes: UInt64(journalBlocks) * UInt64(fs.pointee.blocksize),
                dataBytes: ext2fs_free_blocks_count(superblock) * UInt64(fs.pointee.blocksize),
                allocatedBytes: 0)
            try handle.close()
            return summary
        }

        /// Root directory, lost+found, reserved inodes, bad-block inode and resize inode, in
        /// mke2fs's order.
        private func makeStandardInodes(_ fs: ext2_filsys, path: String) throws {
            let root = ext2_ino_t(EXT2_ROOT_INO)
            try check(ext2fs_mkdir(fs, root, root, nil), "create the root directory", path: path)

            // lost+found: private, and 16 KiB long so e2fsck can reconnect files without
            // allocating.
            fs.pointee.umask = 0o077
            try check(ext2fs_mkdir(fs, root, 0, "lost+found"), "create lost+found", path: path)
            fs.pointee.umask = 0o022
            var lostFound: ext2_ino_t = 0
            try check(ext2fs_lookup(fs, root, "lost+found", 10, nil, &lostFound), "look up lost+found", path: path)
            var length = Int(fs.pointee.blocksize)
            while length < 16 * 1024 {
                try check(ext2fs_expand_dir(fs, lostFound), "expand lost+found", path: path)
                length += Int(fs.pointee.blocksize)
            }

            // Inodes 3 to 10 are reserved (journal, resize, ...): mark them used.
            for inode in (root + 1)..<ext2_ino_t(fs.pointee.super.pointee.s_first_ino) {
                ext2fs_inode_alloc_stats2(fs, inode, 1, 0)
            }
            ext2fs_mark_ib_dirty(fs)
            ext2fs_inode_alloc_stats2(fs, ext2_ino_t(EXT2_BAD_INO), 1, 0)
            try check(ext2fs_update_bb_inode(fs, nil), "write the bad-block inode", path: path)
            try check(ext2fs_create_resize_inode(fs), "reserve blocks for online resize", path: path)
        }

        // MARK: - Helpers

        static func split(_ target: String) -> (directory: String?, name: String) {
            guard let slash = target.lastIndex(of: "/") else { return (nil, target) }
            let directory = String(target[..<slash])
            return (directory.isEmpty ? "/" : directory, String(target[target.index(after: slash)...]))
        }

        /// Removes `.NAME.tmp-*` files in `directory` that no run is building any more (their
        /// builder held a lock on them and was killed): what a SIGKILL left on a filesystem
        /// without unnamed files.
        static func removeAbandonedTemporaries(of name: String, in directory: String?) {
            let prefix = "." + name + ".tmp-"
            guard let dir = opendir(directory ?? ".") else { return }
            defer { closedir(dir) }
            while let entry = readdir(dir) {
                let entryName = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
                }
                guard entryName.hasPrefix(prefix), entryName.count == prefix.count + 12 else { continue }
                let path = (directory.map { $0 + "/" } ?? "") + entryName
                let fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
                guard fd >= 0 else { continue }
                var info = stat()
                if fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, (try? FileLock.tryLock(fd, .write)) == true {
                    unlink(path)
                }
                close(fd)
            }
        }

        static func randomSuffix() -> String {
            var generator = SystemRandomNumberGenerator()
            let value = generator.next() as UInt64
            let hex = String(value & 0xFFFF_FFFF_FFFF, radix: 16)
            return String(repeating: "0", count: 12 - hex.count) + hex
        }

        /// A random (version 4) UUID into a 16-byte field.
        static func randomUUID<T>(_ field: inout T) {
            withUnsafeMutableBytes(of: &field) { randomUUID(bytes: $0) }
        }

        static func randomUUID(bytes: UnsafeMutableRawBufferPointer) {
            var generator = SystemRandomNumberGenerator()
            for index in bytes.indices { bytes[index] = generator.next() as UInt8 }
            if bytes.count >= 16 {
                bytes[6] = (bytes[6] & 0x0F) | 0x40
                bytes[8] = (bytes[8] & 0x3F) | 0x80
            }
        }

        /// rename(2) that never replaces: renameat2(RENAME_NOREPLACE), or where the filesystem
        /// lacks it, link(2) then unlink(2).
        static func moveNoReplace(_ source: String, to target: String) throws {
            if FileCalls.renameNoReplace(source, target) == 0 { return }
            let code = errno
            if code == EEXIST { throw Error.exists(path: target) }
            guard code == EINVAL || code == ENOSYS || code == ENOTSUP || code == EOPNOTSUPP else {
                throw Error.system(operation: "rename \(source) to", path: target, errno: code)
            }
            if link(source, target) == 0 {
                unlink(source)
                return
            }
            let linkCode = errno
            if linkCode == EEXIST { throw Error.exists(path: target) }
            // Neither is supported here: check, then rename (a narrow race we cannot close).
            var info = stat()
            if lstat(target, &info) == 0 { throw Error.exists(path: target) }
            guard rename(source, target) == 0 else {
                throw Error.system(operation: "rename \(source) to", path: target, errno: errno)
            }
        }
    }
}
