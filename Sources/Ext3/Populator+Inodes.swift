import LinuxSupport
import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3.Populator {
    // MARK: - Inodes

    /// Numbers the tree's inodes: the free ones in order (on a fresh image, a run without gaps).
    func numberInodes() throws {
        numbers = [ext2_ino_t](repeating: 0, count: tree.nodes.count)
        numbers[0] = upper
        let sb = fs.pointee.super!
        let last = ext2_ino_t(sb.pointee.s_inodes_count)
        var cursor = ext2_ino_t(sb.pointee.s_first_ino)
        for index in 1..<tree.nodes.count {
            var found: ext2_ino_t = 0
            guard cursor <= last, ext2fs_find_first_zero_inode_bitmap2(fs.pointee.inode_map, cursor, last, &found) == 0 else {
                throw Ext3.Error.invalidConfiguration("\(path): no free inode left for \(tree.nodes.count - 1) entries")
            }
            ext2fs_inode_alloc_stats2(fs, found, 1, tree.nodes[index].kind == .directory ? 1 : 0)
            numbers[index] = found
            cursor = found + 1
        }
    }

    /// The tree's inodes straight into the inode tables, a group's worth per write (their
    /// numbers run on without gaps: see ``numberInodes()``); then upper/ and the extended
    /// attributes through libext2fs. The other inodes sharing the first and last blocks are
    /// read through libext2fs (it may hold newer copies than the file), and those two blocks
    /// are written through it too, so no older copy in its cache outlives them; it has read
    /// no other block of the tables.
    func writeInodes() throws {
        let now = Ext3.Timestamp.now
        let perGroup = UInt64(fs.pointee.super.pointee.s_inodes_per_group)
        let perBlock = UInt64(Ext3.blockSize / Ext3.inodeSize)
        var index = 1
        while index < tree.nodes.count {
            let first = UInt64(numbers[index]) - 1
            let group = first / perGroup
            var end = index + 1
            while end < tree.nodes.count && numbers[end] == numbers[end - 1] + 1 && (UInt64(numbers[end]) - 1) / perGroup == group {
                end += 1
            }
            let slot = first % perGroup
            let firstBlock = slot / perBlock
            let blocks = (slot + UInt64(end - index) - 1) / perBlock - firstBlock + 1
            let table = ext2fs_inode_table_loc(fs, dgrp_t(group)) + firstBlock
            // Whole table blocks of inode slots: the tree's inodes, and around them (in the first
            // and last blocks) the others (lost+found, upper/... or unused ones) as libext2fs
            // has them now.
            var slots = [InodeSlot](repeating: InodeSlot(), count: Int(blocks * perBlock))
            let groupStart = group * perGroup + 1
            for block in Set([firstBlock, firstBlock + blocks - 1]) {
                for other in block * perBlock..<(block + 1) * perBlock {
                    let number = groupStart + other
                    guard number < UInt64(numbers[index]) || number > UInt64(numbers[end - 1]),
                          number <= UInt64(fs.pointee.super.pointee.s_inodes_count) else { continue }
                    try slots[Int(other - firstBlock * perBlock)].read(ext2_ino_t(number), from: fs, path: path)
                }
            }
            for node in index..<end {
                let position = Int(slot - firstBlock * perBlock + UInt64(node - index))
                try fill(&slots[position].inode, node: tree.nodes[node], index: node, now: now)
            }
            try slots.withUnsafeBytes { bytes in
                try writeAll(bytes, at: table * UInt64(Ext3.blockSize))
                // The cache may hold an older copy of those two blocks: give it the new one.
                for block in Set([0, blocks - 1]) {
                    try Ext3.check(io_channel_write_blk64(fs.pointee.io, table + block, 1, bytes.baseAddress! + Int(block) * Ext3.blockSize),
                                   "write the inode table", path: path)
                }
            }
            index = end
        }

        // libext2fs keeps the inode-table block it read last: it is stale now.
        try Ext3.check(ext2fs_flush_icache(fs), "reset the inode cache", path: path)

        // upper/: keep its owner, mode and times; give it the new directory blocks.
        var own = InodeSlot()
        try own.read(upper, from: fs, path: path)
        // The block ext2fs_mkdir gave it goes back to the free pool.
        let old = UInt32(littleEndian: own.inode.i_block.0)
        if old != 0 { ext2fs_block_alloc_stats2(fs, blk64_t(old), -1) }
        try fill(&own.inode, node: tree.nodes[0], index: 0, now: now)
        try own.withSmallInode { inode in
            try Ext3.check(ext2fs_write_inode_full(fs, upper, inode, Int32(Ext3.inodeSize)), "write inode \(upper)", path: path)
        }
        for index in tree.nodes.indices where !tree.nodes[index].xattrs.isEmpty {
            try writeXattrs(tree.nodes[index].xattrs, inode: numbers[index], index: index)
        }
    }

    func fill(_ inode: inout ext2_inode_large, node: Ext3.Tree.Node, index: Int, now: Ext3.Timestamp) throws {
        let typeBits: UInt16
        switch node.kind {
        case .regular: typeBits = UInt16(LINUX_S_IFREG)
        case .directory: typeBits = UInt16(LINUX_S_IFDIR)
        case .symlink: typeBits = UInt16(LINUX_S_IFLNK)
        case .characterDevice: typeBits = UInt16(LINUX_S_IFCHR)
        case .blockDevice: typeBits = UInt16(LINUX_S_IFBLK)
        case .fifo: typeBits = UInt16(LINUX_S_IFIFO)
        case .socket: typeBits = UInt16(LINUX_S_IFSOCK)
        case .unknown: throw Ext3.Error.other("\(describe(index)): unknown file type")
        }
        if index != 0 {
            inode.i_mode = typeBits | (node.permissions & 0o7777)
            inode.i_uid = UInt16(truncatingIfNeeded: node.uid)
            inode.osd2.linux2.l_i_uid_high = UInt16(truncatingIfNeeded: node.uid >> 16)
            inode.i_gid = UInt16(truncatingIfNeeded: node.gid)
            inode.osd2.linux2.l_i_gid_high = UInt16(truncatingIfNeeded: node.gid >> 16)
            (inode.i_atime, inode.i_atime_extra) = Self.encode(node.atime)
            (inode.i_mtime, inode.i_mtime_extra) = Self.encode(node.mtime)
            (inode.i_ctime, inode.i_ctime_extra) = Self.encode(node.ctime)
            (inode.i_crtime, inode.i_crtime_extra) = Self.encode(now)
            inode.i_flags = node.flags & Ext3.Tree.userFlags
            // 256-byte inodes carry the nanosecond fields (the extra_isize feature stays off).
            inode.i_extra_isize = UInt16(MemoryLayout<ext2_inode_large>.size - Int(EXT2_GOOD_OLD_INODE_SIZE))
        }
        var links = node.links
        if node.kind == .directory {
            let subdirectories = node.children.reduce(UInt32(0)) { $0 + (tree.nodes[$1.node].kind == .directory ? 1 : 0) }
            links = 2 + subdirectories
            if links > Ext3.Tree.linkLimit {
                throw Ext3.Error.invalidConfiguration("\(describe(index)): more than \(Ext3.Tree.linkLimit - 2) subdirectories, which ext3 cannot hold")
            }
        }
        inode.i_links_count = UInt16(links)

        var size: UInt64 = 0
        var blocks: blk64_t = 0
        withUnsafeMutableBytes(of: &inode.i_block) { raw in
            for offset in stride(from: 0, to: raw.count, by: 1) { raw[offset] = 0 }
            switch node.kind {
            case .regular, .directory:
                if let map = maps[index] {
                    for (slot, block) in map.direct.enumerated() { raw.storeBytes(of: block.littleEndian, toByteOffset: slot * 4, as: UInt32.self) }
                    blocks = blk64_t(map.blockCount)
                    size = node.kind == .directory ? map.dataBlocks * UInt64(Ext3.blockSize) : node.size
                } else {
                    size = node.size
                }
            case .symlink:
                size = UInt64(node.target.count)
                if let map = maps[index] {
                    raw.storeBytes(of: map.direct[0].littleEndian, toByteOffset: 0, as: UInt32.self)
                    blocks = 1
                } else {
                    for (offset, byte) in node.target.enumerated() { raw[offset] = byte }
                }
            case .characterDevice, .blockDevice:
                if node.major < 256 && node.minor < 256 {
                    raw.storeBytes(of: (node.major << 8 | node.minor).littleEndian, toByteOffset: 0, as: UInt32.self)
                } else {
                    let encoded = (node.minor & 0xFF) | (node.major << 8) | ((node.minor & ~0xFF) << 12)
                    raw.storeBytes(of: encoded.littleEndian, toByteOffset: 4, as: UInt32.self)
                }
            default:
                break
            }
        }
        inode.i_size = UInt32(truncatingIfNeeded: size)
        inode.i_size_high = UInt32(truncatingIfNeeded: size >> 32)
        // libext2fs takes the small inode the large one starts with.
        try withUnsafeMutablePointer(to: &inode) { large in
            try large.withMemoryRebound(to: ext2_inode.self, capacity: 1) { small in
                try Ext3.check(ext2fs_iblk_set(fs, small, blocks), "count blocks of \(describe(index))", path: path)
            }
        }
    }

    /// seconds and nanoseconds as ext4 stores them: the low 32 bits of the seconds, and an
    /// extra word with the nanoseconds above 2 epoch bits (seconds beyond the 32-bit range).
    static func encode(_ time: Ext3.Timestamp) -> (UInt32, UInt32) {
        let low = Int32(truncatingIfNeeded: time.seconds)
        let epoch = UInt32(truncatingIfNeeded: (time.seconds - Int64(low)) >> 32) & 3
        return (UInt32(bitPattern: low), epoch | (time.nanoseconds << 2))
    }

    func writeXattrs(_ xattrs: [(name: String, value: [UInt8])], inode: ext2_ino_t, index: Int) throws {
        var handle: OpaquePointer? = nil
        try Ext3.check(ext2fs_xattrs_open(fs, inode, &handle), "open extended attributes of \(describe(index))", path: path)
        defer { ext2fs_xattrs_close(&handle) }
        try Ext3.check(ext2fs_xattrs_read(handle), "read extended attributes of \(describe(index))", path: path)
        for xattr in xattrs {
            try xattr.value.withUnsafeBytes { value in
                try Ext3.check(ext2fs_xattr_set(handle, xattr.name, value.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, value.count),
                          "set extended attribute \(xattr.name) of \(describe(index))", path: path)
            }
        }
    }
}

/// One on-disk inode (``Ext3/inodeSize`` bytes) as typed storage: libext2fs's large inode, then
/// the room extended attributes may take inside the inode. An array of them is a run of an
/// inode table as it lies on disk.
struct InodeSlot {
    var inode = ext2_inode_large()
    private var rest: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)
        = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    init() {
        precondition(MemoryLayout<InodeSlot>.stride == Ext3.inodeSize, "an inode slot is one on-disk inode")
    }

    /// libext2fs's calls take the small inode; they read and write the whole slot when told
    /// its size.
    mutating func withSmallInode<Result>(_ body: (UnsafeMutablePointer<ext2_inode>) throws -> Result) rethrows -> Result {
        try withUnsafeMutablePointer(to: &self) { slot in
            try slot.withMemoryRebound(to: ext2_inode.self, capacity: 1, body)
        }
    }

    /// The whole on-disk inode `number` as libext2fs has it.
    mutating func read(_ number: ext2_ino_t, from fs: ext2_filsys, path: String) throws {
        try withSmallInode { inode in
            try Ext3.check(ext2fs_read_inode_full(fs, number, inode, Int32(Ext3.inodeSize)), "read inode \(number)", path: path)
        }
    }
}
