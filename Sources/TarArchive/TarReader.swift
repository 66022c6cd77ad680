/// Reads ustar, GNU (long names and links, base-256 numbers) and pax (path, linkpath, times
/// with fractions, uid, gid, size, device numbers, SCHILY.xattr.*) tar archives in one pass:
/// ``next()`` gives each entry's header, then its data may be read with ``readData(into:_:)``
/// (or is skipped by the next ``next()``).
public final class TarReader {
    let stream: ByteStream
    /// Names the archive in errors.
    public let path: String
    /// Data and padding of the current entry not yet read.
    private var pendingData: UInt64 = 0
    /// The current entry's data not yet read (without padding).
    private var dataLeft: UInt64 = 0
    private var ordinal = 0
    private(set) var position: UInt64 = 0
    private var global: [String: [UInt8]] = [:]
    private var scratch = [UInt8](repeating: 0, count: 1 << 16)

    /// The largest extended header (long name or link, pax records) read.
    static let extendedHeaderLimit: UInt64 = 64 << 20

    init(stream: ByteStream, path: String) {
        self.stream = stream
        self.path = path
    }

    /// The archive at `path`, plain or gzip-compressed.
    public static func open(_ path: String, format: ArchiveFormat) throws -> TarReader {
        let stream: ByteStream = format == .gzip ? try GzipStream(path: path) : try FileStream(path: path)
        return TarReader(stream: stream, path: path)
    }

    func fail(_ damage: ArchiveError.Damage) -> ArchiveError {
        .damaged(path: path, damage, at: position)
    }

    /// Reads exactly `count` bytes into `buffer`; false at a clean end before the first byte.
    private func readExactly(_ buffer: UnsafeMutableRawPointer, _ count: Int) throws -> Bool {
        var done = 0
        while done < count {
            let got = try stream.read(into: buffer + done, count: count - done)
            if got == 0 {
                if done == 0 { return false }
                throw fail(.truncated)
            }
            done += got
        }
        position += UInt64(count)
        return true
    }

    /// The next 512-byte block, or nil at the end. The first one must be a header: anything
    /// else (or data that cannot be read as far as one block) is no tar archive.
    private func readBlock() throws -> [UInt8]? {
        var block = [UInt8](repeating: 0, count: 512)
        let atStart = position == 0
        do {
            let ok = try block.withUnsafeMutableBytes { bytes in try readExactly(bytes.baseAddress!, 512) }
            if atStart && ok && !TarReader.isHeader(block[...]) { throw ArchiveError.notTar(path: path) }
            return ok ? block : nil
        } catch ArchiveError.system(let failure) {
            throw ArchiveError.system(failure)
        } catch where atStart {
            throw ArchiveError.notTar(path: path)  // the data ends or is damaged before one header
        }
    }

    /// Skips whatever is left of the current entry's data.
    func skipData() throws {
        while pendingData > 0 {
            let count = Int(min(pendingData, UInt64(scratch.count)))
            let ok = try scratch.withUnsafeMutableBytes { bytes in try readExactly(bytes.baseAddress!, count) }
            guard ok else { throw fail(.truncated) }
            pendingData -= UInt64(count)
        }
        dataLeft = 0
    }

    /// An extended header's payload (`size` bytes and padding).
    private func readPayload(_ size: UInt64) throws -> [UInt8] {
        guard size < TarReader.extendedHeaderLimit else { throw fail(.extendedHeaderTooLarge(size)) }
        let padded = Int((size + 511) & ~511)
        var bytes = [UInt8](repeating: 0, count: padded)
        if padded > 0 {
            let ok = try bytes.withUnsafeMutableBytes { bytes in try readExactly(bytes.baseAddress!, padded) }
            guard ok else { throw fail(.truncated) }
        }
        return Array(bytes[..<Int(size)])
    }

    /// Reads the current entry's data in chunks of at most `buffer.count` bytes, calling
    /// `body` with each chunk and its offset in the file; then skips the padding. Throws
    /// ``ArchiveError`` or what `body` throws.
    public func readData(into buffer: UnsafeMutableRawBufferPointer,
                         _ body: (UnsafeRawBufferPointer, UInt64) throws -> Void) throws {
        var offset: UInt64 = 0
        while dataLeft > 0 {
            let count = Int(min(dataLeft, UInt64(buffer.count)))
            guard try readExactly(buffer.baseAddress!, count) else { throw fail(.truncated) }
            dataLeft -= UInt64(count)
            pendingData -= UInt64(count)
            try body(UnsafeRawBufferPointer(rebasing: buffer[..<count]), offset)
            offset += UInt64(count)
        }
        try skipData()
    }

