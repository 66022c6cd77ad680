import Foundation
import Testing
@testable import Ext3
import LinuxSupport

@Suite struct GeometryTests {
    static let mebibyte: UInt64 = 1 << 20

    @Test func manyInodesInASmallImageMeanManySmallGroups() throws {
        // 500 MiB would be 4 groups of 32768 blocks; 700,000 inodes need at least 22 groups.
        let geometry = try Ext3.Geometry(sizeBytes: 500 * Self.mebibyte, inodes: 700_000)
        #expect(geometry.inodesPerGroup <= 32768)
        #expect(geometry.groupCount >= 22)
        #expect(geometry.inodeCount >= 700_000)
        #expect(geometry.blocksPerGroup < 32768)
        // 256 bytes per inode: about 171 MiB of inode tables.
        #expect((170 * Self.mebibyte...172 * Self.mebibyte).contains(geometry.inodeTableBytes))
        #expect(geometry.journalBlocks == 4096)  // mke2fs: 16 MiB below 1 GiB
    }

    @Test func defaultIsOneInodePer16KiB() throws {
        let geometry = try Ext3.Geometry(sizeBytes: 5 << 30)
        #expect(geometry.requestedInodes == (5 << 30) / 16384)
        #expect(geometry.inodeCount >= geometry.requestedInodes)
        #expect(geometry.blocksPerGroup == 32768)
    }

    @Test(arguments: [64 * mebibyte, 500 * mebibyte, 8 * mebibyte, 1 << 30])
    func theMostInodesReportedIsTheEdge(_ size: UInt64) throws {
        let most = Ext3.Geometry.maximumInodes(sizeBytes: size)
        #expect(most > 0)
        let fits = try Ext3.Geometry(sizeBytes: size, inodes: most)
        #expect(fits.inodeCount == most)
        let error = #expect(throws: Ext3.Error.self) {
            _ = try Ext3.Geometry(sizeBytes: size, inodes: most + 1)
        }
        let text = error?.description ?? ""
        #expect(text.contains("at most \(Units.grouped(most)) fit"), "\(text)")
        #expect(text.contains("-s") && text.contains("-n"))
    }

    @Test func tooSmallSaysTheSmallestSize() throws {
        let error = #expect(throws: Ext3.Error.self) {
            _ = try Ext3.Geometry(sizeBytes: 4 * Self.mebibyte)
        }
        #expect(error?.description.contains("at least 8 MiB") == true)
        #expect(throws: Ext3.Error.self) { _ = try Ext3.Geometry(sizeBytes: 0) }
    }

    @Test func tooLargeForExt3() throws {
        let error = #expect(throws: Ext3.Error.self) {
            _ = try Ext3.Geometry(sizeBytes: 17 << 40)
        }
        #expect(error?.description.contains("16 TiB") == true)
    }

    @Test func mapBlocksOfABlockMappedFile() {
        #expect(Ext3.Geometry.mapBlocks(forFileBlocks: 12) == 0)
        #expect(Ext3.Geometry.mapBlocks(forFileBlocks: 13) == 1)
        #expect(Ext3.Geometry.mapBlocks(forFileBlocks: 1036) == 1)
        #expect(Ext3.Geometry.mapBlocks(forFileBlocks: 1037) == 3)
        #expect(Ext3.Geometry.mapBlocks(forFileBlocks: 4096) == 5)        // 16 MiB journal
        #expect(Ext3.Geometry.mapBlocks(forFileBlocks: 262_144) == 257)   // 1 GiB journal
    }

    @Test func superblockBackupsFollowSparseSuper() {
        let backups = (0..<100).filter { Ext3.Geometry.hasSuperblockBackup(UInt64($0)) }
        #expect(backups == [0, 1, 3, 5, 7, 9, 25, 27, 49, 81])
    }

    @Test func configurationIsCheckedBeforeAnyIO() throws {
        let size = 64 * Self.mebibyte
        for bad in ["..", "a/../b", "", "/", "./."] {
            #expect(throws: Ext3.Error.self, "directory \(bad)") {
                _ = try Ext3.Formatter(.init(sizeBytes: size, directories: [bad]))
            }
        }
        #expect(throws: Ext3.Error.self) { _ = try Ext3.Formatter(.init(sizeBytes: size, minimumInodes: 0)) }
        #expect(throws: Ext3.Error.self) { _ = try Ext3.Formatter(.init(sizeBytes: size, label: String(repeating: "x", count: 17))) }
        #expect(throws: Ext3.Error.self) { _ = try Ext3.Formatter(.init(sizeBytes: size, minimumInodes: 10_000_000)) }
        let formatter = try Ext3.Formatter(.init(sizeBytes: size, directories: ["/opt/conda/", "opt", "data//in/."]))
        #expect(formatter.directoryPaths == [["opt", "conda"], ["opt"], ["data", "in"]])
    }

    @Test func summaryJSONDecodes() throws {
        let summary = Ext3.Summary(path: "a \"b\"\n.ext3", sizeBytes: 1, blockSize: 4096, inodeCount: 2, inodeTableBytes: 3,
                                   journalBytes: 4, dataBytes: 5, allocatedBytes: 6)
        #expect(!summary.json.contains("\n"))
        let decoded = try JSONDecoder().decode(Ext3.Summary.self, from: Data(summary.json.utf8))
        #expect(decoded == summary)
    }
}
