import Ext3
import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// A directory or tar archive read for packing, with what it takes in an image.
    public struct PackSource: Sendable {
        public let path: String
        public let kind: SourceKind
        /// Changed only through methods of this type (``addDirectories(_:owner:)``...), which keep `blocksNeeded` up to date.
        package internal(set) var tree: Tree
        /// Blocks the tree takes (data, indirect blocks, directories, long symlinks, xattr
        /// blocks): worked out once, as a pack asks for it several times.
        public internal(set) var blocksNeeded: UInt64

        /// Inodes taken in every image before any packed file: 1 to 10 reserved, lost+found,
        /// upper/ and work/.
        static let reservedInodes: UInt64 = 13
        /// Headroom when the size is chosen from the tree: a quarter more files and data, plus
        /// 1,000 files and 64 MiB.
        public static let headroomFraction = 0.25
        public static let headroomFiles: UInt64 = 1000
        public static let headroomBytes: UInt64 = 64 << 20

        /// Reads `path` (a directory, a tar archive or a gzip-compressed one, told apart by their
        /// content). Refuses unreadable files, naming them.
        public init(path: String) throws {
            self.path = path
            kind = try SourceKind.detect(path)
            switch kind {
            case .directory: tree = try Tree.scan(directory: path)
            case .tar, .gzipTar: tree = try Tree.scan(archive: path, kind: kind)
            }
            blocksNeeded = tree.blocksNeeded
        }

        /// Top-level directories of a container that a packed tree must not hide: stacked at the
        /// container's `/`, a tree holding one of them replaces the container's own.
        public static let systemDirectories = ["bin", "etc", "lib", "lib32", "lib64", "libx32", "sbin", "usr"]

        /// The names at the tree's top level that would hide the container's own directories if
        /// the tree were stacked at `/` (as `upper/` is).
        public var shadowedSystemDirectories: [String] {
            tree.nodes[0].children.map { Tree.display($0.name) }.filter { PackSource.systemDirectories.contains($0) }.sorted()
        }

        /// Moves the whole tree to the absolute path `path` inside the container (under
        /// upper/), as a directory with the source's own top-level metadata; the directories
        /// leading to it belong to `owner`, mode 0755. `/` leaves the tree where it is.
        public mutating func place(at path: String, owner: Owner) throws {
            guard path.hasPrefix("/") else {
                throw Error.invalidConfiguration("--to \(path): give an absolute path inside the container, such as /opt/env")
            }
            guard path.split(separator: "/").contains(where: { $0 != "." }) else { return }
            let names = try Formatter.components(of: path).map { Array($0.utf8) }
            defer { blocksNeeded = tree.blocksNeeded }
            var placed = tree.nodes[0]
            placed.kind = .directory
            tree.nodes[0].children = []
            let now = Timestamp.now
            var current = 0
            for (position, name) in names.enumerated() {
                let index = tree.nodes.count
                if position == names.count - 1 {
                    tree.nodes.append(placed)
                } else {
                    tree.nodes.append(Tree.Node(kind: .directory, permissions: 0o755, uid: owner.uid, gid: owner.gid,
                                                atime: now, mtime: now, ctime: now))
                }
                tree.nodes[current].children.append((name, index))
                current = index
            }
        }

        /// Also makes these directories under upper/ (nested paths fine), where the tree has none.
        public mutating func addDirectories(_ paths: [String], owner: Owner) throws {
            guard !paths.isEmpty else { return }
            defer { blocksNeeded = tree.blocksNeeded }
            let now = Timestamp.now
            for path in paths {
                var current = 0
                for name in try Formatter.components(of: path).map({ Array($0.utf8) }) {
                    if let found = tree.nodes[current].children.first(where: { $0.name == name }) {
                        guard tree.nodes[found.node].kind == .directory else {
                            throw Error.invalidConfiguration("--create-dir \(path): \(Tree.display(name)) is a file in \(self.path)")
                        }
                        current = found.node
                        continue
                    }
                    let index = tree.nodes.count
                    tree.nodes.append(Tree.Node(kind: .directory, permissions: 0o755, uid: owner.uid, gid: owner.gid,
                                                atime: now, mtime: now, ctime: now))
                    tree.nodes[current].children.append((name, index))
                    current = index
                }
            }
        }

        /// Inodes the tree takes (files, directories, links...; hard links once).
        public var inodesNeeded: UInt64 { UInt64(tree.inodeCount) }
        /// Bytes the tree takes in an image.
        public var bytesNeeded: UInt64 { blocksNeeded * UInt64(Ext3.blockSize) }
        /// Regular files (hard links once) and their bytes.
        public var fileCount: Int { tree.regularFileCount }
        public var fileBytes: UInt64 { tree.fileBytes }

        /// `env.ext3` for `env/`, `data.ext3` for `data.tar.gz`, `data.tgz` or `data.tar`.
        public var defaultImageName: String {
            PackSource.defaultImageName(for: path, isDirectory: kind == .directory)
        }

        /// The default image name for `path` before it is read: the same as ``defaultImageName``.
        public static func defaultImageName(for path: String, isDirectory: Bool) -> String {
            var name = path
            while name.count > 1 && name.hasSuffix("/") { name.removeLast() }
            if let slash = name.lastIndex(of: "/") { name = String(name[name.index(after: slash)...]) }
            if name == "." || name == ".." || name.isEmpty {
                if let resolved = realpath(path, nil) {
                    defer { free(resolved) }
                    let full = String(cString: resolved)
                    name = full.split(separator: "/").last.map(String.init) ?? ""
                }
            }
            for suffix in [".tar.gz", ".tgz", ".tar", ".gz"] where !isDirectory && name.hasSuffix(suffix) && name.count > suffix.count {
                name.removeLast(suffix.count)
                break
            }
            if name.isEmpty || name.hasPrefix(".") { name = "overlay" + name }
            return name + ".ext3"
        }

        /// What the image will be: size and inode count, and whether they were chosen here.
        public struct Plan: Sendable, Equatable {
            public var sizeBytes: UInt64
            /// The inode count to ask the formatter for (it may round up).
            public var inodes: UInt64
            public var sizeChosen: Bool
            public var inodesChosen: Bool
        }

        /// The size and inode count for this tree. Given ones are checked (a tree that does not
        /// fit is refused, saying what it needs); missing ones are chosen with headroom: inodes
        /// for a quarter more entries plus 1,000 (with only -s given, at least mke2fs's one per
        /// 16 KiB), and the smallest size (whole MiB) that leaves room for a quarter more data
        /// plus 64 MiB.
        public func plan(sizeBytes: UInt64?, inodes: UInt64?) throws -> Plan {
            let needed = inodesNeeded + PackSource.reservedInodes
            let blocks = blocksNeeded
            let headroomInodes = ((needed + UInt64(Double(inodesNeeded) * PackSource.headroomFraction) + PackSource.headroomFiles + 999) / 1000) * 1000
            let headroomBlocks = blocks + UInt64(Double(blocks) * PackSource.headroomFraction) + PackSource.headroomBytes / UInt64(Ext3.blockSize)
            var plan: Plan
            switch (sizeBytes, inodes) {
            case let (size?, count?):
                plan = Plan(sizeBytes: size, inodes: count, sizeChosen: false, inodesChosen: false)
            case let (size?, nil):
                let perSixteenKiB = size / 16384
                plan = Plan(sizeBytes: size, inodes: max(headroomInodes, perSixteenKiB), sizeChosen: false, inodesChosen: true)
            case let (nil, count?):
                plan = Plan(sizeBytes: try PackSource.smallestSize(inodes: count, freeBlocks: headroomBlocks),
                            inodes: count, sizeChosen: true, inodesChosen: false)
            case (nil, nil):
                plan = Plan(sizeBytes: try PackSource.smallestSize(inodes: headroomInodes, freeBlocks: headroomBlocks),
                            inodes: headroomInodes, sizeChosen: true, inodesChosen: true)
            }
            if !plan.inodesChosen && !plan.sizeChosen {
                _ = try Geometry(sizeBytes: plan.sizeBytes, inodes: plan.inodes)  // -s and -n that make no image at all
            }
            let geometry = try? Geometry(sizeBytes: plan.sizeBytes, inodes: plan.inodes)
            if let geometry, geometry.inodeCount >= needed, geometry.freeBlocks() >= blocks { return plan }
            if plan.inodesChosen, let size = sizeBytes, let fit = try? Geometry(sizeBytes: size, inodes: needed),
               fit.freeBlocks() >= blocks {
                // The headroom does not fit in the size asked for; the tree itself does.
                return Plan(sizeBytes: size, inodes: needed, sizeChosen: false, inodesChosen: true)
            }
            throw Error.invalidConfiguration(refusal(plan: plan, geometry: geometry, needed: needed, blocks: blocks))
        }

        private func refusal(plan: Plan, geometry: Geometry?, needed: UInt64, blocks: UInt64) -> String {
            let inodes = max(plan.inodes, needed)
            let thousands = (inodes + 999) / 1000
            let smallest = (try? PackSource.smallestSize(inodes: thousands * 1000, freeBlocks: blocks)) ?? 0
            var asked = "-s \(plan.sizeBytes >> 20)"
            if !plan.inodesChosen { asked += " -n \(Units.grouped(plan.inodes / 1000))" }
            var gives = ""
            if let geometry {
                gives = " (\(asked) holds \(Units.grouped(geometry.inodeCount - min(geometry.inodeCount, PackSource.reservedInodes))) "
                    + "and \(Units.humanBytes(geometry.freeBlocks() * UInt64(Ext3.blockSize))))"
            }
            return "\(path) needs room for \(Units.grouped(inodesNeeded)) files and \(Units.humanBytes(bytesNeeded))\(gives): "
                + "make it at least -s \(smallest >> 20) -n \(thousands), or leave out -s and -n to size it from the tree"
        }

        /// The smallest whole-MiB size whose image has at least `inodes` inodes and
        /// `freeBlocks` blocks free for files.
        package static func smallestSize(inodes: UInt64, freeBlocks: UInt64) throws -> UInt64 {
            func fits(_ mebibytes: UInt64) -> Bool {
                guard let geometry = try? Geometry(sizeBytes: mebibytes << 20, inodes: inodes) else { return false }
                return geometry.inodeCount >= inodes && geometry.freeBlocks() >= freeBlocks
            }
            var high: UInt64 = (16 << 20) - 1  // 16 TiB in MiB
            guard fits(high) else {
                throw Error.invalidConfiguration("the tree is too large for an ext3 image (at most 16 TiB)")
            }
            var low: UInt64 = 8
            if fits(low) { return low << 20 }
            // Invariant: fits(high), not fits(low). (Journal size steps make fits() not quite
            // monotonic: the answer always fits, and is at most a few MiB above the least.)
            while high - low > 1 {
                let middle = low + (high - low) / 2
                if fits(middle) { high = middle } else { low = middle }
            }
            return high << 20
        }
    }
}