    /// The next entry (its data not yet read), or nil at the end of the archive.
    public func next() throws -> TarEntry? {
        try skipData()
        var longName: [UInt8]? = nil
        var longLink: [UInt8]? = nil
        var pax: [String: [UInt8]] = [:]
        while true {
            guard let block = try readBlock() else {
                if ordinal == 0 && position == 0 { throw fail(.empty) }
                return nil  // no end-of-archive blocks: accept, as GNU tar does
            }
            if !block.contains(where: { $0 != 0 }) { return nil }
            guard TarReader.isHeader(block[...]) else { throw fail(.badChecksum) }
            let flag = block[156]
            // At most Int64.max: the padded size must not overflow.
            guard let size = TarReader.number(block[124..<136]).flatMap(UInt64.init(exactly:)) else { throw fail(.badSize) }
            switch flag {
            case UInt8(ascii: "L"):
                longName = TarReader.trimNul(try readPayload(size))
                continue
            case UInt8(ascii: "K"):
                longLink = TarReader.trimNul(try readPayload(size))
                continue
            case UInt8(ascii: "x"):
                for (key, value) in try parsePax(try readPayload(size)) { pax[key] = value }
                continue
            case UInt8(ascii: "g"):
                for (key, value) in try parsePax(try readPayload(size)) { global[key] = value }
                continue
            case UInt8(ascii: "S"):
                throw fail(.gnuSparse)
            case UInt8(ascii: "V"):
                pendingData = TarReader.padded(size)
                try skipData()
                continue
            default:
                break
            }
            var entry = try header(block, flag: flag, size: size, longName: longName, longLink: longLink,
                                   records: global.merging(pax) { $1 })
            ordinal += 1
            // Only regular files carry data (a hard link's size is that of its target).
            let carries = entry.kind == .regular
            pendingData = carries ? TarReader.padded(entry.size) : TarReader.padded(size)
            if !carries { entry.size = 0 }
            dataLeft = entry.size
            return entry
        }
    }

    /// `size` rounded up to whole blocks (`size` is at most Int64.max: no overflow).
    static func padded(_ size: UInt64) -> UInt64 { (size + 511) & ~511 }

    /// The entry a header block describes, with pax records and GNU long names applied.
    private func header(_ block: [UInt8], flag: UInt8, size: UInt64, longName: [UInt8]?, longLink: [UInt8]?,
                        records: [String: [UInt8]]) throws -> TarEntry {
        if records.keys.contains(where: { $0.hasPrefix("GNU.sparse.") }) { throw fail(.paxSparse) }
        let isUstar = block[257..<263].elementsEqual("ustar\0".utf8)
        var name = TarReader.trimNul(Array(block[0..<100]))
        if isUstar {
            let prefix = TarReader.trimNul(Array(block[345..<500]))
            if !prefix.isEmpty { name = prefix + [UInt8(ascii: "/")] + name }
        }
        func field(_ range: Range<Int>) -> Int64 { TarReader.number(block[range]) ?? 0 }
        var entry = TarEntry(
            ordinal: ordinal, path: longName ?? name, linkPath: longLink ?? TarReader.trimNul(Array(block[157..<257])),
            kind: TarEntry.Kind(flag: flag),
            mode: UInt16(truncatingIfNeeded: field(100..<108) & 0o7777),
            uid: UInt32(truncatingIfNeeded: field(108..<116)),
            gid: UInt32(truncatingIfNeeded: field(116..<124)),
            size: size,
            mtime: TarTime(seconds: field(136..<148)),
            atime: nil, ctime: nil,
            major: UInt32(truncatingIfNeeded: field(329..<337)),
            minor: UInt32(truncatingIfNeeded: field(337..<345)),
            xattrs: [])
        for (key, value) in records {
            let text = String(decoding: value, as: UTF8.self)
            switch key {
            case "path": entry.path = value
            case "linkpath": entry.linkPath = value
            case "size":
                // At most Int64.max, as in a header (the padded size must not overflow).
                guard let size = UInt64(text), size <= UInt64(Int64.max) else { throw fail(.badPaxSize(text)) }
                entry.size = size
            case "uid": entry.uid = UInt32(text) ?? entry.uid
            case "gid": entry.gid = UInt32(text) ?? entry.gid
            case "mtime": entry.mtime = try time(text, key)
            case "atime": entry.atime = try time(text, key)
            case "ctime": entry.ctime = try time(text, key)
            case "SCHILY.devmajor": entry.major = UInt32(text) ?? entry.major
            case "SCHILY.devminor": entry.minor = UInt32(text) ?? entry.minor
            default:
                if key.hasPrefix("SCHILY.xattr.") {
                    entry.xattrs.append((String(key.dropFirst("SCHILY.xattr.".count)), value))
                }
            }
        }
        entry.xattrs.sort { $0.name < $1.name }
        return entry
    }
}
