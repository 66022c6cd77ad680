import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// Just enough of the Singularity Image Format to find the root filesystem: the global header
/// says where the descriptors are; the descriptor of a squashfs partition of type "primary
/// system" says where its bytes are. (Layout as in sylabs/sif: little-endian, packed.)
public enum SIF {
    public struct Partition: Equatable, Sendable {
        public var offset: UInt64
        public var size: UInt64
    }

    // Global header: launch script [32], magic "SIF_MAGIC\0" [10], version [3], arch [3],
    // id [16], created, modified, descriptors free, total, offset, size, data offset, size.
    static let headerSize = 128
    static let descriptorsTotalAt = 88
    static let descriptorsOffsetAt = 96
    // Descriptor: datatype i32, used u8, id u32, group u32, link u32, offset i64, size i64,
    // size with padding i64, created, modified, uid, gid i64, name [128], extra [384].
    static let descriptorSize = 585
    static let dataPartition: UInt32 = 0x4004
    static let squashfs: UInt32 = 1
    static let primarySystem: UInt32 = 2
    static let extraAt = 4 + 1 + 4 + 4 + 4 + 8 * 7 + 128

    /// The primary system partition (squashfs) of the SIF at `path`.
    public static func systemPartition(of path: String) throws -> Partition {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw RuntimeError.failed("container '\(path)': cannot read it: \(Errno.last)") }
        defer { close(fd) }
        let header = try read(fd, at: 0, count: headerSize, path: path)
        guard Array(header[32..<41]) == Array("SIF_MAGIC".utf8) else {
            throw RuntimeError.failed("container '\(path)' is not a SIF file (no SIF_MAGIC)")
        }
        let total = Int(le64(header, descriptorsTotalAt))
        let offset = le64(header, descriptorsOffsetAt)
        guard total > 0, total < 1_000_000 else { throw damaged(path) }
        let table = try read(fd, at: offset, count: total * descriptorSize, path: path)
        var fileSize = stat()
        fstat(fd, &fileSize)
        var squashfsFallback: Partition?
        for index in 0..<total {
            let base = index * descriptorSize
            guard le32(table, base) == dataPartition, table[base + 4] != 0 else { continue }
            let partition = Partition(offset: le64(table, base + 17), size: le64(table, base + 25))
            guard partition.offset + partition.size <= UInt64(fileSize.st_size) else { throw damaged(path) }
            let fsType = le32(table, base + extraAt)
            let partType = le32(table, base + extraAt + 4)
            guard fsType == squashfs else { continue }
            if partType == primarySystem { return partition }
            if squashfsFallback == nil { squashfsFallback = partition }
        }
        if let squashfsFallback { return squashfsFallback }
        throw RuntimeError.failed("container '\(path)' has no squashfs system partition: rebuild it with apptainer build (an ext3 or encrypted root is not supported)")
    }

    static func damaged(_ path: String) -> RuntimeError {
        .failed("container '\(path)': its SIF descriptors are damaged; check it with siftool list \(path)")
    }

    static func read(_ fd: Int32, at offset: UInt64, count: Int, path: String) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        guard got == count else { throw damaged(path) }
        return bytes
    }

    static func le32(_ b: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * $1) }
    }

    static func le64(_ b: [UInt8], _ at: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * $1) }
    }
}
