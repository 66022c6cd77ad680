import LinuxSupport
extension Ext3 {
    /// What a formatted image holds: where its bytes went and what is left for files.
    public struct Summary: Sendable, Codable, Equatable {
        /// The image file.
        public var path: String
        /// The file's length in bytes (exactly the size asked for).
        public var sizeBytes: UInt64
        /// Filesystem block size (4096).
        public var blockSize: Int
        /// Inodes in the filesystem: the most files and directories it can hold.
        public var inodeCount: UInt64
        /// Bytes spent on inode tables (256 per inode).
        public var inodeTableBytes: UInt64
        /// Bytes spent on the journal.
        public var journalBytes: UInt64
        /// Bytes free for file data after all metadata, the journal and the first directories.
        public var dataBytes: UInt64
        /// Bytes the file occupies on the disk holding it now (st_blocks x 512): it is sparse.
        public var allocatedBytes: UInt64

        public init(path: String, sizeBytes: UInt64, blockSize: Int, inodeCount: UInt64, inodeTableBytes: UInt64,
                    journalBytes: UInt64, dataBytes: UInt64, allocatedBytes: UInt64) {
            self.path = path
            self.sizeBytes = sizeBytes
            self.blockSize = blockSize
            self.inodeCount = inodeCount
            self.inodeTableBytes = inodeTableBytes
            self.journalBytes = journalBytes
            self.dataBytes = dataBytes
            self.allocatedBytes = allocatedBytes
        }

        /// One JSON object on one line, keys in a fixed order.
        public var json: String {
            let fields: [(String, String)] = [
                ("path", Ext3.jsonQuoted(path)),
                ("sizeBytes", "\(sizeBytes)"),
                ("blockSize", "\(blockSize)"),
                ("inodeCount", "\(inodeCount)"),
                ("inodeTableBytes", "\(inodeTableBytes)"),
                ("journalBytes", "\(journalBytes)"),
                ("dataBytes", "\(dataBytes)"),
                ("allocatedBytes", "\(allocatedBytes)"),
            ]
            return "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
        }
    }
}

extension Ext3 {
    /// A JSON string literal (RFC 8259 escaping).
    public static func jsonQuoted(_ text: String) -> String { JSONText.quoted(text) }
}
