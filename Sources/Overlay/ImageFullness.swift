import Ext3

/// Whether a writable image came out of a job full, and what to do about it: a job that ran out
/// of room often says so only in its own log, or not at all.
public enum ImageFullness {
    /// Free blocks below which an image counts as full. The kernel's driver keeps back the
    /// smaller of 2% of the blocks and 4,096 blocks for its own use, so a filled image never
    /// reaches zero: a little above that.
    static func fullBelow(blocks: UInt64) -> UInt64 {
        min(blocks * 3 / 100, 5120)
    }

    /// One line when the image at `path` has no free inodes or almost no free blocks; nil
    /// otherwise, or when it cannot be read.
    public static func notice(_ path: String) -> String? {
        guard let superblock = try? Ext3.Superblock(path: path), superblock.blockCount > 0 else { return nil }
        let size = ImageSize(bytes: superblock.filesystemBytes)
        if superblock.freeInodeCount == 0 {
            return "\(path) has no free inodes left (all \(superblock.inodeCount) files are used): writes of new files failed; "
                + "give it more with overlay resize \(path) -n THOUSANDS, or grow it with overlay resize \(path) -s SIZE "
                + "(it keeps its share of inodes)"
        }
        if superblock.freeBlockCount < fullBelow(blocks: superblock.blockCount) {
            let free = ImageSize.human(superblock.freeBlockCount * UInt64(superblock.blockSize))
            return "\(path) is full (\(free) of \(size) free): writes may have failed; "
                + "grow it with overlay resize \(path) -s SIZE, or free room in it"
        }
        return nil
    }
}
