import Testing
import LinuxSupport
import TestSupport
@testable import TarArchive

/// The tar reader on archives built in memory (``TarBuilder``): what each kind of header
/// yields, and a clean error (never a crash or a hang) for every kind of damage.
@Suite struct TarReaderTests {
    /// Every entry with its data, read through a stream that hands out `chunk` bytes at a time.
    static func read(_ bytes: [UInt8], chunk: Int = .max) throws -> [(entry: TarEntry, data: [UInt8])] {
        try read(TarReader(stream: MemoryStream(bytes, chunk: chunk), path: "test.tar"))
    }

    static func read(_ reader: TarReader) throws -> [(entry: TarEntry, data: [UInt8])] {
        var result: [(entry: TarEntry, data: [UInt8])] = []
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 100, alignment: 8)
        defer { buffer.deallocate() }
        while let entry = try reader.next() {
            var data: [UInt8] = []
            try reader.readData(into: buffer) { chunk, offset in
                #expect(offset == UInt64(data.count))
                data += chunk
            }
            result.append((entry, data))
        }
        return result
    }

    /// The error reading `bytes` throws, if any.
    static func failure(_ bytes: [UInt8]) -> ArchiveError? {
        do {
            _ = try read(bytes)
            return nil
        } catch {
            return error as? ArchiveError
        }
    }

    static func text(_ path: [UInt8]) -> String { String(decoding: path, as: UTF8.self) }

    @Test func ustarFilesDirectoriesLinksAndSpecialFiles() throws {
        var archive = TarBuilder()
        archive.directory("top/", mode: 0o750)
        archive.file("top/a.txt", "hello\n", mode: 0o4755)
        archive.file("top/big", String(repeating: "0123456789", count: 70))  // 700 bytes: two blocks
        archive.symlink("top/link", to: "a.txt")
        archive.hardLink("top/again", to: "top/a.txt")
        archive.fifo("top/fifo")
        var device = TarHeader("top/null", type: "3")
        device.major = .octal(1)
        device.minor = .octal(3)
        archive.append(device)
        var prefixed = TarHeader("leaf")
        prefixed.prefix = Array("a/long/prefix".utf8)
        archive.append(prefixed)
        var old = TarHeader("old-style", type: "\0")
        old.ustar = false
        old.size = .octal(2)
        archive.append(old, data: Array("v7".utf8))
        archive.end()

        for chunk in [Int.max, 7, 1] {
            let entries = try Self.read(archive.bytes, chunk: chunk)
            #expect(entries.map { Self.text($0.entry.path) }
                    == ["top/", "top/a.txt", "top/big", "top/link", "top/again", "top/fifo", "top/null", "a/long/prefix/leaf", "old-style"])
            #expect(entries.map(\.entry.ordinal) == Array(0..<9))
            #expect(entries.map(\.entry.kind) == [.directory, .regular, .regular, .symlink, .hardLink, .fifo, .characterDevice, .regular, .regular])
            #expect(entries[0].entry.mode == 0o750 && entries[1].entry.mode == 0o4755)
            #expect(entries[1].entry.uid == 1000 && entries[1].entry.gid == 1000)
            #expect(entries[1].entry.mtime == TarTime(seconds: 1_700_000_000) && entries[1].entry.atime == nil)
            #expect(entries[1].data == Array("hello\n".utf8) && entries[1].entry.size == 6)
            #expect(entries[2].data.count == 700 && entries[2].data.prefix(10) == Array("0123456789".utf8)[...])
            #expect(Self.text(entries[3].entry.linkPath) == "a.txt" && entries[3].entry.size == 0)
            #expect(Self.text(entries[4].entry.linkPath) == "top/a.txt" && entries[4].data.isEmpty)
            #expect(entries[6].entry.major == 1 && entries[6].entry.minor == 3)
            #expect(entries[8].data == Array("v7".utf8))
        }
    }

    /// Data left unread is skipped by the next header; an archive without the end blocks is
    /// accepted, as GNU tar does.
    @Test func unreadDataIsSkippedAndTheEndBlocksAreOptional() throws {
        var archive = TarBuilder()
        archive.file("one", String(repeating: "x", count: 1500))
        archive.file("two", "2")
        let reader = TarReader(stream: MemoryStream(archive.bytes, chunk: 100), path: "test.tar")
        #expect(try reader.next().map { Self.text($0.path) } == "one")
        #expect(try reader.next().map { Self.text($0.path) } == "two")
        #expect(try reader.next() == nil)
    }

    @Test func paxRecordsOverrideTheHeader() throws {
        var archive = TarBuilder()
        let longPath = String(repeating: "p", count: 150) + "/" + String(repeating: "q", count: 120)
        archive.pax([
            ("path", longPath),
            ("mtime", "1700000000.123456789"),
            ("atime", "-1.25"),
            ("ctime", "12"),
            ("uid", "3000000000"),
            ("gid", "4000000000"),
            ("size", "3"),
        ])
        var file = TarHeader("short-name")
        file.size = .octal(0)  // the pax size wins
        archive.append(file, data: Array("abc".utf8))
        archive.pax([(key: "SCHILY.xattr.user.zeta", value: [0, 1, 0xFF, 10]), (key: "SCHILY.xattr.user.alpha", value: Array("a".utf8)),
                     (key: "linkpath", value: Array(String(repeating: "t", count: 140).utf8))])
        archive.symlink("link", to: "short")
        archive.file("plain", "p")
        archive.end()

        let entries = try Self.read(archive.bytes, chunk: 13)
        #expect(entries.count == 3)
        #expect(Self.text(entries[0].entry.path) == longPath)
        #expect(entries[0].entry.mtime == TarTime(seconds: 1_700_000_000, nanoseconds: 123_456_789))
        #expect(entries[0].entry.atime == TarTime(seconds: -2, nanoseconds: 750_000_000))
        #expect(entries[0].entry.ctime == TarTime(seconds: 12))
        #expect(entries[0].entry.uid == 3_000_000_000 && entries[0].entry.gid == 4_000_000_000)
        #expect(entries[0].entry.size == 3 && entries[0].data == Array("abc".utf8))
        #expect(entries[1].entry.xattrs.map(\.name) == ["user.alpha", "user.zeta"])
        #expect(entries[1].entry.xattrs.last?.value == [0, 1, 0xFF, 10])
        #expect(entries[1].entry.linkPath.count == 140)
        // Records of an `x` header apply to the next entry only.
        #expect(Self.text(entries[2].entry.path) == "plain" && entries[2].entry.xattrs.isEmpty && entries[2].entry.uid == 1000)
    }

    @Test func globalPaxRecordsApplyToEveryLaterEntry() throws {
        var archive = TarBuilder()
        archive.file("before", "b")
        archive.pax([("uid", "77")], global: true)
        archive.file("after", "a")
        archive.pax([("uid", "88")])
        archive.file("overridden", "o")
        archive.file("last", "l")
        archive.end()
        #expect(try Self.read(archive.bytes).map(\.entry.uid) == [1000, 77, 88, 77])
    }

    @Test func gnuLongNamesAndLinks() throws {
        let longName = (0..<5).map { "directory-\($0)-" + String(repeating: "d", count: 60) }.joined(separator: "/") + "/file"
        let longTarget = String(repeating: "../", count: 40) + "target"
        var archive = TarBuilder()
        archive.gnuLong("L", longName)
        archive.file(String(longName.prefix(99)), "long")
        archive.gnuLong("L", longName + "-link")
        archive.gnuLong("K", longTarget)
        archive.symlink("truncated-name", to: String(longTarget.prefix(99)))
        archive.file("short", "s")
        archive.end()
        let entries = try Self.read(archive.bytes)
        #expect(entries.map { Self.text($0.entry.path) } == [longName, longName + "-link", "short"])
        #expect(entries[0].data == Array("long".utf8))
        #expect(Self.text(entries[1].entry.linkPath) == longTarget && entries[1].entry.kind == .symlink)
        #expect(entries[2].entry.linkPath.isEmpty)
    }

    @Test func base256Numbers() throws {
        var archive = TarBuilder()
        var file = TarHeader("big-ids")
        file.uid = .base256(3_000_000_000)
        file.gid = .base256(70_000)
        file.size = .base256(5)
        file.mtime = .base256(-303_101_511)  // before 1970
        archive.append(file, data: Array("12345".utf8))
        var later = TarHeader("far-future")
        later.mtime = .base256(1 << 40)
        archive.append(later)
        archive.end()
        let entries = try Self.read(archive.bytes)
        #expect(entries[0].entry.uid == 3_000_000_000 && entries[0].entry.gid == 70_000)
        #expect(entries[0].entry.size == 5 && entries[0].data == Array("12345".utf8))
        #expect(entries[0].entry.mtime == TarTime(seconds: -303_101_511))
        #expect(entries[1].entry.mtime == TarTime(seconds: 1 << 40))
    }

    // MARK: - Damage

    @Test func aWrongChecksumMidArchive() throws {
        var archive = TarBuilder()
        archive.file("good", "g")
        var bad = TarHeader("bad")
        bad.checksumError = 1
        archive.append(bad)
        archive.end()
        #expect(Self.failure(archive.bytes) == .damaged(path: "test.tar", .badChecksum, at: 1536))
        #expect(Self.failure(archive.bytes)?.description
                == "test.tar: a header's checksum is wrong (at byte 1536); the archive is damaged or not a tar archive")
    }

    @Test func truncatedInsideDataOrHeader() throws {
        var archive = TarBuilder()
        archive.file("whole", "w")
        archive.file("cut", String(repeating: "c", count: 2000))
        let insideData = Array(archive.bytes.prefix(1024 + 512 + 700))
        // Read 100 bytes at a time: 700 are there.
        #expect(Self.failure(insideData) == .damaged(path: "test.tar", .truncated, at: 2236))
        #expect(Self.failure(insideData)?.description
                == "test.tar: the archive ends in the middle of an entry (at byte 2236); the archive is damaged or not a tar archive")
        // Skipping the data (not reading it) finds the same.
        let reader = TarReader(stream: MemoryStream(insideData), path: "test.tar")
        _ = try reader.next()
        _ = try reader.next()
        #expect(throws: ArchiveError.damaged(path: "test.tar", .truncated, at: 1536)) { try reader.next() }
        let insideHeader = Array(archive.bytes.prefix(1024 + 300))
        #expect(Self.failure(insideHeader) == .damaged(path: "test.tar", .truncated, at: 1024))
    }

    @Test func garbageIsNoArchive() throws {
        let garbage = (0..<2048).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        #expect(Self.failure(garbage) == .notTar(path: "test.tar"))
        #expect(Self.failure(garbage)?.description
                == "test.tar does not hold a tar archive: give a directory or a tar archive (plain or gzip)")
        #expect(Self.failure(Array(garbage.prefix(100))) == .notTar(path: "test.tar"))  // less than a block
        #expect(Self.failure([]) == .damaged(path: "test.tar", .empty, at: 0))
        var archive = TarBuilder()
        archive.file("good", "g")
        archive.appendRaw(Array(garbage.prefix(512)))
        #expect(Self.failure(archive.bytes) == .damaged(path: "test.tar", .badChecksum, at: 1536))
        var pax = TarBuilder()
        var header = TarHeader("PaxHeaders/x", type: "x")
        header.size = .octal(12)
        pax.append(header, data: Array("99 path=abc\n".utf8))  // says 99 bytes, has 12
        pax.file("f", "f")
        #expect(Self.failure(pax.bytes) == .damaged(path: "test.tar", .malformedPax, at: 1024))
        var time = TarBuilder()
        time.pax([("mtime", "soon")])
        time.file("f", "f")
        #expect(Self.failure(time.bytes)?.description
                == "test.tar: pax mtime 'soon' is not a time (at byte 1536); the archive is damaged or not a tar archive")
    }

    @Test func sparseEntriesAreRefused() throws {
        var gnu = TarBuilder()
        gnu.append(TarHeader("sparse", type: "S"))
        #expect(Self.failure(gnu.bytes) == .damaged(path: "test.tar", .gnuSparse, at: 512))
        var pax = TarBuilder()
        pax.pax([("GNU.sparse.major", "1")])
        pax.file("sparse", "s")
        #expect(Self.failure(pax.bytes)?.description
                == "test.tar: pax sparse entries are not supported: make the archive without --sparse (at byte 1536); the archive is damaged or not a tar archive")
    }

    /// Sizes no file has: each a clean error, where the padded size used to overflow (a trap).
    @Test func hugeAndOverflowingSizes() throws {
        var negative = TarBuilder()
        var header = TarHeader("negative")
        header.size = .base256(-1)
        negative.append(header)
        negative.end()
        #expect(Self.failure(negative.bytes) == .damaged(path: "test.tar", .badSize, at: 512))

        var overflowing = TarBuilder()
        header = TarHeader("overflowing")
        header.size = .base256Overflowing
        overflowing.append(header)
        #expect(Self.failure(overflowing.bytes) == .damaged(path: "test.tar", .badSize, at: 512))

        for size in ["18446744073709551615", "9223372036854775808", "-1", "12x"] {
            var pax = TarBuilder()
            pax.pax([("size", size)])
            pax.file("file", "")
            pax.end()
            #expect(Self.failure(pax.bytes) == .damaged(path: "test.tar", .badPaxSize(size), at: 1536), "\(size)")
        }
        #expect(Self.failure({
            var pax = TarBuilder()
            pax.pax([("size", "18446744073709551615")])
            pax.file("file", "")
            return pax.bytes
        }())?.description == "test.tar: pax size '18446744073709551615' is not a size (at byte 1536); the archive is damaged or not a tar archive")

        // A GNU volume header: its size is skipped over.
        for size in [TarNumber.base256Overflowing, .base256(-512)] {
            var volume = TarBuilder()
            header = TarHeader("volume", type: "V")
            header.size = size
            volume.append(header)
            volume.file("after", "a")
            volume.end()
            #expect(Self.failure(volume.bytes) == .damaged(path: "test.tar", .badSize, at: 512))
        }
        // The largest size a header may give, with far fewer bytes behind it: the data is
        // missing, said as soon as the stream ends.
        for type: Character in ["V", "0"] {
            var huge = TarBuilder()
            header = TarHeader("huge", type: type)
            header.size = .base256(Int64.max)
            huge.append(header)
            huge.end()
            let failure = Self.failure(huge.bytes)
            if case .damaged("test.tar", .truncated, _) = failure {} else { Issue.record("type \(type): \(String(describing: failure))") }
        }
        var hugePax = TarBuilder()
        hugePax.pax([("size", String(Int64.max))])
        hugePax.file("file", "")
        #expect(Self.failure(hugePax.bytes) == .damaged(path: "test.tar", .truncated, at: 1536))
        // An extended header that large is refused before it is read.
        var hugeName = TarBuilder()
        header = TarHeader("././@LongLink", type: "L")
        header.size = .base256(Int64.max)
        hugeName.append(header)
        #expect(Self.failure(hugeName.bytes) == .damaged(path: "test.tar", .extendedHeaderTooLarge(UInt64(Int64.max)), at: 512))
    }

    // MARK: - gzip

    static func archiveOfThree() -> TarBuilder {
        var archive = TarBuilder()
        archive.directory("d/")
        archive.file("d/one", String(repeating: "1", count: 3000))
        archive.file("d/two", "two\n")
        archive.end()
        return archive
    }

    @Test(.requires(executable: "gzip")) func gzipOneMemberOrSeveral() throws {
        let archive = Self.archiveOfThree()
        let compressed = try TarBuilder.gzip(archive.bytes)
        let one = try Self.read(TarReader(stream: GzipStream(MemoryStream(compressed, chunk: 100), path: "test.tar.gz"), path: "test.tar.gz"))
        #expect(one.map { Self.text($0.entry.path) } == ["d/", "d/one", "d/two"])
        #expect(one[1].data == Array(repeating: UInt8(ascii: "1"), count: 3000))
        // The same bytes split over two members, as `cat a.gz b.gz` makes.
        let split = try TarBuilder.gzip(Array(archive.bytes.prefix(1000))) + TarBuilder.gzip(Array(archive.bytes.dropFirst(1000)))
        let two = try Self.read(TarReader(stream: GzipStream(MemoryStream(split), path: "test.tar.gz"), path: "test.tar.gz"))
        #expect(two.map(\.data) == one.map(\.data))
    }

    @Test(.requires(executable: "gzip")) func damagedOrTruncatedGzip() throws {
        let compressed = try TarBuilder.gzip(Self.archiveOfThree().bytes)
        func failure(_ bytes: [UInt8]) -> ArchiveError? {
            do {
                _ = try Self.read(TarReader(stream: GzipStream(MemoryStream(bytes), path: "t.tgz"), path: "t.tgz"))
                return nil
            } catch {
                return error as? ArchiveError
            }
        }
        let truncated = Array(compressed.prefix(compressed.count - 12))
        #expect(failure(truncated) == .gzip(path: "t.tgz", .truncated))
        #expect(failure(truncated)?.description == "t.tgz: the gzip data ends early (truncated file?)")
        var damaged = compressed
        for index in 20..<min(60, damaged.count - 8) { damaged[index] ^= 0x5A }
        let error = failure(damaged)
        if case .gzip(_, .damaged(let status)) = error {
            #expect(error?.description == "t.tgz: the gzip data is damaged (zlib status \(status))")
        } else if case .notTar = error {
            // Damage that still inflates: what comes out is no tar header.
        } else if case .damaged = error {
            // ... or a damaged one.
        } else {
            Issue.record("damaged gzip read as \(String(describing: error))")
        }
        // gzip of something that is no tar archive.
        let text = try TarBuilder.gzip(Array(String(repeating: "not a tar archive\n", count: 100).utf8))
        #expect(failure(text) == .notTar(path: "t.tgz"))
    }

    // MARK: - What a file is

    @Test func detectionByContent() throws {
        let archive = Self.archiveOfThree().bytes
        #expect(try ArchiveFormat.detect(header: archive.prefix(512), path: "a") == .tar)
        #expect(try ArchiveFormat.detect(header: [0x1F, 0x8B, 8, 0][...], path: "a") == .gzip)
        let expected: [(ArchiveError.Compression, [UInt8], String)] = [
            (.bzip2, [0x42, 0x5A, 0x68, 0x39], "bzip2 (bunzip2 it first)"),
            (.xz, [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00, 1], "xz (unxz it first)"),
            (.zstd, [0x28, 0xB5, 0x2F, 0xFD, 0], "zstd (unzstd it first)"),
        ]
        for (compression, magic, what) in expected {
            #expect(throws: ArchiveError.compressed(path: "x.tar.z", compression)) { try ArchiveFormat.detect(header: magic[...], path: "x.tar.z") }
            #expect(ArchiveError.compressed(path: "x.tar.z", compression).description
                    == "x.tar.z is compressed with \(what): only plain and gzip-compressed tar archives are read")
        }
        #expect(throws: ArchiveError.notAnArchive(path: "notes.txt")) { try ArchiveFormat.detect(header: Array("hello".utf8)[...], path: "notes.txt") }
        #expect(ArchiveError.notAnArchive(path: "notes.txt").description
                == "notes.txt is neither a directory nor a tar archive (plain or gzip): give one of those")
        // A damaged first header is no tar archive.
        var bad = TarHeader("f")
        bad.checksumError = 1
        #expect(throws: ArchiveError.notAnArchive(path: "b")) { try ArchiveFormat.detect(header: bad.block[...], path: "b") }
        #expect(throws: ArchiveError.system(SystemError("open", path: "/nonexistent/a.tar", errno: .noSuchFileOrDirectory))) {
            try ArchiveFormat.detect("/nonexistent/a.tar")
        }
    }
}
