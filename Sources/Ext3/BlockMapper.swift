extension Ext3 {
    /// The block map of one block-mapped (ext2/ext3) file: 12 direct pointers, then single,
    /// double and triple indirect blocks of 1024 pointers. Blocks are claimed chunk by chunk:
    /// for each chunk the indirect blocks it needs first, then its data in as few runs as the
    /// free space allows.
    struct BlockMapper {
        static let perBlock: UInt64 = UInt64(Ext3.blockSize / 4)
        var direct = [UInt32](repeating: 0, count: 15)
        var nodes: [(block: UInt32, pointers: [UInt32])] = []
        private var index: [UInt64: Int] = [:]
        /// Data blocks mapped.
        private(set) var dataBlocks: UInt64 = 0
        /// Data and indirect blocks.
        var blockCount: UInt64 { dataBlocks + UInt64(nodes.count) }

        /// Maps the logical blocks `range`, claiming blocks through `allocator`; returns the data
        /// runs as (logical, physical, count).
        /// Indirect blocks come from `pointerAllocator` when given.
        mutating func map(_ range: Range<UInt64>, allocator: (UInt64) throws -> [(start: UInt64, count: UInt64)],
                          pointerAllocator: ((UInt64) throws -> [(start: UInt64, count: UInt64)])? = nil)
            throws -> [(logical: UInt64, physical: UInt64, count: UInt64)] {
            guard !range.isEmpty else { return [] }
            let p = BlockMapper.perBlock
            // Indirect blocks first.
            var block = range.lowerBound
            while block < range.upperBound {
                if let pointerAllocator {
                    try ensurePath(block, allocator: pointerAllocator)
                } else {
                    try ensurePath(block, allocator: allocator)
                }
                block = block < 12 ? 12 : 12 + ((block - 12) / p + 1) * p
            }
            var result: [(logical: UInt64, physical: UInt64, count: UInt64)] = []
            var logical = range.lowerBound
            for run in try allocator(UInt64(range.count)) {
                result.append((logical, run.start, run.count))
                for offset in 0..<run.count { set(logical + offset, UInt32(run.start + offset)) }
                logical += run.count
            }
            dataBlocks += UInt64(range.count)
            return result
        }

        /// The leaf that holds logical block `block`'s pointer: a key and the slot in it.
        private static func leaf(_ block: UInt64) -> (key: UInt64, slot: Int) {
            let p = perBlock
            var b = block - 12
            if b < p { return (1, Int(b)) }
            b -= p
            if b < p * p { return (3 << 40 | b / p, Int(b % p)) }
            b -= p * p
            return (6 << 40 | b / p, Int(b % p))
        }

        private mutating func set(_ logical: UInt64, _ physical: UInt32) {
            if logical < 12 {
                direct[Int(logical)] = physical
                return
            }
            let (key, slot) = BlockMapper.leaf(logical)
            nodes[index[key]!].pointers[slot] = physical
        }

        /// Makes the indirect blocks on the way to logical block `block`, parents before children.
        private mutating func ensurePath(_ block: UInt64, allocator: (UInt64) throws -> [(start: UInt64, count: UInt64)]) throws {
            guard block >= 12 else { return }
            let p = BlockMapper.perBlock
            var b = block - 12
            // (key, where its pointer goes: parent key or a direct slot, slot in the parent)
            var path: [(key: UInt64, parent: UInt64?, slot: Int)] = []
            if b < p {
                path = [(1, nil, 12)]
            } else {
                b -= p
                if b < p * p {
                    path = [(2, nil, 13), (3 << 40 | b / p, 2, Int(b / p))]
                } else {
                    b -= p * p
                    let middle = b / (p * p)
                    path = [(4, nil, 14), (5 << 40 | middle, 4, Int(middle)), (6 << 40 | b / p, 5 << 40 | middle, Int((b / p) % p))]
                }
            }
            for step in path where index[step.key] == nil {
                let physical = UInt32(try allocator(1)[0].start)
                index[step.key] = nodes.count
                nodes.append((physical, [UInt32](repeating: 0, count: Int(p))))
                if let parent = step.parent {
                    nodes[index[parent]!].pointers[step.slot] = physical
                } else {
                    direct[step.slot] = physical
                }
            }
        }
    }
}
