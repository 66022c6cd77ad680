import Ext3
import TarArchive

extension Ext3.Formatter {
    /// Builds the image as ``create(at:)`` does, then writes `source`'s tree under `upper/`
    /// before the filesystem is closed and the file renamed into place: on any failure
    /// (an unreadable file, a full disk) nothing is left behind. `progress` is called a few
    /// times a second while file data is written.
    public func create(at target: String, packing source: Ext3.PackSource, rootFiles: [Ext3.RootFile] = [],
                       progress: ((Ext3.PackProgress) -> Void)? = nil) throws -> Ext3.Summary {
        let geometry = self.geometry
        guard geometry.inodeCount >= source.inodesNeeded + Ext3.PackSource.reservedInodes,
              geometry.freeBlocks(extraDirectories: directoryPaths.count) >= source.blocksNeeded else {
            throw Ext3.Error.invalidConfiguration("\(source.path) does not fit in this image: \(geometry)")
        }
        return try reportingArchiveErrors {
            // An archive is read a second time for its files' data (the first read the tree).
            let data = source.kind == .directory
                ? nil : ArchiveData(try TarReader.open(source.path, format: source.kind.archiveFormat))
            return try create(at: target, writing: source.tree, data: data, rootFiles: rootFiles, progress: progress)
        }
    }
}

/// A tar archive's entries as the image writer reads file data: in archive order, each
/// entry's data as it comes.
final class ArchiveData: Ext3.FileDataStream {
    private let reader: TarReader

    init(_ reader: TarReader) {
        self.reader = reader
    }

    func nextItem() throws -> (ordinal: Int, size: UInt64)? {
        try reader.next().map { ($0.ordinal, $0.size) }
    }

    func readData(into buffer: UnsafeMutableRawBufferPointer, _ body: (UnsafeRawBufferPointer, UInt64) throws -> Void) throws {
        try reader.readData(into: buffer, body)
    }
}
