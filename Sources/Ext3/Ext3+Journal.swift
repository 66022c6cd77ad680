import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// The ext3 journal: inode 8, a block-mapped file of mke2fs's default length
    /// (`ext2fs_get_journal_params`), in the first free blocks from the start of the inode's
    /// group on, where mke2fs puts an ext3 journal (block-mapped allocation starts there).
    ///
    /// libext2fs's `ext2fs_add_journal_inode3` writes every journal block (zeros) while it maps
    /// them, even when asked not to zero the journal: 16 MiB to 1 GiB of writes that would all
    /// land on disk. Here the blocks are claimed in the bitmap and mapped, and only the journal
    /// superblock and the indirect blocks are written. The body stays a hole in the new sparse
    /// file and reads as zeros, which no journal replay mistakes for a transaction; the journal
    /// superblock says the log is empty.
    enum Journal {
        static let inode = ext2_ino_t(EXT2_JOURNAL_INO)

        /// Adds the journal and returns its length in blocks.
        static func add(to fs: ext2_filsys, path: String) throws -> UInt32 {
            var parameters = ext2fs_journal_params()
            try check(ext2fs_get_journal_params(&parameters, fs), "size the journal", path: path)
            let length = UInt64(parameters.num_journal_blocks) + UInt64(parameters.num_fc_blocks)
            let perBlock = UInt64(fs.pointee.blocksize / 4)
            guard length <= 12 + perBlock + perBlock * perBlock else {
                throw Error.other("\(path): a journal of \(length) blocks needs triple indirection, which is not supported")
            }
            let blocks = try claim(Geometry.mapBlocks(forFileBlocks: length) + length, in: fs, path: path)

            // Lay the file out as ext2 does: 12 direct blocks, the indirect block, the data it
            // maps, then the double-indirect block followed by each indirect block and its data.
            var next = 0
            func take() -> UInt32 {
                defer { next += 1 }
                return UInt32(blocks[next])
            }
            var direct = [UInt32](repeating: 0, count: 15)
            var mapWrites: [(block: UInt32, pointers: [UInt32])] = []
            var indirect: (block: UInt32, pointers: [UInt32])? = nil
            var doubleIndirect: (block: UInt32, pointers: [UInt32])? = nil
            for logical in 0..<length {
                if logical < 12 {
                    direct[Int(logical)] = take()
                    continue
                }
                let offset = logical - 12
                if offset < perBlock {
                    if offset == 0 {
                        let block = take()
                        direct[12] = block
                        indirect = (block, [UInt32](repeating: 0, count: Int(perBlock)))
                    }
                    indirect!.pointers[Int(offset)] = take()
                    continue
                }
                let inDouble = offset - perBlock
                if inDouble == 0 {
                    if let finished = indirect { mapWrites.append(finished) }
                    let block = take()
                    direct[13] = block
                    doubleIndirect = (block, [UInt32](repeating: 0, count: Int(perBlock)))
                }
                if inDouble % perBlock == 0 {
                    if inDouble > 0, let finished = indirect { mapWrites.append(finished) }
                    let block = take()
                    doubleIndirect!.pointers[Int(inDouble / perBlock)] = block
                    indirect = (block, [UInt32](repeating: 0, count: Int(perBlock)))
                }
                indirect!.pointers[Int(inDouble % perBlock)] = take()
            }
            if let finished = indirect { mapWrites.append(finished) }
            if let finished = doubleIndirect { mapWrites.append(finished) }

            for (block, pointers) in mapWrites {
                let bytes = pointers.map { $0.littleEndian }
                try bytes.withUnsafeBytes { buffer in
                    try check(io_channel_write_blk64(fs.pointee.io, UInt64(block), 1, buffer.baseAddress),
                              "write journal block map", path: path)
                }
            }

            var superblock: UnsafeMutablePointer<CChar>? = nil
            try check(ext2fs_create_journal_superblock2(fs, &parameters, 0, &superblock),
                      "build the journal superblock", path: path)
            defer { free(superblock) }
            try check(io_channel_write_blk64(fs.pointee.io, UInt64(direct[0]), 1, superblock),
                      "write the journal superblock", path: path)

            var node = ext2_inode()
            let now = UInt32(truncatingIfNeeded: time(nil))
            node.i_mode = UInt16(LINUX_S_IFREG) | 0o600
            node.i_links_count = 1
            node.i_atime = now
            node.i_ctime = now
            node.i_mtime = now
            let bytes = length * UInt64(fs.pointee.blocksize)
            node.i_size = UInt32(truncatingIfNeeded: bytes)
            node.i_size_high = UInt32(truncatingIfNeeded: bytes >> 32)
            withUnsafeMutableBytes(of: &node.i_block) { raw in
                for (index, block) in direct.enumerated() { raw.storeBytes(of: block, toByteOffset: index * 4, as: UInt32.self) }
            }
            try check(ext2fs_iblk_set(fs, &node, blk64_t(blocks.count)), "count journal blocks", path: path)
            try check(ext2fs_write_new_inode(fs, inode, &node), "write the journal inode", path: path)

            // The superblock keeps the journal's feature, inode and a backup of its block map.
            let sb = fs.pointee.super!
            sb.pointee.s_feature_compat |= UInt32(EXT3_FEATURE_COMPAT_HAS_JOURNAL)
            sb.pointee.s_journal_inum = inode
            withUnsafeMutableBytes(of: &sb.pointee.s_jnl_blocks) { raw in
                for (index, block) in direct.enumerated() { raw.storeBytes(of: block, toByteOffset: index * 4, as: UInt32.self) }
                raw.storeBytes(of: node.i_size_high, toByteOffset: 15 * 4, as: UInt32.self)
                raw.storeBytes(of: node.i_size, toByteOffset: 16 * 4, as: UInt32.self)
            }
            sb.pointee.s_jnl_backup_type = UInt8(EXT3_JNL_BACKUP_BLOCKS)
            ext2fs_mark_super_dirty(fs)
            return UInt32(length)
        }

        /// Marks `count` free blocks used, the first free ones from the start of the journal
        /// inode's group on (wrapping to the start), and returns them in order. Nothing is written.
        static func claim(_ count: UInt64, in fs: ext2_filsys, path: String) throws -> [blk64_t] {
            let sb = fs.pointee.super!
            let first = blk64_t(sb.pointee.s_first_data_block)
            let last = ext2fs_blocks_count(sb) - 1
            let group = (inode - 1) / sb.pointee.s_inodes_per_group
            var cursor = ext2fs_group_first_block2(fs, group)
            var wrapped = false
            var claimed: [blk64_t] = []
            claimed.reserveCapacity(Int(count))
            while UInt64(claimed.count) < count {
                var start: blk64_t = 0
                if cursor > last || ext2fs_find_first_zero_block_bitmap2(fs.pointee.block_map, cursor, last, &start) != 0 {
                    guard !wrapped else {
                        throw Error.library(operation: "allocate the journal", path: path,
                                            code: Int64(EXT2_ET_BLOCK_ALLOC_FAIL),
                                            message: Ext3.message(for: Int64(EXT2_ET_BLOCK_ALLOC_FAIL)))
                    }
                    wrapped = true
                    cursor = first
                    continue
                }
                var end: blk64_t = 0
                if ext2fs_find_first_set_block_bitmap2(fs.pointee.block_map, start, last, &end) != 0 { end = last + 1 }
                let run = min(end - start, count - UInt64(claimed.count))
                ext2fs_block_alloc_stats_range(fs, start, blk_t(run), 1)
                for block in start..<(start + run) { claimed.append(block) }
                cursor = start + run
            }
            return claimed
        }
    }
}
