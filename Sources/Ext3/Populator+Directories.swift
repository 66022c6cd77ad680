import LinuxSupport
import CExt2fs
#if canImport(Glibc)
import Glibc
#endif

extension Ext3.Populator {
    // MARK: - Directories and symlinks

    /// Every directory's blocks, built whole in memory and laid one after another: they go
    /// out through the batch buffers in large writes.
    func writeDirectories(_ streams: Ext3.BlockStreams) throws {
        var parents = [Int](repeating: -1, count: tree.nodes.count)
        for (index, node) in tree.nodes.enumerated() where node.kind == .directory {
            for child in node.children where tree.nodes[child.node].kind == .directory { parents[child.node] = index }
        }
        for (index, node) in tree.nodes.enumerated() where node.kind == .directory {
            let parent = index == 0 ? ext2_ino_t(EXT2_ROOT_INO) : numbers[parents[index]]
            let content = directoryContent(self: numbers[index], parent: parent, children: node.children)
            var map = Ext3.BlockMapper()
            let blocks = UInt64(content.count / Ext3.blockSize)
            let runs = try map.map(0..<blocks, allocator: allocateLiteral)
            try writePointerBlocks(map, streams)
            try content.withUnsafeBytes { bytes in
                for run in runs {
                    try streams.write(UnsafeRawBufferPointer(rebasing: bytes[Int(run.logical) * Ext3.blockSize..<Int(run.logical + run.count) * Ext3.blockSize]),
                                      at: run.physical)
                }
            }
            maps[index] = map
        }
    }

    /// `.`, `..` and the entries, packed into whole blocks (ext2_dir_entry_2 records).
    func directoryContent(self own: ext2_ino_t, parent: ext2_ino_t, children: [(name: [UInt8], node: Int)]) -> [UInt8] {
        let blockSize = Ext3.blockSize
        var content = [UInt8]()
        content.reserveCapacity(blockSize)
        var lastRecord = -1  // offset of the last record in the current block
        func append(_ inode: ext2_ino_t, _ type: UInt8, _ name: [UInt8]) {
            let length = (8 + name.count + 3) & ~3
            let used = content.count % blockSize
            if lastRecord >= 0 && (used == 0 || used + length > blockSize) {
                // Stretch the last record to the end of its block.
                if used != 0 { content += [UInt8](repeating: 0, count: blockSize - used) }
                let end = content.count
                let stretched = UInt16(end - lastRecord)
                content[lastRecord + 4] = UInt8(stretched & 0xFF)
                content[lastRecord + 5] = UInt8(stretched >> 8)
            }
            lastRecord = content.count
            withUnsafeBytes(of: inode.littleEndian) { content += $0 }
            withUnsafeBytes(of: UInt16(length).littleEndian) { content += $0 }
            content.append(UInt8(name.count))
            content.append(type)
            content += name
            content += [UInt8](repeating: 0, count: length - 8 - name.count)
        }
        append(own, UInt8(EXT2_FT_DIR), [46])
        append(parent, UInt8(EXT2_FT_DIR), [46, 46])
        for child in children {
            append(numbers[child.node], Self.fileType(tree.nodes[child.node].kind), child.name)
        }
        let used = content.count % blockSize
        if used != 0 { content += [UInt8](repeating: 0, count: blockSize - used) }
        let stretched = UInt16(content.count - lastRecord)
        content[lastRecord + 4] = UInt8(stretched & 0xFF)
        content[lastRecord + 5] = UInt8(stretched >> 8)
        return content
    }

    static func fileType(_ kind: Ext3.EntryKind) -> UInt8 {
        switch kind {
        case .regular: return UInt8(EXT2_FT_REG_FILE)
        case .directory: return UInt8(EXT2_FT_DIR)
        case .symlink: return UInt8(EXT2_FT_SYMLINK)
        case .characterDevice: return UInt8(EXT2_FT_CHRDEV)
        case .blockDevice: return UInt8(EXT2_FT_BLKDEV)
        case .fifo: return UInt8(EXT2_FT_FIFO)
        case .socket: return UInt8(EXT2_FT_SOCK)
        case .unknown: return UInt8(EXT2_FT_UNKNOWN)
        }
    }

    /// Targets of 60 bytes or more live in a block of their own.
    func writeSymlinkBlocks(_ streams: Ext3.BlockStreams) throws {
        for (index, node) in tree.nodes.enumerated() where node.kind == .symlink && node.target.count >= 60 {
            var map = Ext3.BlockMapper()
            let runs = try map.map(0..<1, allocator: allocateLiteral)
            try node.target.withUnsafeBytes { try streams.write($0, at: runs[0].physical) }
            maps[index] = map
        }
    }
}
